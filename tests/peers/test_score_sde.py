"""Peer rows of docs/PEERS.md, Score SDE section: score_sde's predictors, correctors, PC and ODE samplers, NCSN.

score_sde (Song et al. 2021, github.com/yang-song/score_sde_pytorch) is not installable from a
package registry, so its published formulas are re-derived below in NumPy float64 — the SDE
classes of ``sde_lib.py`` (``sde``, ``marginal_prob``, ``discretize`` with the truncating index
``(t (N-1)/T).long()``, ``reverse``), the predictors and correctors of ``sampling.py``
(``EulerMaruyamaPredictor``, ``ReverseDiffusionPredictor``, ``AncestralSamplingPredictor``,
``LangevinCorrector``, ``AnnealedLangevinDynamics``), ``get_pc_sampler`` (corrector, then
predictor, at t_i = linspace(T, eps, N); noise removal returns the last predictor mean) and
``get_ode_sampler`` (``solve_ivp`` RK45 on the probability-flow drift) — and NCSN's
``anneal_Langevin_dynamics`` (ermongroup/ncsn, ``runners/anneal_runner.py``). Each is compared
with the single refdiff call that reproduces it; the noise draws are the same array on both sides,
consumed in score_sde's order (corrector draws, then the predictor's, per step).

score_sde ties the number of steps to the SDE's N and truncates t (N-1)/T to the chain index; the
refdiff calls therefore use ``steps=N`` and ``index_rounding="floor"``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate

from refdiff.samplers.ode import sample_ode_rk45
from refdiff.samplers.score_sde import (
    sample_ncsn_annealed_langevin,
    sample_sde_ancestral,
    sample_sde_euler_maruyama,
    sample_sde_pc,
    sample_sde_reverse_diffusion,
)
from refdiff.sde import SubVPSDE, VESDE, VPSDE

SHAPE = (3, 2, 4)


# --------------------------------------------------------------------------------------------
# score_sde's sde_lib, re-derived (float64)
# --------------------------------------------------------------------------------------------


def _b(v, x):
    return np.reshape(v, (-1,) + (1,) * (x.ndim - 1))


class RefVP:
    def __init__(self, beta_min=0.1, beta_max=20.0, N=1000):
        self.b0, self.b1, self.N, self.T = beta_min, beta_max, N, 1.0
        self.discrete_betas = np.linspace(beta_min / N, beta_max / N, N)
        self.alphas = 1.0 - self.discrete_betas

    def sde(self, x, t):
        beta_t = self.b0 + t * (self.b1 - self.b0)
        return -0.5 * _b(beta_t, x) * x, np.sqrt(beta_t)

    def marginal_std(self, t):
        lmc = -0.25 * t**2 * (self.b1 - self.b0) - 0.5 * t * self.b0
        return np.sqrt(1.0 - np.exp(2.0 * lmc))

    def discretize(self, x, t):
        i = (t * (self.N - 1) / self.T).astype(np.int64)
        beta, alpha = self.discrete_betas[i], self.alphas[i]
        return _b(np.sqrt(alpha), x) * x - x, np.sqrt(beta)


class RefSubVP(RefVP):
    def sde(self, x, t):
        beta_t = self.b0 + t * (self.b1 - self.b0)
        discount = 1.0 - np.exp(-2.0 * self.b0 * t - (self.b1 - self.b0) * t**2)
        return -0.5 * _b(beta_t, x) * x, np.sqrt(beta_t * discount)

    def marginal_std(self, t):
        lmc = -0.25 * t**2 * (self.b1 - self.b0) - 0.5 * t * self.b0
        return 1.0 - np.exp(2.0 * lmc)

    def discretize(self, x, t):  # the SDE base class: Euler with dt = 1/N
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * np.sqrt(dt)


class RefVE:
    def __init__(self, sigma_min=0.01, sigma_max=50.0, N=1000):
        self.smin, self.smax, self.N, self.T = sigma_min, sigma_max, N, 1.0
        self.discrete_sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), N))

    def sde(self, x, t):
        sigma = self.smin * (self.smax / self.smin) ** t
        return np.zeros_like(x), sigma * np.sqrt(2 * (np.log(self.smax) - np.log(self.smin)))

    def marginal_std(self, t):
        return self.smin * (self.smax / self.smin) ** t

    def discretize(self, x, t):
        i = (t * (self.N - 1) / self.T).astype(np.int64)
        sigma = self.discrete_sigmas[i]
        adjacent = np.where(i == 0, 0.0, self.discrete_sigmas[np.maximum(i - 1, 0)])
        return np.zeros_like(x), np.sqrt(sigma**2 - adjacent**2)


def rev_sde(sde, score, x, t, pf=False):
    drift, diffusion = sde.sde(x, t)
    drift = drift - _b(diffusion**2, x) * score(x, t) * (0.5 if pf else 1.0)
    return drift, (np.zeros_like(diffusion) if pf else diffusion)


def rev_discretize(sde, score, x, t):
    f, G = sde.discretize(x, t)
    return f - _b(G**2, x) * score(x, t), G


# --------------------------------------------------------------------------------------------
# score_sde's sampling.py, re-derived
# --------------------------------------------------------------------------------------------


def em_predictor(sde, score, x, t, z):
    dt = -1.0 / sde.N
    drift, diffusion = rev_sde(sde, score, x, t)
    x_mean = x + drift * dt
    return x_mean + _b(diffusion, x) * np.sqrt(-dt) * z, x_mean


def rd_predictor(sde, score, x, t, z):
    f, G = rev_discretize(sde, score, x, t)
    x_mean = x - f
    return x_mean + _b(G, x) * z, x_mean


def ancestral_predictor(sde, score, x, t, z):
    i = (t * (sde.N - 1) / sde.T).astype(np.int64)
    s = score(x, t)
    if isinstance(sde, RefVE):
        sigma = sde.discrete_sigmas[i]
        adjacent = np.where(i == 0, 0.0, sde.discrete_sigmas[np.maximum(i - 1, 0)])
        x_mean = x + s * _b(sigma**2 - adjacent**2, x)
        std = np.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
        return x_mean + _b(std, x) * z, x_mean
    beta = sde.discrete_betas[i]
    x_mean = (x + _b(beta, x) * s) / _b(np.sqrt(1.0 - beta), x)
    return x_mean + _b(np.sqrt(beta), x) * z, x_mean


def _alpha(sde, t):
    if isinstance(sde, RefVE):
        return np.ones_like(t)
    return sde.alphas[(t * (sde.N - 1) / sde.T).astype(np.int64)]


def langevin_corrector(sde, score, x, t, z, snr):
    grad = score(x, t)
    grad_norm = np.linalg.norm(grad.reshape(grad.shape[0], -1), axis=-1).mean()
    noise_norm = np.linalg.norm(z.reshape(z.shape[0], -1), axis=-1).mean()
    step = (snr * noise_norm / grad_norm) ** 2 * 2 * _alpha(sde, t)
    x_mean = x + _b(step, x) * grad
    return x_mean + _b(np.sqrt(step * 2), x) * z, x_mean


def ald_corrector(sde, score, x, t, z, snr):
    grad = score(x, t)
    step = (snr * sde.marginal_std(t)) ** 2 * 2 * _alpha(sde, t)
    x_mean = x + _b(step, x) * grad
    return x_mean + z * _b(np.sqrt(step * 2), x), x_mean


def pc_sampler(sde, score, x, draws, predictor, corrector, eps, n_corr=1, snr=0.16, denoise=True):
    ts = np.linspace(sde.T, eps, sde.N)
    k = (n_corr if corrector else 0) + (1 if predictor else 0)
    x_mean = x
    for i in range(sde.N):
        t = np.full(x.shape[0], ts[i])
        for j in range(n_corr if corrector else 0):
            x, x_mean = corrector(sde, score, x, t, draws[i * k + j], snr)
        if predictor:
            x, x_mean = predictor(sde, score, x, t, draws[i * k + k - 1])
    return x_mean if denoise else x


def ode_sampler(sde, score, x, eps, rtol=1e-5, atol=1e-5, denoise=False):
    shape = x.shape

    def f(t, y):
        xx = y.reshape(shape)
        return rev_sde(sde, score, xx, np.full(shape[0], t), pf=True)[0].reshape(-1)

    sol = scipy.integrate.solve_ivp(
        f, (sde.T, eps), x.reshape(-1), rtol=rtol, atol=atol, method="RK45"
    )
    x = sol.y[:, -1].reshape(shape)
    if denoise:
        x = rd_predictor(sde, score, x, np.full(shape[0], eps), np.zeros_like(x))[1]
    return x


def ncsn_anneal_langevin(score_of_level, x, sigmas, draws, n_steps_each, step_lr):
    """NCSN's anneal_Langevin_dynamics: step = step_lr (σ_c/σ_L)², x + step·s + √(2 step) z."""
    for c, sigma in enumerate(sigmas):
        step = step_lr * (sigma / sigmas[-1]) ** 2
        for s in range(n_steps_each):
            noise = draws[c * n_steps_each + s] * np.sqrt(step * 2)
            x = x + step * score_of_level(x, c) + noise
    return x


