"""Gaussian algebra of the discrete diffusion: q(x_t|x_0), q(x_{t-1}|x_t,x_0) and p_θ(x_{t-1}|x_t).

Index convention: t = 0..T-1 with index 0 = one diffusion step (improved-diffusion). The t=0
posterior variance is 0; its logarithm follows a named convention ``t0``:

* ``"clipped"`` (improved-diffusion, default): log β̃_1 stands in at t=0, and the fixed-large
  variance uses β̃_1 at t=0 ("to get a better decoder log likelihood");
* ``"clamped"`` (diffusers, lucidrains): log max(β̃_t, 1e-20), and the fixed-large variance is β_t.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple
from collections.abc import Callable

from ._errors import RefdiffShapeError, check_choice, check_real
from ._typing import Array
from ._xp import append_dims, array_namespace, as_timesteps, check_same_shape
from .parameterizations import (
    OUTPUT_TYPES,
    coefficient,
    prediction_type,
    eps_from_x0,
    mu_from_x0,
    x0_from_output,
)

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = [
    "MEAN_TYPES",
    "VAR_TYPES",
    "T0_CONVENTIONS",
    "PMeanVar",
    "q_mean_variance",
    "q_sample",
    "q_posterior_mean_variance",
    "learned_range_log_variance",
    "fixed_variance",
    "p_mean_variance",
    "dynamic_threshold",
    "split_variance_output",
]

MEAN_TYPES = OUTPUT_TYPES
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
T0_CONVENTIONS = ("clipped", "clamped")


class PMeanVar(NamedTuple):
    """The model's reverse-step Gaussian p_θ(x_{t-1}|x_t) and its implied predictions."""

    mean: Array
    variance: Array
    log_variance: Array
    pred_x0: Array
    pred_eps: Array


def q_mean_variance(schedule: Schedule, x0: Array, t: Array | int) -> tuple[Array, Array, Array]:
    """Mean √ᾱ_t·x0, variance 1 − ᾱ_t and log-variance of q(x_t|x_0) (Ho et al. 2020, Eq. 4)."""
    xp = array_namespace(x0)
    mean = coefficient(schedule, "sqrt_alphas_cumprod", t, x0) * x0
    shape = tuple(mean.shape)
    var = xp.broadcast_to(coefficient(schedule, "one_minus_alphas_cumprod", t, x0), shape)
    log_var = xp.broadcast_to(coefficient(schedule, "log_one_minus_alphas_cumprod", t, x0), shape)
    return mean, var, log_var


def q_sample(
    schedule: Schedule,
    x0: Array,
    t: Array | int,
    *,
    noise: Array,
    coefficients: tuple[Array | float, Array | float] | None = None,
) -> Array:
    """x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε with explicit noise ε (Ho et al. 2020, Eq. 4).

    ``coefficients`` = (√ᾱ_t, √(1 − ᾱ_t)) as host floats (a loop's step plan) skips the table
    look-ups at t.
    """
    check_same_shape("x0", x0, "noise", noise)
    if coefficients is None:
        coefficients = (
            coefficient(schedule, "sqrt_alphas_cumprod", t, x0),
            coefficient(schedule, "sqrt_one_minus_alphas_cumprod", t, x0),
        )
    a, s = coefficients
    return a * x0 + s * noise


def _posterior_log_variance_table(t0: str) -> str:
    check_choice("t0", t0, T0_CONVENTIONS, "t=0 convention")
    return "posterior_log_variance_clipped" if t0 == "clipped" else "posterior_log_variance_clamped"


