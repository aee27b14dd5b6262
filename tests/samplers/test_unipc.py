"""UniPC (refdiff.samplers.unipc): the φ-functions, the exactness of UniP / UniC on polynomial model
outputs, the orders of Zhao et al. (2023), the final step onto clean data, hooks and bad input.

Oracles: 50-digit mpmath (φ_k and the exact exponential-integrator solution by quadrature),
the exact probability-flow map of Gaussian data (convergence orders), and the B(h)-independence
of the solved coefficients (both variants must agree where the order conditions fix them).
Live-diffusers agreement: tests/peers/test_new_samplers.py.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffValueError, UnknownNameError
from refdiff.samplers import dpm_solver as D
from refdiff.samplers import unipc as U
from refdiff.samplers._vp_levels import phi, vp_levels
from tests.samplers.test_convergence_order import measured_order

mp.mp.dps = 50
NS = D.NoiseScheduleVP.linear()
DATA = A.GaussianData([0.5, -0.2], [[1.0, 0.3], [0.3, 0.5]])
EPS_MODEL = A.vp_model(DATA, NS, "eps")
LEVELS = vp_levels(NS, 8, skip_type="logSNR", t_end=0.05)


def _mp_phi(h, k):
    h = mp.mpf(h)
    return (mp.exp(h) - sum(h**j / mp.factorial(j) for j in range(k))) / h ** (k - 1)


@pytest.mark.parametrize("h", [-7.0, -2.5, -0.3, -1e-4, 1e-7, 0.01, 1.9, 2.1, 6.0])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_against_mpmath(h, k):
    assert phi(h, k) == pytest.approx(float(_mp_phi(h, k)), rel=4e-16, abs=1e-300)


def test_phi_matches_dpm_solver():
    for h in (-3.0, -0.2, 0.4, 5.0):
        assert phi(h, 2) == pytest.approx(D.phi_2(h), rel=1e-15)
        assert phi(h, 3) == pytest.approx(D.phi_3(h), rel=1e-15)


# -- exactness on polynomial model outputs ----------------------------------------------------------


def _exact(k: int, poly, form: str) -> float:
    """x_{k+1} from x_k = 1 with m(λ) = poly(λ − λ_k): (σ_t/σ_s)x + σ_t∫e^λ m (data) or (α_t/α_s)x − α_t∫e^{−λ} m (noise)."""
    s, t = LEVELS[k], LEVELS[k + 1]
    ls = mp.mpf(s.lam)
    if form == "data_prediction":
        f = lambda lam: mp.exp(lam) * poly(lam - ls)
        return float(mp.mpf(t.sigma) / s.sigma + t.sigma * mp.quad(f, [ls, t.lam]))
    f = lambda lam: mp.exp(-lam) * poly(lam - ls)
    return float(mp.mpf(t.alpha) / s.alpha - t.alpha * mp.quad(f, [ls, t.lam]))


def _apply(c_x, w, values):
    return U.unipc_update(np.ones(1), c_x, w, [np.array([float(v)]) for v in values])[0]


def _poly(deg):
    coef = [0.3, -1.1, 0.7, 0.45][: deg + 1]
    return lambda d: sum(c * d**j for j, c in enumerate(coef))


@pytest.mark.parametrize("form", U.ALGORITHM_TYPES)
@pytest.mark.parametrize("variant", U.VARIANTS)
@pytest.mark.parametrize("p", [2, 3])
def test_corrector_is_exact_for_degree_p(form, variant, p):
    """UniC-p integrates model outputs that are polynomials of degree ≤ p in λ exactly (Zhao et al. 2023, §3)."""
    k = 4
    poly = _poly(p)
    vals = [poly(LEVELS[k - j].lam - LEVELS[k].lam) for j in range(p)]
    c_x, w = U.unic_coefficients(LEVELS, k, p, variant=variant, algorithm_type=form)
    got = _apply(c_x, w, vals + [poly(LEVELS[k + 1].lam - LEVELS[k].lam)])
    assert got == pytest.approx(_exact(k, poly, form), rel=1e-12)


@pytest.mark.parametrize("form", U.ALGORITHM_TYPES)
def test_predictor_order3_is_exact_for_quadratics(form):
    k, poly = 4, _poly(2)
    vals = [poly(LEVELS[k - j].lam - LEVELS[k].lam) for j in range(3)]
    c_x, w = U.unip_coefficients(LEVELS, k, 3, algorithm_type=form)
    assert _apply(c_x, w, vals) == pytest.approx(_exact(k, poly, form), rel=1e-12)


def test_the_fixed_halves_are_where_the_variants_differ():
    """UniP-2 and UniC-1 use a = 1/2 (both peers) instead of solving the order condition, so they are
    exact only for constants and bh1 ≠ bh2 there; wherever the coefficients are solved the two
    B(h) give the same update."""
    k, lin = 4, _poly(1)
    for fn, p in ((U.unip_coefficients, 2), (U.unic_coefficients, 1)):
        c1, w1 = fn(LEVELS, k, p, variant="bh1")
        c2, w2 = fn(LEVELS, k, p, variant="bh2")
        assert not np.allclose(w1, w2, rtol=1e-6)
        vals = [lin(LEVELS[k - j].lam - LEVELS[k].lam) for j in range(len(w1))]
        if fn is U.unic_coefficients:
            vals = [lin(0.0), lin(LEVELS[k + 1].lam - LEVELS[k].lam)]
        assert abs(_apply(c2, w2, vals) - _exact(k, lin, "data_prediction")) > 1e-8
        assert _apply(c2, w2, [0.3] * len(w2)) == pytest.approx(
            _exact(k, lambda d: 0.3, "data_prediction"), rel=1e-13
        )
    for fn, p in ((U.unip_coefficients, 3), (U.unic_coefficients, 2), (U.unic_coefficients, 3)):
        assert np.allclose(
            fn(LEVELS, k, p, variant="bh1")[1],
            fn(LEVELS, k, p, variant="bh2")[1],
            rtol=1e-12,
            atol=1e-14,
        )


# -- convergence orders (exact flow of Gaussian data, linear VP, t 1 → 0.5, ladder 96–384) ----------


@pytest.mark.parametrize(
    "name, options, order",
    [
        ("unipc_bh2", {"lower_order_final": "never"}, 3),  # UniPC-2: p + 1
        ("unipc_bh1", {"lower_order_final": "never"}, 3),
        ("unipc_bh2", {"lower_order_final": "never", "order": 3}, 4),  # UniPC-3: p + 1
        ("unipc_bh2", {"lower_order_final": "never", "algorithm_type": "noise_prediction"}, 3),
        ("unipc_bh2", {"lower_order_final": "never", "use_corrector": False}, 2),  # UniP-2 alone
        ("unipc_bh2", {"order": 1}, 2),  # UniPC-1
    ],
)
def test_orders(name, options, order):
    measured, errs = measured_order(name, **options)
    assert errs[0] > errs[1] > errs[2] > 1e-13
    assert abs(measured - order) < 0.15, (measured, errs)


# -- the loop --------------------------------------------------------------------------------------


def test_final_sigma_zero_returns_the_last_data_prediction_without_extra_evaluation():
    calls, seen = [], []
    model = lambda x, t: calls.append(1) or EPS_MODEL(x, t)
    x = np.random.default_rng(0).standard_normal((4, 2))
    out = U.sample_unipc(
        model, x, noise_schedule=NS, steps=5, final_sigma="zero", callback=seen.append
    )
    assert len(calls) == 5 and [s.i for s in seen] == [0, 1, 2, 3, 4]
    assert np.array_equal(out, seen[-1].denoised)
    # the same grid by explicit times
    ts = [s.t for s in seen]
    again = U.sample_unipc(
        EPS_MODEL, x, noise_schedule=NS, steps=5, final_sigma="zero", timesteps=ts
    )
    assert np.array_equal(out, again)


def test_one_model_evaluation_per_step_and_corrector_switches():
    x = np.random.default_rng(1).standard_normal((3, 2))
    calls = []
    model = lambda x, t: calls.append(float(t[0])) or EPS_MODEL(x, t)
    full = U.sample_unipc(model, x, noise_schedule=NS, steps=6)
    assert len(calls) == 6
    none = U.sample_unipc(EPS_MODEL, x, noise_schedule=NS, steps=6, use_corrector=False)
    some = U.sample_unipc(
        EPS_MODEL, x, noise_schedule=NS, steps=6, disable_corrector=[0, 1, 2, 3, 4]
    )
    assert np.array_equal(none, some) and not np.allclose(none, full, rtol=1e-8)


def test_bad_input_messages():
    x = np.zeros((2, 2))
    kw = dict(noise_schedule=NS, steps=4)
    with pytest.raises(RefdiffValueError, match=r"order=4 is invalid: expected 1, 2 or 3"):
        U.sample_unipc(EPS_MODEL, x, order=4, **kw)
    with pytest.raises(
        UnknownNameError, match=r"variant='bh3' is not a known UniPC B\(h\) variant"
    ):
        U.sample_unipc(EPS_MODEL, x, variant="bh3", **kw)
    with pytest.raises(
        RefdiffValueError, match=r"variant='bh2' is invalid: the sampler 'unipc_bh1' fixes variant"
    ):
        U.sample_unipc_bh1(EPS_MODEL, x, variant="bh2", **kw)
    with pytest.raises(
        UnknownNameError, match=r"algorithm_type='dpmsolver\+\+' is not a known UniPC algorithm"
    ):
        U.sample_unipc(EPS_MODEL, x, algorithm_type="dpmsolver++", **kw)
    with pytest.raises(
        RefdiffValueError, match=r"use_corrector='yes' is invalid: expected True or False"
    ):
        U.sample_unipc(EPS_MODEL, x, use_corrector="yes", **kw)
    with pytest.raises(
        RefdiffValueError,
        match=r"disable_corrector=3 is invalid: expected a sequence of step indices",
    ):
        U.sample_unipc(EPS_MODEL, x, disable_corrector=3, **kw)
    with pytest.raises(
        RefdiffValueError, match=r"timesteps=.* is invalid: expected 5 times for steps=4"
    ):
        U.sample_unipc(EPS_MODEL, x, timesteps=[1.0, 0.5, 0.1], **kw)
    with pytest.raises(
        RefdiffValueError, match=r"timesteps=.* is invalid: give either timesteps= or t_start="
    ):
        U.sample_unipc(EPS_MODEL, x, timesteps=[1.0, 0.8, 0.5, 0.3, 0.1], t_start=0.9, **kw)
    with pytest.raises(
        RefdiffValueError, match=r"t_end=0.9 is invalid: must be below t_start = 0.5"
    ):
        U.sample_unipc(EPS_MODEL, x, t_start=0.5, t_end=0.9, **kw)
    with pytest.raises(
        RefdiffValueError, match=r"model_time='dpm_solver' is invalid: the 'dpm_solver' discrete"
    ):
        U.sample_unipc(EPS_MODEL, x, model_time="dpm_solver", **kw)
    with pytest.raises(UnknownNameError, match=r"model_type='mean' is not a known prediction type"):
        U.sample_unipc(EPS_MODEL, x, model_type="mean", **kw)
    with pytest.raises(
        RefdiffValueError,
        match=r"noise_schedule=.* is invalid: expected a refdiff.samplers."
        r"dpm_solver.NoiseScheduleVP",
    ):
        U.sample_unipc(EPS_MODEL, x, noise_schedule="linear", steps=4)
    with pytest.raises(UnknownNameError, match=r"final_sigma='min' is not a known final level"):
        U.sample_unipc(EPS_MODEL, x, final_sigma="min", **kw)
    with pytest.raises(RefdiffValueError, match=r"t=1.0 is invalid: λ is -inf there"):
        U.sample_unipc(
            EPS_MODEL,
            x,
            noise_schedule=D.NoiseScheduleVP.from_sde(
                __import__("refdiff.samplers.flow", fromlist=["FlowSchedule"]).FlowSchedule()
            ),
            steps=3,
        )
    assert math.isfinite(float(U.sample_unipc(EPS_MODEL, x, **kw)[0, 0]))
