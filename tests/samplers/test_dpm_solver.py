"""DPM-Solver / DPM-Solver++ against independent references.

* φ-functions against 50-digit mpmath;
* the noise schedule against mpmath closed forms and DPM-Solver's published λ-clipping facts;
* exactness on point-mass data (x̂0 = μ, so every exponential integrator is exact);
* local error orders of every update against the exact probability-flow map of Gaussian data
  (closed form x(t) = α_t μ + √(C_t C_s⁻¹)(x(s) - α_s μ), C_t = α_t²Σ + σ_t²I);
* the step-count bookkeeping of DPM-Solver's ``sample`` (orders per step, lower-order final steps,
  grids), written out from its documented rules.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

from refdiff import analytic as A
from refdiff import schedules
from refdiff.samplers import get_sampler, list_samplers
from refdiff.samplers import dpm_solver as D

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
POINT = A.GaussianData(MU, np.zeros((2, 2)))
NS = D.NoiseScheduleVP.linear()


def flow_map(ns, s: float, t: float):
    """Exact probability-flow map x(s) -> x(t) = M x(s) + c for DATA (closed form)."""
    a0, s0, a1, s1 = (
        ns.marginal_alpha(s),
        ns.marginal_std(s),
        ns.marginal_alpha(t),
        ns.marginal_std(t),
    )
    w, U = np.linalg.eigh(COV)
    M = U @ np.diag(np.sqrt((a1 * a1 * w + s1 * s1) / (a0 * a0 * w + s0 * s0))) @ U.T
    return M, a1 * MU - M @ (a0 * MU)


def eps_fn(x, t: float):
    return DATA.eps(x, NS.marginal_alpha(t), NS.marginal_std(t))


def x0_fn(x, t: float):
    return DATA.x0(x, NS.marginal_alpha(t), NS.marginal_std(t))


X = np.array([[1.0, 2.0], [-3.0, 0.5]])


# --------------------------------------------------------------------------------------------
# φ-functions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h", [1e-12, -1e-9, 1e-6, -3e-4, 0.05, -0.7, 1.0, -1.99, 2.5, -6.0, 12.0])
def test_phi_functions_match_mpmath(h):
    """φ1 = e^h - 1, φ2 = (e^h - 1 - h)/h, φ3 = (e^h - 1 - h - h²/2)/h², each within 8 ulp (no exp(h) - 1 cancellation)."""
    mp.mp.dps = 50
    hm = mp.mpf(h)
    ref = [mp.expm1(hm), (mp.expm1(hm) - hm) / hm, (mp.expm1(hm) - hm - hm * hm / 2) / hm**2]
    got = [D.phi_1(h), D.phi_2(h), D.phi_3(h)]
    for g, r in zip(got, ref):
        assert abs(mp.mpf(g) - r) <= 8 * 2.0**-52 * abs(r), (h, g, r)


def test_phi_at_zero_and_naive_cancellation():
    assert D.phi_2(0.0) == 0.0 and D.phi_3(0.0) == 0.0
    h = 1e-9
    naive = (math.exp(h) - 1.0 - h) / h  # what exp(h) - 1 would give: no correct digits
    assert abs(naive - h / 2) / (h / 2) > 1e-3
    assert D.phi_2(h) == pytest.approx(h / 2 + h * h / 6, rel=1e-15)


# --------------------------------------------------------------------------------------------
# The noise schedule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1e-4, 0.01, 0.3, 0.77, 1.0])
def test_linear_schedule_against_mpmath(t):
    mp.mp.dps = 50
    tm = mp.mpf(t)
    log_a = -(tm**2) * (mp.mpf(20) - mp.mpf("0.1")) / 4 - tm * mp.mpf("0.1") / 2
    sig = mp.sqrt(1 - mp.exp(2 * log_a))
    lam = log_a - mp.log(sig)
    assert NS.marginal_log_mean_coeff(t) == pytest.approx(float(log_a), rel=4e-16)
    assert NS.marginal_std(t) == pytest.approx(float(sig), rel=1e-15)
    assert NS.marginal_lambda(t) == pytest.approx(float(lam), rel=1e-14, abs=1e-14)
    assert NS.inverse_lambda(float(lam)) == pytest.approx(t, rel=1e-12)


def test_discrete_schedule_interpolates_log_alpha():
    """t_n = (n+1)/N carries log α = ½ log ᾱ_n exactly; between knots log α is linear in t (DPM-Solver, App. D.1)."""
    s = schedules.linear(1000)
    ns = D.NoiseScheduleVP.discrete(s)
    assert ns.total_N == 1000
    n = np.array([0, 1, 499, 998, 999])
    np.testing.assert_array_equal(
        ns.marginal_log_mean_coeff((n + 1) / 1000.0), 0.5 * np.asarray(s.log_alphas_cumprod)[n]
    )
    mid = ns.marginal_log_mean_coeff(500.5 / 1000.0)
    assert mid == pytest.approx(
        0.25 * (s.log_alphas_cumprod[499] + s.log_alphas_cumprod[500]), rel=1e-13
    )
    # the round trip through λ
    ts = np.array([0.0013, 0.25, 0.6, 0.999])
    np.testing.assert_allclose(ns.inverse_lambda(ns.marginal_lambda(ts)), ts, rtol=1e-9)
    # published constant: linear T = 1000 has λ_T = -5.0588 > -5.1, so nothing is clipped
    assert ns.marginal_lambda(1.0) == pytest.approx(-5.0588, abs=5e-5)
    assert D.NoiseScheduleVP.discrete(s, clip_lambda=None).total_N == 1000


def test_cosine_lambda_clip_as_dpm_solver():
    """Cosine T = 1000: the last five λ are -5.078, -5.365, -5.771, -6.464, -9.918 (peers.md, pitfall 7);
    DPM-Solver's numerical_clip_alpha drops the four below -5.1, leaving N' = 996 entries."""
    s = schedules.cosine(1000)
    full = D.NoiseScheduleVP.discrete(s, clip_lambda=None)
    lam = full.marginal_lambda(full.t_array[-5:])
    np.testing.assert_allclose(lam, [-5.078, -5.365, -5.771, -6.464, -9.918], atol=6e-4)
    clipped = D.NoiseScheduleVP.discrete(s, clip_lambda="dpm_solver")
    assert clipped.total_N == 996 and clipped.clip_lambda == -5.1
    assert clipped.marginal_lambda(1.0) == pytest.approx(-5.078, abs=6e-4)
    assert D.NoiseScheduleVP.discrete(s, clip_lambda=-6.0).total_N == 998
    # DPM-Solver's discrete model input (t - 1/N)·1000 with the clipped N
    assert clipped.model_input_time(1.0, "dpm_solver") == pytest.approx(995.0 / 996.0 * 1000.0)


def test_zero_terminal_snr_needs_clipping():
    s = schedules.zero_terminal_snr(schedules.linear(100))
    with pytest.raises(ValueError, match="zero terminal SNR"):
        D.NoiseScheduleVP.discrete(s, clip_lambda=None)
    assert D.NoiseScheduleVP.discrete(s).total_N < 100


# --------------------------------------------------------------------------------------------
# Grids and per-step orders (DPM-Solver's documented rules)
# --------------------------------------------------------------------------------------------


def test_time_grids():
    t = D.get_time_steps(NS, "time_uniform", 1.0, 1e-3, 4)
    np.testing.assert_allclose(t, np.linspace(1.0, 1e-3, 5), rtol=1e-15)
    t = D.get_time_steps(NS, "time_quadratic", 1.0, 1e-3, 4)
    np.testing.assert_allclose(
        np.diff(np.sqrt(t)), np.full(4, (math.sqrt(1e-3) - 1) / 4), rtol=1e-12
    )
    t = D.get_time_steps(NS, "logSNR", 1.0, 1e-3, 4)
    lam = NS.marginal_lambda(t)
    np.testing.assert_allclose(np.diff(lam), np.full(4, (lam[-1] - lam[0]) / 4), rtol=1e-10)
    assert t[0] == 1.0 and t[-1] == 1e-3


@pytest.mark.parametrize(
    "steps,order,expected",
    [
        (6, 3, [3, 2, 1]),
        (7, 3, [3, 3, 1]),
        (8, 3, [3, 3, 2]),
        (3, 3, [2, 1]),
        (5, 2, [2, 2, 1]),
        (6, 2, [2, 2, 2]),
        (3, 1, [1, 1, 1]),
    ],
)
def test_singlestep_orders(steps, order, expected):
    """DPM-Solver-fast: K = steps//3 + 1 steps of orders 3…3 then (2, 1) / 1 / 2 by steps mod 3 (Lu et al. 2022a, §3.4)."""
    orders = D.singlestep_orders(steps, order)
    assert orders == expected and sum(orders) == steps


