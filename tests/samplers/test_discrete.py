"""DDPM / DDIM / DDIM inversion and the labml-style object, checked on analytic data.

Independent references: closed forms written out here (Ho et al. Eq. 7 coefficients, the DDIM flow
of a point mass, affine-law composition), diffusers' published ``_get_variance`` constants, and
exactness facts (exact conditional variance ⇒ exact data law; point mass ⇒ DDIM exact).
"""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffValueError
from refdiff.ddpm import DenoiseDiffusion
from refdiff.diffusion import dynamic_threshold, p_mean_variance
from refdiff.samplers import get_sampler, list_samplers, sample
from refdiff.samplers.discrete import (
    ddim_coefficients,
    ddim_invert,
    ddim_reverse_step,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddpm_sample,
    p_sample,
    sampling_schedule,
)
from refdiff.schedules import cosine, linear, respace, zero_terminal_snr

BASE = linear(1000)
TRAIL10 = respace(BASE, 10, spacing="trailing")
MU = np.array([0.4, -0.3])
SIG = np.diag([0.6, 0.15])
GAUSS = A.GaussianData(MU, SIG)
POINT = A.GaussianData(MU, 0.0)


def _level(S, i):
    """(ᾱ, ᾱ_prev) of sampling level i with ᾱ_{-1} = 1, read straight from the table."""
    ab = float(S.alphas_cumprod[i])
    abp = float(S.alphas_cumprod[i - 1]) if i > 0 else 1.0
    return ab, abp


def _ho_coefficients(ab, abp):
    """Ho et al. 2020 Eq. 7: (coef of x0, coef of x_t, β̃) written from ᾱ_t, ᾱ_{t-1}."""
    beta = 1.0 - ab / abp
    c1 = np.sqrt(abp) * beta / (1.0 - ab)
    c2 = np.sqrt(1.0 - beta) * (1.0 - abp) / (1.0 - ab)
    return c1, c2, beta * (1.0 - abp) / (1.0 - ab)


# --------------------------------------------------------------------------------------------
# Registry and calling convention
# --------------------------------------------------------------------------------------------


def test_registry_entries_and_family():
    names = list_samplers("discrete")
    assert {"ddpm", "ddim", "ddim_stochastic"} <= set(names)
    assert get_sampler("ddpm").stochastic and not get_sampler("ddim").stochastic
    assert get_sampler("ddim_stochastic").stochastic
    assert get_sampler("ddim").step is ddim_step and get_sampler("ddpm").step is p_sample
    assert get_sampler("ddim").order == 1.0
    x = np.random.default_rng(0).standard_normal((3, 2))
    out = sample("ddim", A.discrete_model(POINT, BASE), x, schedule=TRAIL10)
    np.testing.assert_allclose(out, np.broadcast_to(MU, x.shape), atol=1e-12)


def test_model_receives_training_timesteps():
    seen = []

    def model(x, t):
        seen.append(t)
        return np.zeros_like(x)

    S = respace(BASE, 5, spacing="trailing")
    ddim_sample(model, np.zeros((3, 2)), schedule=S)
    assert [int(t[0]) for t in seen] == [999, 799, 599, 399, 199]
    assert all(t.dtype == np.int64 and t.shape == (3,) for t in seen)
    calls = []
    ddpm_sample(
        lambda x, t: calls.append(int(t[0])) or np.zeros_like(x),
        np.zeros((1, 2)),
        schedule=BASE,
        steps=4,
        spacing="ddim",
        noise=np.zeros((4, 1, 2)),
    )
    assert calls == [750, 500, 250, 0]


def test_progress_callback():
    got = []
    ddim_sample(
        lambda x, t: np.zeros_like(x),
        np.zeros((1, 2)),
        schedule=TRAIL10,
        progress=lambda k, n: got.append((k, n)),
    )
    assert got == [(k, 10) for k in range(1, 11)]


# --------------------------------------------------------------------------------------------
# Published constants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t,prev,expected",
    [(420, 400, 0.14772), (980, 960, 0.32460), (487, 486, 0.00979), (999, 998, 0.02)],
)
def test_diffusers_ddim_get_variance_constants(t, prev, expected):
    """diffusers tests/schedulers/test_scheduler_ddim.py: _get_variance(t, prev) to 1e-5 (σ² at η = 1)."""
    ab = BASE.alphas_cumprod
    assert ddim_sigma(ab[t], ab[prev], eta=1.0) ** 2 == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("t,expected", [(0, 0.0), (487, 0.00979), (999, 0.02)])
