"""KL divergences, the discretized Gaussian decoder likelihood and the variational bound in bits/dim.

Conventions by name: the normal CDF of the decoder is ``cdf="tanh"`` (improved-diffusion's
tanh approximation, the default so its numbers reproduce) or ``cdf="erf"`` (the exact CDF,
evaluated through erfc in the tails); data live in [-1, 1] with 2**num_bits levels, so a bin has
half-width 1/(2**num_bits − 1); the edge bins extend to ±∞ (Ho et al. 2020, Eq. 13).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

from ._typing import Array

from ._errors import check_choice, check_int, check_real, fail
from ._xp import (
    array_namespace,
    as_timesteps,
    check_broadcast,
    check_same_shape,
    device_of,
    erf,
    erfc,
)
from .diffusion import p_mean_variance, q_mean_variance, q_posterior_mean_variance, q_sample
from .parameterizations import eps_from_x0

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = [
    "CDFS",
    "normal_kl",
    "approx_standard_normal_cdf",
    "standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "prior_bpd",
    "vb_terms_bpd",
    "calc_bpd_loop",
]

CDFS = ("tanh", "erf")
_LN2 = math.log(2.0)


def mean_flat(x: Array) -> Array:
    """Mean over every axis but the first (the batch axis)."""
    xp = array_namespace(x)
    return xp.mean(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
    """KL(N(μ1, e^{ℓ1}) ‖ N(μ2, e^{ℓ2})) = ½(expm1(ℓ1−ℓ2) − (ℓ1−ℓ2) + (μ1−μ2)² e^{−ℓ2}), elementwise.

    The standard closed form (e.g. Kingma & Welling 2014, App. B) arranged with expm1 so that
    KL(p, p) = 0 exactly and nearby distributions do not cancel catastrophically.
    """
    xp = array_namespace(mean1, logvar1, mean2, logvar2)
    check_broadcast(("mean1", mean1), ("logvar1", logvar1), ("mean2", mean2), ("logvar2", logvar2))
    d = logvar1 - logvar2
    return 0.5 * (_expm1_minus_x(d) + (mean1 - mean2) ** 2 * xp.exp(-logvar2))


def _expm1_minus_x(d: Any) -> Any:
    """e^d − 1 − d without cancellation: a Taylor series d²(1/2! + d/3! + …) for |d| < 1/2."""
    xp = array_namespace(d)
    small = xp.abs(d) < 0.5
    ds = xp.where(small, d, 0.0 * d)
    series = 0.0 * d + 1.0 / math.factorial(16)
    for k in range(15, 1, -1):
        series = series * ds + 1.0 / math.factorial(k)
    return xp.where(small, ds * ds * series, xp.expm1(d) - d)


def approx_standard_normal_cdf(x: Array) -> Array:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715x³))) (Page 1977; improved-diffusion's decoder)."""
    xp = array_namespace(x)
    return 0.5 * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def standard_normal_cdf(x: Array) -> Array:
    """Φ(x) = ½ erfc(−x/√2), exact and accurate in the lower tail."""
    return 0.5 * erfc(-x / math.sqrt(2.0))


def _bin_probability_erf(lo: Any, hi: Any) -> Any:
    """Φ(hi) − Φ(lo) for lo < hi, by erfc differences taken on the side of the smaller tail."""
    xp = array_namespace(lo, hi)
    s = 1.0 / math.sqrt(2.0)
    right = 0.5 * (erfc(lo * s) - erfc(hi * s))  # accurate when lo > 0
    left = 0.5 * (erfc(-hi * s) - erfc(-lo * s))  # accurate when hi < 0
    mid = 0.5 * (erf(hi * s) - erf(lo * s))
    return xp.where(lo > 0, right, xp.where(hi < 0, left, mid))


