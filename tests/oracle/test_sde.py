"""refdiff.sde against independent references: 50-digit mpmath closed forms and quadrature,
mpmath root finding, scipy's ODE solver and normal log-density, and the discrete DDPM/SMLD chains.

Tolerances are stated per check. Where a function is ill-conditioned (log-SNR near its zero
crossing, t(λ) for extreme λ, exp of a large log-mean-coefficient) the bound is the
backward-stability bound |error| <= k·eps·(|f| + |t f'(t)|), i.e. k·eps·|f|·(1 + cond): no
float64 implementation that rounds t's image can do better, and a formula bug misses it by
orders of magnitude.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from refdiff.sde import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE, probability_flow_drift

from .ulp import ulp_error

EPS = float(np.finfo(np.float64).eps)
DPS = 50

# Times: extreme small values, then a grid over (0, 1] that includes 1 exactly.
T_SMALL = np.array([1e-300, 1e-100, 1e-20, 1e-8, 1e-4])
T_GRID = np.concatenate([T_SMALL, np.linspace(0.001, 1.0, 150)])
T_MID = np.linspace(1e-6, 1.0, 101)


# --------------------------------------------------------------------------------------------
# Independent 50-digit references (written from the paper's formulas, sharing nothing with refdiff)
# --------------------------------------------------------------------------------------------


class MP:
    """mpmath closed forms of one SDE family, from Song et al. (2021), Eqs. 9-12 and 29-33."""

    def __init__(self, kind, b0=0.1, b1=20.0, smin=0.01, smax=50.0):
        self.kind = kind
        self.b0, self.b1, self.smin, self.smax = (mp.mpf(v) for v in (b0, b1, smin, smax))

    def beta(self, t):
        return self.b0 + mp.mpf(t) * (self.b1 - self.b0)

    def int_beta(self, t):  # ∫_0^t β, closed form
        t = mp.mpf(t)
        return self.b0 * t + (self.b1 - self.b0) * t * t / 2

    def sigma(self, t):  # VE σ(t)
        return self.smin * (self.smax / self.smin) ** mp.mpf(t)

    def mean_coef(self, t):
        return mp.mpf(1) if self.kind.startswith("ve") else mp.exp(-self.int_beta(t) / 2)

    def var(self, t):
        """Variance of the perturbation kernel (VE "score_sde": σ(t)², i.e. started at σ_min²)."""
        if self.kind == "vp":
            return -mp.expm1(-self.int_beta(t))
        if self.kind == "subvp":
            return mp.expm1(-self.int_beta(t)) ** 2
        if self.kind == "ve":
            return self.sigma(t) ** 2
        k = mp.log(self.smax / self.smin)
        return self.smin**2 * mp.expm1(2 * mp.mpf(t) * k)

    def std(self, t):
        return mp.sqrt(self.var(t))

    def f_coef(self, t):  # drift f(x, t) = f_coef(t) x
        return mp.mpf(0) if self.kind.startswith("ve") else -self.beta(t) / 2

    def g2(self, t):
        if self.kind == "vp":
            return self.beta(t)
        if self.kind == "subvp":
            return self.beta(t) * -mp.expm1(-2 * self.int_beta(t))
        return self.sigma(t) ** 2 * 2 * mp.log(self.smax / self.smin)

    def log_snr(self, t):
        if self.kind == "vp":  # log(e^{-I} / (1 - e^{-I}))
            return -self.int_beta(t) - mp.log(-mp.expm1(-self.int_beta(t)))
        if self.kind == "subvp":
            return -self.int_beta(t) - 2 * mp.log(-mp.expm1(-self.int_beta(t)))
        return -mp.log(self.var(t))


FAMILIES = {
    "vp": (lambda **kw: VPSDE(**kw), "vp"),
    "subvp": (lambda **kw: SubVPSDE(**kw), "subvp"),
    "ve": (lambda **kw: VESDE(**kw), "ve"),
    "ve_exact": (lambda **kw: VESDE(marginal="exact", **kw), "ve_exact"),
}


def make(name, **kw):
    build, kind = FAMILIES[name]
    return build(**kw), MP(kind)


def as_mp(v):
    return mp.mpf(float(v))


def t_dfdt(fn, t):
    """t f'(t), as the derivative in log t (so the difference step never crosses t = 0)."""
    return mp.diff(lambda u: fn(mp.exp(u)), mp.log(mp.mpf(t)))


