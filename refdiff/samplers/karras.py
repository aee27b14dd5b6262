"""Karras/EDM samplers on the variance-exploding scale x = x0 + σ z: Euler, Heun, churn, ancestral.

Karras, Aittala, Aila & Laine (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models" (arXiv:2206.00364v2): the probability-flow ODE dx/dσ = (x - D(x; σ))/σ (Eqs. 1 and 3
with σ(t) = t, s(t) = 1), Algorithm 1 (deterministic Heun), Algorithm 2 (stochastic "churn" sampler
with S_churn, S_tmin, S_tmax, S_noise). The Euler-ancestral sampler is k-diffusion's
``sample_euler_ancestral`` (Crowson 2022): a DDIM step with η (Song et al. 2021a, Eq. 16)
written on the σ scale.

Family ``"karras"``: ``fn(denoiser, x, *, sigmas, noise=None, **options)``. ``denoiser(x, σ)``
returns D(x; σ) ≈ E[x0 | x] shaped like x, with σ an array of shape (B,) in x's namespace,
dtype and device; a denoiser may also offer ``denoiser.at_sigma(x, σ)`` with σ one host float
for the whole batch, which must return the same D (the loops call it where present: per-sample
broadcasts cost a memory-bound loop up to twice a scalar product;
:func:`refdiff.samplers.adapters.karras_denoiser`'s bridge has it). ``sigmas`` is a strictly
decreasing grid (a sequence or 1-D array; its entries are read once to host floats, so every
step coefficient is formed in float64); the last entry may be 0. ``noise[i]`` (or ``noise(i)``) is the standard-normal draw of step i; a step that adds
no noise draws nothing, so the draw index is always the step index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .._errors import check_real, fail
from .._typing import Array, Noise
from . import register_sampler, sampler_function_name
from ._common import (
    StepInfo,
    batch_full,
    check_decreasing,
    check_eta,
    check_output,
    draw_noise,
    step_reporter,
)

__all__ = [
    "to_d",
    "karras_euler_step",
    "karras_heun_step",
    "churn_gamma",
    "churn_step",
    "ancestral_sigmas",
    "euler_ancestral_step",
    "ancestral_update",
    "sample_karras_euler",
    "sample_karras_heun",
    "sample_karras_euler_churn",
    "sample_karras_heun_churn",
    "sample_karras_euler_ancestral",
    "EDM_CHURN_DEFAULTS",
]

#: The stochastic-sampler settings of the registered ``*_churn`` samplers: S_churn = 40 (Karras
#: et al. 2022, Table 5, ImageNet-64) with k-diffusion's defaults for the rest (S_tmin = 0,
#: S_tmax = ∞, S_noise = 1), so the churn is active at every step.
EDM_CHURN_DEFAULTS = {"S_churn": 40.0, "S_tmin": 0.0, "S_tmax": math.inf, "S_noise": 1.0}


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _sigma_list(sigmas: Sequence[float] | Array) -> list[float]:
    """The σ grid as host floats: strictly decreasing, finite, last entry >= 0."""
    try:
        values = [float(s) for s in sigmas]
    except TypeError:
        fail("sigmas", sigmas, "expected a 1-D sequence or array of noise levels")
    check_decreasing("sigmas", values)
    if values[-1] < 0.0:
        fail("sigmas", values, "noise levels must be >= 0 (only the last entry may be 0)")
    return values


def _check_x(x: Array) -> None:
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")


def _denoise(denoiser: Callable[[Array, Array], Array], x: Array, sigma: float) -> Array:
    """D(x; σ) at one σ for the whole batch, shape-checked: ``denoiser.at_sigma(x, σ)`` where the
    denoiser offers it, else ``denoiser(x, σ)`` with σ broadcast to shape (B,) in x's namespace."""
    at_sigma = getattr(denoiser, "at_sigma", None)
    out = at_sigma(x, sigma) if at_sigma is not None else denoiser(x, batch_full(x, sigma))
    return check_output(out, x, name="denoiser output")


# --------------------------------------------------------------------------------------------
# Step functions
# --------------------------------------------------------------------------------------------


def to_d(x: Array, sigma: float, denoised: Array) -> Array:
    """The ODE derivative dx/dσ = (x - D(x; σ))/σ (Karras et al. 2022, Eqs. 1 and 3 with σ(t) = t)."""
    return (x - denoised) / sigma