def discretized_gaussian_log_likelihood(
    x: Array,
    *,
    means: Array,
    log_scales: Array,
    cdf: str = "tanh",
    num_bits: int = 8,
    edge: float = 0.999,
    log_floor: float = 1e-12,
    out_of_range: str = "raise",
) -> Array:
    """log P(x) of data in [-1, 1] binned to 2**num_bits levels under N(means, e^{2 log_scales}) (Ho et al. 2020, Eq. 13).

    Parameters
    ----------
    x : array
        Data on the grid 2k/(2**num_bits − 1) − 1.
    cdf : {"tanh", "erf"}
        improved-diffusion's tanh approximation of Φ, or the exact CDF.
    edge : float
        x below −edge takes the whole left tail, above +edge the whole right tail.
    log_floor : float
        Probabilities are floored here before the log (improved-diffusion uses 1e-12; 0 disables).
    out_of_range : {"raise", "clip"}
        Data outside [-1, 1] (or NaN): "raise" (default; one read-back of max |x|) raises
        RefdiffValueError; "clip" scores it as the edge bin it lies beyond (improved-diffusion's
        behaviour, which never checks).
    """
    xp = array_namespace(x, means, log_scales)
    check_broadcast(("x", x), ("means", means), ("log_scales", log_scales))
    check_choice("cdf", cdf, CDFS, "normal CDF convention")
    bits = check_int("num_bits", num_bits, minimum=1)
    edge = check_real("edge", edge, lo=0.0, hi=1.0)
    floor = check_real("log_floor", log_floor, lo=0.0)
    check_choice("out_of_range", out_of_range, ("raise", "clip"), "out-of-range policy")
    if out_of_range == "raise":
        worst = float(xp.max(xp.abs(x))) if math.prod(x.shape) else 0.0
        if not worst <= 1.0:
            fail(
                "x",
                x,
                f"expected data in [-1, 1] (max |x| is {worst!r}); rescale the data to "
                "[-1, 1], or pass out_of_range='clip' to score it as the edge bins",
            )
    half_bin = 1.0 / (2**bits - 1)
    inv_stdv = xp.exp(-log_scales)
    centered = x - means
    plus_in = inv_stdv * (centered + half_bin)
    min_in = inv_stdv * (centered - half_bin)

    def safe_log(p: Any) -> Any:
        if floor > 0:
            return xp.log(xp.clip(p, floor, None))
        pos = p > 0
        return xp.where(pos, xp.log(xp.where(pos, p, xp.ones_like(p))), xp.full_like(p, -math.inf))

    if cdf == "tanh":
        cdf_plus = approx_standard_normal_cdf(plus_in)
        cdf_min = approx_standard_normal_cdf(min_in)
        log_cdf_plus = safe_log(cdf_plus)
        log_one_minus_cdf_min = safe_log(1.0 - cdf_min)
        log_delta = safe_log(cdf_plus - cdf_min)
    else:
        log_cdf_plus = safe_log(standard_normal_cdf(plus_in))
        log_one_minus_cdf_min = safe_log(standard_normal_cdf(-min_in))
        log_delta = safe_log(_bin_probability_erf(min_in, plus_in))
    return xp.where(x < -edge, log_cdf_plus, xp.where(x > edge, log_one_minus_cdf_min, log_delta))


def prior_bpd(schedule: Schedule, x0: Array) -> Array:
    """KL(q(x_T|x0) ‖ N(0, I)) per sample in bits/dim, at the last index T−1 (Ho et al. 2020, Eq. 5, L_T)."""
    xp = array_namespace(x0)
    t = xp.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=xp.int64, device=device_of(x0))
    mean, _, log_var = q_mean_variance(schedule, x0, t)
    zero = xp.zeros_like(mean)
    return mean_flat(normal_kl(mean, log_var, zero, zero)) / _LN2


