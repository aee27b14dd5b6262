"""Checks that close gaps found by planting bugs in the samplers and their helpers: each test here
fails on a specific wrong formula that the rest of the suite let through.

Oracles: closed forms (the exact denoiser of Gaussian data, the ε → x0 relation
x0 = (x − σ·ε)/α computed independently of the code under test), first principles of the
samplers' definitions, and live diffusers where a published scheduler is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff.samplers import dpm_solver as D
from refdiff.samplers import unipc as U

NS = D.NoiseScheduleVP.linear()
DATA = A.GaussianData([0.5, -0.2], [[1.0, 0.3], [0.3, 0.5]])
EPS_MODEL = A.vp_model(DATA, NS, "eps")


# -- UniPC: the step onto clean data in the noise-prediction form ----------------------------------


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_noise_prediction_step_onto_clean_data_is_x0_of_the_last_eps(order):
    """final_sigma="zero" with algorithm_type="noise_prediction": x = (x_k − σ_k ε̂_k)/α_k.

    Without the corrector, ε̂_k is the model at x_k itself, so the result is the exact posterior
    mean of the Gaussian data there; with it, ε̂_k is the model value at the predicted x_k (UniC
    reuses it), which the callback's x̂0 (formed by the ε → x0 conversion) reports.
    """
    x = np.random.default_rng(5).standard_normal((4, 2))
    kw = dict(
        noise_schedule=NS,
        steps=5,
        order=order,
        algorithm_type="noise_prediction",
        final_sigma="zero",
    )
    seen = []
    out = U.sample_unipc(EPS_MODEL, x, use_corrector=False, callback=seen.append, **kw)
    last = seen[-1]
    t = float(last.t)
    alpha, sigma = float(NS.marginal_alpha(t)), float(NS.marginal_std(t))
    eps = EPS_MODEL(last.x, np.full(x.shape[0], t))
    np.testing.assert_allclose(out, (last.x - sigma * eps) / alpha, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(out, DATA.x0(last.x, alpha, sigma), rtol=1e-12, atol=1e-13)
    seen = []
    out = U.sample_unipc(EPS_MODEL, x, callback=seen.append, **kw)
    np.testing.assert_allclose(out, seen[-1].denoised, rtol=1e-13, atol=1e-14)


# -- adapters.score_fn between table levels ----------------------------------------------------------


def test_score_fn_between_levels_uses_the_truncated_index_for_the_network_and_sigma():
    """score_sde's discrete VP score: i = ⌊t·(N−1)⌋ (labels.long()), s = −ε̂(x, i)/√(1−ᾱ_i)."""
    from refdiff import schedules as S
    from refdiff.samplers import adapters

    s = S.linear(100)
    data = A.GaussianData([0.3, -0.2, 0.1], [0.5, 0.2, 0.1])
    exact = A.discrete_model(data, s, "eps")
    seen = []

    def model(x, t):
        seen.append(np.asarray(t).tolist())
        return exact(x, t)

    score, _ = adapters.score_fn(model, s)
    frac = np.array([10.7, 42.5, 97.9])  # t·(N−1) with fractional parts ≥ 1/2
    x = np.random.default_rng(2).standard_normal((3, 3))
    got = score(x, frac / 99.0)
    i = np.floor(frac).astype(np.int64)
    assert seen[-1] == i.tolist()
    a, sg = np.sqrt(s.alphas_cumprod[i]), np.sqrt(1.0 - s.alphas_cumprod[i])
    np.testing.assert_allclose(got, data.score(x, a[:, None], sg[:, None]), rtol=1e-10, atol=1e-12)


# -- adapters: a learned-variance output keeps its prediction channels -----------------------------


@pytest.mark.parametrize("bridge", ["karras_denoiser", "vp_model", "score_fn"])
def test_bridges_read_the_prediction_channels_of_a_learned_variance_output(bridge):
    """(B, 2C) outputs hold the prediction in the first C channels (improved-diffusion's layout)."""
    from refdiff import schedules as S
    from refdiff.samplers import adapters

    s = S.linear(100)
    data = A.GaussianData([0.3, -0.2, 0.1], [0.5, 0.2, 0.1])
    exact = A.discrete_model(data, s, "eps")

    def learned(x, t):
        return np.concatenate([exact(x, t), np.full_like(x, 7.0)], axis=1)

    x = np.random.default_rng(4).standard_normal((3, 3))
    if bridge == "karras_denoiser":
        sigma = np.asarray(s.sigmas)[[5, 40, 90]]
        got = adapters.karras_denoiser(learned, s)(x, sigma)
        want = adapters.karras_denoiser(exact, s)(x, sigma)
    elif bridge == "vp_model":
        fn, _ = adapters.vp_model(learned, s)
        ref, _ = adapters.vp_model(exact, s)
        t = np.array([0.06, 0.41, 0.91])
        got, want = fn(x, t), ref(x, t)
    else:
        fn, _ = adapters.score_fn(learned, s)
        ref, _ = adapters.score_fn(exact, s)
        t = np.array([5.0, 40.0, 90.0]) / 99.0
        got, want = fn(x, t), ref(x, t)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, want)