def karras_euler_step(x: Array, sigma: float, sigma_next: float, denoised: Array) -> Array:
    """Euler step x' = x + (σ' - σ)(x - D)/σ = D + (σ'/σ)(x - D) (Karras et al. 2022, Alg. 1 line 5).

    The second form is the same number with σ' = 0 giving D exactly (the final denoising step).
    """
    return denoised + (sigma_next / sigma) * (x - denoised)


def karras_heun_step(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    sigma: float,
    sigma_next: float,
    *,
    denoised: Array | None = None,
) -> tuple[Array, int]:
    """Heun step (Karras et al. 2022, Alg. 1 lines 5-8): Euler, then the trapezoidal correction if σ' > 0.

    Returns (x_next, number of denoiser evaluations made).
    """
    n_eval = 0
    if denoised is None:
        denoised = _denoise(denoiser, x, sigma)
        n_eval += 1
    x_euler = karras_euler_step(x, sigma, sigma_next, denoised)
    if sigma_next == 0.0:
        return x_euler, n_eval
    d = to_d(x, sigma, denoised)
    d_next = to_d(x_euler, sigma_next, _denoise(denoiser, x_euler, sigma_next))
    return x + (sigma_next - sigma) * 0.5 * (d + d_next), n_eval + 1


def churn_gamma(
    sigma: float, num_steps: int, *, S_churn: float, S_tmin: float, S_tmax: float
) -> float:
    """γ_i = min(S_churn/N, √2 - 1) if S_tmin ≤ σ_i ≤ S_tmax, else 0 (Karras et al. 2022, Alg. 2 line 4)."""
    if S_churn == 0.0 or not (S_tmin <= sigma <= S_tmax):
        return 0.0
    return min(S_churn / num_steps, math.sqrt(2.0) - 1.0)


def churn_step(
    x: Array, sigma: float, gamma: float, *, noise: Array, S_noise: float = 1.0
) -> tuple[Array, float]:
    """x̂ = x + √(σ̂² - σ²) S_noise ε with σ̂ = σ(1 + γ) (Karras et al. 2022, Alg. 2 lines 5-6).

    √(σ̂² - σ²) is formed as σ √(γ(2 + γ)) (no cancellation). Returns (x̂, σ̂).
    """
    sigma_hat = sigma * (1.0 + gamma)
    return x + (sigma * math.sqrt(gamma * (2.0 + gamma)) * S_noise) * noise, sigma_hat


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) with σ_up = min(σ', η σ' √(σ² - σ'²)/σ), σ_down = √(σ'² - σ_up²) (k-diffusion get_ancestral_step).

    σ_up² is the DDPM posterior variance on the σ scale (Ho et al. 2020, Eq. 7) times η²
    (DDIM, Song et al. 2021a, Eq. 16); σ_down² + σ_up² = σ'². Differences of squares are formed
    as products of sums and differences. At η = 1, σ_down = σ'²/σ.
    """
    eta = check_eta(eta)
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    up = min(
        sigma_next,
        eta * sigma_next * math.sqrt((sigma - sigma_next) * (sigma + sigma_next)) / sigma,
    )
    down = math.sqrt((sigma_next - up) * (sigma_next + up))
    return down, up


def euler_ancestral_step(
    x: Array,
    sigma: float,
    sigma_next: float,
    denoised: Array,
    *,
    eta: float = 1.0,
    noise: Array | None = None,
    S_noise: float = 1.0,
) -> Array:
    """Euler step to σ_down, then add σ_up S_noise ε (k-diffusion sample_euler_ancestral; DDIM-η on the σ scale).

    No noise is added (and ``noise`` may be None) when σ_up = 0, e.g. at σ' = 0 or η = 0.
    """
    down, up = ancestral_sigmas(sigma, sigma_next, eta)
    return ancestral_update(x, sigma, down, up, denoised, noise=noise, S_noise=S_noise)


def ancestral_update(
    x: Array,
    sigma: float,
    sigma_down: float,
    sigma_up: float,
    denoised: Array,
    *,
    noise: Array | None = None,
    S_noise: float = 1.0,
) -> Array:
    """x' = D + (σ_down/σ)(x - D) + σ_up S_noise ε: :func:`euler_ancestral_step` given (σ_down, σ_up) of :func:`ancestral_sigmas`."""
    x = karras_euler_step(x, sigma, sigma_down, denoised)
    if sigma_up > 0.0:
        if noise is None:
            fail("noise", noise, "this step adds noise (σ_up > 0): pass a standard-normal draw")
        x = x + (sigma_up * S_noise) * noise
    return x


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------


def _check_churn(
    S_churn: float, S_tmin: float, S_tmax: float, S_noise: float
) -> tuple[float, float, float, float]:
    S_churn = check_real("S_churn", S_churn, lo=0.0)
    S_tmin = check_real("S_tmin", S_tmin, lo=0.0)
    try:
        tmax = float(S_tmax)
    except (TypeError, ValueError):
        fail("S_tmax", S_tmax, "expected a real number >= S_tmin (inf allowed)")
    if math.isnan(tmax) or tmax < S_tmin:
        fail("S_tmax", S_tmax, f"expected a value >= S_tmin = {S_tmin!r} (inf allowed)")
    S_noise = check_real("S_noise", S_noise, lo=0.0)
    return S_churn, S_tmin, tmax, S_noise


def _churn_plan(
    sig: list[float], S_churn: float, S_tmin: float, S_tmax: float
) -> list[tuple[float, float, float]]:
    """The step plan of Alg. 2 as host floats: (σ_i, σ_{i+1}, γ_i) per step."""
    n = len(sig) - 1
    return [
        (sig[i], sig[i + 1], churn_gamma(sig[i], n, S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax))
        for i in range(n)
    ]


def _karras_loop(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    sigmas: Sequence[float] | Array,
    noise: Noise,
    S_churn: float,
    S_tmin: float,
    S_tmax: float,
    S_noise: float,
    callback: Callable[[StepInfo], object] | None,
    progress: Callable[[int, int], object] | None,
    heun: bool,
) -> Array:
    _check_x(x)
    sig = _sigma_list(sigmas)
    S_churn, S_tmin, S_tmax, S_noise = _check_churn(S_churn, S_tmin, S_tmax, S_noise)
    plan = _churn_plan(sig, S_churn, S_tmin, S_tmax)
    report = step_reporter(callback, progress)
    n = len(plan)
    for i, (sigma, sigma_next, gamma) in enumerate(plan):
        if gamma > 0.0:
            x, sigma = churn_step(x, sigma, gamma, noise=draw_noise(noise, i, x), S_noise=S_noise)
        denoised = _denoise(denoiser, x, sigma)
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sigma))
        if heun:
            x, _ = karras_heun_step(denoiser, x, sigma, sigma_next, denoised=denoised)
        else:
            x = karras_euler_step(x, sigma, sigma_next, denoised)
    return x


