"""k-diffusion's DPM-Solver-type σ-grid samplers (refdiff.samplers.karras_dpm) against exact answers on Gaussian data.

Oracles, independent of the code under test:
* the exact VE probability-flow map for x0 ~ N(μ, Σ): x(σ') = μ + √((Σ + σ'²I)(Σ + σ²I)⁻¹)(x(σ) - μ)
  (NumPy eigh), for the deterministic samplers' convergence order;
* the exact marginal N(μ, Σ + σ²I) at the final σ, for the stochastic samplers' output law (read
  off exactly with refdiff.analytic.linear_sampler_law since they are affine in (x, noise));
* NumPy's polynomial integration, for the linear-multistep weights;
* the other array namespaces (array_api_strict, torch), for the adaptive controller's steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffValueError, UnknownNameError
from refdiff.edm import karras_sigmas
from refdiff.samplers import get_sampler
from refdiff.samplers import karras_dpm as KD

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
DEN = A.karras_denoiser(DATA)
S_MAX, S_MIN = 10.0, 0.05


def flow_map(s0: float, s1: float):
    w, U = np.linalg.eigh(COV)
    M = U @ np.diag(np.sqrt((w + s1 * s1) / (w + s0 * s0))) @ U.T
    return M, MU - M @ MU


def grid(n: int, zero: bool = False):
    return karras_sigmas(n + 1, S_MIN, S_MAX, append_zero=zero)


def map_error(name: str, n: int, **options) -> float:
    fn = get_sampler(name).fn
    law = A.linear_sampler_law(
        lambda xT, nz: fn(DEN, xT, sigmas=grid(n), **options),
        np.zeros(2),
        np.eye(2),
        dim=2,
        n_noise=0,
    )
    M, c = flow_map(S_MAX, S_MIN)
    return float(np.linalg.norm(law.M - M) + np.linalg.norm(law.c - c))


def order_of(name: str, ladder, **options) -> tuple[float, list[float]]:
    errs = [map_error(name, n, **options) for n in ladder]
    return float(-np.polyfit(np.log(ladder), np.log(errs), 1)[0]), errs


# ---------------------------------------------------------------------------------------------
# Convergence order of the deterministic samplers and the η = 0 modes
# ---------------------------------------------------------------------------------------------

ORDER_CASES = [
    ("karras_dpm_2", {}, 2.0),
    ("karras_dpm_fast", {}, 2.0),
    ("karras_dpm_2_ancestral", {"eta": 0.0}, 2.0),
    ("karras_dpmpp_2s_ancestral", {"eta": 0.0}, 2.0),
    ("karras_dpmpp_sde", {"eta": 0.0}, 2.0),
    ("karras_dpmpp_2m_sde", {"eta": 0.0}, 2.0),
    ("karras_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2.0),
    ("karras_dpmpp_3m_sde", {"eta": 0.0, "d2_scale": "dpm_solver"}, 2.0),
]


@pytest.mark.parametrize(
    "name,options,expected",
    ORDER_CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in ORDER_CASES],
)
def test_convergence_order(name, options, expected):
    order, errs = order_of(name, [96, 192, 384], **options)
    assert errs[0] > errs[1] > errs[2] > 1e-12
    assert abs(order - expected) < 0.15, (order, errs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,options", [("karras_lms", {}), ("karras_dpmpp_3m_sde", {"eta": 0.0})]
)
def test_lower_order_start_caps_the_multistep_order_at_two(name, options):
    """k-diffusion starts LMS(k) and 3M with steps of orders 1, 2, ...: the first step's O(h²) local
    error makes the global order 2, though the error is far below a second-order method's on short
    ladders (measured: LMS(4) slope 2.5 over 96-384, 2.03 over 768-3072)."""
    order, errs = order_of(name, [768, 1536, 3072], **options)
    assert abs(order - 2.0) < 0.15, (order, errs)
    # ... and the error is well below DPM-Solver-2's at the same step count
    assert errs[0] < 0.2 * map_error("karras_dpm_2", 768)


def test_lms_order_one_is_euler():
    sig = grid(12, zero=True)
    x = np.array([[3.0, -2.0], [0.5, 7.0]])
    a = get_sampler("karras_lms").fn(DEN, x, sigmas=sig, order=1)
    b = get_sampler("karras_euler").fn(DEN, x, sigmas=sig)
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 6])
def test_lms_weights_integrate_polynomials_exactly(order):
    """Σ_j c_j p(σ_{i-j}) = ∫_{σ_i}^{σ_{i+1}} p for every polynomial p of degree < k on a non-uniform grid."""
    rng = np.random.default_rng(order)
    sig = list(np.sort(rng.uniform(0.1, 5.0, 9))[::-1])
    i = 7
    k = min(i + 1, order)
    c = KD.lms_coefficients(sig, i, order)
    assert len(c) == k
    for deg in range(k):
        p = np.polynomial.Polynomial(rng.standard_normal(deg + 1))
        exact = p.integ()(sig[i + 1]) - p.integ()(sig[i])
        got = sum(c[j] * p(sig[i - j]) for j in range(k))
        assert got == pytest.approx(exact, rel=1e-11, abs=1e-12)


def test_dpm_fast_orders_and_grid_are_k_diffusions():
    """NFE = n spent as 3, ..., 3 then (2, 1) / 1 / 2 on a λ-uniform grid: the evaluations counted."""
    for nfe, evals in ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (10, 10)):
        calls = []

        def den(x, s):
            calls.append(float(s[0]))
            return DEN(x, s)

        get_sampler("karras_dpm_fast").fn(den, np.zeros((1, 2)), sigmas=[S_MAX, S_MIN], nfe=nfe)
        assert len(calls) == evals
        assert calls[0] == pytest.approx(S_MAX, rel=1e-15)


def test_dpm_fast_with_a_final_zero_denoises_at_sigma_min():
    x = np.array([[1.0, 2.0]])
    base = get_sampler("karras_dpm_fast").fn(DEN, x, sigmas=[S_MAX, 1.0, S_MIN])
    zero = get_sampler("karras_dpm_fast").fn(DEN, x, sigmas=[S_MAX, 1.0, S_MIN, 0.0], nfe=2)
    np.testing.assert_allclose(zero, DATA.x0(base, 1.0, S_MIN), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Stochastic samplers: the exact output law against the true marginal
# ---------------------------------------------------------------------------------------------


def n_draws(name: str, n: int) -> int:
    return 2 * n if name == "karras_dpmpp_sde" else n


def law_error(name: str, n: int, **options) -> float:
    fn = get_sampler(name).fn
    law = A.linear_sampler_law(
        lambda xT, nz: fn(DEN, xT, sigmas=grid(n), noise=nz, **options),
        *DATA.marginal(1.0, S_MAX),
        dim=2,
        n_noise=n_draws(name, n),
    )
    m, C = DATA.marginal(1.0, S_MIN)
    return float(max(np.abs(law.mean - m).max(), np.abs(law.cov - C).max()))


LAW_CASES = [
    ("karras_dpm_2_ancestral", {}),
    ("karras_dpmpp_2s_ancestral", {}),
    ("karras_dpmpp_sde", {}),
    ("karras_dpmpp_2m_sde", {}),
    ("karras_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("karras_dpmpp_3m_sde", {}),
    ("karras_dpmpp_3m_sde", {"d2_scale": "dpm_solver"}),
    ("karras_dpm_2", {"S_churn": 5.0}),
    ("karras_dpmpp_sde", {"eta": 0.5}),
]

#: Stated tolerance: max |mean - μ|, |cov - (Σ + σ_min² I)| of the exact output law at N = 200
#: steps (σ 10 → 0.05, ρ = 7). Measured 0.8e-4 to 6.5e-4.
LAW_TOL_200 = 1e-3


@pytest.mark.parametrize(
    "name,options",
    LAW_CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in LAW_CASES],
)
def test_output_law_converges_to_the_true_marginal(name, options):
    errs = [law_error(name, n, **options) for n in (50, 100, 200)]
    assert errs[-1] < LAW_TOL_200, errs
    weak = float(-np.polyfit(np.log([50, 100, 200]), np.log(errs), 1)[0])
    assert weak > 1.7, (weak, errs)  # second order in law


def test_dpmpp_sde_needs_the_brownian_coupling():
    """Independent increments give the wrong law (first order in law, 0.027 at N = 200); the
    Brownian coupling of the two increments is what makes k-diffusion's dpmpp_sde second order."""
    brownian = law_error("karras_dpmpp_sde", 200)
    independent = [
        law_error("karras_dpmpp_sde", n, noise_coupling="independent") for n in (100, 200)
    ]
    assert independent[1] > 20 * brownian
    assert 1.6 < independent[0] / independent[1] < 2.4