# -- PNDM: the PRK midpoint when T // n is odd -------------------------------------------------------


@pytest.mark.parametrize("n", [8, 12, 10])
def test_pndm_prk_with_an_odd_stride_matches_diffusers(n):
    """For odd δ = T//n diffusers moves x1 to t − ⌊δ/2⌋ (813 for 875 → 750) but calls the model
    and moves x2 at t − δ + ⌊δ/2⌋ (812): ``prk_midpoint="diffusers"`` reproduces it, and the
    default consistent midpoint differs there (and only there)."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    from refdiff import schedules as S
    from refdiff.samplers.pndm import sample_pndm

    def net(x, t):
        t = np.asarray(t, dtype=np.float64).reshape((-1,) + (1,) * (np.ndim(x) - 1))
        return np.tanh(x) * (0.5 + t / 1000.0) + 0.1 * np.sin(t / 37.0)

    sched = diffusers.PNDMScheduler(skip_prk_steps=False)
    sched.set_timesteps(n)
    x = np.random.default_rng(11).standard_normal((2, 3))
    xt = torch.from_numpy(x.astype(np.float32))
    for t in sched.timesteps:
        out = net(xt.double().numpy(), np.full(x.shape[0], float(t)))
        xt = sched.step(torch.from_numpy(out.astype(np.float32)), t, xt).prev_sample
    ref = xt.double().numpy()
    base = S.from_alphas_cumprod(sched.alphas_cumprod.double().numpy())

    def run(midpoint):
        return sample_pndm(
            net,
            x,
            schedule=base,
            steps=n,
            spacing="leading",
            final_alpha_bar="alpha_bar_0",
            skip_prk_steps=False,
            prk_midpoint=midpoint,
        )

    got = run("diffusers")
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 5e-6
    apart = np.max(np.abs(run("consistent") - got)) / np.max(np.abs(ref))
    assert apart > 1e-4 if (1000 // n) % 2 else apart == 0.0


# -- Karras churn: the interval [S_tmin, S_tmax] is closed ----------------------------------------


def test_churn_gamma_includes_both_ends_of_the_interval():
    """Karras et al. (2022), Alg. 2 line 4 (and k-diffusion): γ_i > 0 iff S_tmin ≤ σ_i ≤ S_tmax."""
    from refdiff.samplers.karras import churn_gamma

    kw = dict(S_churn=4.0, S_tmin=0.5, S_tmax=2.0)
    want = min(4.0 / 10, 2.0**0.5 - 1.0)
    assert churn_gamma(0.5, 10, **kw) == want
    assert churn_gamma(2.0, 10, **kw) == want
    assert churn_gamma(np.nextafter(0.5, 0.0), 10, **kw) == 0.0
    assert churn_gamma(np.nextafter(2.0, 3.0), 10, **kw) == 0.0


# -- DPM-Solver-family samplers: the default end time is 1/N of the schedule ---------------------------


def test_sde_dpm_solver_samplers_end_at_one_over_n_by_default():
    """DPM-Solver's default t_end = 1/total_N (Lu et al. 2022a, §3.4): 1/100 on a 100-step schedule."""
    from refdiff import schedules as S
    from refdiff.samplers import dpm_solver_sde as SD

    ns = D.NoiseScheduleVP.discrete(S.linear(100))
    exact = A.vp_model(DATA, ns, "eps")
    seen = []

    def model(x, t):
        seen.append(float(np.asarray(t)[0]))
        return exact(x, t)

    x = np.random.default_rng(6).standard_normal((3, 2))
    noise = np.random.default_rng(7).standard_normal((4, 3, 2))
    SD.sample_sde_dpmpp_1(model, x, noise_schedule=ns, steps=4, noise=noise, denoise_to_zero=True)
    assert seen[-1] == pytest.approx(0.01, rel=1e-15)
    _, info = SD.sample_dpm_solver_adaptive(exact, x, noise_schedule=ns, order=2, return_info=True)
    assert info["t"][-1] == pytest.approx(0.01, rel=1e-12)