def test_multistep_orders_and_lower_order_final():
    """Warm-up 1, 2, …; at the end min(k, steps + 1 - i) when steps < 10 (DPM-Solver) or < 15 (diffusers)."""
    assert D.multistep_step_orders(6, 3, "dpm_solver") == [1, 2, 3, 3, 2, 1]
    assert D.multistep_step_orders(6, 3, "never") == [1, 2, 3, 3, 3, 3]
    assert D.multistep_step_orders(12, 3, "dpm_solver") == [1, 2] + [3] * 10
    assert D.multistep_step_orders(12, 3, "diffusers") == [1, 2] + [3] * 8 + [2, 1]
    assert D.multistep_step_orders(20, 2, "diffusers") == [1] + [2] * 19
    assert D.multistep_step_orders(20, 2, "always") == [1] + [2] * 18 + [1]
    # diffusers' euler_at_final: order k to the end, then one first-order step
    assert D.multistep_step_orders(10, 3, "euler_at_final") == [1, 2] + [3] * 7 + [1]
    assert D.multistep_step_orders(20, 2, "euler_at_final") == [1] + [2] * 18 + [1]


@pytest.mark.parametrize("steps,expected", [(6, [2, 2, 1, 1]), (7, [2, 2, 2, 1]), (2, [1, 1])])
def test_singlestep_orders_of_diffusers(steps, expected):
    """diffusers' single-step list ([1, 2]·… + [1, 1] on even NFE at order 2, as step orders)."""
    orders = D.singlestep_orders(steps, 2, "diffusers")
    assert orders == expected and sum(orders) == steps
    assert D.singlestep_orders(9, 3, "diffusers") == D.singlestep_orders(9, 3)