def test_diffusers_ddpm_fixed_small_variance_constants(t, expected):
    """diffusers test_scheduler_ddpm.py: fixed_small _get_variance(t) to 1e-5; a one-step DDPM law."""
    x = np.zeros((1, 1))
    out = p_mean_variance(BASE, np.zeros((1, 1)), x, t, var_type="fixed_small", t0="clamped")
    assert float(out.variance[0, 0]) == pytest.approx(expected, abs=1e-5)


def test_ddim_sigma_eta_zero_and_scaling():
    assert ddim_sigma(0.5, 0.7, eta=0.0) == 0.0
    assert ddim_sigma(0.5, 0.7, eta=0.5) == pytest.approx(
        0.5 * ddim_sigma(0.5, 0.7, eta=1.0), rel=1e-15
    )
    cx, ce, s = ddim_coefficients(0.5, 0.7, eta=0.3)
    assert cx == pytest.approx(np.sqrt(0.7), rel=1e-15)
    assert ce == pytest.approx(np.sqrt(1 - 0.7 - s * s), rel=1e-13)
    arr = ddim_sigma(np.array([0.5, 0.2]), np.array([0.7, 0.3]), eta=1.0)
    np.testing.assert_allclose(arr, [ddim_sigma(0.5, 0.7, eta=1.0), ddim_sigma(0.2, 0.3, eta=1.0)])


def test_ddim_reverse_step_inverts_the_eta0_step():
    x = np.array([[0.3, -1.2]])
    x0, eps = np.array([[0.1, 0.2]]), np.array([[-0.5, 0.4]])
    fwd = ddim_step(x, x0, eps, 0.3, 0.8)
    assert np.allclose(fwd, np.sqrt(0.8) * x0 + np.sqrt(0.2) * eps, atol=1e-15)
    np.testing.assert_allclose(
        ddim_reverse_step(fwd, x0, eps, 0.3), np.sqrt(0.3) * x0 + np.sqrt(0.7) * eps
    )


