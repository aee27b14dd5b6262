"""KL, decoder likelihood and bits/dim against mpmath, quadrature and exact special cases."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

from refdiff import kl as K
from refdiff import parameterizations as P
from refdiff import schedules as S

mp.mp.dps = 40
floats = st.floats(-5, 5)


@settings(max_examples=100, deadline=None)
@given(floats, floats, floats, floats)
def test_normal_kl_nonnegative_and_zero_on_equal(m1, l1, m2, l2):
    kl = float(K.normal_kl(np.float64(m1), np.float64(l1), np.float64(m2), np.float64(l2)))
    assert kl >= 0.0
    assert float(K.normal_kl(np.float64(m1), np.float64(l1), np.float64(m1), np.float64(l1))) == 0.0
    with mp.workdps(400):  # the textbook form cancels: give it the digits
        exact = mp.mpf(0.5) * (
            -1
            + mp.mpf(l2)
            - mp.mpf(l1)
            + mp.exp(mp.mpf(l1) - mp.mpf(l2))
            + (mp.mpf(m1) - mp.mpf(m2)) ** 2 * mp.exp(-mp.mpf(l2))
        )
    assert kl == pytest.approx(float(exact), rel=1e-12, abs=1e-300)


def test_normal_kl_matches_quadrature():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 2.0
    p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
    want, _ = integrate.quad(
        lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -20, 20, epsabs=1e-13
    )
    got = float(K.normal_kl(np.float64(m1), np.log(v1), np.float64(m2), np.log(v2)))
    assert got == pytest.approx(want, rel=1e-10)


def test_normal_kl_of_nearby_gaussians_keeps_precision():
    d = 1e-6  # 1 + e^d - d - 1 cancels to nothing in the naive form; expm1 keeps it
    got = float(K.normal_kl(np.float64(0.0), np.float64(d), np.float64(0.0), np.float64(0.0)))
    assert got == pytest.approx(float(mp.mpf(0.5) * (mp.expm1(d) - d)), rel=1e-9)


def test_cdfs():
    x = np.linspace(-6, 6, 101)
    exact = np.array([float(mp.ncdf(v)) for v in x])
    np.testing.assert_allclose(K.standard_normal_cdf(x), exact, rtol=1e-14, atol=0)
    assert np.max(np.abs(K.approx_standard_normal_cdf(x) - exact)) < 2e-4  # Page's approximation
    assert float(K.standard_normal_cdf(np.float64(-30.0))) == pytest.approx(
        float(mp.ncdf(-30)), rel=1e-13
    )


@pytest.mark.parametrize("cdf", K.CDFS)
def test_discretized_likelihood_is_a_probability_over_all_bins(cdf):
    """The 256 bins (edge bins open to ±∞) telescope to total probability 1."""
    x = np.linspace(-1, 1, 256)
    for mean, log_scale in [(0.1, np.log(0.3)), (-0.7, np.log(0.01)), (0.0, np.log(2.0))]:
        ll = K.discretized_gaussian_log_likelihood(
            x,
            means=np.full_like(x, mean),
            log_scales=np.full_like(x, log_scale),
            cdf=cdf,
            log_floor=0.0,
        )
        assert np.sum(np.exp(ll)) == pytest.approx(1.0, abs=1e-12)


def test_exact_discretized_likelihood_matches_mpmath():
    x = np.linspace(-1, 1, 256)[::17]
    mean, scale = 0.2, 0.05
    ll = K.discretized_gaussian_log_likelihood(
        x,
        means=np.full_like(x, mean),
        log_scales=np.full_like(x, np.log(scale)),
        cdf="erf",
        log_floor=0.0,
    )
    for xi, li in zip(x, ll):
        lo = -mp.inf if xi < -0.999 else (mp.mpf(xi) - 1 / mp.mpf(255) - mean) / mp.mpf(scale)
        hi = mp.inf if xi > 0.999 else (mp.mpf(xi) + 1 / mp.mpf(255) - mean) / mp.mpf(scale)
        with mp.workdps(200):  # the right tail is 1 - 1e-40: subtracting CDFs needs the digits
            want = mp.log(mp.ncdf(hi) - mp.ncdf(lo))
        assert li == pytest.approx(float(want), rel=1e-11), xi


def test_prior_bpd_published_value():
    """Linear T=1000, x0 = 1: 2.018e-05 nats/dim = 2.911e-05 bits/dim (research/peers.md §c), here exact in mpmath."""
    s = S.linear(1000)
    ab = mp.mpf(1)
    for b in np.linspace(1e-4, 0.02, 1000):
        ab *= 1 - mp.mpf(b)
    kl = mp.mpf(0.5) * (-1 - mp.log(1 - ab) + (1 - ab) + ab)
    got = float(K.prior_bpd(s, np.ones((1, 3)))[0])
    assert got == pytest.approx(float(kl / mp.log(2)), rel=1e-10)
    assert got == pytest.approx(2.911e-05, rel=1e-3)


def test_bpd_loop_of_a_point_mass_with_the_exact_model():
    """For data = one point x0 the exact ε-model makes every KL term vanish; what is left is the
    prior term and the decoder NLL −log P(x0 | N(μ̃_1(x_1, x0), β̃_1)) at t = 0."""
    s = S.linear(20)
    x0 = np.array([[-1.0, 1.0, 7 / 255 * 2 - 1]])
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((s.T,) + x0.shape)

    def model(x_t, t):
        return P.eps_from_x0(s, x_t, t, x0)

    out = K.calc_bpd_loop(s, model, x0, noise=noise, clip_x0=False)
    np.testing.assert_allclose(out["vb"][:, 1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(out["mse"], 0.0, atol=1e-10)
    # decoder at t=0: mean = x0 exactly (coef1 = 1, coef2 = 0), log-variance = log β̃_1 (clipped)
    std = math.sqrt(s.posterior_variance[1])
    nll = 0.0
    for xi in x0[0]:
        lo = -mp.inf if xi < -0.999 else (mp.mpf(-1 / 255)) / std
        hi = mp.inf if xi > 0.999 else (mp.mpf(1 / 255)) / std
        p = (
            0.5 * (1 + mp.tanh(mp.sqrt(2 / mp.pi) * (hi + 0.044715 * hi**3)))
            if hi != mp.inf
            else mp.mpf(1)
        )
        pm = (
            0.5 * (1 + mp.tanh(mp.sqrt(2 / mp.pi) * (lo + 0.044715 * lo**3)))
            if lo != -mp.inf
            else mp.mpf(0)
        )
        nll += -mp.log(max(p - pm, mp.mpf(1e-12)))
    assert float(out["vb"][0, 0]) == pytest.approx(float(nll / 3 / mp.log(2)), rel=1e-9)
    assert float(out["total_bpd"][0]) == pytest.approx(
        float(out["vb"][0, 0] + out["prior_bpd"][0]), rel=1e-14
    )