_LOOP_DOC = """{summary}

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, sigma) -> D(x; σ)`` with ``sigma`` of shape (B,).
    x : array
        Starting sample at σ_0 = ``sigmas[0]`` (e.g. σ_max · standard normal), batch axis first.
    sigmas : sequence or 1-D array
        Strictly decreasing noise levels σ_0 > ... > σ_N >= 0 (N steps).
    noise : array or callable, optional
        Standard-normal draws, ``noise[i]`` used at step i when its churn γ_i > 0; needed only
        when ``S_churn > 0``.
    S_churn, S_tmin, S_tmax, S_noise : float
        Churn: γ_i = min(S_churn/N, √2 - 1) on steps with S_tmin ≤ σ_i ≤ S_tmax; the added noise
        is scaled by S_noise. Defaults here: {defaults}.
    callback : callable, optional
        ``callback(info)`` with a :class:`~refdiff.samplers.StepInfo` at each step: the state x̂
        the denoiser is evaluated at (after the churn), its D(x̂; σ̂) and σ = σ̂ (k-diffusion's
        ``callback``).
    progress : callable, optional
        ``progress(i + 1, N)`` after each step's report.

    Returns
    -------
    array
        The sample at σ_N.{notes}
    """


def _karras_sampler(
    name: str, *, heun: bool, churn: dict[str, float], summary: str, notes: str = ""
) -> Callable[..., Array]:
    """Register one Euler/Heun loop of the Karras family with its churn defaults (one pattern)."""

    def sampler(
        denoiser: Callable[[Array, Array], Array],
        x: Array,
        *,
        sigmas: Sequence[float] | Array,
        noise: Noise = None,
        S_churn: float = churn["S_churn"],
        S_tmin: float = churn["S_tmin"],
        S_tmax: float = churn["S_tmax"],
        S_noise: float = churn["S_noise"],
        callback: Callable[[StepInfo], object] | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> Array:
        return _karras_loop(
            denoiser,
            x,
            sigmas,
            noise,
            S_churn,
            S_tmin,
            S_tmax,
            S_noise,
            callback,
            progress,
            heun=heun,
        )

    sampler.__name__ = sampler.__qualname__ = sampler_function_name(name)
    sampler.__module__ = __name__
    defaults = ", ".join(f"{k} = {v!r}" for k, v in churn.items())
    sampler.__doc__ = _LOOP_DOC.format(summary=summary, defaults=defaults, notes=notes)
    stochastic = churn["S_churn"] > 0.0
    step = churn_step if stochastic else (karras_heun_step if heun else karras_euler_step)
    register_sampler(
        name,
        family="karras",
        stochastic=stochastic,
        order=None if stochastic else (2 if heun else 1),
        step=step,
    )(sampler)
    return sampler


_DETERMINISTIC = {"S_churn": 0.0, "S_tmin": 0.0, "S_tmax": math.inf, "S_noise": 1.0}
_HEUN_NOTE = """

    Notes
    -----
    The last step to σ_N = 0 is an Euler step (Alg. 1 line 7: the correction needs
    σ_{i+1} ≠ 0), so N steps cost 2N - 1 evaluations when σ_N = 0 and 2N otherwise."""

sample_karras_euler = _karras_sampler(
    "karras_euler",
    heun=False,
    churn=_DETERMINISTIC,
    summary="Euler steps on the probability-flow ODE in σ, with optional churn (Karras et al. "
    "2022, Alg. 2 with Euler steps).",
)
sample_karras_heun = _karras_sampler(
    "karras_heun",
    heun=True,
    churn=_DETERMINISTIC,
    notes=_HEUN_NOTE,
    summary="Heun's 2nd-order sampler (Karras et al. 2022, Alg. 1), with optional churn (Alg. 2).",
)
sample_karras_euler_churn = _karras_sampler(
    "karras_euler_churn",
    heun=False,
    churn=EDM_CHURN_DEFAULTS,
    summary="Stochastic Euler sampler (Karras et al. 2022, Alg. 2 with Euler steps), churn on by "
    "default (S_churn = 40).",
)
sample_karras_heun_churn = _karras_sampler(
    "karras_heun_churn",
    heun=True,
    churn=EDM_CHURN_DEFAULTS,
    notes=_HEUN_NOTE,
    summary="Stochastic Heun sampler (Karras et al. 2022, Alg. 2), churn on by default "
    "(S_churn = 40).",
)


def _ancestral_plan(sig: list[float], eta: float) -> list[tuple[float, float, float]]:
    """(σ_i, σ_down, σ_up) per step as host floats (k-diffusion get_ancestral_step)."""
    return [(sig[i], *ancestral_sigmas(sig[i], sig[i + 1], eta)) for i in range(len(sig) - 1)]


@register_sampler(
    "karras_euler_ancestral", family="karras", stochastic=True, step=euler_ancestral_step
)
def sample_karras_euler_ancestral(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Ancestral Euler sampler with η (k-diffusion sample_euler_ancestral; DDIM-η, Song et al. 2021a, Eq. 16, on the σ scale).

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_euler` (the reported state is x at σ_i).
    noise : array or callable
        ``noise[i]`` is drawn at step i whenever σ_up > 0 (never at a final σ_N = 0, nor when η = 0).
    eta : float
        η ≥ 0: 1 is the DDPM posterior variance (ancestral sampling), 0 the deterministic Euler
        sampler.
    S_noise : float
        Scale of the added noise (k-diffusion's ``s_noise``).

    Returns
    -------
    array
        The sample at σ_N.
    """
    _check_x(x)
    sig = _sigma_list(sigmas)
    eta = check_eta(eta)
    S_noise = check_real("S_noise", S_noise, lo=0.0)
    plan = _ancestral_plan(sig, eta)
    report = step_reporter(callback, progress)
    n = len(plan)
    for i, (sigma, down, up) in enumerate(plan):
        denoised = _denoise(denoiser, x, sigma)
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sigma))
        z = draw_noise(noise, i, x) if up > 0.0 else None
        x = ancestral_update(x, sigma, down, up, denoised, noise=z, S_noise=S_noise)
    return x


#: Deprecated name (one release) of :func:`sample_karras_euler_ancestral`.
sample_euler_ancestral = sample_karras_euler_ancestral
