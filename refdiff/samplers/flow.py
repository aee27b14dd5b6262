"""Flow matching / rectified flow: the straight path x_t = (1 − t)·x0 + t·ε and its Euler and Heun samplers.

Lipman, Chen, Ben-Hamu, Nickel & Le (2023), "Flow Matching for Generative Modeling"
(arXiv:2210.02747, §4.1: the conditional optimal-transport path with σ_min = 0); Liu, Gong
& Liu (2023), "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified
Flow" (arXiv:2209.03003; Eq. 1: X_t = t·X1 + (1 − t)·X0 and the velocity X1 − X0, here with
data at t = 0 and noise at t = 1 as Stable Diffusion 3); Esser et al. (2024), "Scaling Rectified
Flow Transformers for High-Resolution Image Synthesis" (arXiv:2403.03206, §5.3.2: the
resolution-dependent timestep shift t' = s·t/(1 + (s − 1)·t)).

The path is a diffusion path with α_t = 1 − t and σ_t = t, so λ_t = log((1 − t)/t) and every
α/σ-solver applies to it: :class:`FlowSchedule` has the marginal methods of a refdiff SDE, so
``NoiseScheduleVP.from_sde(FlowSchedule())`` runs DPM-Solver, UniPC and DEIS on a flow model
(``model_type="flow"``). The network predicts the velocity u = dx/dt = ε − x0 (prediction
``"flow"``; diffusers' ``flow_prediction``; not refdiff's ``"v"`` = α·ε − σ·x0), and the
probability-flow ODE of the path is dx/dt = E[ε − x0 | x_t].

Family ``"flow"``: ``fn(model, x_T, *, noise_schedule, steps, noise=None, callback=None,
progress=None, **options)`` with ``model(x, t) -> output`` taking an array t of shape (B,) of
path times (t ∈ [0, 1], or ``num_train_timesteps·t`` with ``model_time="diffusers"``) and
``noise_schedule`` a :class:`FlowSchedule`. ``steps`` is the number of intervals of the time grid.

Named conventions
-----------------
* The time grid (``spacing``): ``"uniform"`` — steps + 1 times uniform in the unshifted time
  from ``t_start`` to ``t_end`` (default 1 → 0), mapped through the shift; ``"diffusers"`` —
  diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps(steps)`` with a static ``shift``:
  ``steps`` times s(linspace(1, s(1/N), steps)) (the shift applied to its own shifted σ_min,
  as diffusers does) then 0; ``"diffusers_dynamic"`` — the same with ``use_dynamic_shifting``:
  s(linspace(1, 1/N, steps)) then 0, with s = e^μ (see :func:`resolution_shift`). N is
  ``num_train_timesteps``. Or give the grid itself as ``timesteps=``.
* The model's time (``model_time``): ``"continuous"`` (t) or ``"diffusers"`` (N·t, diffusers'
  ``timestep = sigma * num_train_timesteps``), or a callable ``model_time(t) -> float``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt

from .._errors import check_choice, check_int, check_real, fail
from .._typing import Array, Noise
from ..parameterizations import (
    CONTINUOUS_PREDICTION_TYPES,
    eps_from_prediction,
    prediction_type,
    x0_from_prediction,
)
from . import register_sampler
from ._common import StepInfo, batch_full, check_decreasing, check_output, step_reporter

__all__ = [
    "FlowSchedule",
    "SPACINGS",
    "MODEL_TIMES",
    "shift_time",
    "unshift_time",
    "resolution_shift",
    "flow_time_steps",
    "velocity_from_prediction",
    "flow_euler_step",
    "flow_heun_step",
    "sample_flow_euler",
    "sample_flow_heun",
]

SPACINGS = ("uniform", "diffusers", "diffusers_dynamic")
MODEL_TIMES = ("continuous", "diffusers")

#: A host time: a float or a NumPy float64 array (the functions return the same kind).
_HT = TypeVar("_HT", float, np.ndarray)


# --------------------------------------------------------------------------------------------
# The timestep shift
# --------------------------------------------------------------------------------------------


def shift_time(t: _HT, shift: float) -> _HT:
    """t' = s·t/(1 + (s − 1)·t) (Esser et al. 2024, §5.3.2; diffusers' ``shift``); fixes 0 and 1."""
    s = check_real("shift", shift, lo=0.0, lo_open=True)
    a = np.asarray(t, dtype=np.float64)
    out = s * a / (1.0 + (s - 1.0) * a)
    return cast(_HT, float(out) if np.ndim(t) == 0 else out)


def unshift_time(t: _HT, shift: float) -> _HT:
    """The inverse of :func:`shift_time`: t = t'/(s − (s − 1)·t')."""
    s = check_real("shift", shift, lo=0.0, lo_open=True)
    a = np.asarray(t, dtype=np.float64)
    out = a / (s - (s - 1.0) * a)
    return cast(_HT, float(out) if np.ndim(t) == 0 else out)


def resolution_shift(
    seq_len: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """s = e^μ with μ linear in the token count from base_shift to max_shift (Esser et al. 2024, §5.3.2; diffusers' dynamic shifting).

    diffusers' ``time_shift(mu, 1, t)`` = e^μ/(e^μ + 1/t − 1) is :func:`shift_time` with s = e^μ;
    μ is the pipelines' ``calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift,
    max_shift)``.
    """
    n = check_int("seq_len", seq_len, minimum=1)
    lo = check_int("base_seq_len", base_seq_len, minimum=1)
    hi = check_int("max_seq_len", max_seq_len, minimum=lo + 1)
    b = check_real("base_shift", base_shift)
    m = check_real("max_shift", max_shift)
    mu = b + (m - b) * (n - lo) / (hi - lo)
    return math.exp(mu)


# --------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------


def _host(t: npt.ArrayLike, name: str = "t") -> np.ndarray:
    a = np.asarray(t, dtype=np.float64)
    if np.any(np.isnan(a)) or not np.all((a >= 0.0) & (a <= 1.0)):
        fail(name, t, "expected path times in [0, 1]")
    return a


def _out(v: float | np.ndarray, like: _HT) -> _HT:
    return cast(_HT, float(v) if np.ndim(like) == 0 else v)


@dataclass(frozen=True, eq=False)
class FlowSchedule:
    """The rectified-flow path α_t = 1 − t, σ_t = t on t ∈ [0, 1] (Liu et al. 2023, Eq. 1; Lipman et al. 2023, §4.1 with σ_min = 0).

    Host-side (NumPy float64) like :class:`~refdiff.samplers.dpm_solver.NoiseScheduleVP`: the
    methods take a float or a NumPy array of times and return the same. It has the marginal
    methods of a refdiff SDE (``marginal_log_mean_coeff``, ``marginal_std``, ``lambda_``,
    ``t_from_lambda``, ``T``, ``N``), so ``NoiseScheduleVP.from_sde(FlowSchedule())`` is the
    same path for the DPM-Solver-style solvers.

    Parameters
    ----------
    shift : float
        The sampling-time shift s > 0 of :func:`shift_time` used by the time grids (SD3: 3.0);
        the marginals do not depend on it.
    num_train_timesteps : int
        N of the ``"diffusers"`` model time and spacings (1000).
    """

    shift: float = 1.0
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        check_real("shift", self.shift, lo=0.0, lo_open=True)
        check_int("num_train_timesteps", self.num_train_timesteps, minimum=1)

    @property
    def T(self) -> float:
        """End time of the path (1: pure noise)."""
        return 1.0

    @property
    def N(self) -> int:
        """The number of training timesteps (for ``NoiseScheduleVP.from_sde``: sampling ends at 1/N by default)."""
        return int(self.num_train_timesteps)

    def marginal_log_mean_coeff(self, t: _HT) -> _HT:
        """log α_t = log1p(−t)."""
        a = _host(t)
        with np.errstate(divide="ignore"):
            return _out(np.log1p(-a), t)

    def marginal_alpha(self, t: _HT) -> _HT:
        """α_t = 1 − t."""
        return _out(1.0 - _host(t), t)

    def marginal_std(self, t: _HT) -> _HT:
        """σ_t = t."""
        return _out(_host(t) * 1.0, t)

    def lambda_(self, t: _HT) -> _HT:
        """λ_t = log(α_t/σ_t) = log1p(−t) − log t (+inf at t = 0, −inf at t = 1)."""
        a = _host(t)
        with np.errstate(divide="ignore"):
            return _out(np.log1p(-a) - np.log(a), t)

    marginal_lambda = lambda_

    def t_from_lambda(self, lam: _HT) -> _HT:
        """The t with λ_t = lam: t = 1/(1 + e^λ), formed without overflow."""
        lam_a = np.asarray(lam, dtype=np.float64)
        if np.any(np.isnan(lam_a)):
            fail("lam", lam, "expected real half log-SNR values (NaN given)")
        e = np.exp(-np.abs(lam_a))
        out = np.where(lam_a >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
        return _out(out, lam)

    inverse_lambda = t_from_lambda


def _check_fs(noise_schedule: object) -> FlowSchedule:
    if not isinstance(noise_schedule, FlowSchedule):
        fail("noise_schedule", noise_schedule, "expected a refdiff.samplers.flow.FlowSchedule")
    return noise_schedule


# --------------------------------------------------------------------------------------------
# Time grids
# --------------------------------------------------------------------------------------------


def flow_time_steps(
    noise_schedule: FlowSchedule,
    steps: int,
    *,
    spacing: str = "uniform",
    t_start: float = 1.0,
    t_end: float = 0.0,
) -> np.ndarray:
    """steps + 1 decreasing path times: uniform in the unshifted time and shifted (Esser et al. 2024, §5.3.2), or diffusers' grids.

    See the module docstring for ``spacing``; ``t_start`` and ``t_end`` apply to "uniform".
    """
    fs = _check_fs(noise_schedule)
    n = check_int("steps", steps, minimum=1)
    check_choice("spacing", spacing, SPACINGS, "flow time grid")
    t0 = check_real("t_start", t_start, lo=0.0, hi=1.0, lo_open=True)
    t1 = check_real("t_end", t_end, lo=0.0, hi=1.0)
    if spacing == "uniform":
        if not t1 < t0:
            fail("t_end", t_end, f"must be below t_start = {t0!r}")
        ts = np.asarray(
            shift_time(
                np.linspace(unshift_time(t0, fs.shift), unshift_time(t1, fs.shift), n + 1), fs.shift
            )
        )
        ts[0], ts[-1] = t0, t1
        return ts
    if (t0, t1) != (1.0, 0.0):
        fail(
            "t_start" if t0 != 1.0 else "t_end",
            t_start if t0 != 1.0 else t_end,
            f"the {spacing!r} spacing fixes the grid (1 to 0); use spacing='uniform' or timesteps=",
        )
    lo = 1.0 / fs.num_train_timesteps
    if spacing == "diffusers":
        lo = shift_time(lo, fs.shift)
    ts = np.append(np.asarray(shift_time(np.linspace(1.0, lo, n), fs.shift)), 0.0)
    return ts


def _grid(
    fs: FlowSchedule,
    steps: int,
    spacing: str,
    t_start: float,
    t_end: float,
    timesteps: Sequence[float] | Array | None,
) -> list[float]:
    if timesteps is None:
        return [
            float(t)
            for t in flow_time_steps(fs, steps, spacing=spacing, t_start=t_start, t_end=t_end)
        ]
    try:
        ts = [float(t) for t in timesteps]
    except TypeError:
        fail("timesteps", timesteps, "expected a 1-D sequence of path times")
    check_decreasing("timesteps", ts)
    _host(ts, "timesteps")
    if len(ts) != steps + 1:
        fail("timesteps", timesteps, f"expected steps + 1 = {steps + 1} times, got {len(ts)}")
    return ts


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def velocity_from_prediction(out: Array, x: Array, t: float, prediction: str = "flow") -> Array:
    """u = ε̂ − x̂0 at path time t from a prediction of any type (Lipman et al. 2023, §4.1; α = 1 − t, σ = t)."""
    prediction = prediction_type(prediction, "prediction_type", CONTINUOUS_PREDICTION_TYPES)
    if prediction == "flow":
        return out
    a, s = 1.0 - float(t), float(t)
    return eps_from_prediction(out, x, a, s, prediction) - x0_from_prediction(
        out, x, a, s, prediction
    )


def flow_euler_step(x: Array, u: Array, dt: float) -> Array:
    """x_{t+dt} = x_t + dt·u(x_t, t) (Euler on dx/dt = u, Liu et al. 2023, Eq. 1; dt < 0 when sampling)."""
    check_output(u, x, name="velocity")
    return x + dt * u


def flow_heun_step(x: Array, u: Array, u_next: Array, dt: float) -> Array:
    """x_{t+dt} = x_t + dt·(u(x_t, t) + u(x̃, t + dt))/2 with x̃ the Euler point (Heun; Karras et al. 2022, Alg. 1 in t)."""
    check_output(u, x, name="velocity")
    check_output(u_next, x, name="velocity")
    return x + (0.5 * dt) * (u + u_next)


def _velocity_fn(
    model: Callable[[Array, Array], Array],
    fs: FlowSchedule,
    prediction: str,
    model_time: str | Callable[[float], float],
) -> tuple[Callable[[Array, float, float], Array], Callable[[float], float], str]:
    """(velocity(x, t, t_model) -> u, t -> model time, canonical prediction type)."""
    if not callable(model):
        fail("model", model, "expected a callable model(x, t) -> prediction")
    pred = prediction_type(prediction, "prediction_type", CONTINUOUS_PREDICTION_TYPES)
    if callable(model_time):
        to_model = model_time
    else:
        check_choice("model_time", model_time, MODEL_TIMES, "flow model time convention")
        scale = 1.0 if model_time == "continuous" else float(fs.num_train_timesteps)
        to_model = lambda t: scale * t  # noqa: E731

    def velocity(x: Array, t: float, tin: float) -> Array:
        out = check_output(model(x, batch_full(x, tin)), x, name="model output")
        return velocity_from_prediction(out, x, t, pred)

    return velocity, to_model, pred


def _plan(
    model: Callable[[Array, Array], Array],
    x: Array,
    noise_schedule: FlowSchedule,
    steps: int,
    spacing: str,
    t_start: float,
    t_end: float,
    timesteps: Sequence[float] | Array | None,
    prediction: str,
    model_time: str | Callable[[float], float],
) -> tuple[Callable[[Array, float, float], Array], list[float], list[float]]:
    fs = _check_fs(noise_schedule)
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")
    steps = check_int("steps", steps, minimum=1)
    velocity, to_model, pred = _velocity_fn(model, fs, prediction, model_time)
    ts = _grid(fs, steps, spacing, t_start, t_end, timesteps)
    if pred in ("eps", "score") and ts[0] == 1.0:
        fail(
            "prediction_type",
            prediction,
            "an ε or score model does not determine x0 at t = 1 "
            "(α = 0); start below 1 with t_start= / timesteps=, or use a flow, x0 or v model",
        )
    tin = [float(to_model(t)) for t in ts]
    return velocity, ts, tin


def _denoised(x: Array, u: Array, t: float) -> Array:
    return x - t * u  # x̂0 = x − σ·u on α + σ = 1


@register_sampler("flow_euler", family="flow", stochastic=False, order=1.0, step=flow_euler_step)
def sample_flow_euler(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: FlowSchedule | None = None,
    steps: int,
    spacing: str = "uniform",
    t_start: float = 1.0,
    t_end: float = 0.0,
    timesteps: Sequence[float] | Array | None = None,
    prediction_type: str = "flow",
    model_time: str | Callable[[float], float] = "continuous",
    noise: Noise = None,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Euler sampling of the flow ODE dx/dt = u(x, t) from t_start to t_end (Liu et al. 2023, Eq. 1; diffusers' FlowMatchEulerDiscreteScheduler).

    Parameters
    ----------
    model : callable
        ``model(x, t) -> prediction`` with t of shape (B,) (see ``model_time``).
    x : array
        The sample at t_start (standard normal at t = 1), batch axis first.
    noise_schedule : FlowSchedule, optional
        The path and its shift (default ``FlowSchedule()``, no shift).
    steps : int
        Number of Euler steps (= model evaluations).
    spacing : {"uniform", "diffusers", "diffusers_dynamic"}
        The time grid (module docstring); ``timesteps=`` gives it explicitly (steps + 1
        decreasing times in [0, 1]).
    t_start, t_end : float
        Ends of the "uniform" grid (1 and 0).
    prediction_type : {"flow", "eps", "x0", "v", "score"}
        What the model returns (u = ε − x0 for "flow"; the others are converted at α = 1 − t,
        σ = t).
    model_time : {"continuous", "diffusers"} or callable
    noise
        Ignored (deterministic); accepted for the family's calling convention.
    callback, progress
        ``callback(StepInfo)`` before each step (x, x̂0 = x − t·u, t, σ/α = t/(1 − t));
        ``progress(done, total)``.

    Returns
    -------
    array
        The sample at t_end.
    """
    fs = FlowSchedule() if noise_schedule is None else noise_schedule
    velocity, ts, tin = _plan(
        model, x, fs, steps, spacing, t_start, t_end, timesteps, prediction_type, model_time
    )
    report = step_reporter(callback, progress)
    dts = [ts[i + 1] - ts[i] for i in range(steps)]
    for i in range(steps):
        u = velocity(x, ts[i], tin[i])
        if report is not None:
            report(StepInfo(i, steps, x, _denoised(x, u, ts[i]), t=ts[i], sigma=_sigma_ve(ts[i])))
        x = flow_euler_step(x, u, dts[i])
    return x