# -- adapters: nearest index and per-dtype tables --------------------------------------------------


def test_vp_model_nearest_rounds_to_the_nearest_training_index():
    """t·N − 1 = 10.7 → index 11, 41.3 → 41 (the nearest n of t_n = (n + 1)/N)."""
    from refdiff import schedules as S
    from refdiff.samplers import adapters

    seen = []

    def model(x, t):
        seen.append(np.asarray(t).tolist())
        return x

    fn, ns = adapters.vp_model(model, S.linear(100))
    fn(np.zeros((3, 2)), (np.array([10.7, 41.3, 98.6]) + 1.0) / ns.total_N)
    assert seen[-1] == [11, 41, 99]


def test_bridges_follow_the_dtype_of_each_call():
    """A float32 call after a float64 call gets float32 coefficients (the tables are kept per dtype)."""
    from refdiff import schedules as S
    from refdiff.samplers import adapters

    s = S.linear(100)
    data = A.GaussianData([0.3, -0.2, 0.1], [0.5, 0.2, 0.1])
    exact = A.discrete_model(data, s, "eps")

    def model(x, t):
        return exact(x.astype(np.float64), t).astype(x.dtype)

    t_dtypes = []

    def smooth(x, t):  # takes fractional timesteps
        t_dtypes.append(np.asarray(t).dtype)
        return 0.1 * x

    score, _ = adapters.score_fn(model, s)
    den = adapters.karras_denoiser(smooth, s, timestep="interp")
    x64 = np.random.default_rng(8).standard_normal((3, 3))
    t64 = np.array([5.0, 40.0, 90.0]) / 99.0
    sig64 = np.asarray(s.sigmas)[[5, 40, 90]] * 1.01
    for dtype in (np.float64, np.float32, np.float64):
        x, t, sig = x64.astype(dtype), t64.astype(dtype), sig64.astype(dtype)
        assert score(x, t).dtype == dtype
        assert den(x, sig).dtype == dtype
        assert t_dtypes[-1] == dtype


# -- discrete samplers: denoised_fn, then the clip ---------------------------------------------------


def test_denoised_fn_is_applied_before_the_clip():
    """improved-diffusion's process_xstart: x̂0 ← clip(denoised_fn(x̂0)), so clipping has the last word."""
    from refdiff import schedules as S
    from refdiff.samplers.discrete import sample_ddim

    s = S.linear(50)
    seen = []

    def model(x, t):
        return 0.3 * x

    def stretch(x0):
        return 3.0 * x0 + 0.5

    x = 2.0 * np.random.default_rng(9).standard_normal((4, 3))
    sample_ddim(model, x, schedule=s, clip_x0=True, denoised_fn=stretch, callback=seen.append)
    ab = np.asarray(s.alphas_cumprod)
    for info in seen:
        i = int(info.t)
        raw = (info.x - np.sqrt(1.0 - ab[i]) * model(info.x, None)) / np.sqrt(ab[i])
        np.testing.assert_allclose(
            info.denoised, np.clip(stretch(raw), -1.0, 1.0), rtol=1e-12, atol=1e-12
        )
    assert max(float(np.max(np.abs(info.denoised))) for info in seen) == 1.0


# -- adapters: the Karras grid's ρ and the start state on the σ scale ---------------------------------


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_grid_uses_rho(rho):
    """Karras et al. (2022), Eq. 5 between the schedule's σ_min and σ_max, σ_N = 0 appended."""
    from refdiff import schedules as S
    from refdiff.samplers import adapters

    s = S.linear(100)
    sig = np.asarray(s.sigmas)
    lo, hi = float(sig.min()), float(sig.max())
    i = np.arange(6) / 5.0
    want = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    got = adapters.karras_grid(s, 6, rho=rho)
    np.testing.assert_allclose(got[:-1], want, rtol=1e-13)
    assert got[-1] == 0.0


def test_karras_bridge_starts_from_the_vp_state_scaled_by_sqrt_one_plus_sigma_squared():
    """x_VE = x_VP/√ᾱ = x_VP·√(1 + σ_0²) (Karras et al. 2022, Eq. 7 with s = 1/√(1 + σ²)); small σ_0 shows it."""
    from refdiff import schedules as S
    from refdiff.samplers import adapters

    s = S.linear(100)
    seen = []
    x_T = np.random.default_rng(10).standard_normal((2, 3))
    adapters.sample_with_discrete_model(
        "karras_euler",
        lambda x, t: 0.0 * x,
        x_T,
        schedule=s,
        steps=3,
        sigmas=[0.75, 0.3, 0.0],
        callback=seen.append,
    )
    np.testing.assert_allclose(seen[0].x, x_T * np.sqrt(1.0 + 0.75**2), rtol=1e-15)


