"""The step plan shared by the multistep VP solvers UniPC and DEIS: the time grid as host-float levels
(t, α_t, σ_t, λ_t and the model's time) and the model output as a data or noise prediction.

Everything here is computed once per sampler call, before the loop, from the float64 marginals of
a :class:`~refdiff.samplers.dpm_solver.NoiseScheduleVP` (any VP schedule, a refdiff SDE through
``NoiseScheduleVP.from_sde``, or the rectified-flow path through
``NoiseScheduleVP.from_sde(FlowSchedule())``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np

from .._errors import check_choice, check_int, check_real, fail
from .._typing import Array
from ..parameterizations import (
    CONTINUOUS_PREDICTION_TYPES,
    eps_from_prediction,
    prediction_type,
    x0_from_prediction,
)
from ._common import batch_full, check_decreasing, check_output
from .dpm_solver import SKIP_TYPES, NoiseScheduleVP, _check_ns, _exp_tail, get_time_steps

if TYPE_CHECKING:
    from .dpm_solver import ModelTime

__all__ = ["Level", "FINAL_SIGMAS", "MODEL_TIMES", "vp_levels", "prediction_fn", "phi"]

#: Where the last step lands: at t_end (``"t_end"``) or on clean data, α = 1, σ = 0 (``"zero"``,
#: diffusers' ``final_sigmas_type="zero"``; that step returns the data prediction).
FINAL_SIGMAS = ("t_end", "zero")
#: The model's time: t itself or DPM-Solver's discrete input (t − 1/N)·1000 (diffusers' integer
#: timestep k for t = (k + 1)/N on ``NoiseScheduleVP.discrete``).
MODEL_TIMES = ("continuous", "dpm_solver")


class Level(NamedTuple):
    """One point of the time grid as host floats; the clean level has t = None, σ = 0, λ = +inf."""

    t: float | None
    alpha: float
    sigma: float
    lam: float
    t_model: float | None


def phi(h: float, k: int) -> float:
    """φ_k(h)·h = (e^h − Σ_{j<k} h^j/j!)/h^(k−1), the scaled φ-function of DPM-Solver's code (k ≥ 1; series for h > −2)."""
    if k == 1:
        return math.expm1(h)
    if h == 0.0:
        return 0.0
    if h <= -2.0:  # the series alternates there; the closed form does not cancel
        tail = math.expm1(h) - sum(h**j / math.factorial(j) for j in range(1, k))
        return tail / h ** (k - 1)
    return _exp_tail(h, k)  # the series (DPM-Solver's φ-functions use the same one)


def _model_times(ns: NoiseScheduleVP, model_time: ModelTime) -> Callable[[float], float]:
    if callable(model_time):
        return model_time
    check_choice("model_time", model_time, MODEL_TIMES, "model time convention")
    if model_time == "dpm_solver" and ns.kind != "discrete":
        fail(
            "model_time",
            model_time,
            "the 'dpm_solver' discrete model time needs a discrete noise "
            "schedule (NoiseScheduleVP.discrete)",
        )
    return lambda t: ns.model_input_time(t, model_time)


def _level(ns: NoiseScheduleVP, t: float, to_model: Callable[[float], float]) -> Level:
    la = float(ns.marginal_log_mean_coeff(t))
    sigma = float(ns.marginal_std(t))
    lam = float(ns.marginal_lambda(t))
    if not math.isfinite(lam):
        fail(
            "t", t, f"λ is {lam!r} there (α or σ is 0); the solver needs times with finite log-SNR"
        )
    return Level(t, math.exp(la), sigma, lam, float(to_model(t)))


def vp_levels(
    noise_schedule: NoiseScheduleVP,
    steps: int,
    *,
    skip_type: str = "time_uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    timesteps: Sequence[float] | Array | None = None,
    final_sigma: str = "t_end",
    model_time: ModelTime = "continuous",
) -> list[Level]:
    """The steps + 1 levels of a multistep solver: a DPM-Solver grid (Lu et al. 2022a, §3.3) or ``timesteps``, optionally ending on clean data.

    ``timesteps`` gives the times explicitly: steps + 1 decreasing times, or ``steps`` with
    ``final_sigma="zero"`` (the clean level is appended). On ``NoiseScheduleVP.discrete`` the
    time of diffusers' integer timestep k is (k + 1)/N.
    """
    ns = _check_ns(noise_schedule)
    steps = check_int("steps", steps, minimum=1)
    check_choice("skip_type", skip_type, SKIP_TYPES, "step grid")
    check_choice("final_sigma", final_sigma, FINAL_SIGMAS, "final level")
    to_model = _model_times(ns, model_time)
    zero = final_sigma == "zero"
    n_times = steps if zero else steps + 1
    if timesteps is not None:
        if t_start is not None or t_end is not None:
            fail("timesteps", timesteps, "give either timesteps= or t_start=/t_end=, not both")
        try:
            ts = [float(t) for t in timesteps]
        except TypeError:
            fail("timesteps", timesteps, "expected a 1-D sequence of times")
        if len(ts) != n_times:
            fail(
                "timesteps",
                timesteps,
                f"expected {n_times} times for steps={steps} with "
                f"final_sigma={final_sigma!r}, got {len(ts)}",
            )
        if len(ts) > 1:
            check_decreasing("timesteps", ts)
        for t in ts:
            if not 0.0 < t <= ns.T:
                fail("timesteps", timesteps, f"expected times in (0, {ns.T!r}]")
    else:
        t_T = (
            ns.T
            if t_start is None
            else check_real("t_start", t_start, lo=0.0, hi=ns.T, lo_open=True)
        )
        t_0 = (
            1.0 / ns.total_N
            if t_end is None
            else check_real("t_end", t_end, lo=0.0, hi=ns.T, lo_open=True)
        )
        if not t_0 < t_T:
            fail("t_end", t_end, f"must be below t_start = {t_T!r} (these solvers run toward data)")
        ts = (
            [t_T]
            if n_times == 1
            else [float(t) for t in get_time_steps(ns, skip_type, t_T, t_0, n_times - 1)]
        )
    levels = [_level(ns, t, to_model) for t in ts]
    if zero:
        levels.append(Level(None, 1.0, 0.0, math.inf, None))
    return levels


def prediction_fn(
    model: Callable[[Array, Array], Array], model_type: str, target: str
) -> Callable[[Array, Level], Array]:
    """``fn(x, level) -> x̂0`` (target "x0") or ``ε̂`` (target "eps") from ``model(x, t_model)`` of any prediction type (Lu et al. 2022b, §3)."""
    if not callable(model):
        fail("model", model, "expected a callable model(x, t) -> prediction")
    kind = prediction_type(model_type, "model_type", CONTINUOUS_PREDICTION_TYPES)
    convert = x0_from_prediction if target == "x0" else eps_from_prediction

    def fn(x: Array, level: Level) -> Array:
        out = check_output(
            model(x, batch_full(x, cast(float, level.t_model))), x, name="model output"
        )
        if kind == target:
            return out
        return convert(out, x, level.alpha, level.sigma, kind)

    return fn


def host_times(levels: list[Level]) -> np.ndarray:
    """The grid's times as a host array (NaN for the clean level)."""
    return np.array([math.nan if lv.t is None else lv.t for lv in levels])