def _sigma_ve(t: float) -> float:
    return math.inf if t == 1.0 else t / (1.0 - t)


@register_sampler("flow_heun", family="flow", stochastic=False, order=2.0, step=flow_heun_step)
def sample_flow_heun(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: FlowSchedule | None = None,
    steps: int,
    spacing: str = "uniform",
    t_start: float = 1.0,
    t_end: float = 0.0,
    timesteps: Sequence[float] | Array | None = None,
    prediction_type: str = "flow",
    model_time: str | Callable[[float], float] = "continuous",
    noise: Noise = None,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Heun sampling of the flow ODE; the step that ends at t = 0 is an Euler step (Karras et al. 2022, Alg. 1; diffusers' FlowMatchHeunDiscreteScheduler).

    Two model evaluations per step (one for a step ending at t = 0): 2·steps − 1 with the
    default grid. Options as :func:`sample_flow_euler`.
    """
    fs = FlowSchedule() if noise_schedule is None else noise_schedule
    velocity, ts, tin = _plan(
        model, x, fs, steps, spacing, t_start, t_end, timesteps, prediction_type, model_time
    )
    report = step_reporter(callback, progress)
    dts = [ts[i + 1] - ts[i] for i in range(steps)]
    for i in range(steps):
        u = velocity(x, ts[i], tin[i])
        if report is not None:
            report(StepInfo(i, steps, x, _denoised(x, u, ts[i]), t=ts[i], sigma=_sigma_ve(ts[i])))
        x_e = flow_euler_step(x, u, dts[i])
        if ts[i + 1] == 0.0:
            x = x_e
        else:
            x = flow_heun_step(x, u, velocity(x_e, ts[i + 1], tin[i + 1]), dts[i])
    return x
