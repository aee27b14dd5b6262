"""Score-SDE samplers (predictors, Langevin correctors, PC driver, NCSN annealed Langevin) on analytic data.

Independent references: the exact marginals N(α_t μ, α_t²Σ + σ_t²I) of Gaussian data; the SMLD
and DDPM chains written out here from Song et al. (2021, Eqs. 45-47); closed-form variance
recursions of affine Langevin chains; Monte Carlo with stated 5-standard-error bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff.samplers import get_sampler
from refdiff.samplers import score_sde as S
from refdiff.sde import SubVPSDE, VESDE, VPSDE

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)


def score_of(data, sde):
    """The exact score of the SDE's continuous marginal, t of shape (B,)."""
    return lambda x, t: data.score(x, sde.marginal_alpha(t), sde.marginal_std(t))


def marginal(data, sde, t):
    return data.marginal(float(sde.marginal_alpha(t)), float(sde.marginal_std(t)))


def law_error(sde, eps, n, **kwargs):
    run = lambda xT, nz: S.sample_pc(
        score_of(DATA, sde),
        xT,
        sde=sde,
        steps=n,
        noise=nz,
        corrector="none",
        eps=eps,
        denoise=False,
        **kwargs,
    )
    law = A.linear_sampler_law(run, *marginal(DATA, sde, sde.T), dim=2, n_noise=n)
    m, C = marginal(DATA, sde, eps)
    return max(np.abs(law.mean - m).max(), np.abs(law.cov - C).max())


def slope(steps, errs):
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0]


# --------------------------------------------------------------------------------------------
# Grids and single steps against hand-written formulas
# --------------------------------------------------------------------------------------------


def test_pc_time_grid_conventions():
    """score_sde: t_i = linspace(T, eps, N), dt = -T/N; uniform: t_i = linspace(T, eps, N+1)[:-1], Σ dt = eps - T."""
    ts, dts = S.pc_time_grid(VPSDE(), 4, eps=1e-3, time_grid="score_sde")
    np.testing.assert_allclose(ts, np.linspace(1.0, 1e-3, 4), rtol=1e-15)
    assert dts == [-0.25] * 4
    ts, dts = S.pc_time_grid(VPSDE(), 4, eps=1e-3, time_grid="uniform")
    np.testing.assert_allclose(ts, np.linspace(1.0, 1e-3, 5)[:-1], rtol=1e-15)
    assert sum(dts) == pytest.approx(1e-3 - 1.0, rel=1e-14)


def test_euler_maruyama_step_formula():
    """VP: x + [-½β x - β s](dt) + √β √(-dt) z with β(t) = β0 + t(β1 - β0) (Song et al. 2021, Eq. 6 & 32)."""
    sde = VPSDE()
    x, z = np.array([[0.3, -1.2]]), np.array([[0.5, 0.25]])
    t, dt = 0.6, -0.01
    s = score_of(DATA, sde)(x, np.array([t]))
    beta = 0.1 + t * 19.9
    expected = x + (-0.5 * beta * x - beta * s) * dt + math.sqrt(beta * -dt) * z
    out, mean = S.euler_maruyama_step(sde, score_of(DATA, sde), x, t, dt, noise=z)
    np.testing.assert_allclose(out, expected, rtol=1e-14)
    np.testing.assert_allclose(mean, expected - math.sqrt(beta * -dt) * z, rtol=1e-14)


def test_reverse_diffusion_and_ancestral_steps_on_the_ddpm_chain():
    """VP chain β_i = (β_min + i(β_max - β_min)/(N-1))/N: reverse diffusion x̄ = (2 - √(1-β_i)) x + β_i s;
    ancestral x̄ = (x + β_i s)/√(1-β_i); both add √β_i z (score_sde's predictors)."""
    sde = VPSDE(N=50, index_rounding="floor")
    x, z = np.array([[0.3, -1.2]]), np.array([[0.5, 0.25]])
    t = 0.37
    i = math.floor(t * 49)
    beta = (0.1 + i * 19.9 / 49) / 50
    s = score_of(DATA, sde)(x, np.array([t]))
    out, _ = S.reverse_diffusion_step(sde, score_of(DATA, sde), x, t, noise=z)
    np.testing.assert_allclose(
        out, (2 - math.sqrt(1 - beta)) * x + beta * s + math.sqrt(beta) * z, rtol=1e-13
    )
    out, _ = S.ancestral_sampling_step(sde, score_of(DATA, sde), x, t, noise=z)
    np.testing.assert_allclose(
        out, (x + beta * s) / math.sqrt(1 - beta) + math.sqrt(beta) * z, rtol=1e-13
    )


# --------------------------------------------------------------------------------------------
# Exactness where it holds
# --------------------------------------------------------------------------------------------


