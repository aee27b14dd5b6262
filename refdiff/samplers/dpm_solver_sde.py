"""DPM-Solver's adaptive step-size solver and SDE-DPM-Solver++ on a VP noise schedule α_t, σ_t, λ_t.

Lu, Zhou, Bao, Chen, Li & Zhu (2022a), "DPM-Solver" (arXiv:2206.00927v3), §3.3 and App. C: the
adaptive solver DPM-Solver-12 / DPM-Solver-23 — an embedded pair of single-step solvers of orders
k - 1 and k sharing their model evaluations, with the error E = ‖(x_high - x_low)/δ‖ (RMS over each
sample, maximum over the batch), δ = max(atol, rtol·max(|x_low|, |x_prev|)), acceptance when E ≤ 1
and the step h ← min(θ h E^{-1/k}, λ_0 - λ_s) in λ.

Lu et al. (2022b), "DPM-Solver++" (arXiv:2211.01095v2), App. on SDE solvers: the reverse SDE in
the data prediction has the exact solution, for a constant x̂0 over [s, t] with h = λ_t - λ_s,

    x_t = (σ_t/σ_s) e^{-h} x_s + α_t (1 - e^{-2h}) x̂0 + σ_t √(1 - e^{-2h}) z        (SDE-DPM-Solver++1)

and the multistep second-order solver adds α_t c (x̂0_s - x̂0_prev)/r with r = h_prev/h and
c = ½(1 - e^{-2h}) ("midpoint") or 1 - (1 - e^{-2h})/(2h) = -φ2(-2h) ("heun", the exact integral of
the linear term), as diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")``.

Family ``"vp"``: ``fn(model, x_T, *, noise_schedule, steps, noise=None, **options)`` like
:mod:`refdiff.samplers.dpm_solver`; ``model(x, t)`` gets t of shape (B,). Every schedule
quantity (α, σ, λ, the step coefficients) is a host float computed in float64 before the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from .._errors import check_choice, check_int, check_real, fail
from .._typing import Array, Noise
from .._xp import array_namespace
from ..parameterizations import (
    PREDICTION_TYPES,
    eps_from_prediction,
    prediction_type,
    x0_from_prediction,
)
from . import register_sampler
from ._common import StepInfo, batch_full, check_output, draw_noise, step_reporter
from .dpm_solver import (
    ALGORITHM_TYPES,
    _check_ns,
    SKIP_TYPES,
    SOLVER_TYPES,
    NoiseScheduleVP,
    dpm_solver_first_update,
    get_time_steps,
    multistep_step_orders,
    phi_2,
    singlestep_dpm_solver_second_update,
    singlestep_dpm_solver_third_update,
)

if TYPE_CHECKING:
    from .dpm_solver import ModelTime

    class _ModelFn(Protocol):
        """A prediction ``fn(x, t)`` carrying ``fn.levels(t) -> (α_t, σ_t, λ_t)``."""

        levels: Callable[[float], tuple[float, float, float]]

        def __call__(self, x: Array, t: float, /) -> Array: ...


__all__ = [
    "sde_dpmpp_coefficients",
    "sde_dpmpp_step",
    "sample_dpm_solver_adaptive",
    "sample_sde_dpmpp_1",
    "sample_sde_dpmpp_2m",
    "SDE_SOLVER_TYPES",
]

#: diffusers' ``solver_type`` of the second-order SDE-DPM-Solver++ update.
SDE_SOLVER_TYPES = ("midpoint", "heun")
_MODEL_TIMES = ("continuous", "dpm_solver")


# --------------------------------------------------------------------------------------------
# Inputs: the model as noise / data prediction, the time range
# --------------------------------------------------------------------------------------------


def _check_x(x: Array) -> None:
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")


def _levels(ns: NoiseScheduleVP, t: float) -> tuple[float, float, float]:
    """(α_t, σ_t, λ_t) as host floats."""
    return float(ns.marginal_alpha(t)), float(ns.marginal_std(t)), float(ns.marginal_lambda(t))


def _model_fns(
    model: Callable[[Array, Array], Array],
    ns: NoiseScheduleVP,
    model_type: str,
    model_time: ModelTime,
) -> tuple[_ModelFn, _ModelFn]:
    """(noise_fn, data_fn): ``fn(x, t) -> ε̂ or x̂0`` from the model output (Lu et al. 2022b, §3)."""
    if not callable(model):
        fail("model", model, "expected a callable model(x, t) -> prediction")
    kind = prediction_type(model_type, "model_type", PREDICTION_TYPES[:4])
    if not callable(model_time):
        check_choice("model_time", model_time, _MODEL_TIMES, "model time convention")
        if model_time == "dpm_solver" and ns.kind != "discrete":
            fail(
                "model_time",
                model_time,
                "the 'dpm_solver' discrete model time needs a "
                "discrete noise schedule (NoiseScheduleVP.discrete)",
            )

    def out(x: Array, t: float) -> Array:
        tin = model_time(t) if callable(model_time) else ns.model_input_time(t, model_time)
        return check_output(model(x, batch_full(x, float(tin))), x, name="model output")

    cache: dict[float, tuple[float, float, float]] = {}

    def levels(t: float) -> tuple[float, float, float]:
        if t not in cache:  # each grid time's (α, σ, λ) is formed once per call
            cache[t] = _levels(ns, t)
        return cache[t]

    def noise_fn(x: Array, t: float) -> Array:
        a, s, _ = levels(t)
        return eps_from_prediction(out(x, t), x, a, s, kind)

    def data_fn(x: Array, t: float) -> Array:
        a, s, _ = levels(t)
        return x0_from_prediction(out(x, t), x, a, s, kind)

    noise_fn.levels = data_fn.levels = levels  # type: ignore[attr-defined]

    return cast("_ModelFn", noise_fn), cast("_ModelFn", data_fn)


def _time_range(
    ns: NoiseScheduleVP, t_start: float | None, t_end: float | None
) -> tuple[float, float]:
    t_T = ns.T if t_start is None else check_real("t_start", t_start, lo=0.0, hi=ns.T, lo_open=True)
    t_0 = (
        1.0 / ns.total_N
        if t_end is None
        else check_real("t_end", t_end, lo=0.0, hi=ns.T, lo_open=True)
    )
    if not t_0 < t_T:
        fail(
            "t_end",
            t_end,
            f"must be below t_start = {t_T!r} (these samplers run from noise to data)",
        )
    for name, t in (("t_start", t_T), ("t_end", t_0)):
        lam = float(ns.marginal_lambda(t))
        if not math.isfinite(lam):
            fail(name, t, f"λ is {lam!r} there (α or σ is 0); choose a time with finite log-SNR")
    return t_T, t_0


def _grid(
    ns: NoiseScheduleVP,
    time_grid: Sequence[float] | Array | None,
    skip_type: str,
    t_T: float,
    t_0: float,
    steps: int | None,
) -> list[float]:
    """The times t_0 > ... > t_N: ``time_grid`` as given, or DPM-Solver's grid of ``steps`` steps."""
    if time_grid is None:
        check_choice("skip_type", skip_type, SKIP_TYPES, "step grid")
        assert steps is not None  # the callers check steps when there is no time_grid
        return [float(t) for t in get_time_steps(ns, skip_type, t_T, t_0, steps)]
    try:
        ts = [float(t) for t in time_grid]
    except TypeError:
        fail("time_grid", time_grid, "expected a 1-D sequence of decreasing times")
    if len(ts) < 2 or any(not (b < a) for a, b in zip(ts, ts[1:])):
        fail("time_grid", time_grid, "expected at least two strictly decreasing times")
    if not (0.0 < ts[-1] and ts[0] <= ns.T):
        fail("time_grid", time_grid, f"times must lie in (0, {ns.T!r}]")
    for t in (ts[0], ts[-1]):
        if not math.isfinite(float(ns.marginal_lambda(t))):
            fail("time_grid", time_grid, f"λ is not finite at t = {t!r}")
    return ts


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        fail(name, value, "expected True or False")
    return value