# --------------------------------------------------------------------------------------------
# DDIM η = 1 is the DDPM posterior step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("S", [cosine(40), TRAIL10], ids=["cosine40", "linear1000-trailing10"])
def test_ddim_eta1_step_has_the_ddpm_posterior_law(S):
    model = A.discrete_model(GAUSS, BASE if S is TRAIL10 else S, "eps")
    n = S.num_timesteps
    for i in (n - 1, n // 2, 1):
        t = int(S.timestep_map[i])

        def run_ddim(xT, nz):
            return ddim_sample(model, xT, schedule=S, start=i, stop=i - 1, eta=1.0, noise=nz)

        def run_ddpm(xT, nz):
            return p_sample(
                model(xT, np.full(xT.shape[0], t)),
                xT,
                i,
                schedule=S,
                var_type="fixed_small",
                noise=nz[0],
            )[0]

        a = A.linear_sampler_law(run_ddim, np.zeros(2), np.eye(2), dim=2, n_noise=1)
        b = A.linear_sampler_law(run_ddpm, np.zeros(2), np.eye(2), dim=2, n_noise=1)
        np.testing.assert_allclose(a.M, b.M, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(a.c, b.c, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(a.N, b.N, rtol=1e-12, atol=1e-13)
        # and both equal Ho et al. Eq. 7 written out with the exact denoiser matrix
        ab, abp = _level(S, i)
        c1, c2, bt = _ho_coefficients(ab, abp)
        Am, bvec = GAUSS.denoiser_matrix(np.sqrt(ab), np.sqrt(1 - ab))
        np.testing.assert_allclose(a.M, c1 * Am + c2 * np.eye(2), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.c, c1 * bvec, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.N, np.sqrt(bt) * np.eye(2), rtol=1e-9)


# --------------------------------------------------------------------------------------------
# DDIM exactness on point-mass data, conventions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    "steps,spacing", [(1, "trailing"), (3, "linspace"), (7, "leading"), (50, "ddim")]
)
def test_ddim_eta0_is_exact_for_a_point_mass(mean_type, steps, spacing):
    S = sampling_schedule(BASE, steps, spacing)
    model = A.discrete_model(POINT, BASE, mean_type)
    xT = np.random.default_rng(1).standard_normal((4, 2))
    out = ddim_sample(model, xT, schedule=S, mean_type=mean_type)
    np.testing.assert_allclose(out, np.broadcast_to(MU, xT.shape), rtol=0, atol=1e-11)
    if steps > 1:  # partial chain = the exact flow x_k = √ᾱ_k μ + √(1-ᾱ_k)(x_T − √ᾱ_T μ)/√(1-ᾱ_T)
        n = S.num_timesteps
        ab_T, ab_k = float(S.alphas_cumprod[n - 1]), float(S.alphas_cumprod[0])
        part = ddim_sample(model, xT, schedule=S, stop=0, mean_type=mean_type)
        flow = np.sqrt(ab_k) * MU + np.sqrt(1 - ab_k) * (xT - np.sqrt(ab_T) * MU) / np.sqrt(
            1 - ab_T
        )
        np.testing.assert_allclose(part, flow, rtol=1e-10, atol=1e-11)


def test_final_alpha_bar_conventions():
    """ "one" lands on μ; "alpha_bar_0" leaves the residual √(1-ᾱ_0)·ε̂ (pitfall: LDM issue 136)."""
    S = respace(BASE, "ddim10")  # range(0, 1000, 100): index 0 is the training t = 0
    model = A.discrete_model(POINT, BASE)
    xT = np.random.default_rng(2).standard_normal((3, 2))
    at_level0 = ddim_sample(model, xT, schedule=S, stop=0)
    one = ddim_sample(model, xT, schedule=S, final_alpha_bar="one")
    ab0 = ddim_sample(model, xT, schedule=S, final_alpha_bar="alpha_bar_0")
    np.testing.assert_allclose(one, np.broadcast_to(MU, xT.shape), atol=1e-12)
    # ᾱ_prev = ᾱ_0 = ᾱ of level 0: the last step is the identity
    np.testing.assert_allclose(ab0, at_level0, rtol=1e-12, atol=1e-14)
    a0 = float(BASE.alphas_cumprod[0])
    eps_hat = (at_level0 - np.sqrt(a0) * MU) / np.sqrt(1 - a0)
    np.testing.assert_allclose(ab0, np.sqrt(a0) * MU + np.sqrt(1 - a0) * eps_hat, rtol=1e-10)
    # a respaced schedule that skips index 0 needs the training schedule for ᾱ_0
    S2 = respace(BASE, 10, spacing="leading", steps_offset=1)
    with pytest.raises(
        RefdiffValueError, match="base_schedule=None is invalid: final_alpha_bar='alpha_bar_0'"
    ):
        ddim_sample(model, xT, schedule=S2, final_alpha_bar="alpha_bar_0")
    lvl0 = ddim_sample(model, xT, schedule=S2, stop=0)
    out = ddim_sample(model, xT, schedule=S2, final_alpha_bar="alpha_bar_0", base_schedule=BASE)
    a1 = float(BASE.alphas_cumprod[1])
    e1 = (lvl0 - np.sqrt(a1) * MU) / np.sqrt(1 - a1)
    np.testing.assert_allclose(out, np.sqrt(a0) * MU + np.sqrt(1 - a0) * e1, rtol=1e-10)
    num = ddim_sample(model, xT, schedule=S2, final_alpha_bar=a0)
    np.testing.assert_allclose(num, out, rtol=1e-14)


def test_ddim_final_noise_convention():
    """diffusers DDIM adds σz at the last step when ᾱ_prev < 1; refdiff does only with final_noise="always"."""
    S = respace(BASE, 5, spacing="leading", steps_offset=1)
    model = A.discrete_model(POINT, BASE)
    rng = np.random.default_rng(4)
    xT, nz = rng.standard_normal((2, 2)), rng.standard_normal((5, 2, 2))
    kw = dict(schedule=S, eta=1.0, noise=nz, final_alpha_bar="alpha_bar_0", base_schedule=BASE)
    quiet = ddim_sample(model, xT, final_noise="none", **kw)
    loud = ddim_sample(model, xT, final_noise="always", **kw)
    a1, a0 = float(S.alphas_cumprod[0]), float(BASE.alphas_cumprod[0])
    sigma = np.sqrt((1 - a0) / (1 - a1) * (1 - a1 / a0))
    np.testing.assert_allclose(loud - quiet, sigma * nz[4], rtol=1e-10, atol=1e-15)


def test_clip_x0_and_dynamic_threshold_on_a_point_mass():
    mu = np.array([3.0, 0.5, -1.5, 0.2])
    model = A.discrete_model(A.GaussianData(mu, 0.0), BASE)
    xT = np.random.default_rng(5).standard_normal((2, 4))
    out = ddim_sample(model, xT, schedule=TRAIL10, clip_x0=True)
    np.testing.assert_allclose(out, np.broadcast_to(np.clip(mu, -1, 1), out.shape), atol=1e-12)
    # dynamic thresholding (Saharia et al. 2022): s = max(quantile(|x0|, p), 1); x0 = clip(x0, -s, s)/s
    thr = lambda a: dynamic_threshold(a, ratio=0.6)  # noqa: E731
    out = ddim_sample(model, xT, schedule=TRAIL10, denoised_fn=thr)
    s = max(np.quantile(np.abs(mu), 0.6), 1.0)
    np.testing.assert_allclose(out, np.broadcast_to(np.clip(mu, -s, s) / s, out.shape), atol=1e-12)
    # DDPM: the final mean is the clipped x0 (coef1 = 1, coef2 = 0 at the last step)
    out = ddpm_sample(model, xT, schedule=TRAIL10, clip_x0=True, noise=np.zeros((10, 2, 4)))
    np.testing.assert_allclose(out, np.broadcast_to(np.clip(mu, -1, 1), out.shape), atol=1e-12)


def test_eps_from_clipped_x0_conventions_differ_only_when_clipping():
    model = A.discrete_model(A.GaussianData([2.5, -2.0], SIG), BASE)
    xT = np.random.default_rng(6).standard_normal((3, 2))
    a = ddim_sample(model, xT, schedule=TRAIL10, stop=5, eps_from_clipped_x0=True)
    b = ddim_sample(model, xT, schedule=TRAIL10, stop=5, eps_from_clipped_x0=False)
    np.testing.assert_array_equal(a, b)
    a = ddim_sample(model, xT, schedule=TRAIL10, stop=5, clip_x0=True, eps_from_clipped_x0=True)
    b = ddim_sample(model, xT, schedule=TRAIL10, stop=5, clip_x0=True, eps_from_clipped_x0=False)
    assert np.max(np.abs(a - b)) > 1e-3


def test_zero_terminal_snr_needs_v_or_x0():
    S = respace(zero_terminal_snr(BASE), 10, spacing="trailing")
    xT = np.random.default_rng(8).standard_normal((2, 2))
    out = ddim_sample(
        A.discrete_model(POINT, zero_terminal_snr(BASE), "v"), xT, schedule=S, mean_type="v"
    )
    np.testing.assert_allclose(out, np.broadcast_to(MU, xT.shape), atol=1e-12)
    with pytest.raises(
        RefdiffValueError, match=r"t=9 has zero SNR .*x0 from eps is undefined there"
    ):
        ddim_sample(A.discrete_model(POINT, zero_terminal_snr(BASE), "eps"), xT, schedule=S)


# --------------------------------------------------------------------------------------------
# DDIM inversion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_ddim_inversion_round_trip_point_mass(mean_type):
    model = A.discrete_model(POINT, BASE, mean_type)
    x = np.random.default_rng(9).standard_normal((4, 2))
    for S in (TRAIL10, respace(BASE, 37, spacing="linspace")):
        xT = ddim_invert(model, x, schedule=S, start=0, mean_type=mean_type)
        back = ddim_sample(model, xT, schedule=S, stop=0, mean_type=mean_type)
        np.testing.assert_allclose(back, x, rtol=0, atol=1e-10)
        n = S.num_timesteps
        a0, aT = float(S.alphas_cumprod[0]), float(S.alphas_cumprod[n - 1])
        flow = np.sqrt(aT) * MU + np.sqrt(1 - aT) * (x - np.sqrt(a0) * MU) / np.sqrt(1 - a0)
        np.testing.assert_allclose(xT, flow, rtol=1e-10, atol=1e-10)


def test_ddim_inversion_round_trip_error_is_the_discretization_error():
    model = A.discrete_model(GAUSS, BASE)
    x = np.random.default_rng(10).standard_normal((4, 2))
    errs = []
    for n in (20, 40, 80):
        S = respace(BASE, n, spacing="linspace")
        xT = ddim_invert(model, x, schedule=S, start=0)
        errs.append(np.max(np.abs(ddim_sample(model, xT, schedule=S, stop=0) - x)))
    assert errs[0] > 1e-3  # not trivially exact: Gaussian data has a varying x0-prediction
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    # a first-order scheme: measured 0.92, 0.95 (tending to 1); the error halves with twice the steps
    assert np.all(orders > 0.85), (errs, orders)


def test_ddim_inversion_from_data_and_model_time_conventions():
    model = A.discrete_model(GAUSS, BASE)
    S = TRAIL10
    x0 = np.random.default_rng(11).standard_normal((3, 2))
    t0 = int(S.timestep_map[0])
    a0 = float(S.alphas_cumprod[0])
    first = ddim_invert(model, x0, schedule=S, start=-1, stop=0)
    eps = model(x0, np.full(3, t0))
    np.testing.assert_allclose(first, np.sqrt(a0) * x0 + np.sqrt(1 - a0) * eps, rtol=1e-12)
    # one step j -> j+1 under each model-time convention, written out
    j = 4
    x = np.random.default_rng(12).standard_normal((3, 2))
    aj, an = float(S.alphas_cumprod[j]), float(S.alphas_cumprod[j + 1])
    for conv, tm in (("current", int(S.timestep_map[j])), ("next", int(S.timestep_map[j + 1]))):
        e = model(x, np.full(3, tm))
        x0h = (x - np.sqrt(1 - aj) * e) / np.sqrt(aj)
        got = ddim_invert(model, x, schedule=S, start=j, stop=j + 1, model_time=conv)
        np.testing.assert_allclose(got, np.sqrt(an) * x0h + np.sqrt(1 - an) * e, rtol=1e-12)
    # full encode/decode: the round-trip error shrinks with more steps
    errs = []
    for n in (10, 40):
        Sn = respace(BASE, n, spacing="trailing")
        xT = ddim_invert(model, x0, schedule=Sn)
        errs.append(np.max(np.abs(ddim_sample(model, xT, schedule=Sn) - x0)))
    assert errs[1] < 0.5 * errs[0]


# --------------------------------------------------------------------------------------------
# DDPM ancestral sampling: exact laws
# --------------------------------------------------------------------------------------------


def _prior(S):
    ab = float(S.alphas_cumprod[-1])
    return GAUSS.marginal(np.sqrt(ab), np.sqrt(1 - ab))


@pytest.mark.parametrize("S", [linear(20, 1e-3, 0.3), TRAIL10], ids=["linear20", "trailing10"])
def test_ancestral_with_exact_variance_reproduces_the_data_law(S):
    base = BASE if S is TRAIL10 else S
    model = A.discrete_model(GAUSS, base, "eps", sampling_schedule=S, var_type="learned")
    n = S.num_timesteps

    def run(xT, nz):
        return ddpm_sample(
            model, xT, schedule=S, noise=nz, var_type="learned", final_noise="always"
        )

    m, c = _prior(S)
    law = A.linear_sampler_law(run, m, c, dim=2, n_noise=n)
    np.testing.assert_allclose(law.mean, MU, rtol=0, atol=1e-12)
    np.testing.assert_allclose(law.cov, SIG, rtol=0, atol=1e-12)
    # without final-step noise the output is E[x0 | x_{t_0}]: covariance Σ − Var[x0 | x_{t_0}]
    law2 = A.linear_sampler_law(
        lambda xT, nz: ddpm_sample(model, xT, schedule=S, noise=nz, var_type="learned"),
        m,
        c,
        dim=2,
        n_noise=n,
    )
    a0 = float(S.alphas_cumprod[0])
    np.testing.assert_allclose(
        law2.cov, SIG - GAUSS.posterior_cov(np.sqrt(a0), np.sqrt(1 - a0)), rtol=0, atol=1e-12
    )


def test_ancestral_exact_law_monte_carlo():
    """20 000 draws through 10 respaced steps: mean within 5 standard errors, covariance within 5."""
    S = TRAIL10
    model = A.discrete_model(GAUSS, BASE, "eps", sampling_schedule=S, var_type="learned")
    rng = np.random.default_rng(12345)
    n = 20_000
    m, c = _prior(S)
    xT = m + rng.standard_normal((n, 2)) @ np.linalg.cholesky(c).T
    out = ddpm_sample(
        model,
        xT,
        schedule=S,
        noise=lambda k: rng.standard_normal((n, 2)),
        var_type="learned",
        final_noise="always",
    )
    se_mean = np.sqrt(np.diag(SIG) / n)
    assert np.all(np.abs(out.mean(0) - MU) < 5 * se_mean)
    se_cov = np.sqrt((SIG**2 + np.outer(np.diag(SIG), np.diag(SIG))) / n)
    assert np.all(np.abs(np.cov(out.T) - SIG) < 5 * se_cov)


@pytest.mark.parametrize(
    "var_type,t0",
    [
        ("fixed_small", "clipped"),
        ("fixed_small", "clamped"),
        ("fixed_large", "clipped"),
        ("fixed_large", "clamped"),
    ],
)
@pytest.mark.parametrize("final_noise", ["none", "always"])
def test_ddpm_fixed_variance_law_matches_a_hand_composed_chain(var_type, t0, final_noise):
    S = linear(12, 1e-3, 0.2)
    model = A.discrete_model(GAUSS, S, "eps")
    n = S.num_timesteps
    m, c = _prior(S)
    law = A.linear_sampler_law(
        lambda xT, nz: ddpm_sample(
            model, xT, schedule=S, noise=nz, var_type=var_type, t0=t0, final_noise=final_noise
        ),
        m,
        c,
        dim=2,
        n_noise=n,
    )
    mean, cov = m.copy(), c.copy()
    for i in range(n - 1, -1, -1):
        ab, abp = _level(S, i)
        c1, c2, bt = _ho_coefficients(ab, abp)
        Am, b = GAUSS.denoiser_matrix(np.sqrt(ab), np.sqrt(1 - ab))
        K = c1 * Am + c2 * np.eye(2)
        if var_type == "fixed_small" and i == 0:
            # the noise uses exp(½ log σ²): log β̃_1 (improved-diffusion) or log 1e-20 (diffusers)
            var = _ho_coefficients(*_level(S, 1))[2] if t0 == "clipped" else 1e-20
        elif var_type == "fixed_small":
            var = bt
        elif i == 0 and t0 == "clipped":
            var = _ho_coefficients(*_level(S, 1))[2]  # improved-diffusion: β̃_1 at t = 0
        else:
            var = 1.0 - ab / abp  # β_t
        if i == 0 and final_noise == "none":
            var = 0.0
        mean = K @ mean + c1 * b
        cov = K @ cov @ K.T + var * np.eye(2)
    np.testing.assert_allclose(law.mean, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(law.cov, cov, rtol=1e-10, atol=1e-12)


def test_every_mean_type_gives_the_same_trajectory():
    S = linear(30, 1e-3, 0.1)
    rng = np.random.default_rng(13)
    xT, nz = rng.standard_normal((3, 2)), rng.standard_normal((30, 3, 2))
    outs = {
        mt: ddpm_sample(A.discrete_model(GAUSS, S, mt), xT, schedule=S, noise=nz, mean_type=mt)
        for mt in ("eps", "x0", "v", "score", "mu")
    }
    for mt in ("x0", "v", "score", "mu"):
        np.testing.assert_allclose(outs[mt], outs["eps"], rtol=1e-10, atol=1e-11)


def test_learned_range_endpoints_are_beta_and_beta_tilde():
    S = linear(30, 1e-3, 0.1)
    x = np.zeros((1, 2))
    for v, table in ((1.0, np.log(S.betas)), (-1.0, S.posterior_log_variance_clipped)):
        out = np.concatenate([x, np.full((1, 2), v)], axis=1)
        _, pmv = p_sample(out, x, 7, schedule=S, var_type="learned_range", add_noise=False)
        np.testing.assert_allclose(pmv.log_variance, table[7], rtol=1e-14)


def test_ddpm_respaced_steps_keyword_equals_respaced_schedule():
    model = A.discrete_model(GAUSS, BASE)
    rng = np.random.default_rng(14)
    xT, nz = rng.standard_normal((2, 2)), rng.standard_normal((10, 2, 2))
    a = ddpm_sample(model, xT, schedule=BASE, steps=10, spacing="trailing", noise=nz)
    b = ddpm_sample(model, xT, schedule=TRAIL10, noise=nz)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# Other namespaces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", ["array_api_strict", "torch"])
def test_samplers_run_on_other_namespaces(ns):
    mod = pytest.importorskip(ns)
    S = TRAIL10.to(mod)
    rng = np.random.default_rng(15)
    xT, nz = rng.standard_normal((3, 2)), rng.standard_normal((10, 3, 2))
    model = A.discrete_model(GAUSS, BASE)
    X, NZ = mod.asarray(xT, dtype=mod.float64), mod.asarray(nz, dtype=mod.float64)
    for fn, kw in ((ddim_sample, {}), (ddim_sample, {"eta": 0.5}), (ddpm_sample, {})):
        got = fn(model, X, schedule=S, noise=NZ, **kw)
        want = fn(model, xT, schedule=TRAIL10, noise=nz, **kw)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-13)
    got = ddim_invert(model, X, schedule=S)
    np.testing.assert_allclose(
        np.asarray(got), ddim_invert(model, xT, schedule=TRAIL10), rtol=1e-12
    )


# --------------------------------------------------------------------------------------------
# The labml-style object
# --------------------------------------------------------------------------------------------


def test_denoise_diffusion_labml_conventions():
    model = A.discrete_model(GAUSS, linear(50), "eps")
    dd = DenoiseDiffusion(model, n_steps=50)
    S = dd.schedule
    np.testing.assert_allclose(
        S.betas, np.linspace(1e-4, 0.02, 50), rtol=1e-12
    )  # no 1000/T rescale
    np.testing.assert_array_equal(dd.sigma2, S.betas)
    rng = np.random.default_rng(16)
    x0, z = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    t = np.array([0, 3, 20, 49])
    ab = S.alphas_cumprod[t][:, None]
    np.testing.assert_allclose(
        dd.q_sample(x0, t, noise=z), np.sqrt(ab) * x0 + np.sqrt(1 - ab) * z, rtol=1e-13, atol=1e-15
    )
    mean, var = dd.q_xt_x0(x0, t)
    np.testing.assert_allclose(var, np.broadcast_to(1 - ab, var.shape), rtol=1e-12)
    # Eq. 11 mean equals the posterior-mean route (Eq. 7 with x̂0), an independent derivation
    xt = rng.standard_normal((4, 2))
    m11, v11 = dd.p_mean_var(xt, t)
    pmv = p_mean_variance(S, model(xt, t), xt, t, var_type="fixed_large", t0="clamped")
    np.testing.assert_allclose(m11, pmv.mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(v11, np.broadcast_to(S.betas[t][:, None], v11.shape), rtol=1e-15)
    # labml adds noise at t = 0 too
    out0 = dd.p_sample(xt, 0, noise=z)
    np.testing.assert_allclose(
        out0 - dd.p_sample(xt, 0, noise=0 * z), np.sqrt(S.betas[0]) * z, rtol=1e-13
    )
    quiet = DenoiseDiffusion(model, n_steps=50, final_noise="none")
    np.testing.assert_array_equal(
        quiet.p_sample(xt, 0, noise=z), quiet.p_sample(xt, 0, noise=0 * z)
    )
    # loss = mean squared ε error; zero for the exact model on point-mass data at x0 = μ
    lp = DenoiseDiffusion(A.discrete_model(POINT, linear(50)), n_steps=50)
    assert float(lp.loss(np.broadcast_to(MU, (4, 2)), t=t, noise=z)) < 1e-24
    l_val = dd.loss(x0, t=t, noise=z)
    eps = model(dd.q_sample(x0, t, noise=z), t)
    assert float(l_val) == pytest.approx(float(np.mean((z - eps) ** 2)), rel=1e-14)
    # the sampling loop is DDPM with σ² = β, t0 clamped, noise at every step
    nz = rng.standard_normal((50, 4, 2))
    np.testing.assert_allclose(
        dd.sample(xt, noise=nz),
        ddpm_sample(
            model,
            xt,
            schedule=S,
            noise=nz,
            var_type="fixed_large",
            t0="clamped",
            final_noise="always",
        ),
        rtol=1e-11,
        atol=1e-12,
    )
    small = DenoiseDiffusion(model, n_steps=50, var_type="fixed_small", final_noise="none")
    np.testing.assert_allclose(
        small.sample(xt, noise=nz),
        ddpm_sample(model, xt, schedule=S, noise=nz),
        rtol=1e-11,
        atol=1e-12,
    )


def test_denoise_diffusion_on_torch():
    torch = pytest.importorskip("torch")
    model = A.discrete_model(GAUSS, linear(20), "eps")
    dd = DenoiseDiffusion(model, n_steps=20)
    dt = dd.to(torch)
    rng = np.random.default_rng(17)
    xt, nz = rng.standard_normal((2, 2)), rng.standard_normal((20, 2, 2))
    got = dt.sample(torch.asarray(xt), noise=torch.asarray(nz))
    np.testing.assert_allclose(got.numpy(), dd.sample(xt, noise=nz), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Step plans, callbacks and the respacing cache
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned", "learned_range"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v", "score", "mean"])
@pytest.mark.parametrize("t0", ["clipped", "clamped"])
def test_p_sample_with_host_coefficients_equals_the_table_path(var_type, mean_type, t0):
    """p_sample(coefficients=ddpm_coefficients(...)) == p_sample through p_mean_variance (per-batch t)."""
    from refdiff.samplers.discrete import ddpm_coefficients

    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 2, 4))
    c = 4 if var_type.startswith("learned") else 2
    out = 0.5 * rng.standard_normal((3, c, 4))
    if var_type == "learned_range":
        out[:, 2:] = np.tanh(out[:, 2:])
    z = rng.standard_normal((3, 2, 4))
    g = rng.standard_normal((3, 2, 4))
    for i in (0, 1, 5, TRAIL10.num_timesteps - 1):
        for kw in (
            {},
            {"clip_x0": True},
            {"grad": g, "cond_mode": "mean"},
            {"grad": g, "cond_mode": "score"},
        ):
            pc = ddpm_coefficients(TRAIL10, i, var_type=var_type, t0=t0)
            a, pa = p_sample(
                out,
                x,
                np.full(3, i),
                schedule=TRAIL10,
                mean_type=mean_type,
                var_type=var_type,
                t0=t0,
                noise=z,
                **kw,
            )
            b, pb = p_sample(
                out,
                x,
                i,
                schedule=TRAIL10,
                mean_type=mean_type,
                var_type=var_type,
                t0=t0,
                noise=z,
                coefficients=pc,
                **kw,
            )
            np.testing.assert_allclose(b, a, rtol=1e-14, atol=1e-14)
            np.testing.assert_allclose(pb.pred_x0, pa.pred_x0, rtol=1e-14, atol=1e-14)
            np.testing.assert_allclose(pb.mean, pa.mean, rtol=1e-14, atol=1e-14)


