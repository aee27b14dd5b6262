"""DEIS: the diffusion exponential integrator sampler with multistep polynomial extrapolation of ε̂.

Zhang & Chen (2023), "Fast Sampling of Diffusion Models with Exponential Integrator"
(arXiv:2204.13902; the exponential integrator of §3 and the multistep ρAB-DEIS of §4, where in
ρ = σ_t/α_t the probability-flow ODE is dy/dρ = ε̂ for y = x/α). The model
values at the last p grid points are interpolated by a polynomial and the ODE is integrated
exactly against it:

* ``solver_type="logrho"`` (diffusers' DEISMultistepScheduler): the polynomial is in log ρ = −λ,
  so x_t = (α_t/α_s)·x_s − σ_t Σ_j m_j Σ_q c_jq·q!·h^q·φ_{q+1}(h), with L_j(τ) = Σ_q c_jq τ^q
  the Lagrange basis in τ = λ − λ_s and h = λ_t − λ_s (φ as in DPM-Solver, Lu et al. 2022a);
* ``solver_type="rhoab"`` (ρAB-DEIS): the polynomial is in ρ itself,
  x_t = α_t·(x_s/α_s + Σ_j m_j ∫_{ρ_s}^{ρ_t} L_j(ρ) dρ).

Order 1 is DDIM in both. Coefficients are host floats computed once per call.

Family ``"vp"``: ``fn(model, x_T, *, noise_schedule, steps, noise=None, callback=None,
progress=None, **options)``; the options shared with UniPC (grid, ``timesteps=``,
``final_sigma``, ``model_time``) are described in :mod:`refdiff.samplers.unipc`.
``lower_order_final`` defaults to ``"diffusers"`` (lower orders at the last steps when steps < 15).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._errors import check_choice, check_int, fail
from .._typing import Array, Noise
from ..parameterizations import x0_from_prediction
from . import register_sampler
from ._common import StepInfo, step_reporter
from ._vp_levels import Level, phi, prediction_fn, vp_levels
from .dpm_solver import NoiseScheduleVP, multistep_step_orders

if TYPE_CHECKING:
    from .dpm_solver import ModelTime

__all__ = ["SOLVER_TYPES", "lagrange_basis", "deis_coefficients", "deis_update", "sample_deis"]

SOLVER_TYPES = ("logrho", "rhoab")


def lagrange_basis(nodes: Sequence[float] | np.ndarray) -> list[np.ndarray]:
    """Coefficients (increasing powers) of the Lagrange basis polynomials L_j of distinct ``nodes``."""
    nodes = [float(v) for v in nodes]
    out = []
    for j, nj in enumerate(nodes):
        others = [v for i, v in enumerate(nodes) if i != j]
        denom = math.prod(nj - v for v in others)
        out.append(np.poly(others)[::-1] / denom if others else np.array([1.0]))
    return out


def deis_coefficients(
    levels: list[Level], k: int, order: int, *, solver_type: str = "logrho"
) -> tuple[float, list[float]]:
    """(c_x, [w_0, …, w_{p−1}]) of one DEIS-p step x_{k+1} = c_x·x_k + Σ_j w_j·ε̂_{k−j} (Zhang & Chen 2023, §4)."""
    check_choice("solver_type", solver_type, SOLVER_TYPES, "DEIS solver type")
    order = check_int("order", order, minimum=1)
    if order > 3 or order > k + 1:
        fail("order", order, f"expected 1..3 and at most k + 1 = {k + 1} earlier model values")
    s, t = levels[k], levels[k + 1]
    if t.sigma == 0.0:  # onto clean data: x̂0 = (x − σ_s ε̂)/α_s
        return 1.0 / s.alpha, [-s.sigma / s.alpha]
    c_x = t.alpha / s.alpha
    h = t.lam - s.lam
    if solver_type == "logrho":
        basis = lagrange_basis([levels[k - j].lam - s.lam for j in range(order)])
        integrals = [math.factorial(q) * h**q * phi(h, q + 1) for q in range(order)]
        return c_x, [
            -t.sigma * float(sum(c[q] * integrals[q] for q in range(len(c)))) for c in basis
        ]
    rho_s = s.sigma / s.alpha
    # offsets ρ_j − ρ_s = ρ_s (e^{−(λ_j − λ_s)} − 1), without cancellation
    basis = lagrange_basis([rho_s * math.expm1(-(levels[k - j].lam - s.lam)) for j in range(order)])
    H = rho_s * math.expm1(-h)
    return c_x, [
        t.alpha * float(sum(c[q] * H ** (q + 1) / (q + 1) for q in range(len(c)))) for c in basis
    ]


def deis_update(x: Array, c_x: float, weights: list[float], eps_list: list[Array]) -> Array:
    """c_x·x + Σ_j w_j·ε̂_j: one DEIS step from its host-float coefficients (Zhang & Chen 2023, §4)."""
    if len(weights) != len(eps_list):
        fail("weights", weights, f"expected one weight per model value ({len(eps_list)})")
    out = x * c_x
    for w, m in zip(weights, eps_list):
        out = out + w * m
    return out


@register_sampler("deis", family="vp", stochastic=False, order=2.0, step=deis_update)
def sample_deis(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: NoiseScheduleVP,
    steps: int,
    order: int = 2,
    solver_type: str = "logrho",
    model_type: str = "eps",
    skip_type: str = "time_uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    timesteps: Sequence[float] | Array | None = None,
    final_sigma: str = "t_end",
    lower_order_final: str = "diffusers",
    model_time: ModelTime = "continuous",
    noise: Noise = None,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Multistep DEIS-p sampling from t_start to t_end (Zhang & Chen 2023, §4, ρAB-DEIS; diffusers' "logrho").

    Parameters
    ----------
    model, x, noise_schedule, steps, model_type, skip_type, t_start, t_end, timesteps,
    final_sigma, model_time, noise, callback, progress
        As :func:`refdiff.samplers.unipc.sample_unipc`.
    order : {1, 2, 3}
        Number of model values in the extrapolation (warm-up with lower orders).
    solver_type : {"logrho", "rhoab"}
        The polynomial's variable: log ρ (diffusers) or ρ (ρAB-DEIS).
    lower_order_final : {"diffusers", "dpm_solver", "always", "never", "euler_at_final"}

    Returns
    -------
    array
        The sample at t_end.
    """
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")
    order = check_int("order", order, minimum=1)
    if order > 3:
        fail("order", order, "expected 1, 2 or 3")
    check_choice("solver_type", solver_type, SOLVER_TYPES, "DEIS solver type")
    fn = prediction_fn(model, model_type, "eps")
    levels = vp_levels(
        noise_schedule,
        steps,
        skip_type=skip_type,
        t_start=t_start,
        t_end=t_end,
        timesteps=timesteps,
        final_sigma=final_sigma,
        model_time=model_time,
    )
    orders = multistep_step_orders(steps, order, lower_order_final)
    if levels[-1].sigma == 0.0:
        orders[-1] = 1
    plan = [deis_coefficients(levels, k, orders[k], solver_type=solver_type) for k in range(steps)]
    report = step_reporter(callback, progress)
    eps: list[Array] = []
    for k in range(steps):
        lv = levels[k]
        eps = (eps + [fn(x, lv)])[-order:]
        if report is not None:
            report(
                StepInfo(
                    k,
                    steps,
                    x,
                    x0_from_prediction(eps[-1], x, lv.alpha, lv.sigma, "eps"),
                    t=lv.t,
                    sigma=lv.sigma / lv.alpha,
                )
            )
        c_x, w = plan[k]
        x = deis_update(x, c_x, w, eps[::-1][: len(w)])
    return x