def test_lower_order_final_changes_the_result():
    model = A.vp_model(DATA, NS, "eps")
    f = get_sampler("dpmpp_3m").fn
    a = f(model, X, noise_schedule=NS, steps=12, lower_order_final="dpm_solver")
    b = f(model, X, noise_schedule=NS, steps=12, lower_order_final="diffusers")
    c = f(model, X, noise_schedule=NS, steps=12, lower_order_final="never")
    assert np.array_equal(a, c) and not np.allclose(a, b, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Exactness on a point mass
# --------------------------------------------------------------------------------------------

DPM_SAMPLERS = [n for n in list_samplers("vp") if get_sampler(n).fn.__module__ == D.__name__]


@pytest.mark.parametrize("name", DPM_SAMPLERS)
@pytest.mark.parametrize("steps", [3, 4, 7])
def test_exact_on_point_mass(name, steps):
    """x̂0 ≡ μ: x_t = α_t μ + (σ_t/σ_T)(x_T - α_T μ) exactly, for any step count (Lu et al. 2022a, §3.1)."""
    fn = get_sampler(name).fn
    for kind in ("eps", "x0", "v", "score"):
        model = A.vp_model(POINT, NS, kind)
        out = fn(model, X, noise_schedule=NS, steps=steps, model_type=kind, skip_type="logSNR")
        t0 = 1e-3
        exact = NS.marginal_alpha(t0) * MU + NS.marginal_std(t0) / NS.marginal_std(1.0) * (
            X - NS.marginal_alpha(1.0) * MU
        )
        # The noise form recovers x̂0 = (x - σε̂)/α: a step spanning the whole range amplifies the
        # rounding of each ε̂ by up to κ = α_end/α_T ≈ 152, once per stage (three for order 3), so
        # its bound is 1e-15·κ³ ≈ 3.5e-9 (a coefficient error is off by > 1e-3); the data form
        # (DPM-Solver++) has no such amplification and is held to 1e-12.
        kappa = NS.marginal_alpha(t0) / NS.marginal_alpha(1.0)
        atol = 1e-12 if name.startswith("dpmpp") else 1e-15 * kappa**3
        np.testing.assert_allclose(out, exact, rtol=0, atol=atol, err_msg=f"{name} {kind}")


def test_model_types_agree_on_gaussian_data():
    """ε, x0, v and score models of the same data give the same sample (conversions of App. D.2)."""
    f = get_sampler("dpm_solver_2m").fn
    outs = [
        f(A.vp_model(DATA, NS, kind), X, noise_schedule=NS, steps=10, model_type=kind)
        for kind in ("eps", "x0", "v", "score")
    ]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-12, atol=1e-12)
    # DPM-Solver's names are aliases of the same predictions: identical results
    for kind, alias in (
        ("eps", "noise"),
        ("x0", "x_start"),
        ("eps", "epsilon"),
        ("v", "v_prediction"),
    ):
        model = A.vp_model(DATA, NS, kind)
        assert np.array_equal(
            f(model, X, noise_schedule=NS, steps=10, model_type=alias),
            f(model, X, noise_schedule=NS, steps=10, model_type=kind),
        )


