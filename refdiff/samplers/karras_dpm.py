"""k-diffusion's DPM-Solver-type samplers on the variance-exploding σ scale x = x0 + σ z.

The samplers of k-diffusion (Crowson 2022) that combine the Karras et al. (2022) σ grid with the
exponential integrators of DPM-Solver (Lu et al. 2022a, arXiv:2206.00927) and DPM-Solver++ (Lu et
al. 2022b, arXiv:2211.01095), written for the Karras family. On this scale α = 1, σ_t = σ and the
half log-SNR is λ = -log σ ("t" in k-diffusion), so with h = λ' - λ = log(σ/σ') the data form of
the exact solution of the probability-flow ODE is x' = (σ'/σ) x + σ' ∫_λ^λ' e^{u} D du (Lu et al.
2022b, Eq. 9 with α = 1), and its noise form x' = x - σ' ∫_λ^λ' e^{λ'-u} ε̂ du with
ε̂ = (x - D)/σ (2022a, Eq. 3.4 with α = 1).

Family ``"karras"``: ``fn(denoiser, x, *, sigmas, noise=None, callback=None, progress=None,
**options)`` with ``denoiser(x, σ) -> D(x; σ)`` and σ of shape (B,). ``sigmas`` is a strictly
decreasing grid read once to host floats (every step coefficient is formed from them in float64
before the loop); its last entry may be 0. Noise: ``noise`` is an array of standard-normal draws
with the draw index first, or a callable ``noise(i)``; each sampler states which draw it reads at
which step, and a step that adds no noise reads none.

Registered here: ``karras_dpm_2``, ``karras_dpm_2_ancestral``, ``karras_dpmpp_2s_ancestral``,
``karras_dpmpp_sde``, ``karras_dpmpp_2m_sde``, ``karras_dpmpp_3m_sde``, ``karras_lms``,
``karras_dpm_fast`` and ``karras_dpm_adaptive`` (k-diffusion's ``sample_dpm_2``, ...,
``sample_dpm_adaptive``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._errors import check_choice, check_int, check_real, fail
from .._typing import Array, Noise
from .._xp import array_namespace
from . import register_sampler
from ._common import (
    StepInfo,
    check_eta,
    draw_noise,
    step_reporter,
)
from .dpm_solver import D2_SCALES, phi_2, phi_3, singlestep_orders
from .karras import _check_x as _check_batched
from .karras import (
    _denoise,
    _sigma_list,
    ancestral_sigmas,
    churn_gamma,
    churn_step,
    karras_euler_step,
)

__all__ = [
    "dpm_2_step",
    "dpmpp_2s_step",
    "dpmpp_sde_coefficients",
    "dpmpp_sde_step",
    "dpmpp_multistep_sde_coefficients",
    "dpmpp_multistep_sde_step",
    "lms_coefficients",
    "lms_step",
    "dpm_solver_step_coefficients",
    "dpm_solver_k_step",
    "PIDStepSizeController",
    "SDE_SOLVER_TYPES",
    "NOISE_COUPLINGS",
    "sample_karras_dpm_2",
    "sample_karras_dpm_2_ancestral",
    "sample_karras_dpmpp_2s_ancestral",
    "sample_karras_dpmpp_sde",
    "sample_karras_dpmpp_2m_sde",
    "sample_karras_dpmpp_3m_sde",
    "sample_karras_lms",
    "sample_karras_dpm_fast",
    "sample_karras_dpm_adaptive",
]

#: k-diffusion's ``solver_type`` of sample_dpmpp_2m_sde: the second-order term by the midpoint
#: rule (½ φ1 D1) or by the exact φ2 integral ("heun").
SDE_SOLVER_TYPES = ("midpoint", "heun")
#: How karras_dpmpp_sde turns its two draws per step into the two noise increments: "brownian"
#: (the correlated increments of one Brownian path, k-diffusion's BrownianTreeNoiseSampler) or
#: "independent" (k-diffusion with a noise_sampler that draws afresh at every call).
NOISE_COUPLINGS = ("brownian", "independent")


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _check_x(x: Array) -> None:
    _check_batched(x)
    if not callable(getattr(x, "__add__", None)):
        fail("x", x, "expected an array")


def _check_denoiser(denoiser: object) -> None:
    if not callable(denoiser):
        fail("denoiser", denoiser, "expected a callable denoiser(x, sigma) -> D(x; σ)")


def _s_noise(S_noise: float) -> float:
    return check_real("S_noise", S_noise, lo=0.0)


# --------------------------------------------------------------------------------------------
# Step functions (host-float coefficients in, array arithmetic only)
# --------------------------------------------------------------------------------------------


def dpm_2_step(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    sigma: float,
    sigma_next: float,
    denoised: Array,
) -> Array:
    """DPM-Solver-2 in σ (k-diffusion sample_dpm_2): Euler to σ_mid = √(σσ'), then x' = x + (σ' - σ)(x_2 - D(x_2; σ_mid))/σ_mid.

    σ_mid is the midpoint in log σ (Lu et al. 2022a, Alg. 1 with r1 = 1/2 in λ = -log σ); the
    derivative is the ODE's dx/dσ = (x - D)/σ (Karras et al. 2022, Eq. 3). At σ' = 0 it is the
    Euler step, which lands on D (one evaluation fewer).
    """
    if sigma_next == 0.0:
        return karras_euler_step(x, sigma, 0.0, denoised)
    sigma_mid = math.sqrt(sigma * sigma_next)
    x_2 = karras_euler_step(x, sigma, sigma_mid, denoised)
    denoised_2 = _denoise(denoiser, x_2, sigma_mid)
    return x + ((sigma_next - sigma) / sigma_mid) * (x_2 - denoised_2)


def dpmpp_2s_step(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    sigma: float,
    sigma_next: float,
    denoised: Array,
) -> Array:
    """DPM-Solver++(2S) from σ to σ' (Lu et al. 2022b, Alg. 1, r = 1/2, α = 1; k-diffusion's step of sample_dpmpp_2s_ancestral).

    With h = log(σ/σ') and σ_s = √(σσ'): x_2 = (σ_s/σ) x - expm1(-h/2) D,
    x' = (σ'/σ) x - expm1(-h) D(x_2; σ_s). At σ' = 0 it is the Euler step (x' = D).
    """
    if sigma_next == 0.0:
        return karras_euler_step(x, sigma, 0.0, denoised)
    h = math.log(sigma / sigma_next)
    sigma_s = math.sqrt(sigma * sigma_next)
    x_2 = (sigma_s / sigma) * x - math.expm1(-0.5 * h) * denoised
    denoised_2 = _denoise(denoiser, x_2, sigma_s)
    return (sigma_next / sigma) * x - math.expm1(-h) * denoised_2


def dpmpp_sde_coefficients(
    sigma: float, sigma_next: float, *, eta: float = 1.0, r: float = 0.5, coupling: str = "brownian"
) -> dict[str, float]:
    """Host floats of one k-diffusion dpmpp_sde step (Lu et al. 2022b, SDE-DPM-Solver++ single-step with an intermediate point).

    σ_s = σ^{1-r} σ'^r (λ_s = λ + r h); each half is an ancestral step (σ_down, σ_up) of
    k-diffusion's get_ancestral_step, from σ to σ_s and from σ to σ'. The two noise increments are
    z1 = ξ_a and z2 = √ρ ξ_a + √(1-ρ) ξ_b from two independent draws ξ_a, ξ_b; with the
    "brownian" coupling ρ = (σ - σ_s)/(σ - σ') (the correlation of the normalised increments of
    one Brownian path W(σ) over [σ_s, σ] and [σ', σ]), with "independent" ρ = 0.
    """
    sigma_s = math.exp((1.0 - r) * math.log(sigma) + r * math.log(sigma_next))
    d1, u1 = ancestral_sigmas(sigma, sigma_s, eta)
    d2, u2 = ancestral_sigmas(sigma, sigma_next, eta)
    rho = (sigma - sigma_s) / (sigma - sigma_next) if coupling == "brownian" else 0.0
    return {
        "sigma_s": sigma_s,
        "down_1": d1,
        "up_1": u1,
        "down_2": d2,
        "up_2": u2,
        "fac": 1.0 / (2.0 * r),
        "a": math.sqrt(rho),
        "b": math.sqrt(1.0 - rho),
    }


def dpmpp_sde_step(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    sigma: float,
    denoised: Array,
    c: dict[str, float],
    *,
    noise_a: Array | None = None,
    noise_b: Array | None = None,
    S_noise: float = 1.0,
) -> Array:
    """One k-diffusion dpmpp_sde step with coefficients ``c`` from :func:`dpmpp_sde_coefficients`.

    x_2 = D + (σ_down1/σ)(x - D) + σ_up1 S_noise z1 (a data-prediction first-order step, Lu et al.
    2022b, Eq. 10, to σ_down1, then the ancestral noise); D_d = (1 - 1/(2r)) D + 1/(2r) D(x_2; σ_s);
    x' = D_d + (σ_down2/σ)(x - D_d) + σ_up2 S_noise z2. ``noise_a``/``noise_b`` are ξ_a, ξ_b
    (needed when σ_up > 0).
    """
    x_2 = karras_euler_step(x, sigma, c["down_1"], denoised)
    z2 = None
    if c["up_1"] > 0.0 or c["up_2"] > 0.0:
        if noise_a is None or noise_b is None:
            fail(
                "noise", noise_a, "this step adds noise (σ_up > 0): pass two standard-normal draws"
            )
        x_2 = x_2 + (c["up_1"] * S_noise) * noise_a
        z2 = c["a"] * noise_a + c["b"] * noise_b
    denoised_2 = _denoise(denoiser, x_2, c["sigma_s"])
    denoised_d = (1.0 - c["fac"]) * denoised + c["fac"] * denoised_2
    x = karras_euler_step(x, sigma, c["down_2"], denoised_d)
    if z2 is not None:
        x = x + (c["up_2"] * S_noise) * z2
    return x


def dpmpp_multistep_sde_coefficients(
    sigma: float,
    sigma_next: float,
    h_prev: list[float],
    *,
    eta: float,
    order: int,
    solver_type: str = "midpoint",
    d2_scale: str = "consistent",
) -> dict[str, float]:
    """Host floats of one multistep SDE-DPM-Solver++ step in σ (k-diffusion dpmpp_2m_sde / dpmpp_3m_sde; Lu et al. 2022b, App. and §4).

    With h = log(σ/σ') and H = (1 + η) h: x' = e^{-H} x + (1 - e^{-H}) D + [higher-order terms]
    + σ'√(1 - e^{-2ηh}) S_noise z (the exact solution of the SDE with η-scaled noise for a
    constant data prediction). ``h_prev`` holds the previous steps' h (most recent last); the
    order used is min(order, len(h_prev) + 1). Second order: D1 = (D - D_prev)/r with r = h_prev/h
    and coefficient ½(1 - e^{-H}) ("midpoint") or -φ2(-H) ("heun", the exact φ2 integral).
    Third order: D1 = D1_0 + r0/(r0 + r1)(D1_0 - D1_1), D2 = c (D1_0 - D1_1)/(r0 + r1) with
    coefficients -φ2(-H) and -φ3(-H); c = 2 ("consistent", third order) or 1 ("dpm_solver",
    k-diffusion's, which estimates half the second derivative the φ3 term needs).
    """
    h = math.log(sigma / sigma_next)
    H = (1.0 + eta) * h
    out: dict[str, float] = {
        "a": math.exp(-H),
        "b": -math.expm1(-H),
        "noise": sigma_next * math.sqrt(-math.expm1(-2.0 * eta * h)),
        "h": h,
    }
    k = min(order, len(h_prev) + 1)
    out["k"] = k
    if k == 2:
        r = h_prev[-1] / h
        c1 = 0.5 * out["b"] if solver_type == "midpoint" else -phi_2(-H)
        out["c1"] = c1 / r
    elif k == 3:
        r0, r1 = h_prev[-1] / h, h_prev[-2] / h
        out.update(
            r0=r0, r1=r1, p2=-phi_2(-H), p3=phi_3(-H), c2=2.0 if d2_scale == "consistent" else 1.0
        )
    return out


def dpmpp_multistep_sde_step(
    x: Array,
    denoised: Array,
    history: list[Array],
    c: dict[str, float],
    *,
    noise: Array | None = None,
    S_noise: float = 1.0,
) -> Array:
    """One multistep SDE-DPM-Solver++ step with coefficients from :func:`dpmpp_multistep_sde_coefficients`.

    ``history`` holds the previous data predictions, most recent last (1 entry used at order 2,
    2 at order 3). ``noise`` is the draw (needed when the noise coefficient is > 0).
    """
    x = c["a"] * x + c["b"] * denoised
    if c["k"] == 2:
        x = x + c["c1"] * (denoised - history[-1])
    elif c["k"] == 3:
        r0, r1 = c["r0"], c["r1"]
        d1_0 = (denoised - history[-1]) / r0
        d1_1 = (history[-1] - history[-2]) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (c["c2"] / (r0 + r1)) * (d1_0 - d1_1)
        x = x + c["p2"] * d1 - c["p3"] * d2
    if c["noise"] > 0.0:
        if noise is None:
            fail("noise", noise, "this step adds noise (η > 0): pass a standard-normal draw")
        x = x + (c["noise"] * S_noise) * noise
    return x


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """Adams–Bashforth weights of k-diffusion's linear multistep step i: c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ, j = 0..k-1.

    ℓ_j is the Lagrange basis polynomial through σ_i, σ_{i-1}, ..., σ_{i-k+1} (k = min(i + 1,
    order)) that is 1 at σ_{i-j}. The integral of a degree k-1 polynomial is formed exactly by
    k-point Gauss–Legendre quadrature (k-diffusion calls scipy's quad, the same integral).
    """
    k = min(i + 1, order)
    nodes, weights = np.polynomial.legendre.leggauss(max(k, 1))
    a, b = sigmas[i], sigmas[i + 1]
    tau = 0.5 * (b - a) * nodes + 0.5 * (a + b)
    out = []
    for j in range(k):
        prod = np.ones_like(tau)
        for m in range(k):
            if m != j:
                prod *= (tau - sigmas[i - m]) / (sigmas[i - j] - sigmas[i - m])
        out.append(float(0.5 * (b - a) * np.sum(weights * prod)))
    return out


def lms_step(
    x: Array, denoised: Array, ds_prev: list[Array], a: float, b: float, coeffs_prev: list[float]
) -> Array:
    """x' = x + Σ_j c_j d_{i-j} (linear multistep in σ on dx/dσ = (x - D)/σ), with the current term written as a x + b D.

    a = 1 + c_0/σ_i and b = -c_0/σ_i (host floats) fold c_0 d_i = c_0 (x - D)/σ_i into x without
    cancelling x against it; ``ds_prev`` holds d_{i-1}, d_{i-2}, ... (most recent last) and
    ``coeffs_prev`` their weights c_1, c_2, ....
    """
    x = a * x + b * denoised
    for c, d in zip(coeffs_prev, reversed(ds_prev)):
        x = x + c * d
    return x


def dpm_solver_step_coefficients(
    lam: float, lam_next: float, order: int, *, r1: float | None = None, r2: float = 2.0 / 3.0
) -> dict[str, float]:
    """Host floats of one DPM-Solver-k step (noise form, α = 1, σ = e^{-λ}) from λ to λ' (Lu et al. 2022a, Eq. 3.7, Algs. 1-2).

    k-diffusion's DPMSolver.dpm_solver_{1,2,3}_step: r1 = 1/2 (order 2) or 1/3 (order 3), r2 = 2/3.
    The first-order part x - σ_b expm1(r h) ε̂ of every stage is formed from D as
    e^{-rh} x + (1 - e^{-rh}) D (the same number: σ_b e^{rh} = σ; no cancellation of x against ε̂).
    """
    h = lam_next - lam
    s_next = math.exp(-lam_next)
    c: dict[str, float] = {
        "order": order,
        "sigma": math.exp(-lam),
        "h": h,
        "a": math.exp(-h),
        "b": -math.expm1(-h),
    }
    if order == 2:
        r1 = 0.5 if r1 is None else r1
        c.update(
            r1=r1,
            s1=math.exp(-(lam + r1 * h)),
            a1=math.exp(-r1 * h),
            b1=-math.expm1(-r1 * h),
            corr=s_next / (2.0 * r1) * math.expm1(h),
        )
    elif order == 3:
        r1 = 1.0 / 3.0 if r1 is None else r1
        s1, s2 = math.exp(-(lam + r1 * h)), math.exp(-(lam + r2 * h))
        c.update(
            r1=r1,
            r2=r2,
            s1=s1,
            s2=s2,
            a1=math.exp(-r1 * h),
            b1=-math.expm1(-r1 * h),
            a2=math.exp(-r2 * h),
            b2=-math.expm1(-r2 * h),
            u2c=s2 * (r2 / r1) * phi_2(r2 * h),
            corr=s_next / r2 * phi_2(h),
        )
    return c


def dpm_solver_k_step(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    denoised: Array,
    c: dict[str, float],
    *,
    cache: dict[tuple[str, float], Array] | None = None,
) -> Array:
    """One DPM-Solver-k step in λ = -log σ with the noise prediction ε̂ = (x - D)/σ (Lu et al. 2022a, Eq. 3.7, Algs. 1-2; k-diffusion DPMSolver).

    Order 1: x' = x - σ' expm1(h) ε̂. Order 2: u1 = x - σ_{s1} expm1(r1 h) ε̂,
    x' = x - σ' expm1(h) ε̂ - σ'/(2 r1) expm1(h) (ε̂(u1) - ε̂). Order 3 (r1 = 1/3, r2 = 2/3):
    u2 = x - σ_{s2} expm1(r2 h) ε̂ - σ_{s2} (r2/r1) φ2(r2 h)(ε̂(u1) - ε̂),
    x' = x - σ' expm1(h) ε̂ - (σ'/r2) φ2(h)(ε̂(u2) - ε̂). ``denoised`` is D(x; σ); coefficients
    from :func:`dpm_solver_step_coefficients`. ``cache`` (a dict) keeps ε̂(u1) for a second call
    with the same λ, λ' and r1 (the embedded pair of the adaptive solver).
    """
    base = c["a"] * x + c["b"] * denoised
    if c["order"] == 1:
        return base
    eps = (x - denoised) / c["sigma"]
    key = ("eps_r1", c["r1"])
    if cache is not None and key in cache:
        eps_1 = cache[key]
    else:
        u1 = c["a1"] * x + c["b1"] * denoised
        eps_1 = (u1 - _denoise(denoiser, u1, c["s1"])) / c["s1"]
        if cache is not None:
            cache[key] = eps_1
    if c["order"] == 2:
        return base - c["corr"] * (eps_1 - eps)
    u2 = c["a2"] * x + c["b2"] * denoised - c["u2c"] * (eps_1 - eps)
    eps_2 = (u2 - _denoise(denoiser, u2, c["s2"])) / c["s2"]
    return base - c["corr"] * (eps_2 - eps)


# --------------------------------------------------------------------------------------------
# Adaptive step-size control
# --------------------------------------------------------------------------------------------


class PIDStepSizeController:
    """PID step-size control on the inverse error (k-diffusion's PIDStepSizeController; Söderlind 2003, as in DPM-Solver's adaptive solver).

    factor = ε_0^{b1} ε_1^{b2} ε_2^{b3} with ε_j the last inverse errors 1/(error + 1e-8),
    b1 = (p + i + d)/k, b2 = -(p + 2d)/k, b3 = d/k (k = the order), limited by
    1 + atan(factor - 1); the step is accepted when factor ≥ accept_safety, and h ← h·factor
    either way. Host floats only.
    """

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float = 1.0,
        accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2.0 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    @staticmethod
    def limiter(factor: float) -> float:
        """1 + atan(factor - 1): smooth limit of the step-size change."""
        return 1.0 + math.atan(factor - 1.0)

    def propose_step(self, error: float) -> bool:
        """Update h from the scaled error of the last attempt; return whether to accept it."""
        inv_error = 1.0 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = self.limiter(factor)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------


def _setup(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    sigmas: Sequence[float] | Array,
    callback: Callable[[StepInfo], object] | None,
    progress: Callable[[int, int], object] | None,
) -> tuple[list[float], int, Callable[[StepInfo], object] | None]:
    _check_denoiser(denoiser)
    _check_x(x)
    sig = _sigma_list(sigmas)
    return sig, len(sig) - 1, step_reporter(callback, progress)


def _check_churn(
    S_churn: float, S_tmin: float, S_tmax: float, S_noise: float
) -> tuple[float, float, float, float]:
    S_churn = check_real("S_churn", S_churn, lo=0.0)
    S_tmin = check_real("S_tmin", S_tmin, lo=0.0)
    try:
        tmax = float(S_tmax)
    except (TypeError, ValueError):
        fail("S_tmax", S_tmax, "expected a real number >= S_tmin (inf allowed)")
    if math.isnan(tmax) or tmax < S_tmin:
        fail("S_tmax", S_tmax, f"expected a value >= S_tmin = {S_tmin!r} (inf allowed)")
    return S_churn, S_tmin, tmax, _s_noise(S_noise)


@register_sampler("karras_dpm_2", family="karras", stochastic=False, order=2, step=dpm_2_step)
def sample_karras_dpm_2(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """DPM-Solver-2 steps in σ with optional churn (k-diffusion sample_dpm_2: Lu et al. 2022a, Alg. 1, with Karras et al. 2022, Alg. 2).

    Parameters
    ----------
    denoiser : callable
        ``denoiser(x, sigma) -> D(x; σ)`` with ``sigma`` of shape (B,).
    x : array
        Starting sample at σ_0 = ``sigmas[0]``, batch axis first.
    sigmas : sequence or 1-D array
        Strictly decreasing noise levels σ_0 > ... > σ_N >= 0 (N steps).
    noise : array or callable, optional
        ``noise[i]`` is read at step i when its churn γ_i > 0 (only when ``S_churn > 0``).
    S_churn, S_tmin, S_tmax, S_noise : float
        Churn as in :func:`refdiff.samplers.karras.sample_karras_euler` (default off).
    callback, progress : callable, optional
        ``callback(StepInfo)`` before each step (x after churn, D at σ̂); ``progress(i + 1, N)``.

    Returns
    -------
    array
        The sample at σ_N. Each step costs two evaluations, one when σ_{i+1} = 0 (Euler).
    """
    sig, n, report = _setup(denoiser, x, sigmas, callback, progress)
    S_churn, S_tmin, S_tmax, S_noise = _check_churn(S_churn, S_tmin, S_tmax, S_noise)
    gammas = [
        churn_gamma(sig[i], n, S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax) for i in range(n)
    ]
    for i in range(n):
        sigma = sig[i]
        if gammas[i] > 0.0:
            x, sigma = churn_step(
                x, sigma, gammas[i], noise=draw_noise(noise, i, x), S_noise=S_noise
            )
        denoised = _denoise(denoiser, x, sigma)
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sigma))
        x = dpm_2_step(denoiser, x, sigma, sig[i + 1], denoised)
    return x


@register_sampler("karras_dpm_2_ancestral", family="karras", stochastic=True, step=dpm_2_step)
def sample_karras_dpm_2_ancestral(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Ancestral DPM-Solver-2 (k-diffusion sample_dpm_2_ancestral): a DPM-Solver-2 step to σ_down, then σ_up S_noise z.

    (σ_down, σ_up) are k-diffusion's get_ancestral_step (:func:`refdiff.samplers.karras.ancestral_sigmas`;
    DDIM-η, Song et al. 2021a, Eq. 16, on the σ scale). Where σ_down = 0 the step is Euler to 0
    (x' = D) and, as in k-diffusion, no noise is added — also when η > 1 makes σ_up = σ_{i+1} > 0.

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_dpm_2`.
    noise : array or callable
        ``noise[i]`` is read at step i when σ_down > 0 and σ_up > 0.
    eta : float
        η ≥ 0 (1: ancestral sampling; 0: the deterministic DPM-Solver-2 sampler).
    S_noise : float
        Scale of the added noise (k-diffusion's ``s_noise``).
    """
    sig, n, report = _setup(denoiser, x, sigmas, callback, progress)
    eta, S_noise = check_eta(eta), _s_noise(S_noise)
    plan = [ancestral_sigmas(sig[i], sig[i + 1], eta) for i in range(n)]
    for i in range(n):
        down, up = plan[i]
        denoised = _denoise(denoiser, x, sig[i])
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sig[i]))
        x = dpm_2_step(denoiser, x, sig[i], down, denoised)
        if down > 0.0 and up > 0.0:
            x = x + (up * S_noise) * draw_noise(noise, i, x)
    return x


@register_sampler("karras_dpmpp_2s_ancestral", family="karras", stochastic=True, step=dpmpp_2s_step)
def sample_karras_dpmpp_2s_ancestral(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Ancestral DPM-Solver++(2S) (k-diffusion sample_dpmpp_2s_ancestral; Lu et al. 2022b, Alg. 1, to σ_down, then σ_up S_noise z).

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_dpm_2`.
    noise : array or callable
        ``noise[i]`` is read at step i when σ_{i+1} > 0 and σ_up > 0.
    eta, S_noise : float
        As in :func:`sample_karras_dpm_2_ancestral`. Where σ_down = 0 the step is Euler to 0.
    """
    sig, n, report = _setup(denoiser, x, sigmas, callback, progress)
    eta, S_noise = check_eta(eta), _s_noise(S_noise)
    plan = [ancestral_sigmas(sig[i], sig[i + 1], eta) for i in range(n)]
    for i in range(n):
        down, up = plan[i]
        denoised = _denoise(denoiser, x, sig[i])
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sig[i]))
        x = dpmpp_2s_step(denoiser, x, sig[i], down, denoised)
        if sig[i + 1] > 0.0 and up > 0.0:
            x = x + (up * S_noise) * draw_noise(noise, i, x)
    return x


@register_sampler("karras_dpmpp_sde", family="karras", stochastic=True, step=dpmpp_sde_step)
def sample_karras_dpmpp_sde(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    r: float = 0.5,
    noise_coupling: str = "brownian",
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Stochastic DPM-Solver++ with an intermediate point (k-diffusion sample_dpmpp_sde; Lu et al. 2022b, SDE-DPM-Solver++).

    Per step from σ to σ' > 0: an ancestral data-prediction step to σ_s = σ^{1-r}σ'^r, one more
    denoiser call there, and an ancestral step to σ' with D_d = (1 - 1/(2r)) D + 1/(2r) D(x_2; σ_s)
    (see :func:`dpmpp_sde_step`). The last step to σ' = 0 is Euler (x' = D).

    Noise contract (k-diffusion draws from a Brownian tree, torchsde's BrownianTree indexed by σ,
    which refdiff does not use): step i reads two independent standard-normal draws,
    ξ_a = ``noise[2i]`` and ξ_b = ``noise[2i + 1]`` (only when σ_{i+1} > 0 and η > 0), and forms
    the two normalised increments z1 = ξ_a, z2 = √ρ ξ_a + √(1 - ρ) ξ_b. With
    ``noise_coupling="brownian"``, ρ = (σ - σ_s)/(σ - σ'): (z1, z2) then have exactly the joint law
    of k-diffusion's noise_sampler(σ, σ_s) and noise_sampler(σ, σ'), (W(σ_s) - W(σ))/√(σ - σ_s)
    and (W(σ') - W(σ))/√(σ - σ') for one Brownian path W (up to the tree's global sign). To
    reproduce a k-diffusion run given its tree, pass ξ_a = (W(σ_s) - W(σ))/√(σ - σ_s) and
    ξ_b = (W(σ') - W(σ_s))/√(σ_s - σ') with the same sign. ``"independent"`` (ρ = 0) is k-diffusion
    with a noise_sampler that draws afresh at every call (e.g. default_noise_sampler).

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_dpm_2`.
    noise : array or callable
        Draws 2i and 2i + 1 at step i (2N - 2 draws for a grid ending in 0).
    eta : float
        η ≥ 0 of both ancestral half steps (0: deterministic DPM-Solver++(2S)-type steps).
    S_noise : float
        Noise scale (k-diffusion's ``s_noise``).
    r : float
        0 < r ≤ 1: position of the intermediate point in λ (k-diffusion's ``r``, default 1/2).
    noise_coupling : {"brownian", "independent"}
        How the two draws make the two increments (above).
    """
    sig, n, report = _setup(denoiser, x, sigmas, callback, progress)
    eta, S_noise = check_eta(eta), _s_noise(S_noise)
    r = check_real("r", r, lo=0.0, hi=1.0, lo_open=True)
    check_choice("noise_coupling", noise_coupling, NOISE_COUPLINGS, "noise coupling")
    plan = [
        dpmpp_sde_coefficients(sig[i], sig[i + 1], eta=eta, r=r, coupling=noise_coupling)
        if sig[i + 1] > 0.0
        else None
        for i in range(n)
    ]
    for i in range(n):
        denoised = _denoise(denoiser, x, sig[i])
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sig[i]))
        c = plan[i]
        if c is None:
            x = karras_euler_step(x, sig[i], 0.0, denoised)
            continue
        za = zb = None
        if c["up_1"] > 0.0 or c["up_2"] > 0.0:
            za, zb = draw_noise(noise, 2 * i, x), draw_noise(noise, 2 * i + 1, x)
        x = dpmpp_sde_step(
            denoiser, x, sig[i], denoised, c, noise_a=za, noise_b=zb, S_noise=S_noise
        )
    return x


def _multistep_sde(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    sigmas: Sequence[float] | Array,
    noise: Noise,
    eta: float,
    S_noise: float,
    callback: Callable[[StepInfo], object] | None,
    progress: Callable[[int, int], object] | None,
    *,
    order: int,
    solver_type: str = "midpoint",
    d2_scale: str = "consistent",
) -> Array:
    sig, n, report = _setup(denoiser, x, sigmas, callback, progress)
    eta, S_noise = check_eta(eta), _s_noise(S_noise)
    plan: list[dict[str, float] | None] = []
    hs: list[float] = []
    c: dict[str, float] | None
    for i in range(n):
        if sig[i + 1] == 0.0:
            plan.append(None)
            continue
        c = dpmpp_multistep_sde_coefficients(
            sig[i],
            sig[i + 1],
            hs if i > 0 else [],
            eta=eta,
            order=order,
            solver_type=solver_type,
            d2_scale=d2_scale,
        )
        hs = hs + [c["h"]]
        plan.append(c)
    history: list[Array] = []
    for i in range(n):
        denoised = _denoise(denoiser, x, sig[i])
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sig[i]))
        c = plan[i]
        if c is None:
            x = denoised
        else:
            z = draw_noise(noise, i, x) if c["noise"] > 0.0 else None
            x = dpmpp_multistep_sde_step(x, denoised, history, c, noise=z, S_noise=S_noise)
        history = (history + [denoised])[-2:]
    return x


@register_sampler(
    "karras_dpmpp_2m_sde", family="karras", stochastic=True, step=dpmpp_multistep_sde_step
)
def sample_karras_dpmpp_2m_sde(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    solver_type: str = "midpoint",
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Multistep SDE-DPM-Solver++(2M) in σ (k-diffusion sample_dpmpp_2m_sde; Lu et al. 2022b, App., and diffusers' "sde-dpmsolver++").

    x' = (σ'/σ)e^{-ηh} x + (1 - e^{-(1+η)h}) D + c1 (D - D_prev)/r + σ'√(1 - e^{-2ηh}) S_noise z
    with h = log(σ/σ'), r = h_prev/h and c1 = ½(1 - e^{-(1+η)h}) ("midpoint") or -φ2(-(1+η)h)
    ("heun"); the first step is first order and the last step to σ' = 0 returns D. η = 1 is the
    SDE solver, η = 0 the ODE solver DPM-Solver++(2M) (order 2).

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_dpm_2`.
    noise : array or callable
        ``noise[i]`` is read at step i when σ_{i+1} > 0 and η > 0 (k-diffusion's Brownian tree
        gives independent normalised increments over the disjoint intervals [σ_{i+1}, σ_i], so
        independent draws reproduce its law; pass (W(σ_{i+1}) - W(σ_i))/√(σ_i - σ_{i+1}) to
        reproduce a given tree).
    eta, S_noise : float
        η ≥ 0 and the noise scale.
    solver_type : {"midpoint", "heun"}
        k-diffusion's ``solver_type``.
    """
    check_choice("solver_type", solver_type, SDE_SOLVER_TYPES, "SDE-DPM-Solver++ solver type")
    return _multistep_sde(
        denoiser,
        x,
        sigmas,
        noise,
        eta,
        S_noise,
        callback,
        progress,
        order=2,
        solver_type=solver_type,
    )


@register_sampler(
    "karras_dpmpp_3m_sde", family="karras", stochastic=True, step=dpmpp_multistep_sde_step
)
def sample_karras_dpmpp_3m_sde(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    eta: float = 1.0,
    S_noise: float = 1.0,
    d2_scale: str = "consistent",
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Multistep SDE-DPM-Solver++(3M) in σ (k-diffusion sample_dpmpp_3m_sde; Lu et al. 2022b, §4 multistep with the SDE terms).

    x' = e^{-(1+η)h} x + (1 - e^{-(1+η)h}) D - φ2(-H) D1 - φ3(-H) D2 + σ'√(1 - e^{-2ηh}) S_noise z
    (H = (1 + η)h; see :func:`dpmpp_multistep_sde_coefficients`); orders 1 and 2 (the φ2 form,
    "heun") on the first two steps, D at a last σ' = 0.

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_dpm_2`.
    noise : array or callable
        ``noise[i]`` is read at step i when σ_{i+1} > 0 and η > 0 (independent increments, as
        for :func:`sample_karras_dpmpp_2m_sde`).
    eta, S_noise : float
        η ≥ 0 and the noise scale.
    d2_scale : {"consistent", "dpm_solver"}
        "consistent" (default): D2 = 2(D1_0 - D1_1)/(r0 + r1), third order at η = 0;
        "dpm_solver": k-diffusion's D2 = (D1_0 - D1_1)/(r0 + r1) (half the second derivative the
        φ3 term needs; second order at η = 0), which reproduces k-diffusion.
    """
    check_choice("d2_scale", d2_scale, D2_SCALES, "multistep third-order D2 convention")
    return _multistep_sde(
        denoiser,
        x,
        sigmas,
        noise,
        eta,
        S_noise,
        callback,
        progress,
        order=3,
        solver_type="heun",
        d2_scale=d2_scale,
    )


@register_sampler("karras_lms", family="karras", stochastic=False, step=lms_step)
def sample_karras_lms(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    order: int = 4,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Linear multistep (variable-step Adams–Bashforth in σ) on dx/dσ = (x - D)/σ (k-diffusion sample_lms; Karras et al. 2022, Eq. 3).

    Step i uses the last k = min(i + 1, order) derivatives d_j = (x_j - D(x_j; σ_j))/σ_j with the
    weights of :func:`lms_coefficients` (the exact integrals of their Lagrange interpolant over
    [σ_i, σ_{i+1}]); one evaluation per step. The first steps are of orders 1, 2, ..., as in
    k-diffusion, so the first step's O(h²) local error caps the global order at 2 for any
    ``order`` ≥ 2 (measured in docs/SAMPLERS.md; the later steps are of order ``order``), which is
    why no single order is registered.

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_dpm_2`.
    noise
        Ignored (deterministic); accepted for the family's calling convention.
    order : int
        Number of past derivatives used, 1 ≤ order ≤ 8 (k-diffusion's default 4).
    """
    sig, n, report = _setup(denoiser, x, sigmas, callback, progress)
    order = check_int("order", order, minimum=1)
    if order > 8:
        fail("order", order, "expected an integer from 1 to 8")
    plan = []
    for i in range(n):
        c = lms_coefficients(sig, i, order)
        plan.append((1.0 + c[0] / sig[i], -c[0] / sig[i], c[1:]))
    ds: list[Array] = []
    for i in range(n):
        denoised = _denoise(denoiser, x, sig[i])
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sig[i]))
        a, b, rest = plan[i]
        x_next = lms_step(x, denoised, ds, a, b, rest)
        if order > 1 and i < n - 1:
            ds = (ds + [(x - denoised) / sig[i]])[-(order - 1) :]
        x = x_next
    return x


def _endpoints(sig: list[float]) -> tuple[float, float]:
    positive = [s for s in sig if s > 0.0]
    if len(positive) < 2:
        fail("sigmas", sig, "expected at least two positive noise levels (σ_max and σ_min > 0)")
    return positive[0], positive[-1]


def _ancestral_target(
    lam: float, lam_next: float, lam_end: float, eta: float
) -> tuple[float, float]:
    """(λ'_, σ_up) of k-diffusion's DPMSolver with η: step to min(λ_end, -log σ_down), then add noise up to σ(λ')."""
    if eta == 0.0:
        return lam_next, 0.0
    down, _ = ancestral_sigmas(math.exp(-lam), math.exp(-lam_next), eta)
    target = lam_end if down == 0.0 else min(lam_end, -math.log(down))
    s_next, s_target = math.exp(-lam_next), math.exp(-target)
    return target, math.sqrt(max((s_next - s_target) * (s_next + s_target), 0.0))


@register_sampler(
    "karras_dpm_fast", family="karras", stochastic=False, order=2, step=dpm_solver_k_step
)
def sample_karras_dpm_fast(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    nfe: int | None = None,
    eta: float = 0.0,
    S_noise: float = 1.0,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """DPM-Solver-fast in λ = -log σ (k-diffusion sample_dpm_fast; Lu et al. 2022a, §3.3 and Algs. 1-2).

    ``nfe`` evaluations spent as orders 3, ..., 3 then (2, 1) / 1 / 2 on a grid uniform in λ from
    σ_max = ``sigmas[0]`` to σ_min = the last positive entry of ``sigmas`` (only these two
    entries are used). A grid ending in 0 adds a final denoising x = D(x; σ_min) (one more
    evaluation); k-diffusion stops at σ_min > 0, so pass a grid ending at σ_min to reproduce it.

    Parameters
    ----------
    denoiser, x, sigmas, callback, progress
        As in :func:`sample_karras_dpm_2` (``callback`` at each step's start).
    noise : array or callable, optional
        ``noise[i]`` is read at step i when η > 0 (k-diffusion's ancestral variant).
    nfe : int, optional
        Number of evaluations (k-diffusion's ``n``); default: the number of intervals between the
        positive entries of ``sigmas``.
    eta, S_noise : float
        η ≥ 0 (0: the ODE solver) and the noise scale, as k-diffusion's ``eta``, ``s_noise``.
    """
    sig, _, report = _setup(denoiser, x, sigmas, callback, progress)
    s_max, s_min = _endpoints(sig)
    if nfe is None:
        nfe = sum(1 for s in sig if s > 0.0) - 1
    nfe = check_int("nfe", nfe, minimum=1)
    eta, S_noise = check_eta(eta), _s_noise(S_noise)
    orders = singlestep_orders(nfe, 3)
    lam_0, lam_end = -math.log(s_max), -math.log(s_min)
    lams = np.linspace(lam_0, lam_end, len(orders) + 1)
    plan = []
    for i, o in enumerate(orders):
        target, up = _ancestral_target(float(lams[i]), float(lams[i + 1]), lam_end, eta)
        plan.append(
            (math.exp(-float(lams[i])), up, dpm_solver_step_coefficients(float(lams[i]), target, o))
        )
    n = len(orders)
    for i, (sigma, up, c) in enumerate(plan):
        denoised = _denoise(denoiser, x, sigma)
        if report is not None:
            report(StepInfo(i, n, x, denoised, sigma=sigma))
        x = dpm_solver_k_step(denoiser, x, denoised, c)
        if up > 0.0:
            x = x + (up * S_noise) * draw_noise(noise, i, x)
    if sig[-1] == 0.0:
        x = _denoise(denoiser, x, s_min)
    return x


@register_sampler("karras_dpm_adaptive", family="karras", stochastic=False, step=dpm_solver_k_step)
def sample_karras_dpm_adaptive(
    denoiser: Callable[[Array, Array], Array],
    x: Array,
    *,
    sigmas: Sequence[float] | Array,
    noise: Noise = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    S_noise: float = 1.0,
    adaptive: bool = True,
    return_info: bool = False,
    max_steps: int = 10000,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array | tuple[Array, dict[str, Any]]:
    """Adaptive DPM-Solver-12 / 23 in λ = -log σ with PID step-size control (k-diffusion sample_dpm_adaptive; Lu et al. 2022a, §3.3 and App. C).

    Each attempt from λ_s takes h = the controller's step (to at most λ_end) and forms a low-order
    x_low (DPM-Solver-1, or DPM-Solver-2 with r1 = 1/3) and a high-order x_high (DPM-Solver-2, or
    -3) sharing their evaluations; error = ‖(x_low - x_high)/δ‖₂/√numel with
    δ = max(atol, rtol·max(|x_low|, |x_prev|)) (x_prev: the last accepted x_low). The error is read
    back to the host (one device read per attempt) and :class:`PIDStepSizeController` decides.
    σ_max = ``sigmas[0]`` and σ_min = its last positive entry; a grid ending in 0 adds a final
    denoising x = D(x; σ_min). The loop stops within 1e-5 of λ_end, as k-diffusion.

    With ``adaptive=False`` every positive entry of ``sigmas`` is an accepted step: the loop takes
    the high-order steps on that grid with no control. Passing ``info["sigmas"]`` of an adaptive
    run (``return_info=True``) replays it: the same steps and, with η > 0, the same draws.

    Parameters
    ----------
    denoiser, x, sigmas, progress
        As in :func:`sample_karras_dpm_2`.
    noise : array or callable, optional
        ``noise[k]`` is read at the k-th accepted step when η > 0.
    order : {2, 3}
    rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety : float
        k-diffusion's controller settings (defaults 0.05, 0.0078, 0.05, 0, 1, 0, 0.81).
    eta, S_noise : float
        η ≥ 0 (ancestral variant; the controller then uses order 1.5, as k-diffusion) and the noise
        scale.
    adaptive : bool
        False: fixed steps on the positive entries of ``sigmas`` (replay).
    return_info : bool
        Also return k-diffusion's info dict: steps, nfe, n_accept, n_reject, and ``sigmas`` (the
        accepted noise levels, σ_max first).
    max_steps : int
        Attempts allowed before the loop is stopped with an error.
    callback : callable, optional
        ``callback(StepInfo)`` at each attempt (``n`` is 0: unknown in advance).

    Returns
    -------
    array, or (array, dict) with ``return_info``
    """
    sig, _, report = _setup(denoiser, x, sigmas, callback, progress)
    s_max, s_min = _endpoints(sig)
    order = check_int("order", order, minimum=2)
    if order > 3:
        fail("order", order, "expected 2 or 3")
    rtol = check_real("rtol", rtol, lo=0.0)
    atol = check_real("atol", atol, lo=0.0, lo_open=True)
    h_init = check_real("h_init", h_init, lo=0.0, lo_open=True)
    pcoeff, icoeff, dcoeff = (
        check_real(k, v) for k, v in (("pcoeff", pcoeff), ("icoeff", icoeff), ("dcoeff", dcoeff))
    )
    accept_safety = check_real("accept_safety", accept_safety, lo=0.0)
    eta, S_noise = check_eta(eta), _s_noise(S_noise)
    max_steps = check_int("max_steps", max_steps, minimum=1)
    for name, flag in (("adaptive", adaptive), ("return_info", return_info)):
        if not isinstance(flag, bool):
            fail(name, flag, "expected True or False")
    lam_end = -math.log(s_min)
    info: dict[str, Any] = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0, "sigmas": [s_max]}
    r_low = 0.5 if order == 2 else 1.0 / 3.0

    def attempt(x: Array, lam: float, lam_next: float) -> tuple[float, float, Array]:
        target, up = _ancestral_target(lam, lam_next, lam_end, eta)
        sigma = math.exp(-lam)
        denoised = _denoise(denoiser, x, sigma)
        if report is not None:
            report(StepInfo(info["steps"], 0, x, denoised, sigma=sigma))
        return target, up, denoised

    if not adaptive:
        lams = [-math.log(s) for s in sig if s > 0.0]
        for k in range(len(lams) - 1):
            target, up, denoised = attempt(x, lams[k], lams[k + 1])
            x = dpm_solver_k_step(
                denoiser,
                x,
                denoised,
                dpm_solver_step_coefficients(lams[k], target, order, r1=r_low),
            )
            if up > 0.0:
                x = x + (up * S_noise) * draw_noise(noise, k, x)
            info["steps"] += 1
            info["n_accept"] += 1
            info["nfe"] += order
            info["sigmas"].append(math.exp(-lams[k + 1]))
    else:
        xp = array_namespace(x)
        numel = math.prod(tuple(x.shape))
        pid = PIDStepSizeController(
            h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety
        )
        s = -math.log(s_max)
        x_prev = x
        while s < lam_end - 1e-5:
            if info["steps"] >= max_steps:
                fail(
                    "max_steps",
                    max_steps,
                    f"the adaptive solver made {max_steps} attempts and "
                    f"reached σ = {math.exp(-s)!r}, not σ_min = {s_min!r}; loosen rtol/atol or "
                    "raise max_steps",
                )
            t = min(lam_end, s + pid.h)
            target, up, denoised = attempt(x, s, t)
            cache: dict[tuple[str, float], Array] = {}
            x_low = dpm_solver_k_step(
                denoiser,
                x,
                denoised,
                dpm_solver_step_coefficients(s, target, order - 1, r1=r_low),
                cache=cache,
            )
            x_high = dpm_solver_k_step(
                denoiser,
                x,
                denoised,
                dpm_solver_step_coefficients(s, target, order, r1=r_low),
                cache=cache,
            )
            scale = rtol * xp.maximum(xp.abs(x_low), xp.abs(x_prev))
            delta = xp.maximum(scale, xp.full_like(scale, atol))
            error = float(xp.sqrt(xp.sum(((x_low - x_high) / delta) ** 2))) / math.sqrt(numel)
            info["nfe"] += order
            info["steps"] += 1
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high
                if up > 0.0:
                    x = x + (up * S_noise) * draw_noise(noise, info["n_accept"], x)
                s = t
                info["n_accept"] += 1
                info["sigmas"].append(math.exp(-t))
            else:
                info["n_reject"] += 1
    if sig[-1] == 0.0:
        x = _denoise(denoiser, x, s_min)
        info["nfe"] += 1
    return (x, info) if return_info else x