def smld_sigma(i, N, smin=0.01, smax=50.0):
    return smin * (smax / smin) ** (i / (N - 1))


def test_ve_ancestral_step_is_exact_on_point_mass():
    """SMLD chain with a point mass: from x ~ N(μ, σ_i²I) one ancestral step gives N(μ, σ_{i-1}²I) exactly."""
    N = 20
    sde = VESDE(N=N)
    for i in (19, 7, 1):
        t = i / (N - 1)

        def chain_score(x, tt, i=i):
            return -(x - MU) / smld_sigma(i, N) ** 2

        run = lambda xT, nz: S.ancestral_sampling_step(sde, chain_score, xT, t, noise=nz[0])[0]
        law = A.linear_sampler_law(run, MU, smld_sigma(i, N) ** 2 * np.eye(2), dim=2, n_noise=1)
        np.testing.assert_allclose(law.mean, MU, atol=1e-12)
        np.testing.assert_allclose(law.cov, smld_sigma(i - 1, N) ** 2 * np.eye(2), rtol=1e-12)
    # the full sampler ends at index 0, where the mean step lands on μ
    out = S.sample_ancestral(
        lambda x, tt: -(x - MU) / smld_sigma(round(float(tt[0]) * (N - 1)), N) ** 2,
        np.full((3, 2), 40.0),
        sde=sde,
        steps=N,
        noise=np.ones((N, 3, 2)),
        eps=0.0,
    )
    np.testing.assert_allclose(out, np.broadcast_to(MU, (3, 2)), atol=1e-12)


@pytest.mark.parametrize("denoise", [False, True])
def test_vp_ancestral_exact_for_standard_normal_data(denoise):
    """Data N(0, I) keeps every DDPM marginal at N(0, I) (score -x), so ancestral sampling is exact in law:
    cov I, or 1 - β_0 after the final noise-free step (score_sde's noise removal)."""
    N = 30
    sde = VPSDE(N=N)
    run = lambda xT, nz: S.sample_ancestral(
        lambda x, t: -x, xT, sde=sde, steps=N, noise=nz, eps=0.0, denoise=denoise
    )
    law = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=N)
    beta0 = 0.1 / N
    np.testing.assert_allclose(law.mean, 0.0, atol=1e-13)
    np.testing.assert_allclose(law.cov, (1 - beta0 if denoise else 1.0) * np.eye(2), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Convergence in law on Gaussian data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sde,eps,predictor,grid",
    [
        (VPSDE(), 1e-3, "euler_maruyama", "uniform"),
        (SubVPSDE(), 1e-3, "euler_maruyama", "uniform"),
        (VPSDE(), 1e-3, "reverse_diffusion", "score_sde"),
        (VESDE(), 1e-5, "ancestral_sampling", "score_sde"),
    ],
)
def test_predictors_converge_in_law_with_order_one(sde, eps, predictor, grid):
    """The exact output law approaches the true marginal at eps with weak order 1 in 1/N."""
    steps = [50, 100, 200]
    errs = [law_error(sde, eps, n, predictor=predictor, time_grid=grid) for n in steps]
    assert errs[0] > errs[1] > errs[2]
    assert abs(slope(steps, errs) - 1.0) < 0.15, errs


def test_subvp_has_no_ancestral_chain():
    with pytest.raises(ValueError, match="ancestral sampling needs a VPSDE or VESDE"):
        S.sample_ancestral(
            lambda x, t: -x, np.zeros((1, 2)), sde=SubVPSDE(), steps=3, noise=np.zeros((3, 1, 2))
        )


# --------------------------------------------------------------------------------------------
# Langevin correctors
# --------------------------------------------------------------------------------------------


def test_langevin_step_size_conventions():
    """ε = 2α(r‖z‖/‖s‖)²: batch means of the per-sample norms (score_sde), or per sample."""
    rng = np.random.default_rng(1)
    s, z = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))
    gs = np.linalg.norm(s.reshape(3, -1), axis=1)
    ns = np.linalg.norm(z.reshape(3, -1), axis=1)
    r, a = 0.16, 0.98
    got = S.langevin_step_size(s, z, snr=r, alpha=a, norm="batch_mean")
    assert float(got) == pytest.approx(2 * a * (r * ns.mean() / gs.mean()) ** 2, rel=1e-14)
    got = S.langevin_step_size(s, z, snr=r, alpha=a, norm="per_sample")
    np.testing.assert_allclose(got, 2 * a * (r * ns / gs) ** 2, rtol=1e-14)
    # the batch-mean step depends on the other samples of the batch; the per-sample one does not
    s2, z2 = np.concatenate([s, 10 * s[:1]]), np.concatenate([z, z[:1]])
    assert float(S.langevin_step_size(s2, z2, snr=r, norm="batch_mean")) != pytest.approx(
        float(S.langevin_step_size(s, z, snr=r, norm="batch_mean"))
    )
    np.testing.assert_allclose(
        S.langevin_step_size(s2, z2, snr=r, norm="per_sample")[:3],
        S.langevin_step_size(s, z, snr=r, norm="per_sample"),
        rtol=1e-15,
    )


