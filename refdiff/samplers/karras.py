"""Karras/EDM samplers on the variance-exploding scale x = x0 + σ z: Euler, Heun, churn, ancestral.

Karras, Aittala, Aila & Laine (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models" (arXiv:2206.00364v2): the probability-flow ODE dx/dσ = (x - D(x; σ))/σ (Eqs. 1 and 3
with σ(t) = t, s(t) = 1), Algorithm 1 (deterministic Heun), Algorithm 2 (stochastic "churn" sampler
with S_churn, S_tmin, S_tmax, S_noise). The Euler-ancestral sampler is k-diffusion's
``sample_euler_ancestral`` (Crowson 2022): a DDIM step with η (Song et al. 2021a, Eq. 16)
written on the σ scale.

Family ``"karras"``: ``fn(denoiser, x, *, sigmas, noise=None, **options)``. ``denoiser(x, σ)``
returns D(x; σ) ≈ E[x0 | x] shaped like x, with σ an array of shape (B,) in x's namespace,
dtype and device. ``sigmas`` is a strictly decreasing grid (a sequence or 1-D array; its entries
are read once to host floats, so every step coefficient is formed in float64); the last entry
may be 0. ``noise[i]`` (or ``noise(i)``) is the standard-normal draw of step i; a step that adds
no noise draws nothing, so the draw index is always the step index.
"""

from __future__ import annotations

import math
from typing import Callable

from .._errors import check_real, fail
from .._xp import array_namespace, device_of
from . import register_sampler
from ._common import call_progress, check_decreasing, check_eta, check_output, draw_noise

__all__ = [
    "to_d", "karras_euler_step", "karras_heun_step", "churn_gamma", "churn_step",
    "ancestral_sigmas", "euler_ancestral_step", "sample_karras_euler", "sample_karras_heun",
    "sample_karras_euler_churn", "sample_karras_heun_churn", "sample_karras_euler_ancestral",
    "EDM_CHURN_DEFAULTS",
]

#: The stochastic-sampler settings of the registered ``*_churn`` samplers: S_churn = 40 (Karras
#: et al. 2022, Table 5, ImageNet-64) with k-diffusion's defaults for the rest (S_tmin = 0,
#: S_tmax = ∞, S_noise = 1), so the churn is active at every step.
EDM_CHURN_DEFAULTS = {"S_churn": 40.0, "S_tmin": 0.0, "S_tmax": math.inf, "S_noise": 1.0}


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------

def _sigma_list(sigmas) -> list[float]:
    """The σ grid as host floats: strictly decreasing, finite, last entry >= 0."""
    try:
        values = [float(s) for s in sigmas]
    except TypeError:
        fail("sigmas", sigmas, "expected a 1-D sequence or array of noise levels")
    check_decreasing("sigmas", values)
    if values[-1] < 0.0:
        fail("sigmas", values, "noise levels must be >= 0 (only the last entry may be 0)")
    return values


def _check_x(x) -> None:
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")


def _denoise(denoiser: Callable, x, sigma: float):
    """D(x; σ) with σ broadcast to shape (B,) in x's namespace, dtype and device; shape-checked."""
    xp = array_namespace(x)
    s = xp.full((x.shape[0],), sigma, dtype=x.dtype, device=device_of(x))
    return check_output(denoiser(x, s), x, name="denoiser output")


# --------------------------------------------------------------------------------------------
# Step functions
# --------------------------------------------------------------------------------------------

def to_d(x, sigma: float, denoised):
    """The ODE derivative dx/dσ = (x - D(x; σ))/σ (Karras et al. 2022, Eqs. 1 and 3 with σ(t) = t)."""
    return (x - denoised) / sigma


def karras_euler_step(x, sigma: float, sigma_next: float, denoised):
    """Euler step x' = x + (σ' - σ)(x - D)/σ = D + (σ'/σ)(x - D) (Karras et al. 2022, Alg. 1 line 5).

    The second form is the same number with σ' = 0 giving D exactly (the final denoising step).
    """
    return denoised + (sigma_next / sigma) * (x - denoised)


def karras_heun_step(denoiser: Callable, x, sigma: float, sigma_next: float, *, denoised=None):
    """Heun step (Karras et al. 2022, Alg. 1 lines 5-8): Euler, then the trapezoidal correction if σ' > 0.

    Returns (x_next, number of denoiser evaluations made).
    """
    n_eval = 0
    if denoised is None:
        denoised = _denoise(denoiser, x, sigma)
        n_eval += 1
    x_euler = karras_euler_step(x, sigma, sigma_next, denoised)
    if sigma_next == 0.0:
        return x_euler, n_eval
    d = to_d(x, sigma, denoised)
    d_next = to_d(x_euler, sigma_next, _denoise(denoiser, x_euler, sigma_next))
    return x + (sigma_next - sigma) * 0.5 * (d + d_next), n_eval + 1