def q_posterior_mean_variance(
    schedule: Schedule, x0: Array, x_t: Array, t: Array | int, *, t0: str = "clipped"
) -> tuple[Array, Array, Array]:
    """Mean μ̃_t, variance β̃_t and log-variance of q(x_{t-1}|x_t, x0) (Ho et al. 2020, Eqs. 6–7)."""
    xp = array_namespace(x0, x_t)
    check_same_shape("x0", x0, "x_t", x_t)
    mean = mu_from_x0(schedule, x_t, t, x0)
    shape = tuple(mean.shape)
    var = xp.broadcast_to(coefficient(schedule, "posterior_variance", t, x_t), shape)
    log_var = xp.broadcast_to(
        coefficient(schedule, _posterior_log_variance_table(t0), t, x_t), shape
    )
    return mean, var, log_var


def learned_range_log_variance(
    schedule: Schedule, t: Array | int, v: Array, *, t0: str = "clipped"
) -> Array:
    """log Σ_θ = f·log β_t + (1 − f)·log β̃_t with f = (v + 1)/2 (Nichol & Dhariwal 2021, Eq. 15)."""
    xp = array_namespace(v)
    min_log = coefficient(schedule, _posterior_log_variance_table(t0), t, v)
    max_log = xp.log(coefficient(schedule, "betas", t, v))
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def fixed_variance(
    schedule: Schedule, t: Array | int, x: Array, *, var_type: str, t0: str = "clipped"
) -> tuple[Array, Array]:
    """(variance, log-variance) of the fixed choices σ_t² = β̃_t ("fixed_small") or β_t ("fixed_large") (Ho et al. 2020, §3.2)."""
    xp = array_namespace(x)
    check_choice("var_type", var_type, ("fixed_small", "fixed_large"), "fixed variance type")
    table = _posterior_log_variance_table(t0)
    if var_type == "fixed_small":
        var = coefficient(schedule, "posterior_variance", t, x)
        log_var = coefficient(schedule, table, t, x)
    else:
        var = coefficient(schedule, "betas", t, x)
        log_var = xp.log(var)
        if t0 == "clipped" and schedule.num_timesteps > 1:
            # improved-diffusion: β̃_1 replaces β_0 at t=0 in the fixed-large variance.
            tt = as_timesteps(t, schedule.num_timesteps, like=x)
            is0 = append_dims(tt == 0, x.ndim)
            t1 = xp.where(tt == 0, xp.ones_like(tt), tt)
            var = xp.where(is0, coefficient(schedule, "posterior_variance", t1, x), var)
            log_var = xp.where(is0, coefficient(schedule, table, tt, x), log_var)
    shape = tuple(x.shape)
    return xp.broadcast_to(var, shape), xp.broadcast_to(log_var, shape)


def split_variance_output(model_output: Array, x_t: Array) -> tuple[Array, Array]:
    """Split a learned-variance output (B, 2C, ...) into the mean part and the variance part (channel axis 1)."""
    c = x_t.shape[1] if x_t.ndim > 1 else None
    if (
        c is None
        or model_output.ndim != x_t.ndim
        or model_output.shape[1] != 2 * c
        or tuple(model_output.shape[2:]) != tuple(x_t.shape[2:])
        or model_output.shape[0] != x_t.shape[0]
    ):
        raise RefdiffShapeError(
            f"model_output has shape {tuple(model_output.shape)} but a learned variance needs the "
            f"extra channels: expected {(x_t.shape[0], 2 * (c or 0)) + tuple(x_t.shape[2:])} for "
            f"x_t of shape {tuple(x_t.shape)} (mean channels first, variance channels second)"
        )
    return model_output[:, :c, ...], model_output[:, c:, ...]