# --------------------------------------------------------------------------------------------
# The model and the cases
# --------------------------------------------------------------------------------------------


def score(x, t):
    """A smooth nonlinear score s(x, t) (the same function on both sides)."""
    t = _b(np.asarray(t, dtype=np.float64), x)
    return -x / (0.2 + t) + 0.3 * np.tanh(x) * t


def _setup(seed, n_draws):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE), rng.standard_normal((n_draws,) + SHAPE)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


N = 40
PAIRS = {
    "vp": (RefVP(N=N), VPSDE(N=N, index_rounding="floor")),
    "subvp": (RefSubVP(N=N), SubVPSDE(N=N, index_rounding="floor")),
    "ve": (RefVE(N=N), VESDE(N=N, index_rounding="floor")),
}
EPS = {"vp": 1e-3, "subvp": 1e-3, "ve": 1e-5}


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_euler_maruyama_predictor(kind):
    """get_pc_sampler(EulerMaruyamaPredictor, NoneCorrector) == sample_sde_euler_maruyama."""
    ref_sde, sde = PAIRS[kind]
    x, draws = _setup(1, N)
    ref = pc_sampler(ref_sde, score, x, draws, em_predictor, None, EPS[kind])
    ours = sample_sde_euler_maruyama(score, x, sde=sde, steps=N, noise=draws, eps=EPS[kind])
    assert _rel(ours, ref) < 1e-13


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_reverse_diffusion_predictor(kind):
    """get_pc_sampler(ReverseDiffusionPredictor, NoneCorrector) == sample_sde_reverse_diffusion."""
    ref_sde, sde = PAIRS[kind]
    x, draws = _setup(2, N)
    ref = pc_sampler(ref_sde, score, x, draws, rd_predictor, None, EPS[kind])
    ours = sample_sde_reverse_diffusion(score, x, sde=sde, steps=N, noise=draws, eps=EPS[kind])
    assert _rel(ours, ref) < 1e-13


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_ancestral_sampling_predictor(kind):
    """get_pc_sampler(AncestralSamplingPredictor, NoneCorrector) == sample_sde_ancestral (VP, VE)."""
    ref_sde, sde = PAIRS[kind]
    x, draws = _setup(3, N)
    ref = pc_sampler(ref_sde, score, x, draws, ancestral_predictor, None, EPS[kind])
    ours = sample_sde_ancestral(score, x, sde=sde, steps=N, noise=draws, eps=EPS[kind])
    assert _rel(ours, ref) < 1e-13


