"""Marginals, posteriors, parameterizations and p(x_{t-1}|x_t) against independent derivations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as npst
from scipy import stats

from refdiff import diffusion as D
from refdiff import parameterizations as P
from refdiff import schedules as S

SCHEDULES = {
    "linear": S.linear(1000),
    "cosine": S.cosine(1000),
    "zero_snr": S.zero_terminal_snr(S.linear(1000)),
    "respaced": S.respace(S.cosine(1000), "ddim25"),
}


def random_schedule(draw):
    T = draw(st.integers(2, 60))
    betas = draw(npst.arrays(np.float64, T, elements=st.floats(1e-6, 0.5)))
    return S.from_betas(betas)


schedules = st.composite(random_schedule)


@st.composite
def problem(draw):
    s = draw(schedules())
    b = draw(st.integers(1, 4))
    t = np.array(draw(st.lists(st.integers(0, s.T - 1), min_size=b, max_size=b)), dtype=np.int64)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return s, t, rng.standard_normal((b, 2, 3)), rng.standard_normal((b, 2, 3))


@settings(max_examples=60, deadline=None)
@given(problem())
def test_round_trips_eps_x0_v_score_mu(p):
    s, t, x0, eps = p
    x_t = D.q_sample(s, x0, t, noise=eps)
    np.testing.assert_allclose(
        P.x0_from_eps(s, x_t, t, eps), x0, rtol=1e-9, atol=1e-9 / np.sqrt(s.alphas_cumprod[t].min())
    )
    np.testing.assert_allclose(
        P.eps_from_x0(s, x_t, t, x0),
        eps,
        rtol=1e-9,
        atol=1e-9 / np.sqrt(1 - s.alphas_cumprod[t].max()),
    )
    v = P.v_from_x0_eps(s, x0, t, eps)
    np.testing.assert_allclose(P.x0_from_v(s, x_t, t, v), x0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(P.eps_from_v(s, x_t, t, v), eps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(P.eps_from_score(s, t, P.score_from_eps(s, t, eps)), eps, rtol=1e-15)
    mu = P.mu_from_x0(s, x_t, t, x0)
    # x0 = (μ − c2·x_t)/c1: the rounding of μ and c2·x_t is divided by c1, which is 4e-9 after
    # sixteen β = 0.5 steps followed by β = 1e-6 (a random schedule that failed a fixed 1e-8)
    c1, c2 = (
        getattr(s, n)[t].reshape(-1, 1, 1) for n in ("posterior_mean_coef1", "posterior_mean_coef2")
    )
    cond = (np.abs(mu) + np.abs(c2 * x_t)) / c1
    np.testing.assert_array_less(np.abs(P.x0_from_mu(s, x_t, t, mu) - x0), 1e-9 + 8e-16 * cond)


def test_v_definition_is_rotation():
    """v = cos φ ε − sin φ x0 with (cos φ, sin φ) = (√ᾱ, √(1−ᾱ)): ‖(x_t, v)‖ = ‖(x0, ε)‖ (Salimans & Ho 2022, Fig. 2)."""
    s = S.cosine(100)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 5, 4))
    t = np.arange(0, 100, 20)
    x_t = D.q_sample(s, x0, t, noise=eps)
    v = P.v_from_x0_eps(s, x0, t, eps)
    np.testing.assert_allclose(x_t**2 + v**2, x0**2 + eps**2, rtol=1e-13)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_posterior_times_marginal_is_the_joint(name):
    """q(x_{t-1}|x_t,x0) q(x_t|x0) = q(x_t|x_{t-1}) q(x_{t-1}|x0) as Gaussian densities (Bayes; Ho et al. 2020, Eqs. 2, 4, 6)."""
    s = SCHEDULES[name]
    rng = np.random.default_rng(1)
    ts = np.array([1, 2, s.T // 3, s.T // 2, s.T - 2, s.T - 1])
    x0, xt, xprev = rng.standard_normal((3, ts.size))
    mean, var, _ = D.q_posterior_mean_variance(s, x0, xt, ts)
    ab, ab_prev, beta = s.alphas_cumprod[ts], s.alphas_cumprod_prev[ts], s.betas[ts]
    ok = ab > 0
    lhs = stats.norm.logpdf(xprev, mean, np.sqrt(var)) + stats.norm.logpdf(
        xt, np.sqrt(ab) * x0, np.sqrt(1 - ab)
    )
    rhs = stats.norm.logpdf(xt, np.sqrt(1 - beta) * xprev, np.sqrt(beta)) + stats.norm.logpdf(
        xprev, np.sqrt(ab_prev) * x0, np.sqrt(1 - ab_prev)
    )
    np.testing.assert_allclose(lhs[ok], rhs[ok], rtol=1e-9, atol=1e-9)


def test_posterior_t0_conventions():
    s = S.linear(1000)
    x = np.zeros((2, 1))
    t = np.array([0, 5])
    _, var, lv_clip = D.q_posterior_mean_variance(s, x, x, t, t0="clipped")
    _, _, lv_clamp = D.q_posterior_mean_variance(s, x, x, t, t0="clamped")
    assert var[0, 0] == 0.0
    assert lv_clip[0, 0] == np.log(s.posterior_variance[1])  # improved-diffusion's substitution
    assert lv_clamp[0, 0] == np.log(1e-20)  # diffusers' clamp
    assert (
        lv_clip[1, 0] == lv_clamp[1, 0] == pytest.approx(np.log(s.posterior_variance[5]), rel=1e-15)
    )


def test_peer_posterior_variance_constants():
    """diffusers' scheduler tests pin these values for linear T=1000 (research/peers.md §c)."""
    s = S.linear(1000)
    assert s.posterior_variance[487] == pytest.approx(0.00979, abs=1e-5)
    assert s.posterior_variance[999] == pytest.approx(0.02, abs=1e-5)
    # DDIM η=1 variance between two kept steps = the respaced schedule's posterior variance.
    for t, prev, want in [
        (420, 400, 0.147720),
        (980, 960, 0.324605),
        (487, 486, 0.0097916),
        (999, 998, 0.0199999835),
    ]:
        r = S.respace(s, [prev, t])
        assert r.posterior_variance[1] == pytest.approx(want, rel=2e-5)