def test_dpmpp_sde_brownian_increments_have_the_brownian_covariance():
    """z1 = ξa, z2 = √ρ ξa + √(1-ρ) ξb: unit variances and corr(z1, z2) = √((σ - σ_s)/(σ - σ'))
    as for W(σ_s) - W(σ) and W(σ') - W(σ) of one Brownian path, normalised."""
    s, s_next = 3.0, 1.2
    c = KD.dpmpp_sde_coefficients(s, s_next, eta=1.0, r=0.5)
    s_mid = math.sqrt(s * s_next)
    assert c["sigma_s"] == pytest.approx(s_mid, rel=1e-15)
    assert c["a"] ** 2 + c["b"] ** 2 == pytest.approx(1.0, rel=1e-15)
    assert c["a"] == pytest.approx((s - s_mid) / math.sqrt((s - s_mid) * (s - s_next)), rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Noise: which draw is read at which step
# ---------------------------------------------------------------------------------------------


def read_indices(name: str, n: int, **options) -> list[int]:
    seen = []

    def noise(i):
        seen.append(i)
        return np.zeros((1, 2))

    get_sampler(name).fn(DEN, np.zeros((1, 2)), sigmas=grid(n, zero=True), noise=noise, **options)
    return seen


@pytest.mark.parametrize(
    "name,expected",
    [
        ("karras_dpm_2_ancestral", [0, 1, 2, 3]),
        ("karras_dpmpp_2s_ancestral", [0, 1, 2, 3]),
        ("karras_dpmpp_2m_sde", [0, 1, 2, 3]),
        ("karras_dpmpp_3m_sde", [0, 1, 2, 3]),
        ("karras_dpmpp_sde", [0, 1, 2, 3, 4, 5, 6, 7]),
    ],
)
def test_draws_are_read_only_where_noise_is_added(name, expected):
    # a grid of 5 intervals ending in 0: the last step adds no noise and reads no draw
    assert read_indices(name, 4) == expected
    assert read_indices(name, 4, eta=0.0) == []
    get_sampler(name).fn(
        DEN, np.zeros((1, 2)), sigmas=grid(4, zero=True), eta=0.0
    )  # no noise needed


def test_dpm_fast_and_adaptive_read_draws_only_with_eta():
    assert read_indices("karras_dpm_fast", 4) == []
    # nfe 4 = orders (3, 1); the last step ends at σ_min, where σ_up = 0 (k-diffusion's min(t_end, ·))
    assert read_indices("karras_dpm_fast", 4, eta=1.0) == [0]
    assert read_indices("karras_dpm_fast", 4, eta=1.0, nfe=9) == [0, 1, 2]  # orders (3, 3, 2, 1)
    assert read_indices("karras_dpm_adaptive", 4, eta=1.0, adaptive=False) == [0, 1, 2]


def test_missing_noise_is_refused():
    with pytest.raises(
        RefdiffValueError, match=r"noise=None is invalid: this sampler is stochastic"
    ):
        get_sampler("karras_dpmpp_2m_sde").fn(DEN, np.zeros((1, 2)), sigmas=grid(3))


def test_callback_sees_each_step_before_it_is_taken():
    infos = []
    sig = grid(5, zero=True)
    x = np.array([[1.0, -1.0]])
    get_sampler("karras_dpmpp_2m_sde").fn(DEN, x, sigmas=sig, eta=0.0, callback=infos.append)
    assert [i.i for i in infos] == list(range(6)) and all(i.n == 6 for i in infos)
    assert [i.sigma for i in infos] == pytest.approx(list(sig[:-1]), rel=0)
    np.testing.assert_array_equal(infos[0].x, x)
    np.testing.assert_allclose(infos[0].denoised, DEN(x, np.full(1, sig[0])), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# The adaptive solver: controller, replay, every backend
# ---------------------------------------------------------------------------------------------


def test_pid_controller_formula():
    """Integral control (p = d = 0, i = 1): factor = 1 + atan((1/(E + 1e-8))^{1/k} - 1)."""
    pid = KD.PIDStepSizeController(0.05, 0.0, 1.0, 0.0, 3, 0.81)
    for err in (0.2, 3.0, 1.0):
        h = pid.h
        f = 1.0 + math.atan((1.0 / (err + 1e-8)) ** (1.0 / 3.0) - 1.0)
        assert pid.propose_step(err) is (f >= 0.81)
        assert pid.h == pytest.approx(h * f, rel=1e-15)


def adaptive_run(x, **options):
    return get_sampler("karras_dpm_adaptive").fn(
        DEN, x, sigmas=[S_MAX, S_MIN], return_info=True, **options
    )


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_error_follows_the_tolerance(order):
    M, c = flow_map(S_MAX, S_MIN)
    errs, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        infos = []

        def run(xT, nz, rtol=rtol):
            y, info = adaptive_run(xT, order=order, rtol=rtol, atol=rtol / 10)
            infos.append(info)
            return y

        law = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=0)
        errs.append(float(np.linalg.norm(law.M - M) + np.linalg.norm(law.c - c)))
        nfes.append(infos[0]["nfe"])
        assert infos[0]["sigmas"][0] == S_MAX and abs(infos[0]["sigmas"][-1] / S_MIN - 1) < 1e-4
    assert errs[0] > errs[1] > errs[2]
    assert nfes[0] < nfes[1] < nfes[2]
    assert errs[2] < 1e-3


def test_adaptive_replay_reproduces_the_run():
    x = np.array([[7.0, -3.0], [1.0, 12.0]])
    y, info = adaptive_run(x, rtol=1e-3, atol=1e-4)
    assert info["n_accept"] == len(info["sigmas"]) - 1 and info["n_reject"] > 0
    z = get_sampler("karras_dpm_adaptive").fn(DEN, x, sigmas=info["sigmas"], adaptive=False)
    np.testing.assert_allclose(z, y, rtol=1e-12, atol=1e-12)


def _namespaces():
    out = [("numpy", lambda a: a, np.asarray)]
    try:
        import array_api_strict as xs

        out.append(("array_api_strict", lambda a: xs.asarray(a), lambda a: np.asarray(a)))
    except ImportError:
        pass
    try:
        import torch

        out.append(("torch", lambda a: torch.from_numpy(np.array(a)), lambda a: a.numpy()))
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("ns", _namespaces(), ids=lambda n: n[0])
@pytest.mark.parametrize("name", ["karras_dpm_adaptive", "dpm_solver_adaptive"])
def test_adaptive_controller_takes_the_same_steps_on_every_backend(ns, name):
    """The step-size control in float64 on each namespace accepts the same steps as on NumPy and
    reaches the same sample (the conformance suite checks these samplers' fixed-step mode). The
    error estimate is a difference of nearby solutions (x_high - x_low ~ 1e-6 |x|), so a different
    rounding of the updates moves it, and the chosen steps, by 1e-10 to 1e-8 relative."""
    from refdiff.samplers.dpm_solver import NoiseScheduleVP

    _, to_ns, to_np = ns
    x = np.array([[7.0, -3.0], [1.0, 12.0]]) / (10.0 if name == "dpm_solver_adaptive" else 1.0)
    fn = get_sampler(name).fn
    if name == "karras_dpm_adaptive":
        kw = dict(sigmas=[S_MAX, S_MIN])
        model = DEN
        key = "sigmas"
    else:
        nsch = NoiseScheduleVP.linear()
        kw = dict(noise_schedule=nsch, steps=None, t_end=1e-3)

        def model(x, t):  # host floats of the schedule, x in its own namespace
            tt = float(t[0])
            return DATA.eps(x, float(nsch.marginal_alpha(tt)), float(nsch.marginal_std(tt)))

        key = "t"
    y_ref, info_ref = fn(model, x, return_info=True, rtol=1e-3, atol=1e-4, **kw)
    y, info = fn(model, to_ns(x), return_info=True, rtol=1e-3, atol=1e-4, **kw)
    assert info["n_accept"] == info_ref["n_accept"] and info["n_reject"] == info_ref["n_reject"]
    np.testing.assert_allclose(info[key], info_ref[key], rtol=1e-6)
    np.testing.assert_allclose(to_np(y), y_ref, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

X = np.zeros((1, 2))


@pytest.mark.parametrize(
    "name,options,exc,msg",
    [
        (
            "karras_dpmpp_2m_sde",
            {"solver_type": "rk4"},
            UnknownNameError,
            r"solver_type='rk4' is not a known SDE-DPM-Solver\+\+ solver type; allowed: 'midpoint', 'heun'",
        ),
        (
            "karras_dpmpp_3m_sde",
            {"d2_scale": "half"},
            UnknownNameError,
            r"d2_scale='half' is not a known multistep third-order D2 convention; allowed: 'consistent', 'dpm_solver'",
        ),
        (
            "karras_dpmpp_sde",
            {"noise_coupling": "tree"},
            UnknownNameError,
            r"noise_coupling='tree' is not a known noise coupling; allowed: 'brownian', 'independent'",
        ),
        ("karras_dpmpp_sde", {"r": 0.0}, RefdiffValueError, r"r=0.0 is invalid"),
        ("karras_dpm_2_ancestral", {"eta": -1.0}, RefdiffValueError, r"eta=-1.0 is invalid"),
        (
            "karras_dpmpp_2s_ancestral",
            {"S_noise": -0.5},
            RefdiffValueError,
            r"S_noise=-0.5 is invalid",
        ),
        (
            "karras_dpm_2",
            {"S_tmax": -1.0},
            RefdiffValueError,
            r"S_tmax=-1.0 is invalid: expected a value >= S_tmin",
        ),
        (
            "karras_lms",
            {"order": 9},
            RefdiffValueError,
            r"order=9 is invalid: expected an integer from 1 to 8",
        ),
        (
            "karras_lms",
            {"order": 0},
            RefdiffValueError,
            r"order=0 is invalid: expected an integer >= 1",
        ),
        (
            "karras_dpm_fast",
            {"nfe": 0},
            RefdiffValueError,
            r"nfe=0 is invalid: expected an integer >= 1",
        ),
        (
            "karras_dpm_adaptive",
            {"order": 4},
            RefdiffValueError,
            r"order=4 is invalid: expected 2 or 3",
        ),
        ("karras_dpm_adaptive", {"atol": 0.0}, RefdiffValueError, r"atol=0.0 is invalid"),
        ("karras_dpm_adaptive", {"h_init": -0.1}, RefdiffValueError, r"h_init=-0.1 is invalid"),
        (
            "karras_dpm_adaptive",
            {"adaptive": "no"},
            RefdiffValueError,
            r"adaptive='no' is invalid: expected True or False",
        ),
        (
            "karras_dpm_adaptive",
            {"rtol": 1e-12, "atol": 1e-12, "max_steps": 5},
            RefdiffValueError,
            r"max_steps=5 is invalid: the adaptive solver made 5 attempts",
        ),
    ],
)
def test_bad_options_are_refused(name, options, exc, msg):
    noise = np.zeros((40, 1, 2))
    with pytest.raises(exc, match=msg):
        get_sampler(name).fn(DEN, X, sigmas=[S_MAX, 1.0, S_MIN], noise=noise, **options)


@pytest.mark.parametrize("name", ["karras_dpm_fast", "karras_dpm_adaptive"])
def test_one_positive_level_is_refused(name):
    with pytest.raises(RefdiffValueError, match=r"expected at least two positive noise levels"):
        get_sampler(name).fn(DEN, X, sigmas=[1.0, 0.0])


@pytest.mark.parametrize(
    "name", ["karras_dpm_2", "karras_dpmpp_sde", "karras_lms", "karras_dpm_fast"]
)
def test_bad_grid_and_denoiser_are_refused(name):
    fn = get_sampler(name).fn
    with pytest.raises(RefdiffValueError, match=r"sigmas must strictly decrease"):
        fn(DEN, X, sigmas=[1.0, 2.0, 0.0], noise=np.zeros((4, 1, 2)))
    with pytest.raises(RefdiffValueError, match=r"denoiser=.* is invalid: expected a callable"):
        fn(None, X, sigmas=[2.0, 1.0, 0.0])
    with pytest.raises(
        Exception, match=r"denoiser output has shape \(1, 3\) but x has shape \(1, 2\)"
    ):
        fn(lambda x, s: np.zeros((1, 3)), X, sigmas=[2.0, 1.0, 0.0], noise=np.zeros((4, 1, 2)))


# ---------------------------------------------------------------------------------------------
# Local error of the multistep updates, given exact history (the order once started)
# ---------------------------------------------------------------------------------------------

X0 = np.array([[2.5, -1.5]])


def exact_state(sigma: float):
    """x(σ) on the exact probability-flow trajectory through X0 at σ = S_MAX."""
    M, c = flow_map(S_MAX, sigma)
    return X0 @ M.T + c


def den_at(sigma: float):
    return DEN(exact_state(sigma), np.full(1, sigma))


def local_slope(err_of_h, hs=(0.08, 0.04, 0.02)) -> float:
    errs = [err_of_h(h) for h in hs]
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


@pytest.mark.parametrize("order", [2, 3, 4])
def test_lms_local_error_once_started(order):
    """One LMS(k) step from exact history on a geometric grid has local error O(h^{k+1})."""
    s0 = 1.0

    def err(h):
        sig = [s0 * (1.0 + h) ** j for j in range(order - 1, -1, -1)] + [s0 / (1.0 + h)]
        i = order - 1
        c = KD.lms_coefficients(sig, i, order)
        ds_prev = [(exact_state(s) - den_at(s)) / s for s in sig[:i]]
        x = KD.lms_step(
            exact_state(sig[i]), den_at(sig[i]), ds_prev, 1.0 + c[0] / sig[i], -c[0] / sig[i], c[1:]
        )
        return float(np.abs(x - exact_state(sig[i + 1])).max())

    assert abs(local_slope(err) - (order + 1)) < 0.3


@pytest.mark.parametrize("d2_scale,expected", [("consistent", 4.0), ("dpm_solver", 3.0)])
def test_3m_local_error_once_started(d2_scale, expected):
    """The 3M update (η = 0) from exact history: local error O(h⁴) with the consistent D2, O(h³)
    with k-diffusion's (= DPM-Solver's) D2."""
    s0 = 1.0

    def err(h):
        sig = [s0 * math.exp(2 * h), s0 * math.exp(h), s0, s0 * math.exp(-h)]
        c = KD.dpmpp_multistep_sde_coefficients(
            sig[2], sig[3], [h, h], eta=0.0, order=3, d2_scale=d2_scale
        )
        x = KD.dpmpp_multistep_sde_step(
            exact_state(sig[2]), den_at(sig[2]), [den_at(sig[0]), den_at(sig[1])], c
        )
        return float(np.abs(x - exact_state(sig[3])).max())

    assert abs(local_slope(err, hs=(0.02, 0.01, 0.005)) - expected) < 0.2


@pytest.mark.parametrize(
    "name,options",
    [
        ("karras_dpm_2_ancestral", {}),
        ("karras_dpm_2_ancestral", {"eta": 0.5}),
        ("karras_dpmpp_2s_ancestral", {}),
        ("karras_dpmpp_sde", {}),
        ("karras_dpmpp_sde", {"eta": 0.4, "r": 0.3}),
        ("karras_dpmpp_2m_sde", {}),
        ("karras_dpmpp_3m_sde", {"eta": 0.7}),
        ("karras_dpm_2", {"S_churn": 3.0}),
        ("karras_dpm_fast", {"eta": 1.0}),
    ],
)
@pytest.mark.parametrize("n", [2, 5])
def test_exact_in_law_on_a_point_mass(name, options, n):
    """Point-mass data (D ≡ μ): every step is an exact transition, so x_σ ~ N(μ, σ²I) at σ_N for any N."""
    point = A.GaussianData(MU, np.zeros((2, 2)))
    fn = get_sampler(name).fn
    sig = grid(n)
    law = A.linear_sampler_law(
        lambda xT, nz: fn(A.karras_denoiser(point), xT, sigmas=sig, noise=nz, **options),
        *point.marginal(1.0, S_MAX),
        dim=2,
        n_noise=n_draws(name, n),
    )
    np.testing.assert_allclose(law.mean, MU, atol=1e-12)
    np.testing.assert_allclose(law.cov, S_MIN**2 * np.eye(2), rtol=1e-10, atol=1e-14)