@mp.workdps(DPS)
def check_cond_bound(computed, fn, ts, k):
    """Assert |computed - f(t)| <= k eps (|f(t)| + |t f'(t)|) at every t; return the worst ratio."""
    worst = 0.0
    for c, t in zip(np.asarray(computed), ts):
        t = mp.mpf(float(t))
        f = fn(t)
        scale = abs(f) + abs(t_dfdt(fn, t))
        ratio = float(abs(as_mp(c) - f) / (EPS * scale))
        worst = max(worst, ratio)
        assert ratio <= k, f"t={float(t)!r}: error {ratio:.2f} eps·(|f|+|t f'|) > {k}"
    return worst


# --------------------------------------------------------------------------------------------
# Marginals
# --------------------------------------------------------------------------------------------


def test_vp_mean_squared_plus_std_squared_is_one():
    sde = VPSDE()
    t = np.concatenate([[0.0], T_GRID, np.linspace(0.0, 1.0, 2001)])
    mean, std = sde.marginal_prob(np.ones_like(t), t)
    np.testing.assert_allclose(mean**2 + std**2, 1.0, rtol=4e-16, atol=0)


def test_subvp_std_is_one_minus_mean_squared_not_its_root():
    sde = SubVPSDE()
    t = np.concatenate([[0.0], T_GRID])
    mean, std = sde.marginal_prob(np.ones_like(t), t)
    # std = 1 - α² (pitfall 14): the difference of the two float64 evaluations is at most the
    # rounding of 1 - mean² (<= 1 ulp of 1) plus std's own rounding.
    np.testing.assert_allclose(std, 1.0 - mean**2, rtol=0, atol=2 * EPS)
    # ... and it is not √(1 - α²): at t = 0.1 those differ by a factor of about 1.6.
    with mp.workdps(DPS):
        exact = -mp.expm1(-MP("subvp").int_beta(0.1))
    assert ulp_error(float(sde.marginal_std(0.1)), exact) <= 2
    assert abs(float(sde.marginal_std(0.1)) - math.sqrt(float(exact))) > 0.1


@pytest.mark.parametrize("name", sorted(FAMILIES))
@mp.workdps(30)
def test_marginal_prob_matches_quadrature_of_the_linear_sde(name):
    """mean = exp(∫_0^t f), var = ∫_0^t exp(2∫_s^t f) g(s)² ds (+ σ_min² for score_sde's VE),
    with ∫f and the outer integral by mp.quad (the inner ∫_s^t f from the polynomial ∫β)."""
    sde, ref = make(name)
    ts = [0.01, 0.2, 0.5, 1.0]
    x = np.array([[1.5], [-0.25], [2.0], [0.5]])
    mean, std = sde.marginal_prob(x, np.array(ts))
    for i, t in enumerate(ts):
        t = mp.mpf(t)
        int_f = mp.quad(ref.f_coef, [0, t])

        def integrand(s):
            inner = 0 if name.startswith("ve") else -(ref.int_beta(t) - ref.int_beta(s)) / 2
            return mp.exp(2 * inner) * ref.g2(s)

        var = mp.quad(integrand, [0, t]) + (ref.smin**2 if name == "ve" else 0)
        assert abs(as_mp(mean[i, 0]) / x[i, 0] - mp.exp(int_f)) <= 1e-14 * mp.exp(int_f)
        assert abs(as_mp(std[i]) - mp.sqrt(var)) <= 1e-14 * mp.sqrt(var)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@mp.workdps(DPS)
def test_drift_and_diffusion_reproduce_the_marginal_moment_odes(name):
    """d mean/dt = f_coef · mean and d var/dt = 2 f_coef var + g² (linear SDE moment equations)."""
    sde, ref = make(name)
    ts = np.array([0.05, 0.3, 0.6, 0.95])
    drift, diffusion = sde.sde(np.ones((4, 1)), ts)
    for i, t in enumerate(ts):
        t = mp.mpf(float(t))
        f_coef, g = as_mp(drift[i, 0]), as_mp(diffusion[i])
        dvar = mp.diff(ref.var, t)
        rhs = 2 * f_coef * ref.var(t) + g * g
        # float64 f and g enter a sum whose terms are larger than the result (VP at large t)
        assert abs(dvar - rhs) <= 1e-14 * (abs(2 * f_coef * ref.var(t)) + g * g)
        dmean = mp.diff(ref.mean_coef, t)
        assert abs(dmean - f_coef * ref.mean_coef(t)) <= 1e-13 * max(abs(dmean), mp.mpf(1e-300))


