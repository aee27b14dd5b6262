"""Convergence order of every registered deterministic sampler (registry-driven).

Each sampler with a registered ``order`` (families karras, vp, sde and the discrete DDIM) is run with the exact
model of Gaussian data N(μ, Σ) on a ladder of step counts; its output is an affine map of x_T
(read off by ``refdiff.analytic.linear_sampler_law``) and the error is the distance to the exact
probability-flow map √(C_end C_start⁻¹) (closed form, verified against SciPy DOP853 in
test_ode.py). The least-squares slope of log error against log steps must be within 0.15 of the
registered order (Euler 1, Heun 2, DPM-Solver-k k). The same measurement, with a longer ladder, is
``python benchmarks/convergence_order.py`` (table in docs/SAMPLERS.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff import schedules
from refdiff.edm import karras_sigmas
from refdiff.samplers import get_sampler, list_samplers
from refdiff.samplers.dpm_solver import NoiseScheduleVP
from refdiff.samplers.flow import FlowSchedule
from refdiff.sde import VPSDE

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
LADDER = [96, 192, 384]
DISCRETE_LADDER = [48, 96, 192]  # DDIM on a T = 1000 schedule: at most 1000 steps
T_END = 0.5
BASE = schedules.linear(1000)
#: Discrete samplers that extrapolate ε over equal index gaps (PNDM's pseudo linear multistep):
#: measured on 999, 999 − δ, …, 39 + δ onto ᾱ_39 with δ = 960/n, so that every gap is equal.
EQUAL_GAPS = ("pndm", "plms")


def flow_map(a0, s0, a1, s1):
    w, U = np.linalg.eigh(COV)
    M = U @ np.diag(np.sqrt((a1 * a1 * w + s1 * s1) / (a0 * a0 * w + s0 * s0))) @ U.T
    return M, a1 * MU - M @ (a0 * MU)


def error(name: str, n: int, **options) -> float:
    spec = get_sampler(name)
    if spec.family == "karras":
        sig = karras_sigmas(n + 1, 0.05, 10.0, append_zero=False)
        run = lambda xT, nz: spec.fn(A.karras_denoiser(DATA), xT, sigmas=sig, **options)
        M, c = flow_map(1.0, 10.0, 1.0, 0.05)
    elif spec.family == "vp":
        ns = NoiseScheduleVP.linear()
        run = lambda xT, nz: spec.fn(
            A.vp_model(DATA, ns, "eps"),
            xT,
            noise_schedule=ns,
            steps=n,
            skip_type="logSNR",
            t_end=T_END,
            **options,
        )
        M, c = flow_map(
            ns.marginal_alpha(1.0),
            ns.marginal_std(1.0),
            ns.marginal_alpha(T_END),
            ns.marginal_std(T_END),
        )
    elif spec.family == "flow":
        # rectified flow from pure noise (t = 1) to data (t = 0): the exact map N(0, I) -> N(μ, Σ)
        fs = FlowSchedule()
        eps, x0 = A.vp_model(DATA, fs, "eps"), A.vp_model(DATA, fs, "x0")
        run = lambda xT, nz: spec.fn(
            lambda x, t: eps(x, t) - x0(x, t), xT, noise_schedule=fs, steps=n, **options
        )
        M, c = flow_map(0.0, 1.0, 1.0, 0.0)
    elif spec.family == "discrete" and name in EQUAL_GAPS:
        d = 960 // n
        ab = np.asarray(BASE.alphas_cumprod)
        run = lambda xT, nz: spec.fn(
            A.discrete_model(DATA, BASE, "eps"),
            xT,
            schedule=BASE,
            timesteps=np.arange(39 + d, 1000, d),
            final_alpha_bar=float(ab[39]),
            **options,
        )
        M, c = flow_map(
            np.sqrt(ab[999]), np.sqrt(1 - ab[999]), np.sqrt(ab[39]), np.sqrt(1 - ab[39])
        )
    elif spec.family == "discrete":
        # DDIM from index 999 down to ᾱ_0 of the linear T = 1000 schedule (trailing spacing);
        # the exact map between the two (α, σ) levels does not depend on the path.
        run = lambda xT, nz: spec.fn(
            A.discrete_model(DATA, BASE, "eps"),
            xT,
            schedule=BASE,
            steps=n,
            final_alpha_bar="alpha_bar_0",
            base_schedule=BASE,
            **options,
        )
        ab = np.asarray(BASE.alphas_cumprod)
        M, c = flow_map(np.sqrt(ab[999]), np.sqrt(1 - ab[999]), np.sqrt(ab[0]), np.sqrt(1 - ab[0]))
    else:
        sde = VPSDE()
        run = lambda xT, nz: spec.fn(
            A.vp_model(DATA, sde, "score"), xT, sde=sde, steps=n, eps=T_END, **options
        )
        M, c = flow_map(
            float(sde.marginal_alpha(1.0)),
            float(sde.marginal_std(1.0)),
            float(sde.marginal_alpha(T_END)),
            float(sde.marginal_std(T_END)),
        )
    law = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=0)
    return float(np.linalg.norm(law.M - M) + np.linalg.norm(law.c - c))


def measured_order(name: str, **options) -> tuple[float, list[float]]:
    ladder = DISCRETE_LADDER if get_sampler(name).family == "discrete" else LADDER
    errs = [error(name, n, **options) for n in ladder]
    return float(-np.polyfit(np.log(ladder), np.log(errs), 1)[0]), errs


ORDERED = [
    n for n in list_samplers() if not get_sampler(n).stochastic and get_sampler(n).order is not None
]


def test_every_family_is_covered():
    fams = {get_sampler(n).family for n in ORDERED}
    assert fams >= {"karras", "vp", "sde"}
    assert {
        "karras_euler",
        "karras_heun",
        "ode_euler",
        "ode_heun",
        "dpm_solver_1",
        "dpm_solver_2",
        "dpm_solver_3",
        "dpmpp_2m",
        "dpmpp_3m",
    } <= set(ORDERED)


@pytest.mark.parametrize("name", ORDERED)
def test_measured_order_matches_registered(name):
    order, errs = measured_order(name)
    assert errs[0] > errs[1] > errs[2] > 1e-12  # well above rounding on this ladder
    assert abs(order - get_sampler(name).order) < 0.15, (order, errs)


@pytest.mark.parametrize("name", ["dpm_solver_3m", "dpmpp_3m"])
def test_dpm_solver_d2_convention_is_second_order(name):
    """DPM-Solver's and diffusers' 3M second-derivative estimate (d2_scale="dpm_solver") is half of
    what the φ3 term needs: the method converges with order 2, not 3."""
    order, _ = measured_order(name, d2_scale="dpm_solver")
    assert abs(order - 2.0) < 0.15