def test_ddim_step_with_precomputed_coefficients():
    x = np.array([[0.3, -1.2]])
    x0, eps, z = np.array([[0.1, 0.2]]), np.array([[-0.5, 0.4]]), np.array([[1.0, -2.0]])
    coef = ddim_coefficients(0.3, 0.8, eta=0.7)
    np.testing.assert_array_equal(
        ddim_step(x, x0, eps, noise=z, coefficients=coef),
        ddim_step(x, x0, eps, 0.3, 0.8, eta=0.7, noise=z),
    )


def test_callback_reports_the_training_timestep_the_state_and_x0():
    """StepInfo per step: i, n, the state the step starts from, t = the model's timestep, denoised = x̂0."""
    model = A.discrete_model(POINT, BASE, "eps")
    xT = np.random.default_rng(22).standard_normal((3, 2))
    for fn, kw in ((ddim_sample, {}), (ddpm_sample, {"noise": np.zeros((10, 3, 2))})):
        seen_t, infos = [], []

        def m(x, t, seen_t=seen_t):
            seen_t.append(int(t[0]))
            return model(x, t)

        out = fn(m, xT, schedule=TRAIL10, callback=infos.append, **kw)
        assert [(info.i, info.n) for info in infos] == [(k, 10) for k in range(10)]
        assert [info.t for info in infos] == seen_t == [int(v) for v in TRAIL10.timestep_map[::-1]]
        np.testing.assert_array_equal(infos[0].x, xT)
        for info in infos:  # the exact ε of a point mass gives x̂0 = μ at every step
            np.testing.assert_allclose(info.denoised, np.broadcast_to(MU, xT.shape), atol=1e-9)
        assert infos[-1].x is not out
    infos = []
    ddim_invert(model, np.broadcast_to(MU, (3, 2)), schedule=TRAIL10, callback=infos.append)
    tm = [int(v) for v in TRAIL10.timestep_map]
    assert [info.t for info in infos] == tm[:1] + tm[:-1]  # from the data level: level 0 twice