# --------------------------------------------------------------------------------------------
# DPM-Solver-12 / 23 (adaptive)
# --------------------------------------------------------------------------------------------


@register_sampler(
    "dpm_solver_adaptive", family="vp", stochastic=False, step=singlestep_dpm_solver_third_update
)
def sample_dpm_solver_adaptive(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: NoiseScheduleVP,
    steps: int | None = None,
    noise: Noise = None,
    order: int = 3,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "dpmsolver",
    model_type: str = "noise",
    t_start: float | None = None,
    t_end: float | None = None,
    atol: float = 0.0078,
    rtol: float = 0.05,
    h_init: float = 0.05,
    theta: float = 0.9,
    t_err: float = 1e-5,
    adaptive: bool = True,
    time_grid: Sequence[float] | Array | None = None,
    skip_type: str = "logSNR",
    model_time: ModelTime = "continuous",
    return_info: bool = False,
    max_steps: int = 10000,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array | tuple[Array, dict[str, Any]]:
    """DPM-Solver-12 / 23 with adaptive step size in λ (Lu et al. 2022a, §3.3 and App. C; DPM-Solver's ``method="adaptive"``).

    From λ_s an attempt goes to t with λ_t = λ_s + h: x_low is DPM-Solver-1 (order 2) or
    DPM-Solver-2 with r1 = 1/3 (order 3), x_high DPM-Solver-2 (r1 = 1/2) or DPM-Solver-3 (r1 = 1/3,
    r2 = 2/3) reusing x_low's model values; E = max over the batch of
    RMS((x_high - x_low)/δ), δ = max(atol, rtol·max(|x_low|, |x_prev|)) with x_prev the last
    accepted x_low (x_T at first). E ≤ 1 accepts x_high; then h ← min(θ h E^{-1/order},
    λ_{t_end} - λ_s). The loop ends when |s - t_end| ≤ t_err. E is read back to the host (one
    device read per attempt).

    With ``adaptive=False`` the high-order update runs on a fixed grid: ``time_grid`` (e.g.
    ``info["t"]`` of an adaptive run with ``return_info=True``, which replays that run exactly) or
    DPM-Solver's ``skip_type`` grid of ``steps`` steps.

    Parameters
    ----------
    model, x, noise_schedule, model_type, t_start, t_end, model_time
        As in :func:`refdiff.samplers.dpm_solver.sample_dpm_solver` (model_type in the
        prediction vocabulary: "noise"/"eps", "x_start"/"x0", "v", "score").
    steps : int, optional
        Ignored by the adaptive loop (its steps are chosen by the controller); the number of
        fixed steps with ``adaptive=False`` and no ``time_grid``.
    noise
        Ignored (deterministic).
    order : {2, 3}
    algorithm_type : {"dpmsolver++", "dpmsolver"}
        Data prediction (DPM-Solver's default for ``DPM_Solver``) or noise prediction.
    solver_type : {"dpmsolver", "taylor"}
    atol, rtol, h_init, theta, t_err : float
        DPM-Solver's defaults 0.0078, 0.05, 0.05, 0.9, 1e-5.
    adaptive : bool
        False: fixed steps on ``time_grid`` or the ``skip_type`` grid (replay).
    return_info : bool
        Also return {"nfe", "steps", "n_accept", "n_reject", "t"} with ``t`` the accepted times.
    max_steps : int
        Attempts allowed before the loop stops with an error.
    callback, progress : callable, optional
        ``callback(StepInfo)`` at each attempt (``n`` is 0 in the adaptive loop: unknown).

    Returns
    -------
    array, or (array, dict) with ``return_info``
    """
    ns = _check_ns(noise_schedule)
    _check_x(x)
    order = check_int("order", order, minimum=2)
    if order > 3:
        fail("order", order, "expected 2 or 3")
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES, "DPM-Solver algorithm")
    check_choice("solver_type", solver_type, SOLVER_TYPES, "DPM-Solver solver type")
    atol = check_real("atol", atol, lo=0.0, lo_open=True)
    rtol = check_real("rtol", rtol, lo=0.0)
    h_init = check_real("h_init", h_init, lo=0.0, lo_open=True)
    theta = check_real("theta", theta, lo=0.0, lo_open=True)
    t_err = check_real("t_err", t_err, lo=0.0, lo_open=True)
    max_steps = check_int("max_steps", max_steps, minimum=1)
    adaptive, return_info = _bool("adaptive", adaptive), _bool("return_info", return_info)
    noise_fn, data_fn = _model_fns(model, ns, model_type, model_time)
    fn = data_fn if algorithm_type == "dpmsolver++" else noise_fn
    t_T, t_0 = _time_range(ns, t_start, t_end)
    report = step_reporter(callback, progress)
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    info: dict[str, Any] = {"nfe": 0, "steps": 0, "n_accept": 0, "n_reject": 0, "t": [t_T]}

    def pair(x: Array, s: float, t: float, model_s: Array) -> tuple[Array, Array]:
        """(x_low, x_high) of the embedded pair from s to t."""
        if order == 2:
            x_low = dpm_solver_first_update(ns, x, s, t, model_s, algorithm_type=algorithm_type)
            x_high, _ = singlestep_dpm_solver_second_update(
                ns,
                fn,
                x,
                s,
                t,
                r1=r1,
                model_s=model_s,
                algorithm_type=algorithm_type,
                solver_type=solver_type,
            )
            return x_low, x_high
        x_low, (m_s, m_s1) = singlestep_dpm_solver_second_update(
            ns,
            fn,
            x,
            s,
            t,
            r1=r1,
            model_s=model_s,
            algorithm_type=algorithm_type,
            solver_type=solver_type,
        )
        x_high, _ = singlestep_dpm_solver_third_update(
            ns,
            fn,
            x,
            s,
            t,
            r1=r1,
            r2=2.0 / 3.0,
            model_s=m_s,
            model_s1=m_s1,
            algorithm_type=algorithm_type,
            solver_type=solver_type,
        )
        return x_low, x_high

    def start(x: Array, s: float) -> Array:
        model_s = fn(x, s)
        if report is not None:
            a, sg, _ = fn.levels(s)
            x0 = model_s if algorithm_type == "dpmsolver++" else (x - sg * model_s) / a
            report(StepInfo(info["steps"], 0 if adaptive else n_fixed, x, x0, t=s, sigma=sg / a))
        return model_s

    if not adaptive:
        ts = _grid(
            ns,
            time_grid,
            skip_type,
            t_T,
            t_0,
            check_int("steps", steps, minimum=1) if time_grid is None else 1,
        )
        n_fixed = len(ts) - 1
        for k in range(n_fixed):
            model_s = start(x, ts[k])
            _, x = pair(x, ts[k], ts[k + 1], model_s)
            info["steps"] += 1
            info["n_accept"] += 1
            info["nfe"] += order
            info["t"].append(ts[k + 1])
        return (x, info) if return_info else x

    n_fixed = 0
    xp = array_namespace(x)
    s = t_T
    lam_s = float(ns.marginal_lambda(s))
    lam_0 = float(ns.marginal_lambda(t_0))
    h = h_init
    x_prev = x
    while abs(s - t_0) > t_err:
        if info["steps"] >= max_steps:
            fail(
                "max_steps",
                max_steps,
                f"the adaptive solver made {max_steps} attempts and "
                f"reached t = {s!r}, not t_end = {t_0!r}; loosen rtol/atol or raise max_steps",
            )
        t = t_0 if h >= lam_0 - lam_s else float(ns.inverse_lambda(lam_s + h))
        model_s = start(x, s)
        x_low, x_high = pair(x, s, t, model_s)
        delta = xp.maximum(
            rtol * xp.maximum(xp.abs(x_low), xp.abs(x_prev)), xp.full_like(x_low, atol)
        )
        r = xp.reshape((x_high - x_low) / delta, (x.shape[0], -1))
        E = float(xp.max(xp.sqrt(xp.mean(r * r, axis=1))))
        info["steps"] += 1
        info["nfe"] += order
        if E <= 1.0:
            x, x_prev, s = x_high, x_low, t
            lam_s = float(ns.marginal_lambda(s))
            info["n_accept"] += 1
            info["t"].append(t)
        else:
            info["n_reject"] += 1
        grow = math.inf if E == 0.0 else theta * h * E ** (-1.0 / order)
        h = min(grow, lam_0 - lam_s)
    return (x, info) if return_info else x


