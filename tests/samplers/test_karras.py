"""Karras/EDM samplers (Euler, Heun, churn, Euler ancestral) against exact laws on analytic data.

References used here, independent of the code under test:
* the exact probability-flow solution on the VE scale for Gaussian data N(μ, Σ):
  x(σ') = μ + √((Σ + σ'²I)(Σ + σ²I)⁻¹)(x(σ) - μ), written with NumPy's eigh below;
* point-mass data (Σ = 0), for which D(x; σ) = μ and every sampler here is exact (in law for
  the stochastic ones: x_σ ~ N(μ, σ²I) at every σ of the grid);
* Monte Carlo with stated 5-standard-error bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff.edm import karras_sigmas
from refdiff.samplers import get_sampler
from refdiff.samplers import karras as K

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
POINT = A.GaussianData(MU, np.zeros((2, 2)))


def exact_flow_map(sigma_from: float, sigma_to: float):
    """(M, c) of the exact VE probability-flow map x -> M x + c for DATA (commuting square roots)."""
    w, U = np.linalg.eigh(COV)
    M = U @ np.diag(np.sqrt((w + sigma_to**2) / (w + sigma_from**2))) @ U.T
    return M, MU - M @ MU


def ve_marginal(sigma: float):
    return MU, COV + sigma**2 * np.eye(2)


def slope(steps, errors, last=3):
    return -np.polyfit(np.log(steps[-last:]), np.log(errors[-last:]), 1)[0]


# --------------------------------------------------------------------------------------------
# Step functions
# --------------------------------------------------------------------------------------------


def test_euler_step_is_the_ode_step():
    """x + (σ' - σ)(x - D)/σ, the Euler step of dx/dσ = (x - D)/σ, including σ' = 0 -> D exactly."""
    rng = np.random.default_rng(0)
    x, d = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    out = K.karras_euler_step(x, 2.5, 0.7, d)
    np.testing.assert_allclose(out, x + (0.7 - 2.5) * (x - d) / 2.5, rtol=1e-14, atol=1e-14)
    assert np.array_equal(K.karras_euler_step(x, 2.5, 0.0, d), d)


def test_heun_step_local_error_is_third_order():
    """One Heun step from the exact x(σ) has local error O(h³) (Karras et al. 2022, Alg. 1)."""
    D = A.karras_denoiser(DATA)
    x0 = np.array([[1.0, 2.0], [-3.0, 0.5]])
    sigma = 2.0
    errs_h, errs_e = [], []
    hs = [0.1, 0.05, 0.025, 0.0125]
    for h in hs:
        M, c = exact_flow_map(sigma, sigma - h)
        exact = x0 @ M.T + c
        heun, n_eval = K.karras_heun_step(D, x0, sigma, sigma - h)
        assert n_eval == 2
        errs_h.append(np.abs(heun - exact).max())
        errs_e.append(
            np.abs(
                K.karras_euler_step(x0, sigma, sigma - h, D(x0, np.full(2, sigma))) - exact
            ).max()
        )
    assert abs(np.polyfit(np.log(hs), np.log(errs_h), 1)[0] - 3.0) < 0.15  # error ∝ h³
    assert abs(np.polyfit(np.log(hs), np.log(errs_e), 1)[0] - 2.0) < 0.15  # Euler: ∝ h²


def test_churn_gamma_and_step():
    """γ = min(S_churn/N, √2 - 1) inside [S_tmin, S_tmax], 0 outside; σ̂ = σ(1+γ), noise √(σ̂² - σ²) S_noise z."""
    assert K.churn_gamma(1.0, 10, S_churn=2.0, S_tmin=0.0, S_tmax=math.inf) == pytest.approx(0.2)
    assert K.churn_gamma(1.0, 10, S_churn=80.0, S_tmin=0.0, S_tmax=math.inf) == pytest.approx(
        math.sqrt(2) - 1
    )
    assert K.churn_gamma(1.0, 10, S_churn=80.0, S_tmin=1.5, S_tmax=math.inf) == 0.0
    assert K.churn_gamma(1.0, 10, S_churn=80.0, S_tmin=0.0, S_tmax=0.5) == 0.0
    z = np.ones((1, 2))
    x_hat, s_hat = K.churn_step(np.zeros((1, 2)), 2.0, 0.25, noise=z, S_noise=1.5)
    assert s_hat == 2.5
    np.testing.assert_allclose(x_hat, math.sqrt(2.5**2 - 2.0**2) * 1.5 * z, rtol=1e-15)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ancestral_sigmas(eta):
    """σ_down² + σ_up² = σ'² and σ_up = η × the DDPM posterior std σ'√(σ² - σ'²)/σ (capped at σ')."""
    sigma, nxt = 3.0, 1.2
    down, up = K.ancestral_sigmas(sigma, nxt, eta)
    assert down**2 + up**2 == pytest.approx(nxt**2, rel=1e-14)
    assert up == pytest.approx(
        min(nxt, eta * math.sqrt(nxt**2 * (sigma**2 - nxt**2) / sigma**2)), rel=1e-14
    )
    if eta == 1.0:
        assert down == pytest.approx(nxt**2 / sigma, rel=1e-14)
    assert K.ancestral_sigmas(sigma, 0.0, eta) == (0.0, 0.0)


# --------------------------------------------------------------------------------------------
# Exactness on point-mass data (any number of steps)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["karras_euler", "karras_heun"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_deterministic_exact_on_point_mass(name, n):
    """D = μ: the flow x(σ') = μ + (σ'/σ)(x - μ) is reproduced exactly for any grid."""
    fn = get_sampler(name).fn
    sig = karras_sigmas(n + 1, 0.3, 20.0, append_zero=False)
    x = np.array([[3.0, -7.0], [0.1, 0.2]])
    out = fn(A.karras_denoiser(POINT), x, sigmas=sig)
    np.testing.assert_allclose(out, MU + (sig[-1] / sig[0]) * (x - MU), rtol=1e-13, atol=1e-13)
    out0 = fn(A.karras_denoiser(POINT), x, sigmas=karras_sigmas(n, 0.3, 20.0))  # ends at σ = 0
    np.testing.assert_allclose(out0, np.broadcast_to(MU, x.shape), rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("karras_euler_churn", {}),
        ("karras_heun_churn", {}),
        ("karras_euler_ancestral", {}),
        ("karras_euler_ancestral", {"eta": 0.5}),
        ("karras_euler", {"S_churn": 1.0, "S_tmin": 1.0, "S_tmax": 10.0}),
    ],
)
def test_stochastic_exact_in_law_on_point_mass(name, kwargs):
    """Starting from N(μ, σ_0²I), the output law is N(μ, σ_N²I) exactly (churn and ancestral noise included)."""
    fn = get_sampler(name).fn
    n = 6
    sig = karras_sigmas(n + 1, 0.2, 15.0, append_zero=False)
    D = A.karras_denoiser(POINT)
    law = A.linear_sampler_law(
        lambda xT, nz: fn(D, xT, sigmas=sig, noise=nz, **kwargs),
        MU,
        sig[0] ** 2 * np.eye(2),
        dim=2,
        n_noise=n,
    )
    np.testing.assert_allclose(law.mean, MU, rtol=0, atol=1e-12)
    np.testing.assert_allclose(law.cov, sig[-1] ** 2 * np.eye(2), rtol=1e-11, atol=1e-14)


def test_euler_ancestral_to_zero_gives_the_point():
    """With a final σ = 0 the last ancestral step adds no noise and lands on μ."""
    sig = karras_sigmas(4, 0.2, 15.0)
    seen = []

    def noise(i):
        seen.append(i)
        return np.ones((2, 2))

    out = K.sample_euler_ancestral(
        A.karras_denoiser(POINT), np.ones((2, 2)) * 9.0, sigmas=sig, noise=noise
    )
    np.testing.assert_allclose(out, np.broadcast_to(MU, (2, 2)), atol=1e-13)
    assert seen == [0, 1, 2]  # no draw at the step to σ = 0


def test_churn_reads_noise_only_on_churned_steps():
    """Steps outside [S_tmin, S_tmax] (γ = 0) read no noise (k-diffusion draws at every step)."""
    sig = karras_sigmas(6, 0.1, 10.0, append_zero=False)
    seen = []

    def noise(i):
        seen.append(i)
        return np.zeros((1, 2))

    K.sample_karras_heun(
        A.karras_denoiser(DATA),
        np.ones((1, 2)),
        sigmas=sig,
        noise=noise,
        S_churn=3.0,
        S_tmin=0.5,
        S_tmax=5.0,
    )
    expected = [i for i in range(len(sig) - 1) if 0.5 <= sig[i] <= 5.0]
    assert seen == expected and 0 < len(expected) < len(sig) - 1


# --------------------------------------------------------------------------------------------
# Convergence in law on Gaussian data
# --------------------------------------------------------------------------------------------


def law_error(fn, n, **kwargs):
    sig = karras_sigmas(n + 1, 0.05, 10.0, append_zero=False)
    D = A.karras_denoiser(DATA)
    law = A.linear_sampler_law(
        lambda xT, nz: fn(D, xT, sigmas=sig, noise=nz, **kwargs),
        *ve_marginal(10.0),
        dim=2,
        n_noise=n,
    )
    m, C = ve_marginal(0.05)
    return max(np.abs(law.mean - m).max(), np.abs(law.cov - C).max())


@pytest.mark.parametrize(
    "name,kwargs,order",
    [
        ("karras_euler_ancestral", {}, 1.0),
        ("karras_euler_churn", {"S_churn": 5.0}, 1.0),
        ("karras_heun_churn", {"S_churn": 5.0}, 2.0),
    ],
)
def test_stochastic_samplers_converge_in_law(name, kwargs, order):
    """The exact output law approaches the true marginal N(μ, Σ + σ_N²I) with the sampler's order."""
    fn = get_sampler(name).fn
    steps = [40, 80, 160]
    errs = [law_error(fn, n, **kwargs) for n in steps]
    assert errs[0] > errs[1] > errs[2]
    assert abs(slope(steps, errs) - order) < 0.15, errs


def test_euler_ancestral_monte_carlo_matches_exact_law():
    """Monte Carlo (M = 4000 seeded runs) against the exact law, 5-standard-error bounds.

    Mean: |m̂ - m| < 5 √(C_ii/M). Covariance entries: |Ĉ_ij - C_ij| < 5 √((C_ii C_jj + C_ij²)/M)
    (the Gaussian standard error of a sample covariance).
    """
    n, M = 8, 4000
    sig = karras_sigmas(n + 1, 0.1, 10.0, append_zero=False)
    D = A.karras_denoiser(DATA)
    fn = K.sample_euler_ancestral
    law = A.linear_sampler_law(
        lambda xT, nz: fn(D, xT, sigmas=sig, noise=nz), *ve_marginal(10.0), dim=2, n_noise=n
    )
    rng = np.random.default_rng(2024)
    m_T, C_T = ve_marginal(10.0)
    xT = m_T + rng.standard_normal((M, 2)) @ np.linalg.cholesky(C_T).T
    out = fn(D, xT, sigmas=sig, noise=rng.standard_normal((n, M, 2)))
    m_hat, C_hat = out.mean(axis=0), np.cov(out.T)
    C = law.cov
    assert np.all(np.abs(m_hat - law.mean) < 5 * np.sqrt(np.diag(C) / M))
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / M)
    assert np.all(np.abs(C_hat - C) < 5 * se)