def vb_terms_bpd(
    schedule: Schedule,
    model_output: Array,
    x0: Array,
    x_t: Array,
    t: Array,
    *,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = False,
    t0: str = "clipped",
    cdf: str = "tanh",
    denoised_fn: Callable | None = None,
    out_of_range: str = "raise",
) -> tuple[Array, Array]:
    """L_{t} in bits/dim per sample: KL(q(x_{t-1}|x_t,x0) ‖ p_θ(x_{t-1}|x_t)), and at t=0 the decoder NLL −log p(x0|x_1) (Ho et al. 2020, Eq. 5).

    Returns (bpd, pred_x0). ``out_of_range`` is passed to the decoder likelihood
    (:func:`discretized_gaussian_log_likelihood`: x0 outside [-1, 1] raises unless "clip").
    """
    xp = array_namespace(x0, x_t)
    tt = as_timesteps(t, schedule.num_timesteps, like=x_t)
    true_mean, _, true_log_var = q_posterior_mean_variance(schedule, x0, x_t, tt, t0=t0)
    p = p_mean_variance(
        schedule,
        model_output,
        x_t,
        tt,
        mean_type=mean_type,
        var_type=var_type,
        clip_x0=clip_x0,
        denoised_fn=denoised_fn,
        t0=t0,
    )
    kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / _LN2
    nll = (
        -mean_flat(
            discretized_gaussian_log_likelihood(
                x0,
                means=p.mean,
                log_scales=0.5 * p.log_variance,
                cdf=cdf,
                out_of_range=out_of_range,
            )
        )
        / _LN2
    )
    return xp.where(tt == 0, nll, kl), p.pred_x0


def calc_bpd_loop(
    schedule: Schedule,
    model: Callable,
    x0: Array,
    *,
    noise: Array,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = True,
    t0: str = "clipped",
    cdf: str = "tanh",
    map_timesteps: bool = True,
    progress: Callable | None = None,
) -> Array:
    """The full variational bound in bits/dim: Σ_t L_t + L_T over every timestep (Ho et al. 2020, Eq. 5; improved-diffusion's calc_bpd_loop).

    Parameters
    ----------
    model : callable
        ``model(x_t, timesteps) -> output``; with ``map_timesteps`` the model sees the
        original-schedule indices ``schedule.timestep_map[t]`` (respaced schedules).
    noise : array or callable
        The forward noise: an array of shape (T,) + x0.shape (noise[t] is used at step t), or a
        callable ``noise(t) -> array`` of x0's shape.

    Returns
    -------
    dict
        ``total_bpd`` (B,), ``prior_bpd`` (B,), ``vb`` (B, T), ``xstart_mse`` (B, T), ``mse`` (B, T).
    """
    xp = array_namespace(x0)
    T = schedule.num_timesteps
    if not callable(noise):
        if tuple(noise.shape) != (T,) + tuple(x0.shape):
            fail(
                "noise",
                noise,
                f"expected shape {(T,) + tuple(x0.shape)} (one draw per timestep) "
                "or a callable noise(t)",
            )
    b = x0.shape[0]
    tmap = schedule.timestep_map
    vb, xstart_mse, mse = [], [], []
    for i in range(T - 1, -1, -1):
        eps = noise(i) if callable(noise) else noise[i, ...]
        check_same_shape("noise(t)", eps, "x0", x0)
        t = xp.full((b,), i, dtype=xp.int64, device=device_of(x0))
        x_t = q_sample(schedule, x0, t, noise=eps)
        t_model = xp.take(tmap, t, axis=0) if map_timesteps else t
        out = model(x_t, t_model)
        term, pred_x0 = vb_terms_bpd(
            schedule,
            out,
            x0,
            x_t,
            t,
            mean_type=mean_type,
            var_type=var_type,
            clip_x0=clip_x0,
            t0=t0,
            cdf=cdf,
        )
        vb.append(term)
        xstart_mse.append(mean_flat((pred_x0 - x0) ** 2))
        mse.append(mean_flat((eps_from_x0(schedule, x_t, t, pred_x0) - eps) ** 2))
        if progress is not None:
            progress(T - i, T)
    vb = xp.stack(vb[::-1], axis=1)
    prior = prior_bpd(schedule, x0)
    return {
        "total_bpd": xp.sum(vb, axis=1) + prior,
        "prior_bpd": prior,
        "vb": vb,
        "xstart_mse": xp.stack(xstart_mse[::-1], axis=1),
        "mse": xp.stack(mse[::-1], axis=1),
    }