def churn_gamma(sigma: float, num_steps: int, *, S_churn: float, S_tmin: float,
                S_tmax: float) -> float:
    """γ_i = min(S_churn/N, √2 - 1) if S_tmin ≤ σ_i ≤ S_tmax, else 0 (Karras et al. 2022, Alg. 2 line 4)."""
    if S_churn == 0.0 or not (S_tmin <= sigma <= S_tmax):
        return 0.0
    return min(S_churn / num_steps, math.sqrt(2.0) - 1.0)


def churn_step(x, sigma: float, gamma: float, *, noise, S_noise: float = 1.0):
    """x̂ = x + √(σ̂² - σ²) S_noise ε with σ̂ = σ(1 + γ) (Karras et al. 2022, Alg. 2 lines 5-6).

    √(σ̂² - σ²) is formed as σ √(γ(2 + γ)) (no cancellation). Returns (x̂, σ̂).
    """
    sigma_hat = sigma * (1.0 + gamma)
    return x + (sigma * math.sqrt(gamma * (2.0 + gamma)) * S_noise) * noise, sigma_hat


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) with σ_up = min(σ', η σ' √(σ² - σ'²)/σ), σ_down = √(σ'² - σ_up²) (k-diffusion get_ancestral_step).

    σ_up² is the DDPM posterior variance on the σ scale (Ho et al. 2020, Eq. 7) times η²
    (DDIM, Song et al. 2021a, Eq. 16); σ_down² + σ_up² = σ'². Differences of squares are formed
    as products of sums and differences. At η = 1, σ_down = σ'²/σ.
    """
    eta = check_eta(eta)
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * sigma_next * math.sqrt((sigma - sigma_next) * (sigma + sigma_next)) / sigma)
    down = math.sqrt((sigma_next - up) * (sigma_next + up))
    return down, up


def euler_ancestral_step(x, sigma: float, sigma_next: float, denoised, *, eta: float = 1.0,
                         noise=None, S_noise: float = 1.0):
    """Euler step to σ_down, then add σ_up S_noise ε (k-diffusion sample_euler_ancestral; DDIM-η on the σ scale).

    No noise is added (and ``noise`` may be None) when σ_up = 0, e.g. at σ' = 0 or η = 0.
    """
    down, up = ancestral_sigmas(sigma, sigma_next, eta)
    x = karras_euler_step(x, sigma, down, denoised)
    if up > 0.0:
        if noise is None:
            fail("noise", noise, "this step adds noise (σ_up > 0): pass a standard-normal draw")
        x = x + (up * S_noise) * noise
    return x


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------

def _check_churn(S_churn, S_tmin, S_tmax, S_noise) -> tuple[float, float, float, float]:
    S_churn = check_real("S_churn", S_churn, lo=0.0)
    S_tmin = check_real("S_tmin", S_tmin, lo=0.0)
    try:
        tmax = float(S_tmax)
    except (TypeError, ValueError):
        fail("S_tmax", S_tmax, "expected a real number >= S_tmin (inf allowed)")
    if math.isnan(tmax) or tmax < S_tmin:
        fail("S_tmax", S_tmax, f"expected a value >= S_tmin = {S_tmin!r} (inf allowed)")
    S_noise = check_real("S_noise", S_noise, lo=0.0)
    return S_churn, S_tmin, tmax, S_noise


def _karras_loop(denoiser, x, sigmas, noise, S_churn, S_tmin, S_tmax, S_noise, progress, heun):
    _check_x(x)
    sig = _sigma_list(sigmas)
    S_churn, S_tmin, S_tmax, S_noise = _check_churn(S_churn, S_tmin, S_tmax, S_noise)
    n = len(sig) - 1
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        gamma = churn_gamma(sigma, n, S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax)
        if gamma > 0.0:
            x, sigma = churn_step(x, sigma, gamma, noise=draw_noise(noise, i, x), S_noise=S_noise)
        if heun:
            x, _ = karras_heun_step(denoiser, x, sigma, sigma_next)
        else:
            x = karras_euler_step(x, sigma, sigma_next, _denoise(denoiser, x, sigma))
        call_progress(progress, i + 1, n)
    return x


@register_sampler("karras_euler", family="karras", stochastic=False, order=1,
                  step=karras_euler_step)
def sample_karras_euler(denoiser: Callable, x, *, sigmas, noise=None, S_churn: float = 0.0,
                        S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
                        progress: Callable | None = None):
    """Euler steps on the probability-flow ODE in σ, with optional churn (Karras et al. 2022, Alg. 2 with Euler steps).

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, sigma) -> D(x; σ)`` with ``sigma`` of shape (B,).
    x : array
        Starting sample at σ_0 = ``sigmas[0]`` (e.g. σ_max · standard normal), batch axis first.
    sigmas : sequence or 1-D array
        Strictly decreasing noise levels σ_0 > ... > σ_N >= 0 (N steps).
    noise : array or callable, optional
        Standard-normal draws, ``noise[i]`` used at step i when its churn γ_i > 0; needed only
        when ``S_churn > 0``.
    S_churn, S_tmin, S_tmax, S_noise : float
        Churn: γ_i = min(S_churn/N, √2 - 1) on steps with S_tmin ≤ σ_i ≤ S_tmax; the added noise
        is scaled by S_noise. Defaults (0, 0, ∞, 1) give the deterministic Euler sampler.
    progress : callable, optional
        ``progress(i, N)`` after each step.

    Returns
    -------
    array
        The sample at σ_N.
    """
    return _karras_loop(denoiser, x, sigmas, noise, S_churn, S_tmin, S_tmax, S_noise, progress,
                        heun=False)


@register_sampler("karras_heun", family="karras", stochastic=False, order=2,
                  step=karras_heun_step)
def sample_karras_heun(denoiser: Callable, x, *, sigmas, noise=None, S_churn: float = 0.0,
                       S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
                       progress: Callable | None = None):
    """Heun's 2nd-order sampler (Karras et al. 2022, Alg. 1), with optional churn (Alg. 2).

    Same parameters as :func:`sample_karras_euler`. The last step to σ_N = 0 is an Euler step
    (Alg. 1 line 7: the correction needs σ_{i+1} ≠ 0), so N steps cost 2N - 1 evaluations when
    σ_N = 0 and 2N otherwise.
    """
    return _karras_loop(denoiser, x, sigmas, noise, S_churn, S_tmin, S_tmax, S_noise, progress,
                        heun=True)


@register_sampler("karras_euler_churn", family="karras", stochastic=True, step=churn_step)
def sample_karras_euler_churn(denoiser: Callable, x, *, sigmas, noise=None,
                              S_churn: float = EDM_CHURN_DEFAULTS["S_churn"],
                              S_tmin: float = EDM_CHURN_DEFAULTS["S_tmin"],
                              S_tmax: float = EDM_CHURN_DEFAULTS["S_tmax"],
                              S_noise: float = EDM_CHURN_DEFAULTS["S_noise"],
                              progress: Callable | None = None):
    """Stochastic Euler sampler (Karras et al. 2022, Alg. 2 with Euler steps), churn on by default (S_churn = 40)."""
    return _karras_loop(denoiser, x, sigmas, noise, S_churn, S_tmin, S_tmax, S_noise, progress,
                        heun=False)


@register_sampler("karras_heun_churn", family="karras", stochastic=True, step=churn_step)
def sample_karras_heun_churn(denoiser: Callable, x, *, sigmas, noise=None,
                             S_churn: float = EDM_CHURN_DEFAULTS["S_churn"],
                             S_tmin: float = EDM_CHURN_DEFAULTS["S_tmin"],
                             S_tmax: float = EDM_CHURN_DEFAULTS["S_tmax"],
                             S_noise: float = EDM_CHURN_DEFAULTS["S_noise"],
                             progress: Callable | None = None):
    """Stochastic Heun sampler (Karras et al. 2022, Alg. 2), churn on by default (S_churn = 40)."""
    return _karras_loop(denoiser, x, sigmas, noise, S_churn, S_tmin, S_tmax, S_noise, progress,
                        heun=True)


@register_sampler("karras_euler_ancestral", family="karras", stochastic=True,
                  step=euler_ancestral_step)
def sample_karras_euler_ancestral(denoiser: Callable, x, *, sigmas, noise=None, eta: float = 1.0,
                           S_noise: float = 1.0, progress: Callable | None = None):
    """Ancestral Euler sampler with η (k-diffusion sample_euler_ancestral; DDIM-η, Song et al. 2021a, Eq. 16, on the σ scale).

    Parameters
    ----------
    denoiser, x, sigmas, progress
        As in :func:`sample_karras_euler`.
    noise : array or callable
        ``noise[i]`` is drawn at step i whenever σ_up > 0 (never at a final σ_N = 0, nor when η = 0).
    eta : float
        η ≥ 0: 1 is the DDPM posterior variance (ancestral sampling), 0 the deterministic Euler
        sampler.
    S_noise : float
        Scale of the added noise (k-diffusion's ``s_noise``).
    """
    _check_x(x)
    sig = _sigma_list(sigmas)
    eta = check_eta(eta)
    S_noise = check_real("S_noise", S_noise, lo=0.0)
    n = len(sig) - 1
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _, up = ancestral_sigmas(sigma, sigma_next, eta)
        z = draw_noise(noise, i, x) if up > 0.0 else None
        x = euler_ancestral_step(x, sigma, sigma_next, denoised, eta=eta, noise=z, S_noise=S_noise)
        call_progress(progress, i + 1, n)
    return x


#: Deprecated name (one release) of :func:`sample_karras_euler_ancestral`.
sample_euler_ancestral = sample_karras_euler_ancestral
