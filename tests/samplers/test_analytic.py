"""refdiff.analytic against independent derivations: scipy densities, finite differences, Tweedie's
formula, Gaussian conditioning written out with np.linalg.solve, and the core parameterizations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from refdiff import analytic as A
from refdiff._errors import RefdiffShapeError, RefdiffValueError, UnknownNameError
from refdiff.parameterizations import v_from_x0, x0_from_eps
from refdiff.schedules import cosine, linear, respace
from refdiff.sde import SubVPSDE, VESDE, VPSDE

RNG = np.random.default_rng(20240601)


def _spd(d, rng, floor=0.1):
    q = rng.standard_normal((d, d))
    return q @ q.T / d + floor * np.eye(d)


def _fd_grad(f, x, h=1e-5):
    """Central finite differences of a batched scalar function f: (B, d) -> (B,)."""
    g = np.zeros_like(x)
    for j in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[j] = h
        g[:, j] = (f(x + e) - f(x - e)) / (2 * h)
    return g


CASES = [(0.8, 0.6), (1.0, 0.05), (0.02, 0.9998), (1.0, 3.0)]


@pytest.mark.parametrize("alpha,sigma", CASES)
def test_gaussian_against_scipy_and_tweedie(alpha, sigma):
    d = 3
    mu = RNG.standard_normal(d)
    S = _spd(d, RNG)
    data = A.GaussianData(mu, S)
    x = RNG.standard_normal((6, d)) * 2
    C = alpha**2 * S + sigma**2 * np.eye(d)
    law = multivariate_normal(alpha * mu, C)
    np.testing.assert_allclose(data.logpdf(x, alpha, sigma), law.logpdf(x), rtol=1e-13, atol=1e-12)
    score_fd = _fd_grad(law.logpdf, x)
    np.testing.assert_allclose(data.score(x, alpha, sigma), score_fd, rtol=1e-6, atol=1e-6)
    # Tweedie: E[x0|x] = (x + σ²∇log p(x)) / α — here with the exact score written by hand.
    score = -np.linalg.solve(C, (x - alpha * mu).T).T
    np.testing.assert_allclose(
        data.x0(x, alpha, sigma), (x + sigma**2 * score) / alpha, rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(data.eps(x, alpha, sigma), -sigma * score, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        data.v(x, alpha, sigma),
        alpha * (-sigma * score) - sigma * (x + sigma**2 * score) / alpha,
        rtol=1e-11,
        atol=1e-11,
    )
    m, c = data.marginal(alpha, sigma)
    np.testing.assert_allclose(m, alpha * mu, rtol=1e-15)
    np.testing.assert_allclose(c, C, rtol=1e-14, atol=1e-15)
    # Var[x0|x_t] by the Schur complement, written independently of the eigen-decomposition.
    post = S - alpha**2 * S @ np.linalg.solve(C, S)
    np.testing.assert_allclose(data.posterior_cov(alpha, sigma), post, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        data.posterior_var(x, alpha, sigma),
        np.broadcast_to(np.diag(post), x.shape),
        rtol=1e-10,
        atol=1e-12,
    )
    Am, b = data.denoiser_matrix(alpha, sigma)
    np.testing.assert_allclose(x @ Am.T + b, data.x0(x, alpha, sigma), rtol=1e-12, atol=1e-12)


def test_posterior_var_matches_monte_carlo_regression():
    """Var[x0|x_t] is the residual variance of regressing x0 on x_t (Monte Carlo, 6σ bound)."""
    d, n = 2, 200_000
    data = A.GaussianData([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]])
    rng = np.random.default_rng(7)
    x0 = data.sample(rng.standard_normal((n, d)))
    a, s = 0.6, 0.8
    xt = a * x0 + s * rng.standard_normal((n, d))
    resid = x0 - data.x0(xt, a, s)
    emp = resid.T @ resid / n
    assert np.all(np.abs(resid.mean(0)) < 6 * np.sqrt(np.diag(emp) / n))
    post = data.posterior_cov(a, s)
    se = np.sqrt((post**2 + np.outer(np.diag(post), np.diag(post))) / n)
    assert np.all(np.abs(emp - post) < 6 * se)


def test_sample_has_the_data_law():
    rng = np.random.default_rng(3)
    S = np.array([[2.0, -0.5], [-0.5, 0.3]])
    data = A.GaussianData([1.0, 2.0], S)
    z = rng.standard_normal((100_000, 2))
    x = data.sample(z)
    n = x.shape[0]
    assert np.all(np.abs(x.mean(0) - data.mean) < 6 * np.sqrt(np.diag(S) / n))
    emp = np.cov(x.T)
    assert np.all(np.abs(emp - S) < 6 * np.sqrt((S**2 + np.outer(np.diag(S), np.diag(S))) / n))
    # the map is μ + Σ^{1/2} z with a symmetric root: (x − μ) = z R, R Rᵀ = Σ
    R = np.linalg.lstsq(z[:10], x[:10] - data.mean, rcond=None)[0]
    np.testing.assert_allclose(R, R.T, atol=1e-12)
    np.testing.assert_allclose(R @ R.T, S, atol=1e-12)


def test_point_mass_denoiser_is_constant():
    mu = np.array([0.3, -2.0])
    data = A.GaussianData(mu, 0.0)
    x = RNG.standard_normal((5, 2))
    for a, s in [(0.99, 0.1), (0.01, 0.99995), (1.0, 1e-6)]:
        np.testing.assert_array_equal(data.x0(x, a, s), np.broadcast_to(mu, x.shape))
        np.testing.assert_allclose(data.eps(x, a, s), (x - a * mu) / s, rtol=1e-14)
        np.testing.assert_array_equal(data.posterior_cov(a, s), np.zeros((2, 2)))


@pytest.mark.parametrize("alpha,sigma", CASES[:3])
def test_mixture_against_scipy_fd_and_tweedie(alpha, sigma):
    d = 2
    w = np.array([0.2, 0.5, 0.3])
    mus = RNG.standard_normal((3, d)) * 2
    covs = [_spd(d, RNG), np.diag([0.3, 0.7]), 0.05 * np.eye(d)]
    data = A.GaussianMixtureData(w, mus, covs)
    x = RNG.standard_normal((7, d)) * 2

    def logp(y):
        return np.log(
            sum(
                wk * multivariate_normal(alpha * m, alpha**2 * c + sigma**2 * np.eye(d)).pdf(y)
                for wk, m, c in zip(w, mus, covs)
            )
        )

    np.testing.assert_allclose(data.logpdf(x, alpha, sigma), logp(x), rtol=1e-12, atol=1e-12)
    score_fd = _fd_grad(logp, x)
    np.testing.assert_allclose(data.score(x, alpha, sigma), score_fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        data.x0(x, alpha, sigma), (x + sigma**2 * score_fd) / alpha, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        data.eps(x, alpha, sigma), -sigma * data.score(x, alpha, sigma), rtol=1e-12, atol=1e-12
    )
    r = data.responsibilities(x, alpha, sigma)
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-14)
    m, c = data.marginal(alpha, sigma)
    ex_m = sum(wk * alpha * mk for wk, mk in zip(w, mus))
    np.testing.assert_allclose(m, ex_m, rtol=1e-13)


def test_mixture_monte_carlo_moments():
    rng = np.random.default_rng(11)
    data = A.GaussianMixtureData([0.3, 0.7], [[-2.0, 0.0], [1.0, 1.0]], [0.2, [0.5, 0.1]])
    n = 200_000
    x = data.sample(rng.standard_normal((n, 2)), rng.random(n))
    m, c = data.marginal(1.0, 0.0)
    assert np.all(np.abs(x.mean(0) - m) < 6 * np.sqrt(np.diag(c) / n))
    assert np.all(
        np.abs(np.cov(x.T) - c) < 6 * np.sqrt((c**2 + np.outer(np.diag(c), np.diag(c))) / n) + 1e-3
    )


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score", "mu"])
def test_discrete_model_kinds_agree_with_core_parameterizations(kind):
    S = cosine(50)
    data = A.GaussianData([0.2, -0.4], [[0.5, 0.1], [0.1, 0.3]])
    x = RNG.standard_normal((4, 2))
    t = np.array([0, 7, 30, 49])
    eps = A.discrete_model(data, S, "eps")(x, t)
    x0 = A.discrete_model(data, S, "x0")(x, t)
    np.testing.assert_allclose(x0_from_eps(S, x, t, eps), x0, rtol=1e-10, atol=1e-10)
    out = A.discrete_model(data, S, kind)(x, t)
    sa = S.sqrt_alphas_cumprod[t][:, None]
    so = S.sqrt_one_minus_alphas_cumprod[t][:, None]
    expected = {
        "eps": eps,
        "x0": x0,
        "v": v_from_x0(S, x, t, x0),
        "score": -eps / so,
        "mu": S.posterior_mean_coef1[t][:, None] * x0 + S.posterior_mean_coef2[t][:, None] * x,
    }[kind]
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    assert sa.shape == (4, 1)


def test_discrete_model_learned_variance_is_the_exact_reverse_variance():
    """log Var[x_{t'}|x_t] equals the Gaussian conditional of the joint (x_{t'}, x_t), written out."""
    base = linear(1000)
    S = respace(base, 10, spacing="trailing")
    Sig = np.diag([0.7, 0.2])
    data = A.GaussianData([0.1, 0.3], Sig)
    model = A.discrete_model(data, base, "eps", sampling_schedule=S, var_type="learned")
    x = RNG.standard_normal((1, 2))
    for i in range(S.num_timesteps):
        t = int(S.timestep_map[i])
        out = model(x, np.array([t]))
        assert out.shape == (1, 4)
        ab = S.alphas_cumprod[i]
        abp = S.alphas_cumprod[i - 1] if i > 0 else 1.0
        # x_{t'} = √ᾱ' x0 + √(1-ᾱ') z';  x_t = √(ᾱ/ᾱ') x_{t'} + √(1-ᾱ/ᾱ') z''
        a_step = np.sqrt(ab / abp)
        V_prev = abp * Sig + (1 - abp) * np.eye(2)
        V_t = ab * Sig + (1 - ab) * np.eye(2)
        cov_pt = a_step * V_prev
        cond = V_prev - cov_pt @ np.linalg.solve(V_t, cov_pt.T)
        np.testing.assert_allclose(np.exp(out[0, 2:]), np.diag(cond), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(
            out[0, :2], data.eps(x, np.sqrt(ab), np.sqrt(1 - ab))[0], rtol=1e-12
        )


def test_vp_model_uses_the_sde_marginal():
    data = A.GaussianData([0.3], [0.4])
    x = RNG.standard_normal((3, 1))
    t = np.array([0.1, 0.5, 1.0])
    sde = VPSDE()
    lmc = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    a, s = np.exp(lmc), np.sqrt(-np.expm1(2 * lmc))
    for kind in ("eps", "x0", "v", "score"):
        out = A.vp_model(data, sde, kind)(x, t)
        np.testing.assert_allclose(out, getattr(data, kind)(x, a, s), rtol=1e-12)
    # sub-VP and VE: α, σ from their own marginals
    for other in (SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)):
        out = A.vp_model(data, other, "score")(x, t)
        a2, s2 = other.marginal_alpha(t), other.marginal_std(t)
        C = a2**2 * 0.4 + s2**2
        np.testing.assert_allclose(out[:, 0], -(x[:, 0] - a2 * 0.3) / C, rtol=1e-12)


def test_karras_denoiser_is_tweedie_on_the_ve_scale():
    data = A.GaussianMixtureData([0.5, 0.5], [[-1.0], [1.0]], 0.1)
    D = A.karras_denoiser(data)
    x = np.linspace(-3, 3, 7)[:, None]
    for sigma in (0.01, 0.5, 20.0):
        sc = _fd_grad(lambda y: data.logpdf(y, 1.0, sigma), x, h=1e-5 * max(1, sigma))
        np.testing.assert_allclose(D(x, sigma), x + sigma**2 * sc, rtol=1e-5, atol=1e-5 * sigma**2)


@pytest.mark.parametrize("ns", ["array_api_strict", "torch"])
def test_same_results_on_other_namespaces(ns):
    mod = pytest.importorskip(ns)
    data = A.GaussianMixtureData(
        [0.4, 0.6], [[0.0, 1.0], [1.0, -1.0]], [[[0.3, 0.1], [0.1, 0.2]], 0.5]
    )
    g = A.GaussianData([0.5, 0.2], [[0.3, 0.1], [0.1, 0.2]])
    x = RNG.standard_normal((4, 2))
    xa = mod.asarray(x, dtype=mod.float64)
    a = mod.asarray([0.9, 0.5, 0.3, 0.1], dtype=mod.float64)
    s = mod.sqrt(1.0 - a * a)
    an, sn = np.asarray([0.9, 0.5, 0.3, 0.1]), np.sqrt(1 - np.asarray([0.9, 0.5, 0.3, 0.1]) ** 2)
    for obj in (data, g):
        for what in ("x0", "eps", "v", "score", "logpdf"):
            got = np.asarray(getattr(obj, what)(xa, a, s))
            np.testing.assert_allclose(got, getattr(obj, what)(x, an, sn), rtol=1e-13, atol=1e-14)
    S = linear(20)
    m = A.discrete_model(g, S, "x0", var_type="learned")
    got = np.asarray(m(xa, mod.asarray([1, 2, 3, 19])))
    np.testing.assert_allclose(got, m(x, np.array([1, 2, 3, 19])), rtol=1e-13)


def test_linear_sampler_law_recovers_an_affine_map():
    rng = np.random.default_rng(5)
    d, k = 3, 2
    M, N, c = rng.standard_normal((d, d)), rng.standard_normal((d, k * d)), rng.standard_normal(d)

    def run(xT, noise):
        flat = np.concatenate([noise[j] for j in range(k)], axis=1)
        return xT @ M.T + flat @ N.T + c

    mT = rng.standard_normal(d)
    cT = _spd(d, rng)
    law = A.linear_sampler_law(run, mT, cT, dim=d, n_noise=k)
    np.testing.assert_allclose(law.M, M, atol=1e-13)
    np.testing.assert_allclose(law.N, N, atol=1e-13)
    np.testing.assert_allclose(law.mean, M @ mT + c, atol=1e-13)
    np.testing.assert_allclose(law.cov, M @ cT @ M.T + N @ N.T, atol=1e-12)
    with pytest.raises(RefdiffValueError, match="run is not affine in"):
        A.linear_sampler_law(lambda xT, nz: np.tanh(run(xT, nz)), mT, cT, dim=d, n_noise=k)
    with pytest.raises(RefdiffShapeError, match=r"run returned shape \(1, 3\)"):
        A.linear_sampler_law(lambda xT, nz: xT[:1], mT, cT, dim=d, n_noise=0)


def test_gaussian_kl_against_closed_form_1d():
    kl = A.gaussian_kl([0.0], [[1.0]], [1.0], [[4.0]])
    assert kl == pytest.approx(0.5 * (1 / 4 + 1 / 4 - 1 + np.log(4)), rel=1e-14)


def test_bad_input_messages():
    with pytest.raises(
        RefdiffValueError, match=r"cov=.* is invalid: must be positive semi-definite"
    ):
        A.GaussianData([0.0, 0.0], [[1.0, 0.0], [0.0, -1.0]])
    with pytest.raises(RefdiffValueError, match=r"cov=.* is invalid: must be symmetric"):
        A.GaussianData([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(RefdiffValueError, match=r"cov=.* is invalid: expected a \(2, 2\) matrix"):
        A.GaussianData([0.0, 0.0], np.eye(3))
    g = A.GaussianData([0.0, 0.0], 1.0)
    with pytest.raises(
        RefdiffShapeError, match=r"x has shape \(4, 3\) but the data are 2-dimensional"
    ):
        g.x0(np.zeros((4, 3)), 1.0, 1.0)
    with pytest.raises(RefdiffShapeError, match=r"alpha has shape \(3,\) but x has batch size 4"):
        g.x0(np.zeros((4, 2)), np.ones(3), 1.0)
    with pytest.raises(RefdiffValueError, match=r"sigma=-1.0 is invalid: must be >= 0"):
        g.score(np.zeros((4, 2)), 1.0, -1.0)
    with pytest.raises(RefdiffValueError, match=r"ε is undefined at σ = 0"):
        g.eps(np.zeros((4, 2)), 1.0, 0.0)
    pm = A.GaussianData([0.0, 0.0], 0.0)
    with pytest.raises(RefdiffValueError, match="the score needs a non-singular"):
        pm.score(np.zeros((1, 2)), 1.0, 0.0)
    with pytest.raises(RefdiffValueError, match=r"weights=.* is invalid: expected positive finite"):
        A.GaussianMixtureData([0.5, -0.5], [[0.0], [1.0]], 1.0)
    with pytest.raises(RefdiffValueError, match=r"a 2-D covs is ambiguous when K = d = 2"):
        A.GaussianMixtureData([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], np.eye(2))
    with pytest.raises(UnknownNameError, match=r"mean_type='flow' is not a known prediction type"):
        A.discrete_model(g, linear(10), "flow")
    with pytest.raises(
        RefdiffValueError, match=r"t=10 is invalid: timesteps must lie in \[0, 10\)"
    ):
        A.discrete_model(g, linear(10))(np.zeros((1, 2)), 10)
    with pytest.raises(RefdiffValueError, match="is not a step of sampling_schedule"):
        S = respace(linear(10), [0, 5])
        A.discrete_model(g, linear(10), sampling_schedule=S, var_type="learned")(
            np.zeros((1, 2)), np.array([3])
        )
    with pytest.raises(RefdiffValueError, match="needs GaussianData"):
        A.discrete_model(
            A.GaussianMixtureData([1.0], [[0.0, 0.0]], 1.0), linear(10), var_type="learned"
        )
    with pytest.raises(
        RefdiffValueError,
        match=r"noise_schedule_or_sde=.* is invalid: expected an object with marginal_alpha",
    ):
        A.vp_model(g, object())