# --------------------------------------------------------------------------------------------
# SDE-DPM-Solver++ (first order, multistep second order)
# --------------------------------------------------------------------------------------------


def sde_dpmpp_coefficients(
    ns: NoiseScheduleVP,
    s: float,
    t: float,
    *,
    h_prev: float | None = None,
    solver_type: str = "midpoint",
) -> dict[str, float]:
    """Host floats of one SDE-DPM-Solver++ step from s to t (Lu et al. 2022b, App.; diffusers' "sde-dpmsolver++").

    a = (σ_t/σ_s) e^{-h}, b = α_t (1 - e^{-2h}), n = σ_t √(1 - e^{-2h}) and, with ``h_prev`` (the
    previous step's h; second order), c = α_t·{½(1 - e^{-2h}) | -φ2(-2h)}/r with r = h_prev/h.
    1 - e^{-2h} is formed as -expm1(-2h).
    """
    a_s, s_s, l_s = _levels(ns, s)
    a_t, s_t, l_t = _levels(ns, t)
    h = l_t - l_s
    e2 = -math.expm1(-2.0 * h)
    out = {
        "a": (s_t / s_s) * math.exp(-h),
        "b": a_t * e2,
        "n": s_t * math.sqrt(e2),
        "h": h,
        "c": 0.0,
    }
    if h_prev is not None:
        r = h_prev / h
        out["c"] = a_t * (0.5 * e2 if solver_type == "midpoint" else -phi_2(-2.0 * h)) / r
    return out