MEANS = {
    "eps": lambda s, x0, xt, t, eps: eps,
    "x0": lambda s, x0, xt, t, eps: x0,
    "v": lambda s, x0, xt, t, eps: (
        np.sqrt(s.alphas_cumprod[t])[:, None] * eps - np.sqrt(1 - s.alphas_cumprod[t])[:, None] * x0
    ),
    "score": lambda s, x0, xt, t, eps: -eps / np.sqrt(1 - s.alphas_cumprod[t])[:, None],
    "mean": lambda s, x0, xt, t, eps: (
        (s.betas[t] * np.sqrt(s.alphas_cumprod_prev[t]) / (1 - s.alphas_cumprod[t]))[:, None] * x0
        + ((1 - s.alphas_cumprod_prev[t]) * np.sqrt(s.alphas[t]) / (1 - s.alphas_cumprod[t]))[
            :, None
        ]
        * xt
    ),
}


@pytest.mark.parametrize("mean_type", D.MEAN_TYPES)
@pytest.mark.parametrize("var_type", D.VAR_TYPES)
def test_p_mean_variance_with_the_true_output_gives_the_posterior(mean_type, var_type):
    s = S.cosine(200)
    rng = np.random.default_rng(2)
    t = np.array([0, 1, 50, 199])
    x0, eps = rng.standard_normal((2, 4, 3))
    xt = (
        np.sqrt(s.alphas_cumprod[t])[:, None] * x0 + np.sqrt(1 - s.alphas_cumprod[t])[:, None] * eps
    )
    out = MEANS[mean_type](s, x0, xt, t, eps)
    var_ch = rng.uniform(-1, 1, out.shape)
    model_out = np.concatenate([out, var_ch], axis=1) if var_type.startswith("learned") else out
    p = D.p_mean_variance(s, model_out, xt, t, mean_type=mean_type, var_type=var_type)
    true_mean = MEANS["mean"](s, x0, xt, t, eps)
    np.testing.assert_allclose(p.mean, true_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(p.pred_x0, x0, rtol=1e-7, atol=1e-7)
    beta, pv = s.betas[t][:, None], s.posterior_variance[t][:, None]
    pv_clip = np.where(t == 0, s.posterior_variance[1], s.posterior_variance[t])[:, None]
    expected_log = {
        "fixed_small": np.log(pv_clip) + 0 * out,
        "fixed_large": np.log(np.where(t == 0, s.posterior_variance[1], s.betas[t]))[:, None]
        + 0 * out,
        "learned": var_ch,
        "learned_range": (var_ch + 1) / 2 * np.log(beta) + (1 - var_ch) / 2 * np.log(pv_clip),
    }[var_type]
    np.testing.assert_allclose(p.log_variance, expected_log, rtol=1e-13)
    if var_type == "fixed_small":
        np.testing.assert_array_equal(p.variance, pv + 0 * out)


def test_clip_and_dynamic_threshold():
    s = S.linear(100)
    xt = np.full((2, 4), 3.0)
    p = D.p_mean_variance(
        s, np.full((2, 4), 5.0), xt, np.array([10, 10]), mean_type="x0", clip_x0=True
    )
    assert np.all(p.pred_x0 == 1.0)
    x = np.array([[0.5, -2.0, 4.0, 1.0]])
    y = D.dynamic_threshold(x, ratio=1.0)  # s = max |x| = 4 → x/4
    np.testing.assert_allclose(y, x / 4.0)
    y = D.dynamic_threshold(np.array([[0.5, -0.2]]), ratio=0.9)  # s < 1 → floored at 1, unchanged
    np.testing.assert_array_equal(y, [[0.5, -0.2]])
    q = np.quantile(np.abs(x), 0.6)
    np.testing.assert_allclose(
        D.dynamic_threshold(x, ratio=0.6, max_value=10), np.clip(x, -q, q) / q
    )


@pytest.mark.parametrize("pt", ["eps", "x0", "v", "score", "noise", "v_prediction"])
def test_the_host_folded_x0_is_x0_from_output_at(pt):
    """x̂0 = p·x_t + q·out of x0_linear_coefficients: the true output at (x0, ε) gives x0 back."""
    s = S.cosine(100)
    rng = np.random.default_rng(7)
    for t in (0, 13, 99):
        c = P.level_coefficients(s, t)
        x0, eps = rng.standard_normal(5), rng.standard_normal(5)
        ab = float(s.alphas_cumprod[t])
        x_t = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * eps
        canon = P.prediction_type(pt, "pt")
        out = {
            "eps": eps,
            "x0": x0,
            "v": np.sqrt(ab) * eps - np.sqrt(1.0 - ab) * x0,
            "score": -eps / np.sqrt(1.0 - ab),
        }[canon]
        p, q = P.x0_linear_coefficients(c, pt)
        np.testing.assert_allclose(p * x_t + q * out, x0, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(
            p * x_t + q * out, P.x0_from_output_at(out, x_t, c, pt), rtol=1e-12, atol=1e-12
        )
    with pytest.raises(ValueError, match="eps, x0, v or score"):
        P.x0_linear_coefficients(P.level_coefficients(s, 3), "mean")