def test_runs_on_array_api_strict():
    """The loops are array-API code: array_api_strict gives the NumPy numbers."""
    xs = pytest.importorskip("array_api_strict")
    sig = karras_sigmas(5, 0.05, 10.0)
    x = np.array([[1.0, 2.0], [-3.0, 0.5]])
    nz = np.random.default_rng(0).standard_normal((5, 2, 2))
    D = A.karras_denoiser(DATA)
    for name in ["karras_euler", "karras_heun", "karras_heun_churn", "karras_euler_ancestral"]:
        fn = get_sampler(name).fn
        ref = fn(D, x, sigmas=sig, noise=nz)
        got = fn(D, xs.asarray(x), sigmas=sig, noise=xs.asarray(nz))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-15, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Per-step callback
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["karras_euler", "karras_heun", "karras_euler_ancestral"])
def test_callback_reports_sigma_state_and_denoised(name):
    """callback(info) before each step: i, n, the state x_i, D(x_i; σ_i) and σ_i; progress(i + 1, n)."""
    D = A.karras_denoiser(DATA)
    sig = karras_sigmas(5, 0.01, 20.0)
    x = np.random.default_rng(5).standard_normal((3, 2)) * 20.0
    infos, prog = [], []
    noise = np.random.default_rng(6).standard_normal((5, 3, 2))
    out = get_sampler(name).fn(
        D,
        x,
        sigmas=sig,
        noise=noise,
        callback=infos.append,
        progress=lambda i, n: prog.append((i, n)),
    )
    assert [(f.i, f.n) for f in infos] == [(i, 5) for i in range(5)] and prog == [
        (i + 1, 5) for i in range(5)
    ]
    assert infos[0].x is x and infos[0]["sigma"] == float(sig[0])
    for f in infos:
        np.testing.assert_allclose(f.denoised, D(f.x, np.full(3, f.sigma)), rtol=1e-15)
        assert f.t is None
    np.testing.assert_allclose([f.sigma for f in infos], sig[:-1], rtol=0)
    # the next report's state is where the previous step went
    again = get_sampler(name).fn(D, infos[-1].x, sigmas=sig[-2:], noise=noise[-1:])
    np.testing.assert_allclose(again, out, rtol=1e-14)


