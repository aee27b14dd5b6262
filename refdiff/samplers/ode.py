"""Probability-flow ODE samplers: fixed-step Euler and Heun, and adaptive RK45 through SciPy (oracle-side).

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations"
(arXiv:2011.13456v2), Eq. 13: dx/dt = f(x, t) - ½ g(t)² ∇ log p_t(x), solved backwards from
t = T to t = eps. score_sde's ``get_ode_sampler`` uses ``scipy.integrate.solve_ivp`` with RK45,
rtol = atol = 1e-5 and eps = 1e-3; :func:`sample_ode_rk45` does the same (NumPy arrays only: SciPy
integrates on the host). Euler and Heun step on the grid t_i = linspace(T, eps, N + 1), with the
drift coefficients f(x, t) = a(t) x and ½ g(t)² computed once per call as host floats (the step
plan; ``sde.drift_coefficients``), so each step is array arithmetic on x.

Family ``"sde"``: ``fn(score_fn, x_T, *, sde, steps, noise=None, **options)``; the solvers are
deterministic and ignore ``noise``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .._errors import check_int, check_real, fail
from .._typing import Array, Noise
from .._xp import array_namespace, is_numpy
from ..sde import SDE
from . import register_sampler
from ._common import StepInfo, batch_full, check_output, step_reporter
from .score_sde import (
    _check_bool,
    _check_sde,
    _check_x_T,
    _linear_drift,
    predictor_coefficients,
    predictor_update,
)

__all__ = [
    "probability_flow",
    "probability_flow_coefficients",
    "ode_euler_step",
    "ode_heun_step",
    "ode_time_grid",
    "sample_ode_euler",
    "sample_ode_heun",
    "sample_ode_rk45",
    "denoise_step",
]


#: The solve_ivp methods :func:`sample_ode_rk45` accepts.
_IVP_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def _score(score_fn: Callable[[Array, Array], Array], x: Array, t: float) -> Array:
    return check_output(score_fn(x, batch_full(x, t)), x, name="score_fn output")


def probability_flow_coefficients(
    sde: SDE, ts: Sequence[float]
) -> list[tuple[float, float]] | None:
    """(a, h) per time with F(x, t) = a x - h s(x, t), h = ½ g² (Song et al. 2021, Eq. 13), host floats.

    None for an SDE whose drift is not linear in x (then :func:`probability_flow` evaluates
    ``sde.sde`` at each step).
    """
    if not _linear_drift(sde):
        return None
    a, g = sde.drift_coefficients(ts)
    return [(float(ai), float(hi)) for ai, hi in zip(a, g * g * 0.5)]


def _flow(x: Array, score: Array, a: float, h: float) -> Array:
    """F = a x - h s (the array part of the probability-flow drift)."""
    return (a * x - h * score) if a != 0.0 else (-h) * score


def _flow_at(
    sde: SDE,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    t: float,
    coef: tuple[float, float] | None,
) -> Array:
    if coef is None:

        def checked(x_: Array, t_: Array) -> Array:
            return check_output(score_fn(x_, t_), x_, name="score_fn output")

        return sde.reverse(checked, probability_flow=True).sde(x, batch_full(x, t))[0]
    return _flow(x, _score(score_fn, x, t), *coef)


def probability_flow(
    sde: SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: float
) -> Array:
    """dx/dt = f(x, t) - ½ g(t)² s(x, t) at the scalar time t (Song et al. 2021, Eq. 13)."""
    coef = probability_flow_coefficients(_check_sde(sde), [float(t)])
    return _flow_at(sde, score_fn, x, float(t), None if coef is None else coef[0])


def _euler(
    sde: SDE,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    t: float,
    dt: float,
    c1: tuple[float, float] | None,
) -> Array:
    return x + _flow_at(sde, score_fn, x, t, c1) * dt


def _heun(
    sde: SDE,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    t: float,
    dt: float,
    c1: tuple[float, float] | None,
    c2: tuple[float, float] | None,
) -> Array:
    d1 = _flow_at(sde, score_fn, x, t, c1)
    x_euler = x + d1 * dt
    d2 = _flow_at(sde, score_fn, x_euler, t + dt, c2)
    return x + (d1 + d2) * (0.5 * dt)


def _coefs(sde: SDE, ts: Sequence[float]) -> Sequence[tuple[float, float] | None]:
    coef = probability_flow_coefficients(sde, ts)
    return [None] * len(ts) if coef is None else coef


def ode_euler_step(
    sde: SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: float, dt: float
) -> Array:
    """Euler step x + F(x, t) dt on the probability-flow ODE (dt < 0 when sampling)."""
    (c1,) = _coefs(_check_sde(sde), [float(t)])
    return _euler(sde, score_fn, x, float(t), dt, c1)


def ode_heun_step(
    sde: SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: float, dt: float
) -> Array:
    """Heun (explicit trapezoidal) step x + ½[F(x, t) + F(x + F dt, t + dt)] dt (Karras et al. 2022, Alg. 1 in t)."""
    c1, c2 = _coefs(_check_sde(sde), [float(t), float(t) + dt])
    return _heun(sde, score_fn, x, float(t), dt, c1, c2)


def denoise_step(sde: SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: float) -> Array:
    """One noise-free reverse-diffusion step at t (score_sde's ODE-sampler ``denoise``: x - f_i + G_i² s)."""
    ((p, q, _),) = predictor_coefficients("reverse_diffusion", _check_sde(sde), [float(t)])
    return predictor_update(x, _score(score_fn, x, float(t)), p, q, 0.0)[0]


def ode_time_grid(sde: SDE, steps: int, *, eps: float = 1e-3) -> list[float]:
    """The N + 1 times linspace(T, eps, N + 1) as host floats."""
    steps = check_int("steps", steps, minimum=1)
    T = float(sde.T)
    eps = check_real("eps", eps, lo=0.0, hi=T, hi_open=True)
    ts = np.linspace(T, eps, steps + 1)
    ts[0], ts[-1] = T, eps
    return [float(v) for v in ts]


def _fixed_step(
    heun: bool,
    score_fn: Callable[[Array, Array], Array],
    x_T: Array,
    sde: SDE,
    steps: int,
    eps: float,
    denoise: bool,
    callback: Callable[[StepInfo], object] | None,
    progress: Callable[[int, int], object] | None,
) -> Array:
    _check_sde(sde)
    _check_x_T(x_T)
    _check_bool("denoise", denoise)
    ts = ode_time_grid(sde, steps, eps=eps)
    n = len(ts) - 1
    dts = [ts[i + 1] - ts[i] for i in range(n)]
    c1 = _coefs(sde, ts[:-1])
    c2 = _coefs(sde, [ts[i] + dts[i] for i in range(n)]) if heun else None
    report = step_reporter(callback, progress)
    x = x_T
    for i in range(n):
        if report is not None:
            report(StepInfo(i, n, x, None, t=ts[i]))
        if heun:
            assert c2 is not None
            x = _heun(sde, score_fn, x, ts[i], dts[i], c1[i], c2[i])
        else:
            x = _euler(sde, score_fn, x, ts[i], dts[i], c1[i])
    if denoise:
        x = denoise_step(sde, score_fn, x, ts[-1])
    return x


_FIXED_DOC = """

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, t) -> ∇ log p_t(x)`` with t of shape (B,).
    x_T : array
        The prior sample at t = T.
    sde : refdiff.sde.SDE
    steps : int
        Number of steps N on t_i = linspace(T, eps, N + 1).
    noise
        Ignored (deterministic).
    eps : float
        Final time (score_sde: 1e-3).
    denoise : bool
        Finish with one noise-free reverse-diffusion step at eps (score_sde's ``denoise``).
    callback : callable, optional
        ``callback(info)`` at each step i with x at t_i and t = t_i (``info.denoised`` is None).
    progress : callable, optional
        ``progress(i + 1, N)`` at each step.

    Returns
    -------
    array
        The sample at t = eps.
    """


@register_sampler("ode_euler", family="sde", stochastic=False, order=1, step=ode_euler_step)
def sample_ode_euler(
    score_fn: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    sde: SDE,
    steps: int,
    noise: Noise = None,
    eps: float = 1e-3,
    denoise: bool = False,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Euler's method on the probability-flow ODE from T to eps (Song et al. 2021, Eq. 13)."""
    return _fixed_step(False, score_fn, x_T, sde, steps, eps, denoise, callback, progress)


@register_sampler("ode_heun", family="sde", stochastic=False, order=2, step=ode_heun_step)
def sample_ode_heun(
    score_fn: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    sde: SDE,
    steps: int,
    noise: Noise = None,
    eps: float = 1e-3,
    denoise: bool = False,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Heun's method (2 score evaluations per step) on the probability-flow ODE (Song et al. 2021, Eq. 13)."""
    return _fixed_step(True, score_fn, x_T, sde, steps, eps, denoise, callback, progress)


sample_ode_euler.__doc__ = (sample_ode_euler.__doc__ or "") + _FIXED_DOC
sample_ode_heun.__doc__ = (sample_ode_heun.__doc__ or "") + _FIXED_DOC


@register_sampler("ode_rk45", family="sde", stochastic=False, step=probability_flow)
def sample_ode_rk45(
    score_fn: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    sde: SDE,
    steps: int | None = None,
    noise: Noise = None,
    eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    denoise: bool = False,
    return_nfe: bool = False,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array | tuple[Array, int]:
    """Adaptive RK45 (Dormand–Prince) on the probability-flow ODE via scipy.integrate.solve_ivp (score_sde get_ode_sampler).

    Oracle-side: ``x_T`` must be a NumPy array (SciPy integrates on the host); the state is
    flattened over the whole batch as in score_sde, so the step sizes are shared by the batch.

    Parameters
    ----------
    score_fn, x_T, sde, eps, denoise
        As in :func:`sample_ode_euler` (score_sde defaults: eps = 1e-3, no denoising).
    steps
        Ignored (the solver chooses its steps); accepted for the family's calling convention.
    rtol, atol : float
        Tolerances of solve_ivp (score_sde: 1e-5 both).
    method : str
        Any solve_ivp method ("RK45" as score_sde; "DOP853" for tight tolerances).
    return_nfe : bool
        Also return the number of score evaluations.
    callback, progress : callable, optional
        Called before each accepted solver step i, with x at t_i and t = t_i; the number of steps
        is not known in advance, so ``info.n`` (and ``progress``'s total) is 0.

    Returns
    -------
    array, or (array, int) with ``return_nfe``.
    """
    import scipy.integrate  # SciPy loads only when the oracle-side solver runs

    _check_sde(sde)
    if not isinstance(x_T, np.ndarray) or not is_numpy(array_namespace(x_T)):
        fail(
            "x_T",
            type(x_T).__name__,
            "sample_ode_rk45 is oracle-side: expected a NumPy array "
            "(SciPy integrates on the host); use ode_euler / ode_heun on other backends",
        )
    if x_T.ndim < 1:
        fail("x_T", x_T, "expected an array with the batch axis first (ndim >= 1)")
    if steps is not None:
        check_int("steps", steps, minimum=1)
    rtol = check_real("rtol", rtol, lo=0.0, lo_open=True)
    atol = check_real("atol", atol, lo=0.0, lo_open=True)
    T = float(sde.T)
    eps = check_real("eps", eps, lo=0.0, hi=T, hi_open=True)
    shape, dtype = x_T.shape, x_T.dtype
    nfe = [0]

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        nfe[0] += 1
        x = np.asarray(y, dtype=dtype).reshape(shape)
        return np.asarray(probability_flow(sde, score_fn, x, t), dtype=np.float64).reshape(-1)

    y0 = np.asarray(x_T, dtype=np.float64).reshape(-1)
    report = step_reporter(callback, progress)
    if report is None:
        sol = scipy.integrate.solve_ivp(rhs, (T, eps), y0, rtol=rtol, atol=atol, method=method)
        if not sol.success:
            raise RuntimeError(f"solve_ivp did not reach t = {eps!r}: {sol.message}")
        y = sol.y[:, -1]
    else:  # solve_ivp's own loop, with a report before each accepted step
        if method not in _IVP_METHODS:
            fail("method", method, f"expected one of {', '.join(map(repr, _IVP_METHODS))}")
        solver = getattr(scipy.integrate, method)(rhs, T, y0, eps, rtol=rtol, atol=atol)
        i = 0
        while solver.status == "running":
            report(
                StepInfo(
                    i, 0, np.asarray(solver.y, dtype=dtype).reshape(shape), None, t=float(solver.t)
                )
            )
            message = solver.step()
            i += 1
        if solver.status != "finished":
            raise RuntimeError(f"solve_ivp did not reach t = {eps!r}: {message}")
        y = solver.y
    x = np.asarray(y, dtype=dtype).reshape(shape)
    if denoise:
        x = denoise_step(sde, score_fn, x, eps)
        nfe[0] += 1
    return (x, nfe[0]) if return_nfe else x