@pytest.mark.parametrize("name", sorted(FAMILIES))
@mp.workdps(DPS)
def test_marginal_std_and_alpha_vs_mpmath(name):
    sde, ref = make(name)
    std = sde.marginal_std(T_GRID)
    alpha = sde.marginal_alpha(T_GRID)
    worst_std = max(ulp_error(float(s), ref.std(t)) for s, t in zip(std, T_GRID))
    assert worst_std <= 3, worst_std
    # exp(log α) carries log α's rounding: the bound is the conditioning |log α_t| (<= 5 here)
    check_cond_bound(alpha, ref.mean_coef, T_GRID, k=3)
    assert float(sde.marginal_std(0.0)) == (0.01 if name == "ve" else 0.0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@mp.workdps(DPS)
def test_log_snr_vs_mpmath(name):
    sde, ref = make(name)
    got = sde.log_snr(T_GRID)
    check_cond_bound(got, ref.log_snr, T_GRID, k=2)
    # away from the zero crossing (t tiny, t = 1) that bound is a few ulp
    ends = np.concatenate([T_SMALL, [1.0]])
    worst = max(ulp_error(float(v), ref.log_snr(t)) for v, t in zip(sde.log_snr(ends), ends))
    assert worst <= 4, worst
    np.testing.assert_array_equal(sde.lambda_(T_GRID), got / 2)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve_exact"])
def test_log_snr_is_plus_infinity_at_t0_without_fp_warnings(name):
    sde, _ = make(name)
    with np.errstate(all="raise"):
        assert sde.log_snr(np.array([0.0, 0.5]))[0] == math.inf
        assert float(sde.t_from_lambda(math.inf)) == 0.0


def test_vp_published_constants():
    """peers.md §c: VP (β0=0.1, β1=20) at t=1: ᾱ = 4.3186e-05 and λ(1) = -5.0250."""
    sde = VPSDE()
    assert abs(float(sde.marginal_alpha(1.0)) ** 2 - 4.3186e-05) < 5e-10
    assert abs(float(sde.lambda_(1.0)) - (-5.0250)) < 5e-5


# --------------------------------------------------------------------------------------------
# t(λ)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_t_from_lambda_round_trip(name):
    sde, _ = make(name)
    back = sde.t_from_lambda(sde.lambda_(T_MID))
    # score_sde's VE has λ(t) = -log σ_min - t log(σ_max/σ_min): affine, so λ's absolute rounding
    # (~1e-15) comes back as an absolute error in t, not a relative one.
    atol = 2e-16 if name == "ve" else 0.0
    np.testing.assert_allclose(back, T_MID, rtol=1e-14, atol=atol)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@mp.workdps(DPS)
def test_t_from_lambda_vs_mpmath_root_finding(name):
    sde, ref = make(name)
    lam_lo, lam_hi = float(sde.lambda_(1.0)), float(sde.lambda_(1e-6))
    lams = np.linspace(lam_lo, lam_hi, 25)
    got = sde.t_from_lambda(lams)
    for lam, t in zip(lams, got):
        exact = mp.findroot(lambda s: ref.log_snr(s) / 2 - mp.mpf(float(lam)), mp.mpf(float(t)))
        # t(λ) has condition number |λ / (t λ'(t))|: bound the error by k eps (|t| + |λ / λ'|)
        tdlam = t_dfdt(lambda s: ref.log_snr(s) / 2, exact)
        scale = abs(exact) * (1 + abs(mp.mpf(float(lam)) / tdlam))
        assert abs(as_mp(t) - exact) <= 4 * EPS * scale, (lam, t, exact)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@mp.workdps(DPS)
def test_t_from_lambda_extreme_lambda(name):
    """At t = 1e-300 .. 1e-4, λ is large and t(λ) amplifies λ's rounding by ~2|λ|; still bounded."""
    sde, ref = make(name)
    if (
        name == "ve"
    ):  # score_sde's VE has λ(0) finite: t(λ) is ill-conditioned near 0 in absolute terms
        ts = np.array([1e-4, 0.5])
    else:
        ts = T_SMALL
    lam = sde.lambda_(ts)
    back = sde.t_from_lambda(lam)
    for t, l, b in zip(ts, lam, back):
        tdlam = t_dfdt(lambda s: ref.log_snr(s) / 2, t)
        scale = abs(mp.mpf(float(t))) * (1 + abs(mp.mpf(float(l)) / tdlam))
        assert abs(as_mp(b) - mp.mpf(float(t))) <= 4 * EPS * scale


# --------------------------------------------------------------------------------------------
# Discretizations
# --------------------------------------------------------------------------------------------


@mp.workdps(DPS)
def test_vp_discretize_is_the_ddpm_step():
    sde = VPSDE()
    N = sde.N
    idx = [0, 1, 2, 499, 998, 999]
    t = np.array([i / (N - 1) for i in idx])
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal((len(idx), 3)), rng.standard_normal((len(idx), 3))
    f, G = sde.discretize(x, t)
    step = x + f + G[:, None] * z
    for r, i in enumerate(idx):
        beta = (
            mp.mpf(0.1) + i * (mp.mpf(20) - mp.mpf(0.1)) / (N - 1)
        ) / N  # linspace(β0/N, β1/N, N)
        assert ulp_error(float(G[r] ** 2), beta) <= 4
        for c in range(3):
            exact = mp.sqrt(1 - beta) * as_mp(x[r, c]) + mp.sqrt(beta) * as_mp(z[r, c])
            tol = 4 * EPS * (abs(x[r, c]) + abs(z[r, c]))
            assert abs(as_mp(step[r, c]) - exact) <= tol
        # f itself has no cancellation: f = (√(1-β) - 1) x to a few ulp
        assert ulp_error(float(f[r, 0]), (mp.sqrt(1 - beta) - 1) * as_mp(x[r, 0])) <= 4


@mp.workdps(DPS)
def test_vp_discrete_tables_vs_mpmath():
    sde = VPSDE(N=1000)
    betas = sde.discrete_betas
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    exact = [(mp.mpf(0.1) + i * (mp.mpf(20) - mp.mpf(0.1)) / 999) / 1000 for i in range(1000)]
    assert max(ulp_error(float(b), e) for b, e in zip(betas, exact)) <= 0.5 + 1e-9
    assert max(ulp_error(float(a), 1 - e) for a, e in zip(sde.alphas, exact)) <= 1


def test_index_rounding_conventions():
    """round(t (N-1)) by default, score_sde's truncation with index_rounding="floor"."""
    x = np.zeros((1, 1))
    t = np.array([(10 + 0.6) / 999])
    _, g_round = VPSDE().discretize(x, t)
    _, g_floor = VPSDE(index_rounding="floor").discretize(x, t)
    beta = VPSDE().discrete_betas
    np.testing.assert_allclose(g_round**2, beta[11], rtol=4 * EPS)
    np.testing.assert_allclose(g_floor**2, beta[10], rtol=4 * EPS)


@mp.workdps(DPS)
def test_ve_discretize_matches_the_smld_chain_variance():
    sde = VESDE()
    N = sde.N
    idx = [0, 1, 2, 500, 998, 999]
    t = np.array([i / (N - 1) for i in idx])
    x = np.ones((len(idx), 2))
    f, G = sde.discretize(x, t)
    assert np.all(f == 0)

    def sig(i):  # exp(linspace(log σmin, log σmax, N))[i]
        lo, hi = mp.log(mp.mpf(0.01)), mp.log(mp.mpf(50.0))
        return mp.exp(lo + i * (hi - lo) / (N - 1))

    for r, i in enumerate(idx):
        var = sig(i) ** 2 - (sig(i - 1) ** 2 if i > 0 else 0)
        assert ulp_error(float(G[r]) ** 2, var) <= 8  # G² squares G's few-ulp error
        assert ulp_error(float(G[r]), mp.sqrt(var)) <= 3
    table = sde.discrete_sigmas
    assert max(ulp_error(float(table[i]), sig(i)) for i in range(N)) <= 1


@pytest.mark.parametrize("name", ["subvp", "vp", "ve_exact"])
def test_euler_discretize(name):
    sde, ref = make(name)
    t = np.array([0.1, 0.7])
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    drift, diff = sde.sde(x, t)
    for dt in (None, 0.01):
        f, G = sde.euler_discretize(x, t, dt=dt)
        step = 1.0 / sde.N if dt is None else dt
        np.testing.assert_allclose(f, drift * step, rtol=2 * EPS)
        np.testing.assert_allclose(G, diff * math.sqrt(step), rtol=2 * EPS)
    if name == "subvp":  # sub-VP has no discrete chain: discretize is Euler (score_sde)
        f, G = sde.discretize(x, t)
        np.testing.assert_allclose(f, drift / 1000, rtol=2 * EPS)
        with mp.workdps(DPS):
            g_exact = [mp.sqrt(ref.g2(s)) for s in t]
        for gi, ge in zip(G, g_exact):
            assert abs(as_mp(gi) - ge / mp.sqrt(1000)) <= 8 * EPS * ge / mp.sqrt(1000)


# --------------------------------------------------------------------------------------------
# Reverse SDE and probability-flow ODE
# --------------------------------------------------------------------------------------------


def _score_sin(x, t):
    return np.sin(x) * (1.0 + t[:, None])


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("pf", [False, True])
@mp.workdps(DPS)
def test_reverse_sde_drift_and_diffusion(name, pf):
    sde, ref = make(name)
    rev = sde.reverse(_score_sin, probability_flow=pf)
    assert isinstance(rev, ReverseSDE) and rev.forward_sde is sde and rev.T == sde.T
    t = np.array([0.2, 0.9])
    x = np.array([[0.3, -1.2], [2.0, 0.7]])
    drift, diffusion = rev.sde(x, t)
    for r, tt in enumerate(t):
        g2 = ref.g2(tt)
        for c in range(2):
            xv = as_mp(x[r, c])
            s = mp.sin(xv) * (1 + as_mp(tt))
            exact = ref.f_coef(tt) * xv - (g2 / 2 if pf else g2) * s
            assert abs(as_mp(drift[r, c]) - exact) <= 1e-14 * (abs(exact) + abs(g2 * s))
        if pf:
            assert float(diffusion[r]) == 0.0
        else:
            assert abs(as_mp(diffusion[r]) - mp.sqrt(g2)) <= 4 * EPS * mp.sqrt(g2)
    if pf:
        np.testing.assert_array_equal(probability_flow_drift(sde, _score_sin, x, t), drift)


@pytest.mark.parametrize("pf", [False, True])
@mp.workdps(DPS)
def test_reverse_discretize_is_the_reverse_diffusion_predictor(pf):
    """VP: rev_f = f - G² s (½ G² s for the ODE) with the DDPM f, G (Song et al. 2021, Eq. 46)."""
    sde = VPSDE()
    rev = sde.reverse(_score_sin, probability_flow=pf)
    t = np.array([3 / 999, 800 / 999])
    x = np.array([[0.3, -1.2], [2.0, 0.7]])
    rev_f, rev_G = rev.discretize(x, t)
    for r, i in enumerate([3, 800]):
        beta = (mp.mpf(0.1) + i * (mp.mpf(20) - mp.mpf(0.1)) / 999) / 1000
        for c in range(2):
            xv = as_mp(x[r, c])
            s = mp.sin(xv) * (1 + as_mp(t[r]))
            exact = (mp.sqrt(1 - beta) - 1) * xv - (beta / 2 if pf else beta) * s
            assert abs(as_mp(rev_f[r, c]) - exact) <= 1e-14 * (abs(xv) * beta + beta * abs(s))
        expect_G = 0.0 if pf else float(mp.sqrt(beta))
        assert abs(float(rev_G[r]) - expect_G) <= 4 * EPS * abs(expect_G)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@mp.workdps(DPS)
def test_probability_flow_ode_transports_gaussian_data_exactly(name):
    """x0 ~ N(0, s²): the exact score is -x / (α_t² s² + σ_t²) and the ODE is linear, so
    x(ε)/x(T) = √(v(ε)/v(T)) with v(t) = α_t² s² + σ_t² (closed form)."""
    sde, ref = make(name)
    s2 = 0.7**2
    mean_coef = {
        "vp": lambda t: np.exp(-(0.1 * t + 19.9 * t * t / 2) / 2),
        "subvp": lambda t: np.exp(-(0.1 * t + 19.9 * t * t / 2) / 2),
    }.get(ref.kind, lambda t: np.ones_like(t))

    def v_np(t):  # an independent float64 closed form of α² s² + σ² for the score
        a = mean_coef(t)
        return a * a * s2 + np.array([float(ref.var(tt)) for tt in t])

    def score(x, t):
        return -x / v_np(t)[:, None]

    rev = sde.reverse(score, probability_flow=True)

    def rhs(t, y):
        return rev.sde(y.reshape(1, 1), np.array([t]))[0].reshape(1)

    eps = 1e-3
    sol = scipy.integrate.solve_ivp(rhs, (1.0, eps), [1.0], rtol=1e-11, atol=1e-14, method="DOP853")
    assert sol.success
    v = lambda t: ref.mean_coef(t) ** 2 * s2 + ref.var(t)  # noqa: E731
    expected = mp.sqrt(v(mp.mpf(eps)) / v(mp.mpf(1)))
    assert abs(as_mp(sol.y[0, -1]) - expected) <= 1e-9 * expected


# --------------------------------------------------------------------------------------------
# Prior
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_prior_logp_and_sampling(name):
    sde, _ = make(name)
    scale = 50.0 if name.startswith("ve") else 1.0
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((4, 3, 2, 2))
    z = sde.prior_sampling((4, 3, 2, 2), noise=noise)
    np.testing.assert_array_equal(z, noise * scale)
    expected = scipy.stats.norm.logpdf(z, scale=scale).reshape(4, -1).sum(axis=1)
    got = sde.prior_logp(z)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    # a batch of scalars
    np.testing.assert_allclose(
        sde.prior_logp(z[:, 0, 0, 0]),
        scipy.stats.norm.logpdf(z[:, 0, 0, 0], scale=scale),
        rtol=1e-14,
    )


# --------------------------------------------------------------------------------------------
# Array API: the same code on array_api_strict, dtype and shape handling
# --------------------------------------------------------------------------------------------


def _exercise(sde: SDE, x, t, lam, noise, to_np):
    rev = sde.reverse(lambda y, s: -y * 0.5, probability_flow=False)
    ode = sde.reverse(lambda y, s: -y * 0.5, probability_flow=True)
    out = {
        "sde": sde.sde(x, t),
        "marginal_prob": sde.marginal_prob(x, t),
        "discretize": sde.discretize(x, t),
        "euler": sde.euler_discretize(x, t, dt=0.01),
        "prior_sampling": sde.prior_sampling(tuple(noise.shape), noise=noise),
        "prior_logp": sde.prior_logp(noise),
        "log_snr": sde.log_snr(t),
        "lambda": sde.lambda_(t),
        "t_from_lambda": sde.t_from_lambda(lam),
        "alpha": sde.marginal_alpha(t),
        "std": sde.marginal_std(t),
        "rev_sde": rev.sde(x, t),
        "rev_disc": rev.discretize(x, t),
        "ode": ode.sde(x, t),
        "ode_disc": ode.discretize(x, t),
    }
    flat = {}
    for k, v in out.items():
        if isinstance(v, tuple):
            for j, a in enumerate(v):
                flat[f"{k}[{j}]"] = to_np(a)
        else:
            flat[k] = to_np(v)
    return flat


@pytest.mark.parametrize("namespace", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_same_results_on_array_api_strict(name, namespace):
    sde, _ = make(name)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 2))
    t = np.array([0.0, 0.37, 1.0])
    lam = np.asarray(sde.lambda_(np.array([0.2, 0.5, 1.0])))
    noise = rng.standard_normal((3, 2, 2))
    ref = _exercise(sde, x, t, lam, noise, np.asarray)
    if namespace == "numpy":
        got = ref
    else:
        xps = pytest.importorskip("array_api_strict")
        got = _exercise(
            sde,
            xps.asarray(x),
            xps.asarray(t),
            xps.asarray(lam),
            xps.asarray(noise),
            lambda a: np.asarray(a),
        )
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=2 * EPS, atol=0, err_msg=k)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_keeps_the_dtype_of_x(name):
    sde, _ = make(name)
    x = np.ones((2, 3), dtype=np.float32)
    t = np.array([0.25, 0.75])  # float64 times are cast to x's dtype
    for out in (*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t)):
        assert out.dtype == np.float32
    assert sde.prior_logp(x).dtype == np.float32
    mean, std = sde.marginal_prob(x, 0.5)  # a Python number broadcasts as a 0-d time
    assert mean.shape == x.shape and std.shape == ()


def test_families_are_immutable_and_compare_by_value():
    assert VPSDE() == VPSDE(0.1, 20.0, 1000)
    assert VESDE(marginal="exact") != VESDE()
    with pytest.raises(Exception):
        VPSDE().beta_min = 1.0  # type: ignore[misc]