def test_callback_with_churn_reports_sigma_hat():
    """With churn the denoiser sees x̂ at σ̂ = σ(1 + γ); that pair is what the callback reports (k-diffusion's sigma_hat)."""
    D = A.karras_denoiser(DATA)
    sig = karras_sigmas(4, 0.01, 20.0)
    infos = []
    K.sample_karras_euler_churn(
        D, np.ones((1, 2)), sigmas=sig, noise=np.zeros((4, 1, 2)), callback=infos.append
    )
    gamma = min(40.0 / 4, math.sqrt(2) - 1)
    np.testing.assert_allclose([f.sigma for f in infos], sig[:-1] * (1 + gamma), rtol=1e-15)


def test_check_finite_stops_at_the_first_nan_step():
    from refdiff._errors import RefdiffValueError
    from refdiff.samplers import check_finite

    def den(x, s):
        return np.where(s[:, None] < 1.0, np.nan, 0.0) * x

    with pytest.raises(
        RefdiffValueError,
        match=r"non-finite values in the x0 prediction \(denoised\) at step 3 of 6",
    ):
        K.sample_karras_euler(
            den, np.ones((2, 2)), sigmas=karras_sigmas(6, 0.01, 20.0), callback=check_finite()
        )
    # Heun evaluates at σ_3 inside step 2, so the state is already non-finite when step 3 starts
    with pytest.raises(RefdiffValueError, match=r"non-finite values in the state x at step 3 of 6"):
        K.sample_karras_heun(
            den, np.ones((2, 2)), sigmas=karras_sigmas(6, 0.01, 20.0), callback=check_finite()
        )
