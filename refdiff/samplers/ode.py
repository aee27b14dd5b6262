"""Probability-flow ODE samplers: fixed-step Euler and Heun, and adaptive RK45 through SciPy (oracle-side).

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations"
(arXiv:2011.13456v2), Eq. 13: dx/dt = f(x, t) - ½ g(t)² ∇ log p_t(x), solved backwards from
t = T to t = eps. score_sde's ``get_ode_sampler`` uses ``scipy.integrate.solve_ivp`` with RK45,
rtol = atol = 1e-5 and eps = 1e-3; :func:`sample_ode_rk45` does the same (NumPy arrays only: SciPy
integrates on the host). Euler and Heun step on the grid t_i = linspace(T, eps, N + 1).

Family ``"sde"``: ``fn(score_fn, x_T, *, sde, steps, noise=None, **options)``; the solvers are
deterministic and ignore ``noise``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .._errors import check_int, check_real, fail
from .._xp import array_namespace, device_of, is_numpy
from . import register_sampler
from ._common import call_progress, check_output

__all__ = ["probability_flow", "ode_euler_step", "ode_heun_step", "ode_time_grid",
           "sample_ode_euler", "sample_ode_heun", "sample_ode_rk45", "denoise_step"]


def _check_sde(sde):
    from ..sde import SDE
    if not isinstance(sde, SDE):
        fail("sde", sde, "expected a refdiff.sde SDE (VPSDE, SubVPSDE or VESDE)")
    return sde


def probability_flow(sde, score_fn: Callable, x, t: float):
    """dx/dt = f(x, t) - ½ g(t)² s(x, t) at the scalar time t (Song et al. 2021, Eq. 13)."""
    xp = array_namespace(x)
    t_arr = xp.full((x.shape[0],), float(t), dtype=x.dtype, device=device_of(x))

    def checked(x_, t_):
        return check_output(score_fn(x_, t_), x_, name="score_fn output")

    return sde.reverse(checked, probability_flow=True).sde(x, t_arr)[0]


def ode_euler_step(sde, score_fn: Callable, x, t: float, dt: float):
    """Euler step x + F(x, t) dt on the probability-flow ODE (dt < 0 when sampling)."""
    return x + probability_flow(sde, score_fn, x, t) * dt


def ode_heun_step(sde, score_fn: Callable, x, t: float, dt: float):
    """Heun (explicit trapezoidal) step x + ½[F(x, t) + F(x + F dt, t + dt)] dt (Karras et al. 2022, Alg. 1 in t)."""
    d1 = probability_flow(sde, score_fn, x, t)
    x_euler = x + d1 * dt
    d2 = probability_flow(sde, score_fn, x_euler, t + dt)
    return x + (d1 + d2) * (0.5 * dt)


def denoise_step(sde, score_fn: Callable, x, t: float):
    """One noise-free reverse-diffusion step at t (score_sde's ODE-sampler ``denoise``: x - f_i + G_i² s)."""
    xp = array_namespace(x)
    t_arr = xp.full((x.shape[0],), float(t), dtype=x.dtype, device=device_of(x))

    def checked(x_, t_):
        return check_output(score_fn(x_, t_), x_, name="score_fn output")

    rev_f, _ = sde.reverse(checked).discretize(x, t_arr)
    return x - rev_f


def ode_time_grid(sde, steps: int, *, eps: float = 1e-3) -> list[float]:
    """The N + 1 times linspace(T, eps, N + 1) as host floats."""
    steps = check_int("steps", steps, minimum=1)
    T = float(sde.T)
    eps = check_real("eps", eps, lo=0.0, hi=T, hi_open=True)
    ts = np.linspace(T, eps, steps + 1)
    ts[0], ts[-1] = T, eps
    return [float(v) for v in ts]


def _fixed_step(step_fn, score_fn, x_T, sde, steps, eps, denoise, progress):
    _check_sde(sde)
    if getattr(x_T, "ndim", 0) < 1:
        fail("x_T", x_T, "expected an array with the batch axis first (ndim >= 1)")
    if not isinstance(denoise, bool):
        fail("denoise", denoise, "expected True or False")
    ts = ode_time_grid(sde, steps, eps=eps)
    x = x_T
    for i in range(len(ts) - 1):
        x = step_fn(sde, score_fn, x, ts[i], ts[i + 1] - ts[i])
        call_progress(progress, i + 1, len(ts) - 1)
    if denoise:
        x = denoise_step(sde, score_fn, x, ts[-1])
    return x


@register_sampler("ode_euler", family="sde", stochastic=False, order=1, step=ode_euler_step)
def sample_ode_euler(score_fn: Callable, x_T, *, sde, steps: int, noise=None, eps: float = 1e-3,
                     denoise: bool = False, progress: Callable | None = None):
    """Euler's method on the probability-flow ODE from T to eps (Song et al. 2021, Eq. 13).

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
    progress : callable, optional
    """
    return _fixed_step(ode_euler_step, score_fn, x_T, sde, steps, eps, denoise, progress)


@register_sampler("ode_heun", family="sde", stochastic=False, order=2, step=ode_heun_step)
def sample_ode_heun(score_fn: Callable, x_T, *, sde, steps: int, noise=None, eps: float = 1e-3,
                    denoise: bool = False, progress: Callable | None = None):
    """Heun's method (2 score evaluations per step) on the probability-flow ODE (Song et al. 2021, Eq. 13).

    Same parameters as :func:`sample_ode_euler`.
    """
    return _fixed_step(ode_heun_step, score_fn, x_T, sde, steps, eps, denoise, progress)


@register_sampler("ode_rk45", family="sde", stochastic=False, step=probability_flow)
def sample_ode_rk45(score_fn: Callable, x_T, *, sde, steps: int | None = None, noise=None,
                    eps: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5,
                    method: str = "RK45", denoise: bool = False, return_nfe: bool = False):
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

    Returns
    -------
    array, or (array, int) with ``return_nfe``.
    """
    import scipy.integrate

    _check_sde(sde)
    if not isinstance(x_T, np.ndarray) or not is_numpy(array_namespace(x_T)):
        fail("x_T", type(x_T).__name__, "sample_ode_rk45 is oracle-side: expected a NumPy array "
             "(SciPy integrates on the host); use ode_euler / ode_heun on other backends")
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

    def rhs(t, y):
        nfe[0] += 1
        x = np.asarray(y, dtype=dtype).reshape(shape)
        return np.asarray(probability_flow(sde, score_fn, x, t), dtype=np.float64).reshape(-1)

    sol = scipy.integrate.solve_ivp(rhs, (T, eps), np.asarray(x_T, dtype=np.float64).reshape(-1),
                                    rtol=rtol, atol=atol, method=method)
    if not sol.success:
        raise RuntimeError(f"solve_ivp did not reach t = {eps!r}: {sol.message}")
    x = np.asarray(sol.y[:, -1], dtype=dtype).reshape(shape)
    if denoise:
        x = denoise_step(sde, score_fn, x, eps)
        nfe[0] += 1
    return (x, nfe[0]) if return_nfe else x