def sde_dpmpp_step(
    x: Array,
    x0: Array,
    c: dict[str, float],
    *,
    x0_prev: Array | None = None,
    noise: Array | None = None,
) -> Array:
    """x_t = a x_s + b x̂0_s [+ c (x̂0_s - x̂0_prev)] + n z with coefficients from :func:`sde_dpmpp_coefficients`."""
    if noise is None:
        fail(
            "noise", noise, "SDE-DPM-Solver++ adds noise at every step: pass a standard-normal draw"
        )
    out = c["a"] * x + c["b"] * x0
    if c["c"] != 0.0:
        if x0_prev is None:
            fail("x0_prev", x0_prev, "the second-order step needs the previous data prediction")
        out = out + c["c"] * (x0 - x0_prev)
    return out + c["n"] * noise


def _sde_loop(
    model: Callable[[Array, Array], Array],
    x: Array,
    ns: NoiseScheduleVP,
    steps: int | None,
    noise: Noise,
    *,
    order: int,
    solver_type: str,
    lower_order_final: str,
    model_type: str,
    skip_type: str,
    t_start: float | None,
    t_end: float | None,
    time_grid: Sequence[float] | Array | None,
    model_time: ModelTime,
    denoise_to_zero: bool,
    callback: Callable[[StepInfo], object] | None,
    progress: Callable[[int, int], object] | None,
) -> Array:
    ns = _check_ns(ns)
    _check_x(x)
    check_choice("solver_type", solver_type, SDE_SOLVER_TYPES, "SDE-DPM-Solver++ solver type")
    denoise_to_zero = _bool("denoise_to_zero", denoise_to_zero)
    _, data_fn = _model_fns(model, ns, model_type, model_time)
    t_T, t_0 = _time_range(ns, t_start, t_end)
    if time_grid is None:
        steps = check_int("steps", steps, minimum=1)
    ts = _grid(ns, time_grid, skip_type, t_T, t_0, steps)
    n = len(ts) - 1
    orders = multistep_step_orders(n, order, lower_order_final) if order == 2 else [1] * n
    plan = []
    for i in range(n):
        h_prev = None
        if orders[i] == 2:
            h_prev = float(ns.marginal_lambda(ts[i])) - float(ns.marginal_lambda(ts[i - 1]))
        plan.append(
            sde_dpmpp_coefficients(ns, ts[i], ts[i + 1], h_prev=h_prev, solver_type=solver_type)
        )
    report = step_reporter(callback, progress)
    x0_prev: Array | None = None
    for i in range(n):
        x0 = data_fn(x, ts[i])
        if report is not None:
            a, sg, _ = data_fn.levels(ts[i])
            report(StepInfo(i, n, x, x0, t=ts[i], sigma=sg / a))
        x = sde_dpmpp_step(x, x0, plan[i], x0_prev=x0_prev, noise=draw_noise(noise, i, x))
        x0_prev = x0
    if denoise_to_zero:
        x = data_fn(x, ts[-1])
    return x


