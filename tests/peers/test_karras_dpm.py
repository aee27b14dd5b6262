"""k-diffusion's DPM-Solver-type samplers, re-derived here, and diffusers' DPMSolverSDEScheduler, against refdiff.samplers.karras_dpm.

k-diffusion needs torchsde and is not installed here, so each of its samplers (k_diffusion/sampling.py:
sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral, sample_dpmpp_sde,
sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_lms with linear_multistep_coeff, the DPMSolver
class behind sample_dpm_fast / sample_dpm_adaptive with PIDStepSizeController) is written below
from its published update, in its own form: scalar σ bookkeeping, t = -log σ, expm1 as it
writes it, scipy's quad for the LMS weights, a noise_sampler(σ, σ_next) callable. refdiff gets the
same draws through its explicit noise contract. A Brownian path indexed by σ stands in for the
Brownian tree of sample_dpmpp_sde.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff.edm import karras_sigmas
from refdiff.samplers import get_sampler

DATA = A.GaussianData([0.5, -0.2, 1.0], [[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.8]])
DEN = A.karras_denoiser(DATA)
B, D = 3, 3


def model(x, sigma):
    return DEN(x, np.full((x.shape[0],), float(sigma)))


def start(seed=0, sigma_max=10.0):
    return np.random.default_rng(seed).standard_normal((B, D)) * sigma_max


# --------------------------------------------------------------------------------------------
# k-diffusion, re-derived
# --------------------------------------------------------------------------------------------


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def kd_dpm_2(x, sigmas, eps_draws, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    for i in range(len(sigmas) - 1):
        gamma = (
            min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        )
        eps = eps_draws[i] * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = math.exp(0.5 * (math.log(sigma_hat) + math.log(sigmas[i + 1])))
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def kd_dpm_2_ancestral(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = math.exp(0.5 * (math.log(sigmas[i]) + math.log(sigma_down)))
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def kd_dpmpp_2s_ancestral(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    sigma_fn = lambda t: math.exp(-t)  # noqa: E731
    t_fn = lambda sigma: -math.log(sigma)  # noqa: E731
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - math.expm1(-h * r) * denoised
            denoised_2 = model(x_2, sigma_fn(s))
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - math.expm1(-h) * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def kd_dpmpp_sde(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0, r=1 / 2):
    sigma_fn = lambda t: math.exp(-t)  # noqa: E731
    t_fn = lambda sigma: -math.log(sigma)  # noqa: E731
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta)
            s_ = t_fn(sd)
            x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - math.expm1(t - s_) * denoised
            x_2 = x_2 + noise_sampler(sigma_fn(t), sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, sigma_fn(s))
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
            t_next_ = t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (sigma_fn(t_next_) / sigma_fn(t)) * x - math.expm1(t - t_next_) * denoised_d
            x = x + noise_sampler(sigma_fn(t), sigma_fn(t_next)) * s_noise * su
    return x


def kd_dpmpp_2m_sde(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0, solver_type="midpoint"):
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -math.log(sigmas[i]), -math.log(sigmas[i + 1])
            h = s - t
            eta_h = eta * h
            x = (
                sigmas[i + 1] / sigmas[i] * math.exp(-eta_h) * x
                + (-math.expm1(-h - eta_h)) * denoised
            )
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-math.expm1(-h - eta_h)) / (-h - eta_h) + 1) * (1 / r) * (
                        denoised - old_denoised
                    )
                else:
                    x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * (denoised - old_denoised)
            if eta:
                x = (
                    x
                    + noise_sampler(sigmas[i], sigmas[i + 1])
                    * sigmas[i + 1]
                    * math.sqrt(-math.expm1(-2 * eta_h))
                    * s_noise
                )
        old_denoised = denoised
        h_last = h
    return x


def kd_dpmpp_3m_sde(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -math.log(sigmas[i]), -math.log(sigmas[i + 1])
            h = s - t
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = (
                    x
                    + noise_sampler(sigmas[i], sigmas[i + 1])
                    * sigmas[i + 1]
                    * math.sqrt(-math.expm1(-2 * h * eta))
                    * s_noise
                )
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def linear_multistep_coeff(order, t, i, j):
    from scipy import integrate

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def kd_lms(x, sigmas, order=4):
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


class KDDPMSolver:
    """k-diffusion's DPMSolver (noise prediction on the σ scale, t = -log σ)."""

    def __init__(self):
        self.nfe = 0

    def t(self, sigma):
        return -math.log(sigma)

    def sigma(self, t):
        return math.exp(-t)

    def eps(self, cache, key, x, t):
        if key in cache:
            return cache[key], cache
        self.nfe += 1
        e = (x - model(x, self.sigma(t))) / self.sigma(t)
        return e, {key: e, **cache}

    def dpm_solver_1_step(self, x, t, t_next, eps_cache=None):
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        return x - self.sigma(t_next) * math.expm1(h) * eps, eps_cache

    def dpm_solver_2_step(self, x, t, t_next, r1=1 / 2, eps_cache=None):
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1, eps_cache = self.eps(eps_cache, "eps_r1", u1, s1)
        x_2 = (
            x
            - self.sigma(t_next) * math.expm1(h) * eps
            - self.sigma(t_next) / (2 * r1) * math.expm1(h) * (eps_r1 - eps)
        )
        return x_2, eps_cache

    def dpm_solver_3_step(self, x, t, t_next, r1=1 / 3, r2=2 / 3, eps_cache=None):
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1, eps_cache = self.eps(eps_cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * math.expm1(r2 * h) * eps
            - self.sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2, eps_cache = self.eps(eps_cache, "eps_r2", u2, s2)
        x_3 = (
            x
            - self.sigma(t_next) * math.expm1(h) * eps
            - self.sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)
        )
        return x_3, eps_cache

    def dpm_solver_fast(self, x, t_start, t_end, nfe, eta=0.0, s_noise=1.0, noise_sampler=None):
        m = math.floor(nfe / 3) + 1
        ts = np.linspace(t_start, t_end, m + 1)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i in range(len(orders)):
            eps_cache = {}
            t, t_next = float(ts[i]), float(ts[i + 1])
            if eta:
                sd, su = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
                t_next_ = min(t_end, self.t(sd))
                su = (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5
            else:
                t_next_, su = t_next, 0.0
            eps, eps_cache = self.eps(eps_cache, "eps", x, t)
            step = {
                1: self.dpm_solver_1_step,
                2: self.dpm_solver_2_step,
                3: self.dpm_solver_3_step,
            }[orders[i]]
            x, eps_cache = step(x, t, t_next_, eps_cache=eps_cache)
            if su:
                x = x + su * s_noise * noise_sampler(self.sigma(t), self.sigma(t_next))
        return x

    def dpm_solver_adaptive(
        self,
        x,
        t_start,
        t_end,
        order=3,
        rtol=0.05,
        atol=0.0078,
        h_init=0.05,
        pcoeff=0.0,
        icoeff=1.0,
        dcoeff=0.0,
        accept_safety=0.81,
    ):
        s = t_start
        x_prev = x
        pid = KDPID(h_init, pcoeff, icoeff, dcoeff, order, accept_safety)
        info = {"steps": 0, "n_accept": 0, "n_reject": 0}
        while s < t_end - 1e-5:
            eps_cache = {}
            t = min(t_end, s + pid.h)
            eps, eps_cache = self.eps(eps_cache, "eps", x, s)
            if order == 2:
                x_low, eps_cache = self.dpm_solver_1_step(x, s, t, eps_cache=eps_cache)
                x_high, eps_cache = self.dpm_solver_2_step(x, s, t, eps_cache=eps_cache)
            else:
                x_low, eps_cache = self.dpm_solver_2_step(x, s, t, r1=1 / 3, eps_cache=eps_cache)
                x_high, eps_cache = self.dpm_solver_3_step(x, s, t, eps_cache=eps_cache)
            delta = np.maximum(atol, rtol * np.maximum(np.abs(x_low), np.abs(x_prev)))
            error = np.linalg.norm((x_low - x_high) / delta) / x.size**0.5
            if pid.propose_step(error):
                x_prev, x, s = x_low, x_high, t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["steps"] += 1
        return x, info


class KDPID:
    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs = []

    def propose_step(self, error):
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


# --------------------------------------------------------------------------------------------
# Noise: per-step draws, and a Brownian path W(σ) for dpmpp_sde
# --------------------------------------------------------------------------------------------


class StepNoise:
    """noise_sampler(σ_i, σ_{i+1}) -> the draw of step i (looked up by σ_i), and refdiff's array."""

    def __init__(self, sigmas, seed=1):
        self.sigmas = [float(s) for s in sigmas]
        self.z = np.random.default_rng(seed).standard_normal((len(sigmas), B, D))

    def __call__(self, sigma, sigma_next):
        i = min(range(len(self.sigmas)), key=lambda k: abs(self.sigmas[k] - float(sigma)))
        return self.z[i]


class BrownianPath:
    """A Brownian motion W(σ) sampled at given points (independent Gaussian increments)."""

    def __init__(self, points, seed=2):
        self.p = np.array(sorted({float(v) for v in points}))
        rng = np.random.default_rng(seed)
        inc = (
            rng.standard_normal((len(self.p), B, D))
            * np.sqrt(np.diff(self.p, prepend=0.0))[:, None, None]
        )
        self.W = np.cumsum(inc, axis=0)

    def at(self, sigma):
        k = int(np.argmin(np.abs(self.p - float(sigma))))
        assert abs(self.p[k] - float(sigma)) <= 1e-6 * max(
            1.0, float(sigma)
        )  # diffusers: float32 σ
        return self.W[k]

    def __call__(self, sigma, sigma_next):  # k-diffusion's BrownianTreeNoiseSampler
        return (self.at(sigma_next) - self.at(sigma)) / math.sqrt(
            abs(float(sigma_next) - float(sigma))
        )


def dpmpp_sde_draws(path: BrownianPath, sigmas, r=0.5):
    """refdiff's explicit draws ξ_a, ξ_b per step from the path's increments (see sample_karras_dpmpp_sde)."""
    out = []
    for s, sn in zip(sigmas[:-1], sigmas[1:]):
        if sn == 0:
            continue
        mid = math.exp(-((1 - r) * -math.log(s) + r * -math.log(sn)))
        out.append((path.at(mid) - path.at(s)) / math.sqrt(s - mid))
        out.append((path.at(sn) - path.at(mid)) / math.sqrt(mid - sn))
    return np.stack(out)


GRID = [float(s) for s in karras_sigmas(9, 0.03, 10.0)]  # 8 levels and a final 0


# --------------------------------------------------------------------------------------------
# The rows of docs/PEERS.md
# --------------------------------------------------------------------------------------------


def test_dpm_2():
    x = start()
    nz = StepNoise(GRID)
    np.testing.assert_allclose(
        get_sampler("karras_dpm_2").fn(DEN, x, sigmas=GRID),
        kd_dpm_2(x, GRID, nz.z),
        rtol=1e-12,
        atol=1e-12,
    )
    churned = get_sampler("karras_dpm_2").fn(
        DEN, x, sigmas=GRID, noise=nz.z, S_churn=2.0, S_tmin=0.1, S_tmax=5.0, S_noise=1.003
    )
    np.testing.assert_allclose(
        churned,
        kd_dpm_2(x, GRID, nz.z, s_churn=2.0, s_tmin=0.1, s_tmax=5.0, s_noise=1.003),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("eta", [1.0, 0.6, 0.0, 1.5])
def test_dpm_2_ancestral(eta):
    x, nz = start(), StepNoise(GRID)
    np.testing.assert_allclose(
        get_sampler("karras_dpm_2_ancestral").fn(
            DEN, x, sigmas=GRID, noise=nz.z, eta=eta, S_noise=0.98
        ),
        kd_dpm_2_ancestral(x, GRID, nz, eta=eta, s_noise=0.98),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("eta", [1.0, 0.6, 0.0, 1.5])
def test_dpmpp_2s_ancestral(eta):
    x, nz = start(), StepNoise(GRID)
    np.testing.assert_allclose(
        get_sampler("karras_dpmpp_2s_ancestral").fn(
            DEN, x, sigmas=GRID, noise=nz.z, eta=eta, S_noise=0.98
        ),
        kd_dpmpp_2s_ancestral(x, GRID, nz, eta=eta, s_noise=0.98),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("eta,r", [(1.0, 0.5), (0.7, 0.5), (1.0, 0.3)])
def test_dpmpp_sde_with_the_same_brownian_path(eta, r):
    x = start()
    mids = [
        math.exp(-((1 - r) * -math.log(s) + r * -math.log(sn)))
        for s, sn in zip(GRID[:-1], GRID[1:])
        if sn > 0
    ]
    path = BrownianPath(GRID[:-1] + mids)
    got = get_sampler("karras_dpmpp_sde").fn(
        DEN, x, sigmas=GRID, noise=dpmpp_sde_draws(path, GRID, r), eta=eta, r=r, S_noise=1.01
    )
    np.testing.assert_allclose(
        got, kd_dpmpp_sde(x, GRID, path, eta=eta, s_noise=1.01, r=r), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(
    "eta,solver_type", [(1.0, "midpoint"), (1.0, "heun"), (0.5, "midpoint"), (0.0, "heun")]
)
def test_dpmpp_2m_sde(eta, solver_type):
    x, nz = start(), StepNoise(GRID)
    np.testing.assert_allclose(
        get_sampler("karras_dpmpp_2m_sde").fn(
            DEN, x, sigmas=GRID, noise=nz.z, eta=eta, solver_type=solver_type, S_noise=0.99
        ),
        kd_dpmpp_2m_sde(x, GRID, nz, eta=eta, solver_type=solver_type, s_noise=0.99),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_dpmpp_3m_sde(eta):
    x, nz = start(), StepNoise(GRID)
    np.testing.assert_allclose(
        get_sampler("karras_dpmpp_3m_sde").fn(
            DEN, x, sigmas=GRID, noise=nz.z, eta=eta, d2_scale="dpm_solver"
        ),
        kd_dpmpp_3m_sde(x, GRID, nz, eta=eta),
        rtol=1e-12,
        atol=1e-12,
    )
    # the default third-order D2 is a different update (2 x the second-difference term)
    assert not np.allclose(
        get_sampler("karras_dpmpp_3m_sde").fn(DEN, x, sigmas=GRID, noise=nz.z, eta=eta),
        kd_dpmpp_3m_sde(x, GRID, nz, eta=eta),
        rtol=1e-9,
    )


@pytest.mark.parametrize("order", [4, 2, 3])
def test_lms(order):
    pytest.importorskip("scipy", reason="k-diffusion's LMS weights come from scipy.integrate.quad")
    x = start()
    np.testing.assert_allclose(
        get_sampler("karras_lms").fn(DEN, x, sigmas=GRID, order=order),
        kd_lms(x, GRID, order=order),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("nfe", [5, 6, 7, 12])
def test_dpm_fast(nfe):
    x = start()
    kd = KDDPMSolver()
    ref = kd.dpm_solver_fast(x, kd.t(10.0), kd.t(0.03), nfe)
    got = get_sampler("karras_dpm_fast").fn(DEN, x, sigmas=[10.0, 0.03], nfe=nfe)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)
    assert kd.nfe == nfe


def test_dpm_fast_ancestral():
    x = start()
    kd = KDDPMSolver()
    nz = StepNoise(list(np.exp(-np.linspace(kd.t(10.0), kd.t(0.03), 4))))
    ref = kd.dpm_solver_fast(x, kd.t(10.0), kd.t(0.03), 9, eta=0.8, s_noise=1.02, noise_sampler=nz)
    got = get_sampler("karras_dpm_fast").fn(
        DEN, x, sigmas=[10.0, 0.03], nfe=9, noise=nz.z, eta=0.8, S_noise=1.02
    )
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    "order,rtol,pid",
    [(3, 0.05, (0.0, 1.0, 0.0)), (2, 0.01, (0.0, 1.0, 0.0)), (3, 0.005, (0.3, 0.5, 0.1))],
)
def test_dpm_adaptive(order, rtol, pid):
    x = start()
    kd = KDDPMSolver()
    ref, info_ref = kd.dpm_solver_adaptive(
        x,
        kd.t(10.0),
        kd.t(0.03),
        order=order,
        rtol=rtol,
        atol=rtol / 6,
        pcoeff=pid[0],
        icoeff=pid[1],
        dcoeff=pid[2],
    )
    got, info = get_sampler("karras_dpm_adaptive").fn(
        DEN,
        x,
        sigmas=[10.0, 0.03],
        order=order,
        rtol=rtol,
        atol=rtol / 6,
        pcoeff=pid[0],
        icoeff=pid[1],
        dcoeff=pid[2],
        return_info=True,
    )
    assert (info["n_accept"], info["n_reject"]) == (info_ref["n_accept"], info_ref["n_reject"])
    assert info["nfe"] == kd.nfe
    # the error estimate is a difference of nearby solutions: refdiff's first-order stages are
    # written without cancelling x against ε̂, which moves E (and the steps) at ~1e-12 relative
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# diffusers' DPMSolverSDEScheduler (k-diffusion's dpmpp_sde, η = 1, r = 1/2), live
# --------------------------------------------------------------------------------------------


def test_diffusers_dpm_solver_sde_scheduler(monkeypatch):
    pytest.importorskip("diffusers", reason="diffusers is the live peer of this row")
    torch = pytest.importorskip("torch", reason="diffusers schedulers run on torch")
    # The module imports torchsde at the top for its default Brownian tree; the test replaces the
    # scheduler's noise_sampler, so an empty stand-in module is enough to import it.
    if "torchsde" not in sys.modules:
        monkeypatch.setitem(sys.modules, "torchsde", types.ModuleType("torchsde"))
    from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler

    sched = DPMSolverSDEScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    sched.set_timesteps(8)
    sig = sched.sigmas.double().numpy()
    grid = [float(s) for s in sig[0::2]] + [0.0]
    mids = [
        math.exp(-0.5 * (-math.log(s) - math.log(sn)))
        for s, sn in zip(grid[:-1], grid[1:])
        if sn > 0
    ]
    path = BrownianPath(grid[:-1] + mids)
    sched.noise_sampler = lambda a, b: torch.from_numpy(path(float(a), float(b)))

    x0 = start(3, grid[0])
    x = torch.from_numpy(x0.copy())
    for t in sched.timesteps:
        sigma_in = (
            float(sched.sigmas[sched.step_index or 0])
            if sched.state_in_first_order
            else float(sched.mid_point_sigma)
        )
        scaled = sched.scale_model_input(x, t)
        xs = scaled.numpy() * math.sqrt(sigma_in**2 + 1.0)  # back on the σ scale
        eps = (xs - model(xs, sigma_in)) / sigma_in
        x = sched.step(torch.from_numpy(eps), t, x).prev_sample
    got = get_sampler("karras_dpmpp_sde").fn(
        DEN, x0, sigmas=grid, noise=dpmpp_sde_draws(path, grid)
    )
    np.testing.assert_allclose(
        x.double().numpy(), got, rtol=1e-6, atol=1e-6
    )  # measured 1.2e-7 (float32 σ)
