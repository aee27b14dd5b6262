"""Losses against hand-derived special cases and the definitions in the papers."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import diffusion as D
from refdiff import kl as K
from refdiff import losses as L
from refdiff import schedules as S

RNG = np.random.default_rng(7)


def test_l_simple_sum_is_mean_times_pixels():
    a, b = RNG.standard_normal((2, 3, 2, 4, 4))
    m, s = L.l_simple(a, b), L.l_simple(a, b, reduction="sum")
    np.testing.assert_allclose(s, m * 32, rtol=1e-14)
    np.testing.assert_allclose(m, ((a - b) ** 2).reshape(3, -1).mean(1), rtol=1e-15)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v", "mu"])
def test_perfect_model_has_zero_mse(mean_type):
    s = S.cosine(50)
    x0, noise = RNG.standard_normal((2, 4, 2, 3))
    t = np.array([0, 3, 20, 49])

    def perfect(x_t, tt):
        return L.training_target(s, x0, x_t, tt, noise, mean_type=mean_type)

    out = L.training_losses(s, perfect, x0, t, noise=noise, mean_type=mean_type)
    np.testing.assert_allclose(out["loss"], 0.0, atol=1e-20)


def test_hybrid_weights_the_vlb_term_by_lambda_T():
    s = S.linear(400)
    x0, noise = RNG.standard_normal((2, 3, 2, 2))
    x0 = np.clip(x0, -1.0, 1.0)  # the decoder term scores data in [-1, 1]
    t = np.array([0, 100, 399])
    var_ch = RNG.uniform(-1, 1, x0.shape)

    def model(x_t, tt):
        return np.concatenate([noise * 0.9, var_ch], axis=1)

    base = L.training_losses(s, model, x0, t, noise=noise, loss_type="kl", var_type="learned_range")
    hyb = L.training_losses(
        s, model, x0, t, noise=noise, loss_type="hybrid", var_type="learned_range", lambda_vlb=0.01
    )
    res = L.training_losses(
        s, model, x0, t, noise=noise, loss_type="rescaled_mse", var_type="learned_range"
    )
    mse = ((noise * 0.1) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(hyb["mse"], mse, rtol=1e-13)
    np.testing.assert_allclose(hyb["vb"], base["vb"] * 0.01 * 400, rtol=1e-13)
    np.testing.assert_allclose(res["vb"], base["vb"] * 400 / 1000, rtol=1e-13)
    rkl = L.training_losses(
        s, model, x0, t, noise=noise, loss_type="rescaled_kl", var_type="learned_range"
    )
    np.testing.assert_allclose(rkl["loss"], base["vb"] * 400, rtol=1e-13)


def test_hybrid_stop_gradient_is_applied_to_the_mean_only():
    s = S.linear(10)
    x0, noise = RNG.standard_normal((2, 1, 1, 2))
    x0 = np.clip(x0, -1.0, 1.0)  # the decoder term scores data in [-1, 1]
    seen = []

    def detach(a):
        seen.append(a.copy())
        return a

    out = np.concatenate([noise, np.zeros_like(noise)], axis=1)
    L.training_losses(
        s,
        lambda x, t: out,
        x0,
        np.array([3]),
        noise=noise,
        loss_type="hybrid",
        var_type="learned_range",
        stop_gradient=detach,
    )
    assert len(seen) == 1 and np.array_equal(seen[0], noise)


def test_min_snr_weights():
    s = S.zero_terminal_snr(S.linear(1000))
    t = np.array([0, 200, 500, 999])
    x = np.zeros((4, 1))
    snr = s.alphas_cumprod[t] / s.one_minus_alphas_cumprod[t]  # both tables correctly rounded
    w_eps = L.min_snr_weight(s, t, x, gamma=5.0)[:, 0]
    np.testing.assert_allclose(
        w_eps, np.where(snr > 5, 5 / np.where(snr > 0, snr, 1), 1.0), rtol=1e-13
    )
    assert w_eps[-1] == 1.0  # zero SNR: the limit, not 0/0
    np.testing.assert_allclose(
        L.min_snr_weight(s, t, x, mean_type="x0")[:, 0], np.minimum(snr, 5), rtol=1e-13
    )
    np.testing.assert_allclose(
        L.min_snr_weight(s, t, x, mean_type="v")[:, 0], np.minimum(snr, 5) / (snr + 1), rtol=1e-13
    )


class _ToySDE:
    """x_t = a(t) x0 + s(t) z with a = e^{-t}, s = t, g(t) = 2 (enough to test the loss algebra)."""

    def marginal_prob(self, x, t):
        return np.exp(-t)[:, None] * x, t[:, None]

    def sde(self, x, t):
        return -x, np.full(t.shape, 2.0)


def test_dsm_loss_algebra():
    x0, z = RNG.standard_normal((2, 3, 4))
    t = np.array([0.1, 0.5, 1.0])
    zero_score = lambda x, tt: np.zeros_like(x)  # noqa: E731
    np.testing.assert_allclose(
        L.dsm_loss(_ToySDE(), zero_score, x0, t, noise=z), (z**2).mean(1), rtol=1e-14
    )
    np.testing.assert_allclose(
        L.dsm_loss(_ToySDE(), zero_score, x0, t, noise=z, reduction="sum"),
        0.5 * (z**2).sum(1),
        rtol=1e-14,
    )
    lw = L.dsm_loss(_ToySDE(), zero_score, x0, t, noise=z, likelihood_weighting=True)
    np.testing.assert_allclose(lw, 4.0 * (z**2).mean(1) / t**2, rtol=1e-14)
    exact = lambda x, tt: -(x - np.exp(-tt)[:, None] * x0) / tt[:, None] ** 2  # noqa: E731  (conditional score)
    np.testing.assert_allclose(L.dsm_loss(_ToySDE(), exact, x0, t, noise=z), 0.0, atol=1e-26)


def test_ncsn_loss_weighting_is_sigma_squared():
    x0, z = RNG.standard_normal((2, 3, 5))
    sigmas = np.array([10.0, 1.0, 0.1])
    labels = np.array([0, 1, 2])
    zero = L.ncsn_loss(lambda x, i: np.zeros_like(x), x0, sigmas, labels, noise=z)
    np.testing.assert_allclose(zero, 0.5 * (z**2).sum(1), rtol=1e-14)  # ½‖z/σ‖² σ² = ½‖z‖²
    exact = L.ncsn_loss(
        lambda x, i: -(x - x0) / sigmas[i][:, None] ** 2, x0, sigmas, labels, noise=z
    )
    np.testing.assert_allclose(exact, 0.0, atol=1e-24)


def test_importance_sampler_is_unbiased():
    T = 6
    r = L.LossSecondMomentResampler(T, history_per_term=3, uniform_prob=0.1)
    assert np.allclose(r.weights(), 1 / T) and not r.warmed_up()
    per_t = np.array([0.1, 0.2, 0.5, 1.0, 2.0, 4.0])
    for _ in range(3):
        r.update(np.arange(T), per_t)
    assert r.warmed_up()
    w = r.weights()
    np.testing.assert_allclose(w, 0.9 * per_t / per_t.sum() + 0.1 / T, rtol=1e-14)
    ts, iw = r.sample(200_000, np.random.default_rng(0))
    est = np.mean(iw * per_t[ts])
    assert est == pytest.approx(per_t.mean(), rel=0.01)  # E_p[L_t / (T p_t)] = mean_t L_t
    np.testing.assert_allclose(np.bincount(ts, minlength=T) / ts.size, w, atol=0.005)


def test_vb_term_matches_kl_between_true_and_model_posterior():
    s = S.linear(100)
    x0, noise = RNG.standard_normal((2, 2, 3))
    x0 = np.clip(x0, -1.0, 1.0)  # the decoder term scores data in [-1, 1]
    t = np.array([5, 60])
    x_t = D.q_sample(s, x0, t, noise=noise)
    out = noise * 0.5
    vb, _ = K.vb_terms_bpd(s, out, x0, x_t, t)
    m1, _, l1 = D.q_posterior_mean_variance(s, x0, x_t, t)
    p = D.p_mean_variance(s, out, x_t, t)
    var1, var2 = np.exp(l1), np.exp(p.log_variance)
    want = (0.5 * (np.log(var2 / var1) + (var1 + (m1 - p.mean) ** 2) / var2 - 1)).mean(1) / np.log(
        2
    )
    np.testing.assert_allclose(vb, want, rtol=1e-10)