def test_langevin_corrector_uses_the_ddpm_alpha():
    """score_sde's LangevinCorrector: α_i = 1 - β_i of the DDPM chain for VP (and sub-VP), 1 for VE."""
    x, z = np.array([[0.3, -1.2], [1.0, 0.1]]), np.array([[0.5, 0.25], [-1.0, 2.0]])
    for sde in (
        VPSDE(N=100, index_rounding="floor"),
        SubVPSDE(N=100, index_rounding="floor"),
        VESDE(),
    ):
        t = 0.42
        s = score_of(DATA, sde)(x, np.full(2, t))
        a = 1.0 if isinstance(sde, VESDE) else 1.0 - (0.1 + math.floor(t * 99) * 19.9 / 99) / 100
        eps = (
            2 * a * (0.2 * np.linalg.norm(z, axis=1).mean() / np.linalg.norm(s, axis=1).mean()) ** 2
        )
        out, mean = S.langevin_corrector_step(sde, score_of(DATA, sde), x, t, snr=0.2, noise=z)
        np.testing.assert_allclose(mean, x + eps * s, rtol=1e-13)
        np.testing.assert_allclose(out, x + eps * s + math.sqrt(2 * eps) * z, rtol=1e-13)


def test_annealed_langevin_corrector_variance_recursion():
    """score_sde's ALD corrector has ε = 2α(rσ_t)² independent of x: K steps at fixed t are affine with
    cov_{k+1} = (I - εC⁻¹) cov_k (I - εC⁻¹) + 2εI, C = α_t²Σ + σ_t²I (written out here)."""
    sde = VESDE()
    t, r, K = 0.3, 0.4, 5
    m, C = marginal(DATA, sde, t)
    score = score_of(DATA, sde)

    def run(xT, nz):
        x = xT
        for k in range(K):
            x = S.annealed_langevin_step(sde, score, x, t, snr=r, noise=nz[k])[0]
        return x

    cov0 = 2.0 * C
    law = A.linear_sampler_law(run, m + 1.0, cov0, dim=2, n_noise=K)
    eps = 2 * (r * float(sde.marginal_std(t))) ** 2
    P = np.eye(2) - eps * np.linalg.inv(C)
    cov, mean = cov0, m + 1.0
    for _ in range(K):
        cov = P @ cov @ P.T + 2 * eps * np.eye(2)
        mean = m + P @ (mean - m)
    np.testing.assert_allclose(law.cov, cov, rtol=1e-12)
    np.testing.assert_allclose(law.mean, mean, rtol=1e-12)


def test_per_sample_langevin_monte_carlo():
    """One per-sample Langevin step from the exact point-mass marginal N(μ, σ²I) in d = 8:
    E‖x' - μ‖²/σ² = d - 4r²d + 4r²(1 + r²) d(d+2)/(d-2) (χ² moments, derived in this docstring's
    notation: ‖y‖² = σ²Q, ‖z‖² = W, ε/σ² = 2r²W/Q) and E[x'] = μ; checked by M = 20000 draws
    within 5 standard errors of the sample mean."""
    d, M, r, sigma = 8, 20000, 0.3, 1.7
    mu = np.linspace(-1, 1, d)
    rng = np.random.default_rng(7)
    x = mu + sigma * rng.standard_normal((M, d))
    z = rng.standard_normal((M, d))
    sde = VESDE()
    out, _ = S.langevin_corrector_step(
        sde, lambda xx, t: -(xx - mu) / sigma**2, x, 0.5, snr=r, noise=z, norm="per_sample"
    )
    sq = np.sum((out - mu) ** 2, axis=1) / sigma**2
    expected = d - 4 * r * r * d + 4 * r * r * (1 + r * r) * d * (d + 2) / (d - 2)
    assert abs(sq.mean() - expected) < 5 * sq.std() / math.sqrt(M)
    dev = (out - mu).mean(axis=0)
    assert np.all(np.abs(dev) < 5 * (out - mu).std(axis=0) / math.sqrt(M))


def test_zero_score_norm_is_an_error():
    with pytest.raises(ValueError, match="zero norm"):
        S.langevin_step_size(np.zeros((2, 3)), np.ones((2, 3)), snr=0.1, norm="per_sample")


# --------------------------------------------------------------------------------------------
# The PC driver and NCSN
# --------------------------------------------------------------------------------------------