@pytest.mark.parametrize(
    "kind,predictor,name",
    [
        ("ve", rd_predictor, "reverse_diffusion"),
        ("vp", rd_predictor, "reverse_diffusion"),
        ("vp", em_predictor, "euler_maruyama"),
        ("ve", ancestral_predictor, "ancestral_sampling"),
    ],
)
@pytest.mark.parametrize("n_corr", [1, 2])
def test_pc_sampler_langevin_corrector(kind, predictor, name, n_corr):
    """get_pc_sampler(predictor, LangevinCorrector, snr, n_steps) == sample_sde_pc(corrector="langevin")."""
    ref_sde, sde = PAIRS[kind]
    x, draws = _setup(4, N * (n_corr + 1))
    ref = pc_sampler(
        ref_sde, score, x, draws, predictor, langevin_corrector, EPS[kind], n_corr=n_corr, snr=0.16
    )
    ours = sample_sde_pc(
        score,
        x,
        sde=sde,
        steps=N,
        noise=draws,
        predictor=name,
        corrector="langevin",
        snr=0.16,
        n_corrector_steps=n_corr,
        eps=EPS[kind],
    )
    assert _rel(ours, ref) < 1e-12


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_pc_sampler_annealed_langevin_corrector(kind):
    """get_pc_sampler(ReverseDiffusionPredictor, AnnealedLangevinDynamics) == sample_sde_pc(corrector="ald")."""
    ref_sde, sde = PAIRS[kind]
    x, draws = _setup(5, 2 * N)
    ref = pc_sampler(ref_sde, score, x, draws, rd_predictor, ald_corrector, EPS[kind], snr=0.2)
    ours = sample_sde_pc(
        score, x, sde=sde, steps=N, noise=draws, corrector="ald", snr=0.2, eps=EPS[kind]
    )
    assert _rel(ours, ref) < 1e-12


