"""The Karras/EDM parameterization: σ schedules, preconditioning and σ ↔ ᾱ conversions.

Karras, Aittala, Aila & Laine (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models" (NeurIPS 2022; equation and table numbers from arXiv:2206.00364v2). In the EDM view a
noisy sample is x = y + σ n (mean coefficient s(t) = 1), the denoiser is
D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)) (Eq. 7) and the probability-flow ODE
is dx/dσ = (x - D(x; σ))/σ.

The σ schedules are host-side table builders: computed on the host in double-double arithmetic
(``refdiff._dd``), rounded to float64 once, then moved to ``xp``/``device``/``dtype`` in one cast.
Everything else is array-API code on the caller's arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from array_api_compat import is_array_api_obj

from . import _dd
from ._errors import RefdiffShapeError, check_choice, check_int, check_real, fail
from ._typing import Array, Device, DType, Namespace
from ._xp import append_dims, array_namespace, as_float_array, check_leading_axes, device_of

__all__ = [
    "karras_sigmas",
    "exponential_sigmas",
    "polyexponential_sigmas",
    "interpolated_sigmas",
    "TIMESTEP_SPACINGS",
    "vp_sigmas",
    "vp_sigma",
    "vp_sigma_inv",
    "c_skip",
    "c_out",
    "c_in",
    "c_noise",
    "preconditioning",
    "PRECONDITIONINGS",
    "EDMDenoiser",
    "denoiser_from_raw",
    "edm_loss_weight",
    "edm_sigma_from_normal",
    "sigma_from_alpha_bar",
    "sigma_from_log_alpha_bar",
    "alpha_bar_from_sigma",
    "scale_model_input",
]

#: diffusers' ``timestep_spacing`` rules for :func:`interpolated_sigmas` (Lin et al. 2023, Table 2).
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")

#: The preconditioning columns of Karras et al. (2022), Table 1, available by name.
PRECONDITIONINGS = ("edm", "vp", "ve")

#: Table 1 VP constants: β_d, β_min and the number of discrete training steps M.
VP_BETA_D = 19.9
VP_BETA_MIN = 0.1
VP_M = 1000


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_sigma(
    sigma: Array | float,
    *,
    like: Array | None = None,
    name: str = "sigma",
    positive: bool = False,
    allow_inf: bool = False,
    why: str = "",
) -> tuple[Namespace, Array]:
    """(xp, σ as a floating array) with every σ >= 0 (or > 0), finite unless ``allow_inf``."""
    xp, sigma = as_float_array(sigma, name, like=like)
    if like is not None:
        check_leading_axes(name, sigma, like)
    good = (sigma > 0) if positive else (sigma >= 0)
    if not allow_inf:
        good = good & (sigma < math.inf)
    if not bool(xp.all(good)):
        what = "> 0" if positive else ">= 0"
        what += "" if allow_inf else " and finite"
        why = f" ({why})" if why else ""
        if sigma.ndim == 0:
            fail(name, sigma, f"expected a noise level {what}{why}")
        lo, hi = float(xp.min(sigma)), float(xp.max(sigma))
        fail(name, sigma, f"expected noise levels {what}; got values from {lo!r} to {hi!r}{why}")
    return xp, sigma


def _check_sigma_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    smin = check_real("sigma_min", sigma_min, lo=0.0, lo_open=True)
    smax = check_real("sigma_max", sigma_max, lo=0.0, lo_open=True)
    if not smax > smin:
        fail("sigma_max", sigma_max, f"expected sigma_max > sigma_min = {smin!r}")
    return smin, smax


def _finish(
    values: np.ndarray,
    append_zero: bool,
    xp: Namespace | None,
    device: Device | None,
    dtype: DType | None,
) -> Array:
    """Append the final 0, then move the float64 host table to ``xp`` (one cast)."""
    if append_zero:
        values = np.concatenate([values, np.zeros(1)])
    if xp is None:
        if device is not None:
            fail("device", device, "a device needs a namespace: pass xp= as well")
        return values if dtype is None else values.astype(dtype)
    return xp.asarray(values, dtype=xp.float64 if dtype is None else dtype, device=device)


def _ramp(n: int) -> _dd.DD:
    """i/(n-1) for i = 0..n-1 in double-double (just [0] when n = 1)."""
    if n == 1:
        return _dd.DD(np.zeros(1))
    return _dd.DD(np.arange(n, dtype=np.float64)) / float(n - 1)


# --------------------------------------------------------------------------------------------
# σ schedules (host-side table builders)
# --------------------------------------------------------------------------------------------


def karras_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    *,
    append_zero: bool = True,
    xp: Namespace | None = None,
    device: Device | None = None,
    dtype: DType | None = None,
) -> Array:
    """Karras et al. (2022), Eq. 5: σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ.

    Parameters
    ----------
    n : int
        Number of noise levels (>= 1); n = 1 gives [σ_max].
    sigma_min, sigma_max : float
        0 < sigma_min < sigma_max. σ_0 = σ_max and σ_{n-1} = σ_min exactly.
    rho : float
        Warping exponent ρ > 0 (7 in the paper; ρ = 1 is uniform in σ).
    append_zero : bool
        Append σ_n = 0 (the final denoising target), as k-diffusion does.
    xp, device, dtype
        Namespace, device and dtype of the result (default: float64 NumPy).

    Returns
    -------
    sigmas : array of shape (n,) or (n + 1,), decreasing.

    Notes
    -----
    Computed in double-double and rounded once: each value is within about half an ulp of the
    exact formula, and the endpoints are exact.
    """
    n = check_int("n", n, minimum=1)
    smin, smax = _check_sigma_range(sigma_min, sigma_max)
    rho = check_real("rho", rho, lo=0.0, lo_open=True)
    a = _dd.exp(_dd.log(_dd.DD(smax)) / rho)
    b = _dd.exp(_dd.log(_dd.DD(smin)) / rho)
    base = a + (b - a) * _ramp(n)
    sig = _dd.exp(_dd.log(base) * rho).to_float()
    sig[0] = smax
    if n > 1:
        sig[-1] = smin
    return _finish(sig, append_zero, xp, device, dtype)


def exponential_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    append_zero: bool = True,
    xp: Namespace | None = None,
    device: Device | None = None,
    dtype: DType | None = None,
) -> Array:
    """Log-uniform noise levels σ_i = exp(linspace(log σ_max, log σ_min, n)) (k-diffusion's exponential schedule).

    Same parameters and return as :func:`karras_sigmas` (this is its ρ → ∞ limit).
    """
    n = check_int("n", n, minimum=1)
    smin, smax = _check_sigma_range(sigma_min, sigma_max)
    la, lb = _dd.log(_dd.DD(smax)), _dd.log(_dd.DD(smin))
    sig = _dd.exp(la + (lb - la) * _ramp(n)).to_float()
    sig[0] = smax
    if n > 1:
        sig[-1] = smin
    return _finish(sig, append_zero, xp, device, dtype)


def polyexponential_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 1.0,
    *,
    append_zero: bool = True,
    xp: Namespace | None = None,
    device: Device | None = None,
    dtype: DType | None = None,
) -> Array:
    """σ_i = exp(log σ_min + r_i^ρ (log σ_max - log σ_min)), r_i = 1 - i/(n-1) (k-diffusion's polyexponential schedule).

    ρ = 1 is :func:`exponential_sigmas` (log-uniform); ρ > 1 puts more levels at small σ. Same
    parameters and return as :func:`karras_sigmas`; endpoints exact.
    """
    n = check_int("n", n, minimum=1)
    smin, smax = _check_sigma_range(sigma_min, sigma_max)
    rho = check_real("rho", rho, lo=0.0, lo_open=True)
    la, lb = _dd.log(_dd.DD(smax)), _dd.log(_dd.DD(smin))
    sig = np.full(n, smax)
    if n > 1:
        r = _dd.DD(1.0) - _ramp(n)[: n - 1]  # 1, ..., 1/(n-1): all > 0
        warped = _dd.exp(_dd.log(r) * rho)
        sig[: n - 1] = _dd.exp(lb + (la - lb) * warped).to_float()
        sig[0], sig[-1] = smax, smin
    return _finish(sig, append_zero, xp, device, dtype)


def interpolated_sigmas(
    alphas_cumprod: Array,
    n: int,
    *,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    append_zero: bool = True,
    xp: Namespace | None = None,
    device: Device | None = None,
    dtype: DType | None = None,
) -> Array:
    """diffusers' Euler/Heun σ grid: σ(t) = √((1-ᾱ_t)/ᾱ_t) linearly interpolated at n (fractional) timesteps t.

    The timesteps follow diffusers' ``timestep_spacing`` (Lin et al. 2023, Table 2), decreasing:
    ``"linspace"``: linspace(0, T-1, n) (fractional in general); ``"leading"``:
    round(arange(n) · (T // n)) + ``steps_offset``; ``"trailing"``: round(arange(T, 0, -T/n)) - 1.
    σ is ``np.interp`` of the table σ_t (Karras et al. 2022, App. C.3: σ = √((1-ᾱ)/ᾱ)) at those t,
    and σ_N = 0 is appended (diffusers' ``final_sigmas_type="zero"``). diffusers' EulerDiscrete,
    EulerAncestralDiscrete and HeunDiscrete schedulers (``interpolation_type="linear"``) build this
    grid in float32; here it is float64.

    Parameters
    ----------
    alphas_cumprod : Schedule or 1-D sequence
        ᾱ_t of the training schedule, t = 0..T-1 (a refdiff Schedule gives its float64 table).
    n : int
        Number of noise levels (1 <= n <= T).
    timestep_spacing : {"linspace", "leading", "trailing"}
    steps_offset : int
        Added to the "leading" timesteps (diffusers' ``steps_offset``, 1 for Stable Diffusion).
    append_zero, xp, device, dtype
        As in :func:`karras_sigmas`.

    Returns
    -------
    sigmas : array of shape (n,) or (n + 1,), decreasing.
    """
    table = getattr(alphas_cumprod, "sigmas", None)
    tmap = getattr(alphas_cumprod, "timestep_map", None)
    if tmap is not None and not np.array_equal(np.asarray(tmap), np.arange(len(tmap))):
        fail(
            "alphas_cumprod",
            alphas_cumprod,
            "expected the full training schedule, not a "
            "respaced one (the timesteps index the training table)",
        )
    if table is None:
        ab = np.asarray(alphas_cumprod, dtype=np.float64)
        if ab.ndim != 1 or ab.size < 2 or not np.all((ab > 0) & (ab <= 1)):
            fail(
                "alphas_cumprod",
                alphas_cumprod,
                "expected a Schedule or a 1-D table of ᾱ_t in (0, 1] with at least two entries",
            )
        table = np.sqrt((1.0 - ab) / ab)
    table = np.asarray(table, dtype=np.float64)
    if not np.all(np.isfinite(table)):
        fail(
            "alphas_cumprod",
            alphas_cumprod,
            "σ_t = √((1-ᾱ_t)/ᾱ_t) must be finite (ᾱ_t > 0; a "
            "zero-terminal-SNR schedule needs ᾱ_T clamped as diffusers does)",
        )
    T = table.size
    n = check_int("n", n, minimum=1)
    if n > T:
        fail("n", n, f"expected at most T = {T} noise levels")
    check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, "timestep spacing")
    steps_offset = check_int("steps_offset", steps_offset, minimum=0)
    if timestep_spacing == "linspace":
        ts = np.linspace(0.0, T - 1.0, n)[::-1]
    elif timestep_spacing == "leading":
        ts = np.round(np.arange(n) * float(T // n))[::-1] + steps_offset
    else:
        ts = np.round(np.arange(float(T), 0.0, -T / n)) - 1.0
    if ts[0] > T - 1:
        fail(
            "steps_offset",
            steps_offset,
            f"the leading timesteps reach {ts[0]:g}, past T-1 = {T - 1}",
        )
    sig = np.interp(ts, np.arange(T, dtype=np.float64), table)
    return _finish(sig, append_zero, xp, device, dtype)


def _check_vp_params(beta_d: float, beta_min: float) -> tuple[float, float]:
    bd = check_real("beta_d", beta_d, lo=0.0)
    bm = check_real("beta_min", beta_min, lo=0.0)
    if bd + bm == 0.0:
        fail("beta_d", beta_d, "beta_d and beta_min cannot both be 0")
    return bd, bm


def vp_sigmas(
    n: int,
    beta_d: float = VP_BETA_D,
    beta_min: float = VP_BETA_MIN,
    eps_s: float = 1e-3,
    *,
    append_zero: bool = True,
    xp: Namespace | None = None,
    device: Device | None = None,
    dtype: DType | None = None,
) -> Array:
    """Karras et al. (2022), Table 1 (VP): σ(t_i) = √(exp(½ β_d t_i² + β_min t_i) - 1), t_i = linspace(1, ε_s, n).

    Parameters
    ----------
    n : int
        Number of noise levels (>= 1).
    beta_d, beta_min : float
        β_d = 19.9 and β_min = 0.1 in the paper (β_max = β_d + β_min = 20).
    eps_s : float
        Smallest time ε_s ∈ (0, 1] (1e-3 in the paper).
    append_zero, xp, device, dtype
        As in :func:`karras_sigmas`.
    """
    n = check_int("n", n, minimum=1)
    bd, bm = _check_vp_params(beta_d, beta_min)
    eps = check_real("eps_s", eps_s, lo=0.0, hi=1.0, lo_open=True)
    t = _dd.DD(1.0) + (_dd.DD(eps) - 1.0) * _ramp(n)
    if n > 1:
        t = _dd.DD(np.concatenate([t.hi[:-1], [eps]]), np.concatenate([t.lo[:-1], [0.0]]))
    arg = t * t * (0.5 * bd) + t * bm
    sig = _dd.sqrt(_dd.expm1(arg)).to_float()
    return _finish(sig, append_zero, xp, device, dtype)


def vp_sigma(t: Array | float, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Array:
    """Karras et al. (2022), Table 1 (VP): σ(t) = √(expm1(½ β_d t² + β_min t)) for t ∈ [0, 1]."""
    bd, bm = _check_vp_params(beta_d, beta_min)
    xp, t = _as_sigma(t, name="t")
    if not bool(xp.all(t <= 1.0)):
        fail("t", t, "expected times in [0, 1]")
    return xp.sqrt(xp.expm1(t * (t * (0.5 * bd) + bm)))


def vp_sigma_inv(
    sigma: Array | float, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN
) -> Array:
    """Karras et al. (2022), Table 1 (VP): σ⁻¹(σ) = 2 log1p(σ²) / (β_min + √(β_min² + 2 β_d log1p(σ²)))."""
    bd, bm = _check_vp_params(beta_d, beta_min)
    xp, sigma = _as_sigma(sigma)
    L = xp.log1p(sigma * sigma)
    pos = L > 0
    safe = xp.where(pos, L, xp.ones_like(L))
    t = (2.0 * safe) / (bm + xp.sqrt(bm * bm + (2.0 * bd) * safe))
    return xp.where(pos, t, xp.zeros_like(t))


# --------------------------------------------------------------------------------------------
# Preconditioning (Table 1)
# --------------------------------------------------------------------------------------------


def _check_sigma_data(sigma_data: float) -> float:
    return check_real("sigma_data", sigma_data, lo=0.0, lo_open=True)


def c_skip(sigma: Array | float, sigma_data: float = 0.5) -> Array:
    """Karras et al. (2022), Table 1 (EDM): c_skip(σ) = σ_data² / (σ² + σ_data²)."""
    sd = _check_sigma_data(sigma_data)
    _, sigma = _as_sigma(sigma)
    return (sd * sd) / (sigma * sigma + sd * sd)


def c_out(sigma: Array | float, sigma_data: float = 0.5) -> Array:
    """Karras et al. (2022), Table 1 (EDM): c_out(σ) = σ σ_data / √(σ² + σ_data²)."""
    sd = _check_sigma_data(sigma_data)
    xp, sigma = _as_sigma(sigma)
    return sigma * sd / xp.sqrt(sigma * sigma + sd * sd)


def c_in(sigma: Array | float, sigma_data: float = 0.5) -> Array:
    """Karras et al. (2022), Table 1 (EDM): c_in(σ) = 1 / √(σ² + σ_data²)."""
    sd = _check_sigma_data(sigma_data)
    xp, sigma = _as_sigma(sigma)
    return 1.0 / xp.sqrt(sigma * sigma + sd * sd)


def c_noise(sigma: Array | float) -> Array:
    """Karras et al. (2022), Table 1 (EDM): c_noise(σ) = ¼ ln σ (σ > 0)."""
    xp, sigma = _as_sigma(sigma, positive=True, why="c_noise = ¼ ln σ is -inf at σ = 0")
    return xp.log(sigma) * 0.25


def preconditioning(
    sigma: Array | float,
    kind: str = "edm",
    *,
    sigma_data: float = 0.5,
    beta_d: float = VP_BETA_D,
    beta_min: float = VP_BETA_MIN,
    M: int = VP_M,
) -> tuple[Array, Array, Array, Array]:
    """(c_skip, c_out, c_in, c_noise) of one column of Karras et al. (2022), Table 1.

    Parameters
    ----------
    sigma : array or float
        Noise levels σ >= 0 (σ > 0 where c_noise needs a log: "edm" and "ve").
    kind : {"edm", "vp", "ve"}
        ``"edm"``: σ_d²/(σ²+σ_d²), σσ_d/√(σ²+σ_d²), 1/√(σ²+σ_d²), ¼ ln σ.
        ``"vp"``: 1, -σ, 1/√(σ²+1), (M-1) σ⁻¹(σ) with σ⁻¹ from :func:`vp_sigma_inv`.
        ``"ve"``: 1, σ, 1, ln(½ σ).
    sigma_data : float
        σ_data of the "edm" column (0.5 in the paper).
    beta_d, beta_min, M : float, float, int
        Constants of the "vp" column (19.9, 0.1, 1000).

    Returns
    -------
    c_skip, c_out, c_in, c_noise : arrays shaped like sigma.
    """
    kind = check_choice("kind", kind, PRECONDITIONINGS, "preconditioning")
    if kind == "edm":
        return (
            c_skip(sigma, sigma_data),
            c_out(sigma, sigma_data),
            c_in(sigma, sigma_data),
            c_noise(sigma),
        )
    if kind == "vp":
        M = check_int("M", M, minimum=1)
        xp, s = _as_sigma(sigma)
        return (
            xp.ones_like(s),
            -s,
            1.0 / xp.sqrt(s * s + 1.0),
            vp_sigma_inv(s, beta_d, beta_min) * float(M - 1),
        )
    xp, s = _as_sigma(sigma, positive=True, why="the VE c_noise = ln(σ/2) is -inf at σ = 0")
    return xp.ones_like(s), s, xp.ones_like(s), xp.log(s * 0.5)


@dataclass(frozen=True)
class EDMDenoiser:
    """D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)) (Karras et al. 2022, Eq. 7).

    ``raw_fn(x_in, c_noise)`` is the raw network F; ``c_noise`` has the shape of σ.
    """

    raw_fn: Callable[[Array, Array], Array]
    sigma_data: float = 0.5
    kind: str = "edm"

    def __post_init__(self) -> None:
        if not callable(self.raw_fn):
            fail("raw_fn", self.raw_fn, "expected a callable raw_fn(x_in, c_noise)")
        object.__setattr__(self, "sigma_data", _check_sigma_data(self.sigma_data))
        check_choice("kind", self.kind, PRECONDITIONINGS, "preconditioning")

    def __call__(self, x: Array, sigma: Array | float) -> Array:
        """The denoised estimate D(x; σ), shaped like x (σ of shape (B,) or 0-d)."""
        xp, sigma = _as_sigma(
            sigma,
            like=x,
            positive=self.kind != "vp",
            why="D is never evaluated at σ = 0, where c_noise is -inf; D(x; 0) = x",
        )
        cs, co, ci, cn = preconditioning(sigma, self.kind, sigma_data=self.sigma_data)
        F = self.raw_fn(append_dims(ci, x.ndim) * x, cn)
        if tuple(F.shape) != tuple(x.shape):
            raise RefdiffShapeError(
                f"raw_fn returned shape {tuple(F.shape)} for x of shape {tuple(x.shape)}; "
                "they must match"
            )
        return append_dims(cs, x.ndim) * x + append_dims(co, x.ndim) * F


def denoiser_from_raw(
    raw_fn: Callable[[Array, Array], Array], sigma_data: float = 0.5, kind: str = "edm"
) -> EDMDenoiser:
    """The preconditioned denoiser D(x; σ) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, Eq. 7)."""
    return EDMDenoiser(raw_fn, sigma_data=sigma_data, kind=kind)


def edm_loss_weight(sigma: Array | float, sigma_data: float = 0.5) -> Array:
    """Karras et al. (2022), Table 1: λ(σ) = (σ² + σ_data²) / (σ σ_data)² = 1 / c_out(σ)² (σ > 0)."""
    sd = _check_sigma_data(sigma_data)
    _, sigma = _as_sigma(sigma, positive=True, why="λ(σ) = 1/c_out(σ)² is +inf at σ = 0")
    return (sigma * sigma + sd * sd) / ((sigma * sd) * (sigma * sd))


def edm_sigma_from_normal(z: Array, P_mean: float = -1.2, P_std: float = 1.2) -> Array:
    """Karras et al. (2022), Table 1 training σ: ln σ ~ N(P_mean, P_std²), i.e. σ = exp(P_mean + P_std z) for z ~ N(0, 1)."""
    pm = check_real("P_mean", P_mean)
    ps = check_real("P_std", P_std, lo=0.0)
    if not is_array_api_obj(z):
        fail("z", z, "expected an array of standard-normal draws")
    xp = array_namespace(z)
    if not xp.isdtype(z.dtype, "real floating"):
        fail("z", z, f"expected a real floating-point array, got dtype {z.dtype}")
    return xp.exp(z * ps + pm)


# --------------------------------------------------------------------------------------------
# σ ↔ ᾱ (Karras et al. 2022, Eq. 7 / App. C.3: x_VE = x_VP / √ᾱ with σ = √((1-ᾱ)/ᾱ))
# --------------------------------------------------------------------------------------------


def sigma_from_alpha_bar(alpha_bar: Array | float) -> Array:
    """σ = √((1 - ᾱ)/ᾱ) for ᾱ ∈ [0, 1] (Karras et al. 2022, App. C.3); σ = +∞ at ᾱ = 0."""
    xp, ab = _as_sigma(alpha_bar, name="alpha_bar")
    if not bool(xp.all(ab <= 1.0)):
        fail("alpha_bar", ab, "expected values in [0, 1]")
    pos = ab > 0
    safe = xp.where(pos, ab, xp.ones_like(ab))
    return xp.where(
        pos,
        xp.sqrt((1.0 - safe) / safe),
        xp.full(ab.shape, math.inf, dtype=ab.dtype, device=device_of(ab)),
    )


def sigma_from_log_alpha_bar(log_alpha_bar: Array | float) -> Array:
    """σ = √(expm1(-log ᾱ)) for log ᾱ ≤ 0 (accurate where ᾱ is near 1); +∞ at log ᾱ = -∞."""
    xp, la = as_float_array(log_alpha_bar, "log_alpha_bar")
    if not bool(xp.all(la <= 0.0)):
        fail("log_alpha_bar", la, "expected values <= 0 (log of ᾱ ∈ (0, 1]); NaN is not allowed")
    fin = la > -math.inf
    safe = xp.where(fin, la, xp.zeros_like(la))
    return xp.where(
        fin,
        xp.sqrt(xp.expm1(-safe)),
        xp.full(la.shape, math.inf, dtype=la.dtype, device=device_of(la)),
    )


def alpha_bar_from_sigma(sigma: Array | float) -> Array:
    """ᾱ = 1 / (1 + σ²) for σ ∈ [0, ∞] (inverse of :func:`sigma_from_alpha_bar`); 0 at σ = ∞."""
    xp, s = _as_sigma(sigma, allow_inf=True)
    fin = s < math.inf
    safe = xp.where(fin, s, xp.zeros_like(s))
    return xp.where(fin, 1.0 / (1.0 + safe * safe), xp.zeros_like(s))


def scale_model_input(x: Array, sigma: Array | float) -> Array:
    """x / √(σ² + 1): the VE-space sample rescaled to the VP input √ᾱ x (k-diffusion/diffusers convention)."""
    xp, s = _as_sigma(sigma, like=x, allow_inf=True)
    fin = s < math.inf
    safe = xp.where(fin, s, xp.zeros_like(s))
    scale = xp.where(fin, 1.0 / xp.sqrt(safe * safe + 1.0), xp.zeros_like(s))
    return append_dims(scale, x.ndim) * x