def test_inversion_round_trip_on_point_mass():
    """t_start < t_end runs the ODE forwards (DPM-Solver.inverse); on a point mass both ways are exact."""
    model = A.vp_model(POINT, NS, "eps")
    f = get_sampler("dpmpp_3m").fn
    z = f(model, X, noise_schedule=NS, steps=6, t_start=0.05, t_end=0.9)
    back = f(model, z, noise_schedule=NS, steps=6, t_start=0.9, t_end=0.05)
    np.testing.assert_allclose(back, X, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Local orders of each update (exact starting values from the closed-form flow)
# --------------------------------------------------------------------------------------------


def _local_order(update, hs):
    s = 0.5
    ls = NS.marginal_lambda(s)
    errs = []
    for h in hs:
        t = NS.inverse_lambda(ls + h)
        M, c = flow_map(NS, s, t)
        errs.append(np.abs(update(s, t, h) - (X @ M.T + c)).max())
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


HS = [0.04, 0.02, 0.01, 0.005]


@pytest.mark.parametrize("alg", ["dpmsolver", "dpmsolver++"])
@pytest.mark.parametrize("solver_type", ["dpmsolver", "taylor"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_singlestep_local_order(alg, solver_type, order):
    """One single-step DPM-Solver-k update from the exact x(s) errs by O(h^(k+1))."""
    fn = x0_fn if alg == "dpmsolver++" else eps_fn

    def update(s, t, h):
        return D.singlestep_dpm_solver_update(
            NS, fn, X, s, t, order=order, algorithm_type=alg, solver_type=solver_type
        )[0]

    assert abs(_local_order(update, HS) - (order + 1)) < 0.15


@pytest.mark.parametrize("alg", ["dpmsolver", "dpmsolver++"])
@pytest.mark.parametrize(
    "order,d2_scale,expected", [(2, "consistent", 3), (3, "consistent", 4), (3, "dpm_solver", 3)]
)
def test_multistep_local_order(alg, order, d2_scale, expected):
    """Multistep k with exact history errs by O(h^(k+1)); DPM-Solver's/diffusers' 3M D2 (half the
    second difference the φ3 term needs) only by O(h³), so their 3M is globally second order."""
    fn = x0_fn if alg == "dpmsolver++" else eps_fn

    def update(s, t, h):
        ls = NS.marginal_lambda(s)
        ts = [NS.inverse_lambda(ls - k * h) for k in range(order - 1, 0, -1)] + [s]
        xs = []
        for tt in ts:
            M, c = flow_map(NS, s, tt)
            xs.append(X @ M.T + c)
        ms = [fn(xx, tt) for xx, tt in zip(xs, ts)]
        return D.multistep_dpm_solver_update(
            NS, X, ms, ts, t, order=order, algorithm_type=alg, d2_scale=d2_scale
        )

    assert abs(_local_order(update, HS) - expected) < 0.15


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_denoise_to_zero_and_x0_correction():
    model = A.vp_model(DATA, NS, "eps")
    seen = []

    def correct(x0, t):
        seen.append(t)
        return x0 * 0.0 + 7.0

    f = get_sampler("dpm_solver_2").fn
    out = f(model, X, noise_schedule=NS, steps=4, denoise_to_zero=True, correcting_x0_fn=correct)
    assert np.all(out == 7.0) and seen == [1e-3]  # only the final data prediction
    f = get_sampler("dpmpp_2s").fn
    seen.clear()
    f(model, X, noise_schedule=NS, steps=4, correcting_x0_fn=correct)
    assert len(seen) == 4  # every data prediction of ++


def test_dynamic_thresholding_keeps_x0_in_range():
    """correcting_x0_fn="dynamic_thresholding" (ratio 0.995, floor 1) maps the data prediction into [-1, 1]."""
    big = A.GaussianData([5.0, -5.0], np.eye(2) * 0.01)
    model = A.vp_model(big, NS, "eps")
    kw = dict(model_type="eps", model_time="continuous", dynamic_thresholding_ratio=0.995)
    raw = D._prediction_fns(model, NS, correcting_x0_fn=None, **kw)[1](X, 0.3)
    fixed = D._prediction_fns(model, NS, correcting_x0_fn="dynamic_thresholding", **kw)[1](X, 0.3)
    assert np.abs(raw).max() > 3.0
    s = np.quantile(np.abs(raw), 0.995, axis=1, keepdims=True)  # Imagen: clip to ±s, divide by s
    np.testing.assert_allclose(fixed, np.clip(raw, -s, s) / np.maximum(s, 1.0), rtol=1e-14)


def test_lambda_min_moves_the_start():
    """diffusers' lambda_min_clipped: start where λ = lambda_min; equals an explicit t_start."""
    model = A.vp_model(DATA, NS, "eps")
    f = get_sampler("dpmpp_2m").fn
    lam_min = -3.0
    a = f(model, X, noise_schedule=NS, steps=8, lambda_min=lam_min)
    b = f(model, X, noise_schedule=NS, steps=8, t_start=NS.inverse_lambda(lam_min))
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
    assert NS.marginal_lambda(NS.inverse_lambda(lam_min)) == pytest.approx(lam_min, abs=1e-12)


def test_registered_wrappers_fix_their_settings():
    model = A.vp_model(DATA, NS, "eps")
    with pytest.raises(
        ValueError, match="order=3 is invalid: the sampler .dpmpp_2m. fixes order to 2"
    ):
        get_sampler("dpmpp_2m").fn(model, X, noise_schedule=NS, steps=5, order=3)
    a = get_sampler("dpm_solver_3").fn(model, X, noise_schedule=NS, steps=9)
    b = D.dpm_solver_sample(
        model,
        X,
        noise_schedule=NS,
        steps=9,
        order=3,
        method="singlestep_fixed",
        algorithm_type="dpmsolver",
    )
    assert np.array_equal(a, b)


def test_runs_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")

    def model(x, t):
        tt = float(t[0])
        return DATA.eps(x, NS.marginal_alpha(tt), NS.marginal_std(tt))

    for name in ["dpm_solver_3", "dpm_solver_fast", "dpmpp_3m", "dpmpp_2s"]:
        fn = get_sampler(name).fn
        ref = fn(model, X, noise_schedule=NS, steps=7)
        got = fn(model, xs.asarray(X), noise_schedule=NS, steps=7)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-15, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Step plan, explicit grids, callbacks
# --------------------------------------------------------------------------------------------

DISC = D.NoiseScheduleVP.discrete(schedules.linear(1000))


def _disc_model(x, t):
    tt = float(t[0])
    return DATA.eps(x, DISC.marginal_alpha(tt), DISC.marginal_std(tt))


@pytest.mark.parametrize(
    "method,order", [("multistep", 3), ("singlestep", 3), ("singlestep_fixed", 2)]
)
def test_schedule_is_evaluated_once_per_call(method, order, monkeypatch):
    """The step plan: the number of schedule interpolations does not grow with the step count, and the model runs exactly NFE times."""
    calls = {"interp": 0, "model": 0}
    real = D._interp

    def counting(*a, **k):
        calls["interp"] += 1
        return real(*a, **k)

    def model(x, t):
        calls["model"] += 1
        return np.zeros_like(x)

    monkeypatch.setattr(D, "_interp", counting)
    seen = []
    for steps in (6, 30):
        calls.update(interp=0, model=0)
        D.sample_dpm_solver(
            model,
            X,
            noise_schedule=DISC,
            steps=steps,
            order=order,
            method=method,
            skip_type="time_uniform",
        )
        nfe = steps if method != "singlestep_fixed" else order * (steps // order)
        assert calls["model"] == nfe
        seen.append(calls["interp"])
    assert seen[0] == seen[1] <= 8, seen


@pytest.mark.parametrize("alg", ["dpmsolver", "dpmsolver++"])
@pytest.mark.parametrize("method,order", [("multistep", 2), ("singlestep", 3)])
def test_callback_reports_time_sigma_and_denoised(alg, method, order):
    """StepInfo before each step: the state it starts from, t, σ_t/α_t and the exact data prediction there."""
    infos, prog = [], []
    model = A.vp_model(DATA, NS, "eps")
    out = D.sample_dpm_solver(
        model,
        X,
        noise_schedule=NS,
        steps=6,
        order=order,
        method=method,
        algorithm_type=alg,
        callback=infos.append,
        progress=lambda i, n: prog.append((i, n)),
    )
    n = len(infos)
    assert [i.i for i in infos] == list(range(n)) and all(i.n == n for i in infos)
    assert prog == [(k + 1, n) for k in range(n)]
    assert np.array_equal(infos[0].x, X) and infos[0].t == 1.0
    for info in infos:
        a, s = NS.marginal_alpha(info.t), NS.marginal_std(info.t)
        assert info.sigma == pytest.approx(s / a, rel=1e-14)
        np.testing.assert_allclose(info.denoised, DATA.x0(info.x, a, s), rtol=1e-12, atol=1e-12)
    assert not np.array_equal(infos[-1].x, out)
    assert info.t > 1e-3  # reported before the last step


@pytest.mark.parametrize(
    "method,order", [("multistep", 2), ("multistep", 3), ("singlestep_fixed", 3), ("singlestep", 3)]
)
def test_explicit_timesteps_equal_the_generated_grid(method, order):
    """timesteps= with the grid skip_type would build gives the same bits; sigmas= (λ = -log σ) agrees to rounding."""
    model = A.vp_model(DATA, NS, "eps")
    steps = 9
    nfe_grid = steps if method != "singlestep_fixed" else steps // order
    skip = "time_uniform" if method == "singlestep" else "logSNR"  # DPM-Solver-fast: NFE-point grid
    ts = D.get_time_steps(NS, skip, 1.0, 1e-3, nfe_grid)
    gen = D.sample_dpm_solver(
        model, X, noise_schedule=NS, steps=steps, order=order, method=method, skip_type=skip
    )
    if method == "singlestep_fixed":
        # the explicit single-step grid lists every model evaluation: the λ-thirds of each step
        lam = NS.marginal_lambda(ts)
        fine = np.concatenate(
            [np.linspace(lam[j], lam[j + 1], order + 1)[:-1] for j in range(len(ts) - 1)]
            + [lam[-1:]]
        )
        ts = NS.inverse_lambda(fine)
        ts[0], ts[-1] = 1.0, 1e-3
    exp = D.sample_dpm_solver(model, X, noise_schedule=NS, timesteps=ts, order=order, method=method)
    if method == "multistep":
        assert np.array_equal(gen, exp)
    else:
        np.testing.assert_allclose(exp, gen, rtol=1e-12, atol=1e-12)
    sig = NS.marginal_std(ts) / NS.marginal_alpha(ts)
    via_sigma = D.sample_dpm_solver(
        model, X, noise_schedule=NS, sigmas=sig, order=order, method=method
    )
    np.testing.assert_allclose(via_sigma, exp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alg", ["dpmsolver", "dpmsolver++"])
@pytest.mark.parametrize("method,order", [("multistep", 3), ("singlestep", 2), ("singlestep", 3)])
def test_final_step_to_sigma_zero_is_exact_on_a_point_mass(alg, method, order):
    """final_sigmas_type="zero": the last step (first order) lands on α·x̂0 = μ exactly (noise form included)."""
    model = A.vp_model(POINT, DISC, "eps")
    ts = np.array([999, 700, 500, 300, 200, 100, 50, 20, 5])
    out = D.sample_dpm_solver(
        model,
        X,
        noise_schedule=DISC,
        timesteps=ts,
        time_unit="index",
        final_sigmas_type="zero",
        order=order,
        method=method,
        algorithm_type=alg,
    )
    np.testing.assert_allclose(out, np.broadcast_to(MU, X.shape), rtol=0, atol=1e-9)


def test_final_sigma_min_and_index_timesteps():
    """time_unit="index": t = (n+1)/N; model_time="index" hands the model the integers n; "sigma_min" ends at t = 1/N."""
    got_t = []

    def model(x, t):
        got_t.append(float(t[0]))
        return _disc_model(x, DISC.t_array[[int(t[0])]])

    n = np.array([999, 749, 499, 249, 99])
    a = D.sample_dpm_solver(
        model,
        X,
        noise_schedule=DISC,
        timesteps=n,
        time_unit="index",
        final_sigmas_type="sigma_min",
        model_time="index",
        order=2,
    )
    assert got_t == [999.0, 749.0, 499.0, 249.0, 99.0]
    b = D.sample_dpm_solver(
        _disc_model, X, noise_schedule=DISC, timesteps=np.append((n + 1) / 1000.0, 1e-3), order=2
    )
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)


def test_intermediate_points_grid_versus_lambda():
    """intermediate="grid" (DPM-Solver's code) equals "lambda" on the logSNR grid and differs on time_uniform."""
    model = A.vp_model(DATA, NS, "eps")
    kw = dict(noise_schedule=NS, steps=9, order=3, method="singlestep_fixed")
    g = D.sample_dpm_solver(model, X, skip_type="logSNR", intermediate="grid", **kw)
    m = D.sample_dpm_solver(model, X, skip_type="logSNR", intermediate="lambda", **kw)
    np.testing.assert_allclose(g, m, rtol=1e-12, atol=1e-12)
    g = D.sample_dpm_solver(model, X, skip_type="time_uniform", intermediate="grid", **kw)
    m = D.sample_dpm_solver(model, X, skip_type="time_uniform", intermediate="lambda", **kw)
    assert np.abs(g - m).max() > 1e-6


@pytest.mark.parametrize("method", ["multistep", "singlestep"])
def test_check_finite_stops_at_the_first_bad_step(method):
    """check_finite() as the callback: a model that returns NaN below t = 0.5 stops the loop at that step."""
    from refdiff._errors import RefdiffValueError
    from refdiff.samplers import check_finite

    good = A.vp_model(DATA, NS, "eps")

    def model(x, t):
        out = good(x, t)
        return out * np.nan if float(t[0]) < 0.5 else out

    with pytest.raises(
        RefdiffValueError, match=r"non-finite values in the .* at step \d+ of \d+ \(t=0\.[0-4]"
    ):
        D.sample_dpm_solver(
            model, X, noise_schedule=NS, steps=8, order=2, method=method, callback=check_finite()
        )


def test_nearest_index_is_the_table_index_nearest_in_log_sigma():
    ac = schedules.linear(200).alphas_cumprod
    ns = D.NoiseScheduleVP.discrete(alphas_cumprod=ac, clip_lambda=None)
    log_sig = 0.5 * np.log((1.0 - ac) / ac)
    for n in (0, 1, 57, 199):
        assert ns.nearest_index(float(np.exp(log_sig[n]))) == n
    # just below / above the midpoint in log σ between 57 and 58
    mid = 0.5 * (log_sig[57] + log_sig[58])
    assert ns.nearest_index(float(np.exp(mid - 1e-9))) == 57
    assert ns.nearest_index(float(np.exp(mid + 1e-9))) == 58
    # beyond the ends: the end indices
    assert ns.nearest_index(1e-6) == 0 and ns.nearest_index(1e6) == 199
    assert ns.nearest_index(0.0) == 0  # σ = 0 (a grid's final point): the first index
    # as a model-time convention, from t
    t = np.array([1.0 / 200, 58.0 / 200])
    np.testing.assert_array_equal(ns.model_input_time(t, "nearest_index"), [0.0, 57.0])
    with pytest.raises(ValueError, match="discrete noise schedule"):
        D.NoiseScheduleVP.linear().model_input_time(0.5, "nearest_index")
    with pytest.raises(ValueError, match="discrete noise schedule"):
        D.NoiseScheduleVP.linear().nearest_index(0.5)
