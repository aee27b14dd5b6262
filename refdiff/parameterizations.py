"""Conversions between the network parameterizations: ε, x0, v, score and the posterior mean μ.

All functions take the schedule, the data-shaped arrays and integer timesteps t (shape (B,) or
scalar) in the schedule's index convention (0..T-1, index 0 = one diffusion step). Coefficients
come from the schedule's tables, gathered at t and broadcast over the non-batch axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._errors import RefdiffValueError, UnknownNameError, fail
from ._typing import Array
from ._xp import array_namespace, as_timesteps, check_same_shape, gather

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = [
    "coefficient",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "v_from_x0",
    "score_from_eps",
    "eps_from_score",
    "x0_from_mu",
    "mu_from_x0",
    "PREDICTION_TYPES",
    "PREDICTION_ALIASES",
    "OUTPUT_TYPES",
    "prediction_type",
    "x0_from_output",
    "eps_from_output",
    "x0_from_prediction",
    "eps_from_prediction",
    "CONTINUOUS_PREDICTION_TYPES",
    "LevelCoefficients",
    "level_coefficients",
    "x0_from_output_at",
    "x0_linear_coefficients",
    "eps_from_x0_at",
]

#: What a network can predict, refdiff's one vocabulary: the noise ε, the data x0, the velocity
#: v = α·ε − σ·x0 (Salimans & Ho 2022, §4), the score ∇ log p_t = −ε/σ, or the posterior mean μ̃
#: of the discrete reverse step (Ho et al. 2020, Eq. 7; improved-diffusion's PREVIOUS_X).
PREDICTION_TYPES = ("eps", "x0", "v", "score", "mean")

#: Upstream names accepted for the same predictions (documented aliases): DPM-Solver's
#: ``model_type`` ("noise", "x_start"), diffusers' ``prediction_type`` ("epsilon", "sample",
#: "v_prediction"), improved-diffusion's ModelMeanType ("start_x", "previous_x") and "mu".
PREDICTION_ALIASES = {
    "noise": "eps",
    "epsilon": "eps",
    "x_start": "x0",
    "start_x": "x0",
    "sample": "x0",
    "data": "x0",
    "v_prediction": "v",
    "velocity": "v",
    "mu": "mean",
    "previous_x": "mean",
    "flow_prediction": "flow",
}

#: The predictions the (α, σ) conversions accept: those of :data:`PREDICTION_TYPES` without μ, and
#: the flow-matching velocity u = ε − x0 (Lipman et al. 2023, §4.1 with σ_min = 0; Liu et al.
#: 2023, Eq. 1: dx/dt of x_t = (1 − t)·x0 + t·ε), named "flow" (diffusers' "flow_prediction")
#: because refdiff's "v" is Salimans & Ho's α·ε − σ·x0.
CONTINUOUS_PREDICTION_TYPES = ("eps", "x0", "v", "score", "flow")

#: The prediction types the discrete Gaussian algebra (:func:`x0_from_output`) accepts.
OUTPUT_TYPES = PREDICTION_TYPES


def prediction_type(
    value: str, name: str = "prediction_type", allowed: Sequence[str] = PREDICTION_TYPES
) -> str:
    """The canonical name of a prediction type (an upstream alias maps to it); raise for an unknown one.

    Examples
    --------
    >>> prediction_type("epsilon"), prediction_type("x_start"), prediction_type("v")
    ('eps', 'x0', 'v')
    """
    canonical = PREDICTION_ALIASES.get(value, value) if isinstance(value, str) else value
    if canonical not in allowed:
        aliases = ", ".join(repr(a) for a, c in PREDICTION_ALIASES.items() if c in allowed)
        raise UnknownNameError(
            f"{name}={value!r} is not a known prediction type; allowed: "
            f"{', '.join(map(repr, allowed))} (or an upstream alias: {aliases})"
        )
    return canonical


def check_table_namespace(schedule: Schedule, table: Array, x: Array) -> None:
    """Raise unless the schedule's ``table`` lives in x's array namespace (move it with ``Schedule.to``)."""
    try:
        array_namespace(x, table)
    except TypeError:
        fail(
            "schedule",
            schedule,
            f"its tables live in {type(table).__module__} but x is a "
            f"{type(x).__module__} array; move them once with schedule.to(xp, device=..., dtype=...)",
        )


def coefficient(schedule: Schedule, name: str, t: Array | int, x: Array) -> Array:
    """Schedule table ``name`` gathered at t and shaped to broadcast against x (improved-diffusion's _extract_into_tensor)."""
    table = getattr(schedule, name)
    check_table_namespace(schedule, table, x)
    t = as_timesteps(t, schedule.num_timesteps, like=x)
    return gather(table, t, x.ndim)


def _check_finite_snr(schedule: Schedule, t: Array | int, x: Array, what: str) -> None:
    if not schedule.zero_terminal_snr:
        return
    xp = array_namespace(x)
    t = as_timesteps(t, schedule.num_timesteps, like=x)
    if bool(xp.any(t == schedule.num_timesteps - 1)):
        raise RefdiffValueError(
            f"t={schedule.num_timesteps - 1} has zero SNR (alphas_cumprod = 0): {what} is undefined "
            "there; use a v- or x0-prediction model at the terminal step (Lin et al. 2023, §3.2)"
        )


def x0_from_eps(schedule: Schedule, x_t: Array, t: Array | int, eps: Array) -> Array:
    """x̂0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1)·ε (Ho et al. 2020, Eq. 4 solved for x0)."""
    check_same_shape("x_t", x_t, "eps", eps)
    _check_finite_snr(schedule, t, x_t, "x0 from eps")
    return (
        coefficient(schedule, "sqrt_recip_alphas_cumprod", t, x_t) * x_t
        - coefficient(schedule, "sqrt_recipm1_alphas_cumprod", t, x_t) * eps
    )


def eps_from_x0(schedule: Schedule, x_t: Array, t: Array | int, x0: Array) -> Array:
    """ε = (x_t − √ᾱ_t·x0)/√(1 − ᾱ_t) (Ho et al. 2020, Eq. 4 solved for ε)."""
    check_same_shape("x_t", x_t, "x0", x0)
    return (x_t - coefficient(schedule, "sqrt_alphas_cumprod", t, x_t) * x0) / coefficient(
        schedule, "sqrt_one_minus_alphas_cumprod", t, x_t
    )


def v_from_x0_eps(schedule: Schedule, x0: Array, t: Array | int, eps: Array) -> Array:
    """v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0 (Salimans & Ho 2022, §4)."""
    check_same_shape("x0", x0, "eps", eps)
    return (
        coefficient(schedule, "sqrt_alphas_cumprod", t, x0) * eps
        - coefficient(schedule, "sqrt_one_minus_alphas_cumprod", t, x0) * x0
    )


def x0_from_v(schedule: Schedule, x_t: Array, t: Array | int, v: Array) -> Array:
    """x0 = √ᾱ_t·x_t − √(1 − ᾱ_t)·v (Salimans & Ho 2022, §4)."""
    check_same_shape("x_t", x_t, "v", v)
    return (
        coefficient(schedule, "sqrt_alphas_cumprod", t, x_t) * x_t
        - coefficient(schedule, "sqrt_one_minus_alphas_cumprod", t, x_t) * v
    )


def eps_from_v(schedule: Schedule, x_t: Array, t: Array | int, v: Array) -> Array:
    """ε = √(1 − ᾱ_t)·x_t + √ᾱ_t·v (Salimans & Ho 2022, §4)."""
    check_same_shape("x_t", x_t, "v", v)
    return (
        coefficient(schedule, "sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
        + coefficient(schedule, "sqrt_alphas_cumprod", t, x_t) * v
    )


def v_from_x0(schedule: Schedule, x_t: Array, t: Array | int, x0: Array) -> Array:
    """v = (√ᾱ_t·x_t − x0)/√(1 − ᾱ_t) (Salimans & Ho 2022, §4, solved for v)."""
    check_same_shape("x_t", x_t, "x0", x0)
    return (coefficient(schedule, "sqrt_alphas_cumprod", t, x_t) * x_t - x0) / coefficient(
        schedule, "sqrt_one_minus_alphas_cumprod", t, x_t
    )


def score_from_eps(schedule: Schedule, t: Array | int, eps: Array) -> Array:
    """∇ log q(x_t) ≈ −ε/√(1 − ᾱ_t) (Song et al. 2021, §3.3; Vincent 2011)."""
    return -eps / coefficient(schedule, "sqrt_one_minus_alphas_cumprod", t, eps)


def eps_from_score(schedule: Schedule, t: Array | int, score: Array) -> Array:
    """ε = −√(1 − ᾱ_t)·score (Song et al. 2021, §3.3)."""
    return -coefficient(schedule, "sqrt_one_minus_alphas_cumprod", t, score) * score


def mu_from_x0(schedule: Schedule, x_t: Array, t: Array | int, x0: Array) -> Array:
    """μ̃_t(x_t, x0) = coef1·x0 + coef2·x_t (Ho et al. 2020, Eq. 7)."""
    check_same_shape("x_t", x_t, "x0", x0)
    return (
        coefficient(schedule, "posterior_mean_coef1", t, x_t) * x0
        + coefficient(schedule, "posterior_mean_coef2", t, x_t) * x_t
    )


def x0_from_mu(schedule: Schedule, x_t: Array, t: Array | int, mu: Array) -> Array:
    """x0 = (μ − coef2·x_t)/coef1, inverting Ho et al. 2020, Eq. 7 (improved-diffusion's μ-prediction)."""
    check_same_shape("x_t", x_t, "mu", mu)
    return (mu - coefficient(schedule, "posterior_mean_coef2", t, x_t) * x_t) / coefficient(
        schedule, "posterior_mean_coef1", t, x_t
    )


def x0_from_output(
    schedule: Schedule, x_t: Array, t: Array | int, out: Array, mean_type: str
) -> Array:
    """x̂0 implied by a network output of the given prediction type (ε, x0, v, score or μ)."""
    mean_type = prediction_type(mean_type, "mean_type")
    if mean_type == "eps":
        return x0_from_eps(schedule, x_t, t, out)
    if mean_type == "x0":
        check_same_shape("x_t", x_t, "x0", out)
        return out
    if mean_type == "v":
        return x0_from_v(schedule, x_t, t, out)
    if mean_type == "score":
        check_same_shape("x_t", x_t, "score", out)
        return x0_from_eps(schedule, x_t, t, eps_from_score(schedule, t, out))
    return x0_from_mu(schedule, x_t, t, out)


def eps_from_output(
    schedule: Schedule, x_t: Array, t: Array | int, out: Array, mean_type: str
) -> Array:
    """ε̂ implied by a network output of the given prediction type (ε, x0, v, score or μ)."""
    mean_type = prediction_type(mean_type, "mean_type")
    if mean_type == "eps":
        check_same_shape("x_t", x_t, "eps", out)
        return out
    if mean_type == "v":
        return eps_from_v(schedule, x_t, t, out)
    if mean_type == "score":
        check_same_shape("x_t", x_t, "score", out)
        return eps_from_score(schedule, t, out)
    return eps_from_x0(schedule, x_t, t, x0_from_output(schedule, x_t, t, out, mean_type))


# --------------------------------------------------------------------------------------------
# The same conversions on (α_t, σ_t) of x_t = α_t·x0 + σ_t·ε (continuous time, any SDE family)
# --------------------------------------------------------------------------------------------


def x0_from_prediction(
    out: Array, x: Array, alpha: Array | float, sigma: Array | float, prediction: str
) -> Array:
    """x̂0 from a prediction at x = α·x0 + σ·ε (Kingma et al. 2021, Eq. 1; v of Salimans & Ho 2022, §4).

    ``alpha`` and ``sigma`` are host floats or arrays broadcasting against x. ε: (x − σε)/α;
    v = α·ε − σ·x0: (α·x − σ·v)/(α² + σ²); score s = −ε/σ: (x + σ²·s)/α; flow velocity
    u = ε − x0: (x − σ·u)/(α + σ) (x − t·u on the rectified-flow path α = 1 − t, σ = t).

    Examples
    --------
    >>> import numpy as np
    >>> x0, eps, a, s = np.array([0.5]), np.array([-1.0]), 0.6, 0.8
    >>> x = a * x0 + s * eps
    >>> v = a * eps - s * x0
    >>> bool(np.allclose(x0_from_prediction(v, x, a, s, "v"), x0))
    True
    """
    prediction = prediction_type(prediction, "prediction_type", CONTINUOUS_PREDICTION_TYPES)
    if prediction == "flow":
        return (x - sigma * out) / (alpha + sigma)
    if prediction == "eps":
        return (x - sigma * out) / alpha
    if prediction == "x0":
        return out
    if prediction == "v":
        return (alpha * x - sigma * out) / (alpha * alpha + sigma * sigma)
    return (x + (sigma * sigma) * out) / alpha


def eps_from_prediction(
    out: Array, x: Array, alpha: Array | float, sigma: Array | float, prediction: str
) -> Array:
    """ε̂ from a prediction at x = α·x0 + σ·ε (the inverse relations of :func:`x0_from_prediction`).

    x0: (x − α·x0)/σ; v: (σ·x + α·v)/(α² + σ²); score: −σ·s; flow u = ε − x0: (x + α·u)/(α + σ).
    """
    prediction = prediction_type(prediction, "prediction_type", CONTINUOUS_PREDICTION_TYPES)
    if prediction == "flow":
        return (x + alpha * out) / (alpha + sigma)
    if prediction == "eps":
        return out
    if prediction == "x0":
        return (x - alpha * out) / sigma
    if prediction == "v":
        return (sigma * x + alpha * out) / (alpha * alpha + sigma * sigma)
    return (-sigma) * out


# --------------------------------------------------------------------------------------------
# The table conversions at one host timestep, with the coefficients as host floats (step plans)
# --------------------------------------------------------------------------------------------


class LevelCoefficients(NamedTuple):
    """The schedule's table entries at one timestep as host floats (improved-diffusion's names)."""

    sqrt_alphas_cumprod: float
    sqrt_one_minus_alphas_cumprod: float
    sqrt_recip_alphas_cumprod: float
    sqrt_recipm1_alphas_cumprod: float
    posterior_mean_coef1: float
    posterior_mean_coef2: float


def level_coefficients(schedule: Any, t: int) -> LevelCoefficients:
    """The tables of :class:`LevelCoefficients` read at the host integer timestep t (one read per table)."""
    return LevelCoefficients(
        *(float(getattr(schedule, name)[t]) for name in LevelCoefficients._fields)
    )


def x0_from_output_at(out: Array, x_t: Array, c: LevelCoefficients, mean_type: str) -> Array:
    """:func:`x0_from_output` with the coefficients given as host floats (the same operations in the same order)."""
    mean_type = prediction_type(mean_type, "mean_type")
    if mean_type == "eps":
        return c.sqrt_recip_alphas_cumprod * x_t - c.sqrt_recipm1_alphas_cumprod * out
    if mean_type == "x0":
        return out
    if mean_type == "v":
        return c.sqrt_alphas_cumprod * x_t - c.sqrt_one_minus_alphas_cumprod * out
    if mean_type == "score":
        eps = -c.sqrt_one_minus_alphas_cumprod * out
        return c.sqrt_recip_alphas_cumprod * x_t - c.sqrt_recipm1_alphas_cumprod * eps
    return (out - c.posterior_mean_coef2 * x_t) / c.posterior_mean_coef1


def x0_linear_coefficients(c: LevelCoefficients, mean_type: str) -> tuple[float, float]:
    """(p, q) with x̂0 = p·x_t + q·out for the ε, x0, v and score predictions (Ho et al. 2020, Eq. 15; Salimans & Ho 2022, §4).

    The host-folded form of :func:`x0_from_output_at` (equal up to rounding), for loops that fold
    x̂0 into a later linear combination on the host.
    """
    mean_type = prediction_type(mean_type, "mean_type")
    if mean_type == "eps":
        return c.sqrt_recip_alphas_cumprod, -c.sqrt_recipm1_alphas_cumprod
    if mean_type == "x0":
        return 0.0, 1.0
    if mean_type == "v":
        return c.sqrt_alphas_cumprod, -c.sqrt_one_minus_alphas_cumprod
    if mean_type == "score":
        return c.sqrt_recip_alphas_cumprod, (
            c.sqrt_recipm1_alphas_cumprod * c.sqrt_one_minus_alphas_cumprod
        )
    fail("mean_type", mean_type, "expected eps, x0, v or score (x̂0 linear in x_t and the output)")
    raise AssertionError("unreachable")


def eps_from_x0_at(x_t: Array, x0: Array, c: LevelCoefficients) -> Array:
    """:func:`eps_from_x0` with host-float coefficients: ε = (x_t − √ᾱ_t·x0)/√(1 − ᾱ_t) (Ho et al. 2020, Eq. 4)."""
    return (x_t - c.sqrt_alphas_cumprod * x0) / c.sqrt_one_minus_alphas_cumprod