# -- flow: a "uniform" grid with t_start < 1 is uniform in the unshifted time -------------------------


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_flow_uniform_grid_is_uniform_in_the_unshifted_time(shift):
    """t = s·u/(1 + (s−1)·u) with u uniform from u(t_start) to u(t_end) (Esser et al. 2024, §5.3.2)."""
    from refdiff.samplers.flow import FlowSchedule, flow_time_steps

    ts = np.asarray(flow_time_steps(FlowSchedule(shift=shift), 5, t_start=0.8, t_end=0.1))
    assert ts[0] == 0.8 and ts[-1] == 0.1
    u = ts / (shift - (shift - 1.0) * ts)  # the inverse of the shift, closed form
    np.testing.assert_allclose(np.diff(u), np.full(5, (u[-1] - u[0]) / 5), rtol=1e-12)


# -- k-diffusion's adaptive DPM-Solver with η > 0 -----------------------------------------------------


def _kd_adaptive_ancestral(kd, x, t_start, t_end, order, rtol, atol, eta, s_noise, draws):
    """k-diffusion's DPMSolver.dpm_solver_adaptive with η > 0, re-derived (its controller then has order 1.5)."""
    from tests.peers.test_karras_dpm import KDPID, get_ancestral_step

    s, x_prev = t_start, x
    pid = KDPID(0.05, 0.0, 1.0, 0.0, 1.5, 0.81)
    n_acc = n_rej = 0
    while s < t_end - 1e-5:
        cache = {}
        t = min(t_end, s + pid.h)
        sd, su = get_ancestral_step(kd.sigma(s), kd.sigma(t), eta)
        t_ = min(t_end, kd.t(sd))
        su = (kd.sigma(t) ** 2 - kd.sigma(t_) ** 2) ** 0.5
        _, cache = kd.eps(cache, "eps", x, s)
        if order == 2:
            x_low, cache = kd.dpm_solver_1_step(x, s, t_, eps_cache=cache)
            x_high, cache = kd.dpm_solver_2_step(x, s, t_, eps_cache=cache)
        else:
            x_low, cache = kd.dpm_solver_2_step(x, s, t_, r1=1 / 3, eps_cache=cache)
            x_high, cache = kd.dpm_solver_3_step(x, s, t_, eps_cache=cache)
        delta = np.maximum(atol, rtol * np.maximum(np.abs(x_low), np.abs(x_prev)))
        error = np.linalg.norm((x_low - x_high) / delta) / x.size**0.5
        if pid.propose_step(error):
            x_prev, x, s = x_low, x_high + su * s_noise * draws[n_acc], t
            n_acc += 1
        else:
            n_rej += 1
    return x, n_acc, n_rej


@pytest.mark.parametrize("order", [2, 3])
def test_karras_dpm_adaptive_ancestral_matches_k_diffusion(order):
    from refdiff.samplers import get_sampler
    from tests.peers.test_karras_dpm import DEN as KDEN
    from tests.peers.test_karras_dpm import KDDPMSolver, start

    x = start()
    draws = np.random.default_rng(12).standard_normal((400,) + x.shape)
    kd = KDDPMSolver()
    ref, n_acc, n_rej = _kd_adaptive_ancestral(
        kd, x, kd.t(10.0), kd.t(0.03), order, 0.02, 0.02 / 6, 0.5, 0.97, draws
    )
    got, info = get_sampler("karras_dpm_adaptive").fn(
        KDEN,
        x,
        sigmas=[10.0, 0.03],
        noise=draws,
        order=order,
        rtol=0.02,
        atol=0.02 / 6,
        eta=0.5,
        S_noise=0.97,
        return_info=True,
    )
    assert (info["n_accept"], info["n_reject"]) == (n_acc, n_rej)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


# -- PNDM: final_alpha_bar="one" lands on x̂0 ----------------------------------------------------------