_SDE_DOC = """
    Parameters
    ----------
    model : callable
        ``model(x, t) -> output`` with t of shape (B,) (continuous times, or see ``model_time``).
    x : array
        The sample at t_start (e.g. standard normal at t = T), batch axis first.
    noise_schedule : NoiseScheduleVP
    steps : int
        Number of steps (= model evaluations) on the ``skip_type`` grid.
    noise : array or callable
        ``noise[i]`` is read at every step i = 0..N-1 (diffusers' ``variance_noise`` of step i).
    model_type : str
        "noise"/"eps", "x_start"/"x0", "v" or "score".
    skip_type : {"time_uniform", "logSNR", "time_quadratic"}
        DPM-Solver's grids between t_start and t_end.
    t_start, t_end : float, optional
        Default T and 1/total_N.
    time_grid : sequence of float, optional
        Explicit decreasing times t_0 > ... > t_N (replaces ``steps``/``skip_type``; e.g. a
        diffusers scheduler's timesteps mapped to continuous time).
    model_time : {"continuous", "dpm_solver"} or callable
        As in :func:`refdiff.samplers.dpm_solver.sample_dpm_solver`.
    denoise_to_zero : bool
        Return the data prediction at the last time (one more evaluation; diffusers'
        ``final_sigmas_type="zero"`` last step).
    callback, progress : callable, optional
        ``callback(StepInfo)`` before each step; ``progress(i + 1, N)``.

    Returns
    -------
    array
"""