def test_pc_sampler_without_noise_removal():
    """noise_removal=False returns the last x, not its mean: sample_sde_pc(denoise=False)."""
    ref_sde, sde = PAIRS["ve"]
    x, draws = _setup(6, 2 * N)
    ref = pc_sampler(
        ref_sde, score, x, draws, rd_predictor, langevin_corrector, 1e-5, denoise=False
    )
    ours = sample_sde_pc(score, x, sde=sde, steps=N, noise=draws, eps=1e-5, denoise=False)
    assert _rel(ours, ref) < 1e-12


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("denoise", [False, True])
def test_ode_sampler(kind, denoise):
    """get_ode_sampler(rtol=atol=1e-5, method='RK45', denoise) == sample_ode_rk45 (the same solve_ivp steps)."""
    ref_sde, sde = PAIRS[kind]
    x = np.random.default_rng(7).standard_normal(SHAPE) * (50.0 if kind == "ve" else 1.0)
    ref = ode_sampler(ref_sde, score, x, 1e-3, denoise=denoise)
    ours = sample_ode_rk45(score, x, sde=sde, eps=1e-3, rtol=1e-5, atol=1e-5, denoise=denoise)
    assert _rel(ours, ref) < 1e-9


def test_ncsn_annealed_langevin_dynamics():
    """NCSN anneal_Langevin_dynamics(step_lr=s) == sample_ncsn_annealed_langevin(step_lr=2s).

    The NCSN code steps x + step·s + √(2 step) z with step = step_lr (σ_c/σ_L)²; Song & Ermon
    (2019), Alg. 1 writes x + (α/2) s + √α z with α = ε (σ_i/σ_L)², which refdiff follows, so
    ε = 2 step_lr.
    """
    L, n_each, lr = 5, 3, 2e-5
    sde = VESDE(sigma_min=0.01, sigma_max=1.0)
    sigmas = np.exp(np.linspace(np.log(1.0), np.log(0.01), L))  # NCSN's geometric levels
    x, draws = _setup(8, L * n_each)

    def score_sigma(xx, sigma):
        return -xx / (sigma**2 + 0.5) + 0.1 * np.tanh(xx)

    ref = ncsn_anneal_langevin(
        lambda xx, c: score_sigma(xx, sigmas[c]), x, sigmas, draws, n_each, lr
    )
    ours = sample_ncsn_annealed_langevin(
        lambda xx, t: score_sigma(xx, _b(sde.sigma(np.asarray(t)), xx)),
        x,
        sde=sde,
        steps=L,
        noise=draws,
        n_steps_each=n_each,
        step_lr=2 * lr,
    )
    assert _rel(ours, ref) < 1e-12


def test_subvp_langevin_corrector_is_a_refdiff_extension():
    """score_sde's LangevinCorrector reads ``sde.alphas``, which its subVPSDE does not define; refdiff
    uses α_i = 1 - β_i of the DDPM chain of the same β's (checked here against that chain)."""
    ref_vp = RefVP(N=N)
    sde = SubVPSDE(N=N, index_rounding="floor")
    x, draws = _setup(9, 1)
    t = 0.63
    i = math.floor(t * (N - 1))
    s = score(x, np.full(SHAPE[0], t))
    gn = np.linalg.norm(s.reshape(SHAPE[0], -1), axis=-1).mean()
    nn = np.linalg.norm(draws[0].reshape(SHAPE[0], -1), axis=-1).mean()
    step = 2 * ref_vp.alphas[i] * (0.16 * nn / gn) ** 2
    from refdiff.samplers.score_sde import langevin_corrector_step

    out, _ = langevin_corrector_step(sde, score, x, t, snr=0.16, noise=draws[0])
    np.testing.assert_allclose(out, x + step * s + np.sqrt(2 * step) * draws[0], rtol=1e-13)