def dynamic_threshold(x0: Array, *, ratio: float = 0.995, max_value: float | None = None) -> Array:
    """Per-sample quantile clipping: s = max(quantile(|x0|, ratio), 1), x0 ← clip(x0, −s, s)/s (Saharia et al. 2022, §2.3).

    ``max_value`` caps s from above (diffusers' ``sample_max_value``, whose default 1.0 turns this
    into plain clipping); None (default) leaves s uncapped as in Imagen. The quantile uses linear
    interpolation between order statistics (NumPy's default method).
    """
    xp = array_namespace(x0)
    ratio = check_real("ratio", ratio, lo=0.0, hi=1.0)
    if max_value is not None:
        max_value = check_real("max_value", max_value, lo=1.0)
    b = x0.shape[0]
    flat = xp.sort(xp.abs(xp.reshape(x0, (b, -1))), axis=1)
    n = flat.shape[1]
    pos = ratio * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    w = pos - lo
    q = flat[:, lo] * (1.0 - w) + flat[:, hi] * w
    s = xp.clip(q, 1.0, max_value)
    s = xp.reshape(s, (b,) + (1,) * (x0.ndim - 1))
    return xp.clip(x0, -s, s) / s


def p_mean_variance(
    schedule: Schedule,
    model_output: Array,
    x_t: Array,
    t: Array | int,
    *,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = False,
    denoised_fn: Callable[[Array], Array] | None = None,
    t0: str = "clipped",
) -> PMeanVar:
    """p_θ(x_{t-1}|x_t) from a model output, for every mean type × variance type (Ho et al. 2020, Eqs. 1, 11; Nichol & Dhariwal 2021, §3.1).

    Parameters
    ----------
    mean_type : {"eps", "x0", "v", "score", "mean"}
        What the (mean part of the) output predicts: the noise ε, the data x0, the velocity v,
        the score, or the posterior mean μ (improved-diffusion's PREVIOUS_X); the upstream
        aliases of :data:`refdiff.parameterizations.PREDICTION_ALIASES` are accepted.
    var_type : {"fixed_small", "fixed_large", "learned", "learned_range"}
        σ_t² = β̃_t, σ_t² = β_t, log σ_t² from the output, or its interpolation (Eq. 15 of
        Nichol & Dhariwal); learned types need an output with twice the channels of x_t.
    clip_x0 : bool
        Clip the predicted x0 to [-1, 1] before forming the mean (after ``denoised_fn``).
    denoised_fn : callable, optional
        Applied to the predicted x0 first (e.g. ``dynamic_threshold``).
    t0 : {"clipped", "clamped"}
        The t=0 variance convention (module docstring).

    Returns
    -------
    PMeanVar
        mean, variance, log_variance (full shape), pred_x0 (after processing) and pred_eps.
        For mean_type "mean" the mean is the output itself (clipping changes only pred_x0). pred_eps
        is the output itself for an unprocessed ε-model and ε implied by pred_x0 otherwise.
    """
    xp = array_namespace(model_output, x_t)
    mean_type = prediction_type(mean_type, "mean_type")
    check_choice("var_type", var_type, VAR_TYPES, "variance type")
    check_choice("t0", t0, T0_CONVENTIONS, "t=0 convention")
    if var_type in ("learned", "learned_range"):
        out, var_out = split_variance_output(model_output, x_t)
        if var_type == "learned":
            log_var = var_out
        else:
            log_var = learned_range_log_variance(schedule, t, var_out, t0=t0)
        var = xp.exp(log_var)
    else:
        check_same_shape("model_output", model_output, "x_t", x_t)
        out = model_output
        var, log_var = fixed_variance(schedule, t, x_t, var_type=var_type, t0=t0)

    pred_x0 = x0_from_output(schedule, x_t, t, out, mean_type)
    processed = denoised_fn is not None or clip_x0
    if denoised_fn is not None:
        pred_x0 = denoised_fn(pred_x0)
    if clip_x0:
        pred_x0 = xp.clip(pred_x0, -1.0, 1.0)
    mean = out if mean_type == "mean" else mu_from_x0(schedule, x_t, t, pred_x0)
    if mean_type == "eps" and not processed:
        pred_eps = out
    else:
        pred_eps = eps_from_x0(schedule, x_t, t, pred_x0)
    shape = tuple(x_t.shape)
    return PMeanVar(
        mean, xp.broadcast_to(var, shape), xp.broadcast_to(log_var, shape), pred_x0, pred_eps
    )