@register_sampler("sde_dpmpp_1", family="vp", stochastic=True, step=sde_dpmpp_step)
def sample_sde_dpmpp_1(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: NoiseScheduleVP,
    steps: int | None = None,
    noise: Noise = None,
    model_type: str = "noise",
    skip_type: str = "time_uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    time_grid: Sequence[float] | Array | None = None,
    model_time: ModelTime = "continuous",
    denoise_to_zero: bool = False,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """SDE-DPM-Solver++1: x_t = (σ_t/σ_s)e^{-h} x_s + α_t(1 - e^{-2h}) x̂0 + σ_t√(1 - e^{-2h}) z (Lu et al. 2022b, App.; diffusers "sde-dpmsolver++", solver_order=1)."""
    return _sde_loop(
        model,
        x,
        noise_schedule,
        steps,
        noise,
        order=1,
        solver_type="midpoint",
        lower_order_final="never",
        model_type=model_type,
        skip_type=skip_type,
        t_start=t_start,
        t_end=t_end,
        time_grid=time_grid,
        model_time=model_time,
        denoise_to_zero=denoise_to_zero,
        callback=callback,
        progress=progress,
    )


@register_sampler("sde_dpmpp_2m", family="vp", stochastic=True, step=sde_dpmpp_step)
def sample_sde_dpmpp_2m(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: NoiseScheduleVP,
    steps: int | None = None,
    noise: Noise = None,
    solver_type: str = "midpoint",
    lower_order_final: str = "diffusers",
    model_type: str = "noise",
    skip_type: str = "time_uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    time_grid: Sequence[float] | Array | None = None,
    model_time: ModelTime = "continuous",
    denoise_to_zero: bool = False,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Multistep SDE-DPM-Solver++(2M) (Lu et al. 2022b, App.; diffusers "sde-dpmsolver++", solver_order=2).

    Step 0 is SDE-DPM-Solver++1; later steps add α_t c (x̂0_s - x̂0_prev)/r (see
    :func:`sde_dpmpp_coefficients`), ``solver_type`` "midpoint" or "heun" as diffusers'.
    ``lower_order_final`` ("diffusers" default: the last step is first order when N < 15;
    "dpm_solver" when N < 10; "always"; "never") as in
    :func:`refdiff.samplers.dpm_solver.multistep_step_orders`.
    """
    return _sde_loop(
        model,
        x,
        noise_schedule,
        steps,
        noise,
        order=2,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        model_type=model_type,
        skip_type=skip_type,
        t_start=t_start,
        t_end=t_end,
        time_grid=time_grid,
        model_time=model_time,
        denoise_to_zero=denoise_to_zero,
        callback=callback,
        progress=progress,
    )


sample_sde_dpmpp_1.__doc__ = (sample_sde_dpmpp_1.__doc__ or "") + "\n" + _SDE_DOC
sample_sde_dpmpp_2m.__doc__ = (sample_sde_dpmpp_2m.__doc__ or "") + "\n" + _SDE_DOC