@pytest.mark.parametrize("name", ["pndm", "plms"])
def test_pndm_final_alpha_bar_one_lands_on_the_point(name):
    """ᾱ_prev = 1 makes the last transfer x̂0 = (x − √(1−ᾱ)ε)/√ᾱ: point-mass data end exactly on μ."""
    from refdiff import schedules as S
    from refdiff.samplers import pndm as P

    base = S.linear(1000)
    mu = np.array([0.5, -0.2])
    point = A.GaussianData(mu, np.zeros((2, 2)))
    x_T = np.random.default_rng(13).standard_normal((4, 2))
    out = getattr(P, f"sample_{name}")(
        A.discrete_model(point, base, "eps"),
        x_T,
        schedule=base,
        steps=10,
        spacing="leading",
        final_alpha_bar="one",
    )
    np.testing.assert_allclose(out, np.broadcast_to(mu, out.shape), rtol=1e-11, atol=1e-12)


# -- UniPC: the callback's x̂0 in the noise-prediction form ------------------------------------------


def test_unipc_noise_prediction_callback_reports_the_posterior_mean_at_the_first_level():
    x = np.random.default_rng(14).standard_normal((4, 2))
    seen = []
    U.sample_unipc(
        EPS_MODEL,
        x,
        noise_schedule=NS,
        steps=4,
        algorithm_type="noise_prediction",
        callback=seen.append,
    )
    t = float(seen[0].t)
    alpha, sigma = float(NS.marginal_alpha(t)), float(NS.marginal_std(t))
    np.testing.assert_allclose(seen[0].denoised, DATA.x0(x, alpha, sigma), rtol=1e-12, atol=1e-13)


# -- DDIM one-step API: clip_range ---------------------------------------------------------------------


def test_ddim_step_at_clips_to_clip_range():
    """diffusers' clip_sample_range: x̂0 = clip((x − √(1−ᾱ_t)ε)/√ᾱ_t, −r, r)."""
    from refdiff import schedules as S
    from refdiff.samplers.discrete import ddim_step_at

    s = S.linear(1000)
    x = 3.0 * np.random.default_rng(15).standard_normal((4, 3))
    eps = -0.5 * x
    ab = float(np.asarray(s.alphas_cumprod)[600])
    raw = (x - np.sqrt(1.0 - ab) * eps) / np.sqrt(ab)
    out = ddim_step_at(eps, 600, 500, x, schedule=s, clip_x0=True, clip_range=0.5)
    np.testing.assert_allclose(out.pred_original_sample, np.clip(raw, -0.5, 0.5), rtol=1e-13)
    assert np.max(np.abs(raw)) > 0.5


# -- DDPM classifier guidance: cond_scale multiplies the gradient -----------------------------------


def test_ddpm_cond_scale_scales_the_classifier_gradient():
    from refdiff import schedules as S
    from refdiff.samplers.discrete import sample_ddpm

    s = S.linear(50)
    model = A.discrete_model(A.GaussianData([0.3, -0.1], [0.5, 0.2]), s, "eps")
    x = np.random.default_rng(16).standard_normal((3, 2))
    noise = np.random.default_rng(17).standard_normal((50, 3, 2))

    def grad(x, t):
        return 0.1 - 0.2 * x

    a = sample_ddpm(model, x, schedule=s, noise=noise, cond_fn=grad, cond_scale=2.5)
    b = sample_ddpm(model, x, schedule=s, noise=noise, cond_fn=lambda x, t: 2.5 * grad(x, t))
    c = sample_ddpm(model, x, schedule=s, noise=noise, cond_fn=grad)
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    assert np.max(np.abs(a - c)) > 1e-3


# -- score-SDE PC sampler: with denoise, the corrector-only run returns the last corrector's mean ----


def test_corrector_only_pc_sampler_with_denoise_returns_the_last_langevin_mean():
    """Song et al. (2021), Alg. 4/5: x = x̄ + √(2ε) z; denoise returns x̄, so the two runs differ by √(2ε)·z_last."""
    from refdiff.samplers import score_sde as SS
    from refdiff.sde import VESDE

    sde = VESDE(N=4)
    data = A.GaussianData([0.5, -0.2], [[1.0, 0.3], [0.3, 0.5]])

    def score(x, t):
        return data.score(x, 1.0, float(sde.marginal_std(float(np.asarray(t)[0]))))

    x = np.random.default_rng(18).standard_normal((3, 2)) * 5.0
    noise = np.random.default_rng(19).standard_normal((4, 3, 2))
    kw = dict(sde=sde, steps=4, noise=noise, predictor="none", corrector="langevin")
    d = SS.sample_sde_pc(score, x, denoise=False, **kw) - SS.sample_sde_pc(
        score, x, denoise=True, **kw
    )
    ratio = d / noise[-1]
    assert np.all(ratio > 0.0)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-10)