def test_pc_noise_indexing_and_denoise():
    """Per step: corrector draws first, then the predictor's; with denoise the last predictor draw is unread."""
    seen = []

    def noise(i):
        seen.append(i)
        return np.zeros((1, 2))

    sde = VESDE(N=3)
    S.sample_pc(
        score_of(DATA, sde),
        np.ones((1, 2)),
        sde=sde,
        steps=3,
        noise=noise,
        n_corrector_steps=2,
        denoise=True,
    )
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7]
    seen.clear()
    S.sample_pc(
        score_of(DATA, sde),
        np.ones((1, 2)),
        sde=sde,
        steps=3,
        noise=noise,
        n_corrector_steps=2,
        denoise=False,
    )
    assert seen == list(range(9))


def test_ncsn_annealed_langevin_law():
    """Song & Ermon (2019), Alg. 1 on a point mass: each level's step α_i = εσ_i²/σ_L² and
    x ← x + (α_i/2)s + √α_i z give the variance recursion v ← (1 - α_i/(2σ_i²))² v + α_i."""
    sde = VESDE(sigma_min=0.1, sigma_max=5.0)
    L, n_each, lr = 4, 3, 0.05
    sigmas = [0.1 * 50.0**t for t in np.linspace(1.0, 0.0, L)]
    score = lambda x, t: -(x - MU) / float(sde.marginal_std(float(t[0]))) ** 2
    run = lambda xT, nz: S.sample_ncsn_annealed_langevin(
        score, xT, sde=sde, steps=L, noise=nz, n_steps_each=n_each, step_lr=lr
    )
    law = A.linear_sampler_law(run, MU, 9.0 * np.eye(2), dim=2, n_noise=L * n_each)
    v = 9.0
    for s in sigmas:
        a = lr * (s / sigmas[-1]) ** 2
        for _ in range(n_each):
            v = (1 - a / (2 * s * s)) ** 2 * v + a
    np.testing.assert_allclose(law.cov, v * np.eye(2), rtol=1e-11)
    np.testing.assert_allclose(law.mean, MU, atol=1e-12)


def test_ncsn_needs_ve():
    with pytest.raises(ValueError, match="VESDE"):
        S.sample_ncsn_annealed_langevin(
            lambda x, t: -x, np.zeros((1, 2)), sde=VPSDE(), steps=2, noise=np.zeros((200, 1, 2))
        )


def test_runs_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    x = np.array([[1.0, 2.0], [-3.0, 0.5]])
    for sde in (VPSDE(N=40), VESDE(N=40)):

        def score(xx, t, sde=sde):
            tt = float(t[0])
            return DATA.score(xx, float(sde.marginal_alpha(tt)), float(sde.marginal_std(tt)))

        nz = np.random.default_rng(0).standard_normal((80, 2, 2))
        for name in ["sde_pc", "sde_euler_maruyama", "sde_reverse_diffusion", "sde_ancestral"]:
            fn = get_sampler(name).fn
            ref = fn(score, x, sde=sde, steps=40, noise=nz)
            got = fn(score, xs.asarray(x), sde=sde, steps=40, noise=xs.asarray(nz))
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Per-step callback
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["sde_pc", "sde_euler_maruyama", "sde_reverse_diffusion", "sde_ancestral"]
)
def test_callback_reports_each_step_before_it_is_taken(name):
    """callback(info): i, n, t_i of the PC grid, the state at t_i (x_T first), no x0 prediction; progress(i + 1, n)."""
    sde = VPSDE(N=30)
    x = np.random.default_rng(0).standard_normal((2, 2))
    noise = np.random.default_rng(1).standard_normal((60, 2, 2))
    infos, prog = [], []
    fn = get_sampler(name).fn
    fn(
        score_of(DATA, sde),
        x,
        sde=sde,
        steps=30,
        noise=noise,
        callback=infos.append,
        progress=lambda i, n: prog.append((i, n)),
    )
    ts, _ = S.pc_time_grid(sde, 30)
    assert [(f.i, f.n, f.t) for f in infos] == [(i, 30, ts[i]) for i in range(30)]
    assert prog == [(i + 1, 30) for i in range(30)]
    assert infos[0].x is x and all(f.denoised is None and f.sigma is None for f in infos)
    assert all(np.all(np.isfinite(f.x)) for f in infos)


def test_ncsn_callback_reports_levels():
    sde = VESDE(sigma_min=0.1, sigma_max=5.0)
    infos = []
    S.sample_ncsn_annealed_langevin(
        lambda x, t: -x,
        np.zeros((1, 2)),
        sde=sde,
        steps=3,
        noise=np.zeros((6, 1, 2)),
        n_steps_each=2,
        callback=infos.append,
    )
    assert [f.i for f in infos] == [0, 1, 2]
    np.testing.assert_allclose([f.sigma for f in infos], [5.0, 5.0 * 0.02**0.5, 0.1], rtol=1e-14)
