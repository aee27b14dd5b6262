"""Probability-flow ODE likelihood (exact divergence and Hutchinson) and bits/dim conventions.

Independent references: the exact log-density of the Gaussian-data marginal
log N(x; α_t μ, α_t²Σ + σ_t²I) (instantaneous change of variables is exact when the prior is the
true marginal at T), the closed-form divergence D·f(t) + ½g(t)² tr C_t⁻¹ of the linear drift, and
Monte Carlo with stated 5-standard-error bounds for Hutchinson's estimator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import refdiff.kl
from refdiff import analytic as A
from refdiff import likelihood as L
from refdiff.sde import SubVPSDE, VESDE, VPSDE

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
XD = np.array([[0.3, -0.1], [1.2, 0.4], [-2.0, 1.5]])
SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)]


def ac(sde, t):
    return float(sde.marginal_alpha(t)), float(sde.marginal_std(t))


def score(data, sde):
    return lambda x, t: data.score(x, sde.marginal_alpha(t), sde.marginal_std(t))


def true_prior(data, sde):
    return lambda z: data.logpdf(z, *ac(sde, sde.T))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_ode_log_likelihood_equals_exact_log_density(sde):
    """With the true marginal at T as prior, log p_eps(x) = log p_T(z) + ∫∇·F dt holds to solver tolerance."""
    eps = 1e-5
    res = L.ode_log_likelihood(
        score(DATA, sde),
        XD,
        sde=sde,
        eps=eps,
        rtol=1e-10,
        atol=1e-10,
        prior_logp=true_prior(DATA, sde),
    )
    np.testing.assert_allclose(
        res.log_likelihood, DATA.logpdf(XD, *ac(sde, eps)), rtol=0, atol=1e-7
    )
    assert res.z.shape == XD.shape and res.nfe > 10


def test_default_prior_is_the_sdes():
    """The default prior is sde.prior_logp (N(0, I) for VP): off by log N(z; 0, I) - log p_T(z)."""
    sde = VPSDE()
    a = L.ode_log_likelihood(score(DATA, sde), XD, sde=sde, rtol=1e-10, atol=1e-10)
    b = L.ode_log_likelihood(
        score(DATA, sde), XD, sde=sde, rtol=1e-10, atol=1e-10, prior_logp=true_prior(DATA, sde)
    )
    np.testing.assert_allclose(a.delta_logp, b.delta_logp, rtol=1e-12)
    std_normal = -0.5 * np.sum(a.z**2, axis=1) - math.log(2 * math.pi)
    np.testing.assert_allclose(
        a.log_likelihood - b.log_likelihood, std_normal - DATA.logpdf(a.z, *ac(sde, 1.0)), atol=1e-9
    )


def test_exact_divergence_closed_form_and_jvp():
    """∇·F = D f(t) + ½ g² tr C_t⁻¹ for the linear drift; central differences and an analytic jvp agree."""
    sde = VPSDE()
    t = 0.4
    a, s = ac(sde, t)
    C = a * a * COV + s * s * np.eye(2)
    beta = 0.1 + t * 19.9
    expected = 2 * (-0.5 * beta) + 0.5 * beta * np.trace(np.linalg.inv(C))
    fd = L.exact_divergence(sde, score(DATA, sde), XD, t)
    np.testing.assert_allclose(fd, expected, rtol=1e-9)
    jvp = lambda x, tt, v: -np.linalg.solve(C, v.T).T
    np.testing.assert_allclose(
        L.exact_divergence(sde, score(DATA, sde), XD, t, jvp=jvp), expected, rtol=1e-13
    )


def test_rademacher_probe_is_exact_for_diagonal_jacobians():
    """Diagonal Σ makes ∂F/∂x diagonal, and vᵀ diag(d) v = Σ d_i for v ∈ {±1}^D: every probe is exact."""
    data = A.GaussianData(MU, np.array([0.7, 0.2]))
    sde = VPSDE()
    pn = np.random.default_rng(3).standard_normal(XD.shape)
    h = L.ode_log_likelihood(
        score(data, sde),
        XD,
        sde=sde,
        divergence="hutchinson",
        probe="rademacher",
        probe_noise=pn,
        rtol=1e-10,
        atol=1e-10,
        prior_logp=true_prior(data, sde),
    )
    np.testing.assert_allclose(h.log_likelihood, data.logpdf(XD, *ac(sde, 1e-5)), atol=1e-7)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_divergence_is_unbiased(probe):
    """Nonlinear score (Gaussian mixture): the mean of vᵀ(∂F/∂x)v over M = 4000 probes is within
    5 standard errors of the exact trace."""
    gmm = A.GaussianMixtureData(
        [0.3, 0.7],
        [[-1.0, 0.5], [1.5, -0.5]],
        [[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]],
    )
    sde = VPSDE()
    t, M = 0.2, 4000
    x = np.array([[0.2, 0.1]])
    exact = float(L.exact_divergence(sde, score(gmm, sde), x, t)[0])
    v = L.draw_probes(probe, noise=np.random.default_rng(11).standard_normal((M, 2)))
    est = L.hutchinson_divergence(sde, score(gmm, sde), np.repeat(x, M, axis=0), t, v)
    assert est.std() > 1e-3  # the estimator does fluctuate
    assert abs(est.mean() - exact) < 5 * est.std() / math.sqrt(M)


def test_hutchinson_log_likelihood_is_unbiased():
    """Gaussian probes held fixed along each path: the mean over M = 300 paths of the ODE
    log-likelihood is within 5 standard errors of the exact log-density."""
    sde = VPSDE()
    M = 300
    x = np.repeat(XD[:1], M, axis=0)
    pn = np.random.default_rng(5).standard_normal(x.shape)
    res = L.ode_log_likelihood(
        score(DATA, sde),
        x,
        sde=sde,
        divergence="hutchinson",
        probe="gaussian",
        probe_noise=pn,
        rtol=1e-8,
        atol=1e-8,
        prior_logp=true_prior(DATA, sde),
    )
    exact = float(DATA.logpdf(XD[:1], *ac(sde, 1e-5))[0])
    ll = res.log_likelihood
    assert ll.std() > 1e-3
    assert abs(ll.mean() - exact) < 5 * ll.std() / math.sqrt(M)


def test_bits_per_dim_conventions():
    """score_sde: -log p/(d ln 2) + 7 - inverse_scaler(-1): 7 for [-1, 1] data, 8 for [0, 1]; "none": no offset.
    Sanity: a uniform density over the data cube is 8 bits/dim (256 levels) in both scalings."""
    assert L.bpd_offset("score_sde", centered=True) == 7.0
    assert L.bpd_offset("score_sde", centered=False) == 8.0
    assert L.bpd_offset("none") == 0.0
    d = 3 * 4 * 4
    assert L.bits_per_dim(np.array([0.0]), num_dims=d, centered=False)[0] == pytest.approx(8.0)
    assert L.bits_per_dim(np.array([-d * math.log(2.0)]), num_dims=d, centered=True)[
        0
    ] == pytest.approx(8.0)
    ll = np.array([-100.0, 20.0])
    np.testing.assert_allclose(
        L.bits_per_dim(ll, num_dims=d, offset="none"), -ll / (d * math.log(2))
    )


def test_uniform_dequantize_fills_each_bin():
    k = np.arange(256.0)
    for u in (0.0, 0.5, 0.999999):
        y = L.uniform_dequantize(k / 255.0, noise=np.full(256, u))
        assert np.all(np.floor(y * 256.0) == k)


def test_calc_bpd_loop_is_reexported():
    assert L.calc_bpd_loop is refdiff.kl.calc_bpd_loop


def test_likelihood_errors():
    sde = VPSDE()
    xs = pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError, match="oracle-side"):
        L.ode_log_likelihood(score(DATA, sde), xs.asarray(XD), sde=sde)
    with pytest.raises(ValueError, match="probe_noise"):
        L.ode_log_likelihood(score(DATA, sde), XD, sde=sde, divergence="hutchinson")
    with pytest.raises(ValueError, match="probe_noise has shape"):
        L.ode_log_likelihood(
            score(DATA, sde), XD, sde=sde, divergence="hutchinson", probe_noise=np.zeros((1, 2))
        )
    with pytest.raises(KeyError, match="divergence='trace' is not a known"):
        L.ode_log_likelihood(score(DATA, sde), XD, sde=sde, divergence="trace")
    with pytest.raises(KeyError, match="probe='sphere' is not a known"):
        L.draw_probes("sphere", noise=XD)
    with pytest.raises(KeyError, match="offset='k_diffusion' is not a known"):
        L.bits_per_dim(np.zeros(1), num_dims=2, offset="k_diffusion")
    with pytest.raises(ValueError, match="num_dims=0 is invalid"):
        L.bits_per_dim(np.zeros(1), num_dims=0)
    with pytest.raises(ValueError, match="score_fn returned shape"):
        L.ode_log_likelihood(lambda x, t: x[:, :1], XD, sde=sde)
    with pytest.raises(ValueError, match=r"noise=.*uniform draws in \[0, 1\)"):
        L.uniform_dequantize(np.zeros(2), noise=np.array([0.5, 1.0]))