def test_check_finite_stops_the_discrete_loops_at_the_first_bad_step():
    from refdiff.samplers import check_finite

    def model(x, t):
        return np.full_like(x, np.nan) if int(t[0]) < 500 else np.zeros_like(x)

    for fn, kw in ((ddim_sample, {}), (ddpm_sample, {"noise": np.zeros((10, 1, 2))})):
        with pytest.raises(
            RefdiffValueError,
            match=r"non-finite values in the x0 prediction \(denoised\) at step 5 of 10 \(t=499\)",
        ):
            fn(model, np.zeros((1, 2)), schedule=TRAIL10, callback=check_finite(), **kw)


def test_respacing_is_cached_per_schedule_and_spec():
    S1, S2 = linear(1000), linear(1000)
    a = respace(S1, 10, spacing="trailing")
    assert respace(S1, 10, spacing="trailing") is a
    assert sampling_schedule(S1, 10, "trailing") is a
    assert respace(S2, 10, spacing="trailing") is not a
    np.testing.assert_array_equal(
        respace(S2, 10, spacing="trailing").alphas_cumprod, a.alphas_cumprod
    )
    assert respace(S1, 10, spacing="leading") is not a
    assert respace(S1, "ddim10") is respace(S1, "ddim10")


def test_sections_spacing_and_steps_offset():
    assert (
        sampling_schedule(BASE, 21, "sections").timestep_map.tolist()
        == respace(BASE, "21").timestep_map.tolist()
    )
    off = sampling_schedule(BASE, 10, "leading", steps_offset=1)
    assert off.timestep_map.tolist() == list(range(1, 1000, 100))
