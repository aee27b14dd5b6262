"""DEIS (refdiff.samplers.deis): exact integration of polynomial ε̂, DDIM at order 1, convergence
orders, the warm-up's effect on order 3, and bad input.

Oracles: 50-digit mpmath quadrature of the exponential-integrator solution (Zhang & Chen 2023,
Eq. 9 / Lu et al. 2022a, Eq. 3.4), refdiff's DPM-Solver-1 (= DDIM, an independent derivation), and
the exact probability-flow map of Gaussian data. Live diffusers: tests/peers/test_new_samplers.py.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffValueError, UnknownNameError
from refdiff.samplers import deis as E
from refdiff.samplers import dpm_solver as D
from refdiff.samplers._vp_levels import vp_levels
from refdiff.samplers.flow import FlowSchedule
from tests.samplers.test_convergence_order import measured_order

mp.mp.dps = 50
NS = D.NoiseScheduleVP.linear()
DATA = A.GaussianData([0.5, -0.2], [[1.0, 0.3], [0.3, 0.5]])
EPS_MODEL = A.vp_model(DATA, NS, "eps")
LEVELS = vp_levels(NS, 8, skip_type="logSNR", t_end=0.05)


def test_lagrange_basis():
    nodes = [0.0, -0.4, -1.1]
    for j, c in enumerate(E.lagrange_basis(nodes)):
        vals = [sum(ck * v**q for q, ck in enumerate(c)) for v in nodes]
        assert np.allclose(vals, np.eye(3)[j], atol=1e-14)


def _apply(c_x, w, vals):
    return E.deis_update(np.ones(1), c_x, w, [np.array([float(v)]) for v in vals])[0]


@pytest.mark.parametrize("p", [1, 2, 3])
def test_logrho_is_exact_for_polynomials_in_lambda(p):
    """logrho-p integrates ε̂(λ) of degree p − 1 exactly: x_t = (α_t/α_s)x_s − α_t∫e^{−λ}ε̂ dλ."""
    k = 4
    coef = [0.3, -1.1, 0.7][:p]
    poly = lambda d: sum(c * d**j for j, c in enumerate(coef))
    s, t = LEVELS[k], LEVELS[k + 1]
    vals = [poly(LEVELS[k - j].lam - s.lam) for j in range(p)]
    c_x, w = E.deis_coefficients(LEVELS, k, p, solver_type="logrho")
    exact = mp.mpf(t.alpha) / s.alpha - t.alpha * mp.quad(
        lambda lam: mp.exp(-lam) * poly(lam - s.lam), [s.lam, t.lam]
    )
    assert _apply(c_x, w, vals) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_rhoab_is_exact_for_polynomials_in_rho(p):
    """ρAB-p integrates ε̂(ρ) of degree p − 1 exactly: x_t/α_t = x_s/α_s + ∫ε̂ dρ (ρ = σ/α)."""
    k = 4
    coef = [0.3, -1.1, 0.7][:p]
    rho = lambda lv: mp.mpf(lv.sigma) / lv.alpha
    s, t = LEVELS[k], LEVELS[k + 1]
    poly = lambda r: sum(c * (r - rho(s)) ** j for j, c in enumerate(coef))
    vals = [poly(rho(LEVELS[k - j])) for j in range(p)]
    c_x, w = E.deis_coefficients(LEVELS, k, p, solver_type="rhoab")
    exact = t.alpha * (1 / mp.mpf(s.alpha) + mp.quad(poly, [rho(s), rho(t)]))
    assert _apply(c_x, w, vals) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("solver_type", E.SOLVER_TYPES)
def test_order_one_is_ddim(solver_type):
    x = np.random.default_rng(0).standard_normal((3, 2))
    out = E.sample_deis(EPS_MODEL, x, noise_schedule=NS, steps=7, order=1, solver_type=solver_type)
    ref = D.sample_dpm_solver_1(EPS_MODEL, x, noise_schedule=NS, steps=7)
    assert np.allclose(out, ref, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize(
    "options, order",
    [
        ({}, 2),
        ({"order": 3}, 3),
        ({"solver_type": "rhoab"}, 2),
        ({"order": 3, "solver_type": "rhoab"}, 3),
        ({"order": 1}, 1),
    ],
)
def test_orders(options, order):
    measured, errs = measured_order("deis", **options)
    assert errs[0] > errs[1] > errs[2] > 1e-13
    assert abs(measured - order) < 0.15, (measured, errs)


def test_first_order_warm_up_caps_order_3_at_2():
    """The warm-up's first step is DDIM (local error O(h²)), so DEIS-3 (diffusers' warm-up) is
    globally second order; on the rectified-flow path from t = 0.95 the cap is visible."""
    fs = FlowSchedule()
    ns = D.NoiseScheduleVP.from_sde(fs)
    eps, x0 = A.vp_model(DATA, fs, "eps"), A.vp_model(DATA, fs, "x0")
    w, Um = np.linalg.eigh(np.asarray(DATA.cov))
    mu = np.asarray(DATA.mean)
    steps = [96, 192, 384]
    errs = []
    for n in steps:
        run = lambda xT, nz: E.sample_deis(
            lambda x, t: eps(x, t) - x0(x, t),
            xT,
            noise_schedule=ns,
            steps=n,
            order=3,
            model_type="flow",
            t_start=0.95,
            t_end=0.05,
            skip_type="logSNR",
        )
        law = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=0)
        c0, c1 = 0.05**2 * w + 0.95**2, 0.95**2 * w + 0.05**2
        M = Um @ np.diag(np.sqrt(c1 / c0)) @ Um.T
        errs.append(
            np.linalg.norm(law.M - M) + np.linalg.norm(law.c - (0.95 * mu - M @ (0.05 * mu)))
        )
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert 1.9 < slope < 2.3, (slope, errs)


def test_lower_order_final_counts_model_evaluations_once_per_step():
    calls = []
    x = np.zeros((1, 2))
    E.sample_deis(
        lambda x, t: calls.append(1) or EPS_MODEL(x, t), x, noise_schedule=NS, steps=5, order=3
    )
    assert len(calls) == 5
    a = E.sample_deis(EPS_MODEL, x + 1, noise_schedule=NS, steps=5, order=3)
    b = E.sample_deis(
        EPS_MODEL, x + 1, noise_schedule=NS, steps=5, order=3, lower_order_final="never"
    )
    assert not np.allclose(a, b, rtol=1e-9)


def test_bad_input_messages():
    x = np.zeros((2, 2))
    kw = dict(noise_schedule=NS, steps=4)
    with pytest.raises(
        UnknownNameError, match=r"solver_type='tab' is not a known DEIS solver type"
    ):
        E.sample_deis(EPS_MODEL, x, solver_type="tab", **kw)
    with pytest.raises(RefdiffValueError, match=r"order=4 is invalid: expected 1, 2 or 3"):
        E.sample_deis(EPS_MODEL, x, order=4, **kw)
    with pytest.raises(RefdiffValueError, match=r"order=0 is invalid"):
        E.sample_deis(EPS_MODEL, x, order=0, **kw)
    with pytest.raises(
        UnknownNameError, match=r"lower_order_final='sometimes' is not a known rule"
    ):
        E.sample_deis(EPS_MODEL, x, lower_order_final="sometimes", **kw)
    with pytest.raises(
        RefdiffValueError, match=r"order=3 is invalid: expected 1..3 and at most k \+ 1 = 2"
    ):
        E.deis_coefficients(LEVELS, 1, 3)
    with pytest.raises(
        RefdiffValueError, match=r"x=.* is invalid: expected an array with the batch axis"
    ):
        E.sample_deis(EPS_MODEL, np.float64(1.0), **kw)


def test_final_sigma_zero_returns_the_last_data_prediction():
    seen = []
    x = np.random.default_rng(3).standard_normal((4, 2))
    out = E.sample_deis(
        EPS_MODEL, x, noise_schedule=NS, steps=6, order=3, final_sigma="zero", callback=seen.append
    )
    assert len(seen) == 6
    assert np.allclose(out, seen[-1].denoised, rtol=1e-14, atol=1e-15)
