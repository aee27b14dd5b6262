"""Peer rows of docs/PEERS.md, Karras section: diffusers' Euler/Heun schedulers and k-diffusion's loops.

Each diffusers row runs the live scheduler's ``set_timesteps`` / ``scale_model_input`` /
``step`` loop on CPU torch with a discrete ε-network, and the single refdiff call that reproduces
it: a Karras sampler on :func:`refdiff.edm.interpolated_sigmas` (or the Karras grid) with the
network bridged by :func:`refdiff.samplers.adapters.karras_denoiser`. diffusers steps in float32
(it upcasts the sample and keeps its σ table in float32), so agreement is at float32 level; the
refdiff schedule is built from diffusers' own float32 ᾱ table so that the comparison measures the
sampler, not the table.

k-diffusion is not a registry dependency of the test extra, so its ``sample_euler``,
``sample_heun`` and ``sample_euler_ancestral`` loops are re-derived below from their published
formulas (Crowson, k-diffusion ``sampling.py``; Karras et al. 2022, Alg. 1 and 2), written in the
k-diffusion order of operations, and compared in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import schedules
from refdiff.edm import interpolated_sigmas, karras_sigmas, polyexponential_sigmas
from refdiff.samplers.adapters import karras_denoiser, karras_grid
from refdiff.samplers.karras import (
    sample_karras_euler,
    sample_karras_euler_ancestral,
    sample_karras_heun,
)

#: diffusers' schedulers warn (NumPy 2 ``__array__`` copy keyword) at every step; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHAPE = (2, 3, 4, 4)


def eps_np(x, t):
    """A discrete ε-network with a t-dependent output (NumPy): 0.3 x + 0.1 sin(t/100)."""
    t = np.asarray(t, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    return 0.3 * x + 0.1 * np.sin(t / 100.0)


def _diffusers(name: str, **config):
    diffusers = pytest.importorskip(
        "diffusers", reason="diffusers (test extra) checks the live peer"
    )
    cls = getattr(diffusers, name)
    return cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **config)


def _run_diffusers(sched, x0: np.ndarray, n: int, *, generator_seed: int | None = None):
    """diffusers' sampling loop (float32) with the ε-network; returns (sample, noise draws used)."""
    import torch

    sched.set_timesteps(n)
    x = torch.from_numpy(x0.astype(np.float32))
    gen = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        tt = float(t)
        eps = torch.from_numpy(
            eps_np(inp.double().numpy(), np.full(x.shape[0], tt)).astype(np.float32)
        )
        x = (
            sched.step(eps, t, x, generator=gen).prev_sample
            if gen is not None
            else sched.step(eps, t, x).prev_sample
        )
    return x.double().numpy()


def _schedule_of(sched) -> schedules.Schedule:
    return schedules.from_alphas_cumprod(sched.alphas_cumprod.double().numpy())


def _start(sigma_max: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE) * sigma_max


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------------------------
# The σ grid builders against diffusers' set_timesteps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spacing,offset,n",
    [
        ("linspace", 0, 10),
        ("linspace", 0, 7),
        ("leading", 1, 10),
        ("trailing", 0, 10),
        ("trailing", 0, 3),
    ],
)
def test_interpolated_sigmas_are_diffusers_euler_grid(spacing, offset, n):
    """EulerDiscreteScheduler(timestep_spacing, steps_offset, interpolation_type='linear').sigmas."""
    d = _diffusers("EulerDiscreteScheduler", timestep_spacing=spacing, steps_offset=offset)
    d.set_timesteps(n)
    ours = interpolated_sigmas(
        d.alphas_cumprod.double().numpy(), n, timestep_spacing=spacing, steps_offset=offset
    )
    theirs = d.sigmas.double().numpy()
    assert ours.shape == theirs.shape and ours[-1] == 0.0 == theirs[-1]
    np.testing.assert_allclose(ours[:-1], theirs[:-1], rtol=2e-7)  # diffusers rounds to float32


def test_polyexponential_is_k_diffusion_formula():
    """k-diffusion get_sigmas_polyexponential: exp(ramp^ρ (log σ_max - log σ_min) + log σ_min), ramp = linspace(1, 0, n)."""
    for rho in (1.0, 2.0, 0.5):
        ramp = np.linspace(1.0, 0.0, 9) ** rho
        expected = np.exp(ramp * (math.log(14.6) - math.log(0.03)) + math.log(0.03))
        np.testing.assert_allclose(
            polyexponential_sigmas(9, 0.03, 14.6, rho)[:-1], expected, rtol=1e-14
        )


# --------------------------------------------------------------------------------------------
# diffusers schedulers: one refdiff call each
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spacing,offset,n,timestep",
    [
        ("leading", 1, 10, "nearest"),
        ("trailing", 0, 10, "nearest"),
        ("linspace", 0, 10, "nearest"),
        ("linspace", 0, 7, "interp"),  # linspace(0, 999, 7) is fractional: diffusers passes real t
    ],
)
def test_euler_discrete(spacing, offset, n, timestep):
    """EulerDiscreteScheduler (ε, interpolation_type='linear') == sample_karras_euler on interpolated_sigmas.

    diffusers calls the network at the (possibly fractional) timestep whose interpolated σ it
    steps from; the bridge recovers that timestep from σ (the exact index where it is an integer,
    ``timestep="nearest"``; linear in log σ between two indices with ``"interp"``).
    """
    d = _diffusers("EulerDiscreteScheduler", timestep_spacing=spacing, steps_offset=offset)
    sched = _schedule_of(d)
    sig = interpolated_sigmas(sched, n, timestep_spacing=spacing, steps_offset=offset)
    x = _start(float(sig[0]))
    theirs = _run_diffusers(d, x, n)
    ours = sample_karras_euler(
        karras_denoiser(eps_np, sched, prediction_type="eps", timestep=timestep), x, sigmas=sig
    )
    assert _rel(ours, theirs) < 2e-6


def test_euler_discrete_karras_sigmas():
    """EulerDiscreteScheduler(use_karras_sigmas=True): fractional model times from log σ == karras_denoiser(timestep='interp')."""
    n = 12
    d = _diffusers("EulerDiscreteScheduler", use_karras_sigmas=True)
    sched = _schedule_of(d)
    sig = karras_grid(sched, n)
    x = _start(float(sig[0]))
    theirs = _run_diffusers(d, x, n)
    ours = sample_karras_euler(
        karras_denoiser(eps_np, sched, prediction_type="eps", timestep="interp"), x, sigmas=sig
    )
    assert _rel(ours, theirs) < 2e-6
    # the same grid by hand: Karras et al. (2022), Eq. 5 between the table's σ_min and σ_max
    np.testing.assert_allclose(
        sig, karras_sigmas(n, float(sched.sigmas[0]), float(sched.sigmas[-1])), rtol=0, atol=0
    )


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0)])
def test_heun_discrete(spacing, offset):
    """HeunDiscreteScheduler (ε) == sample_karras_heun on interpolated_sigmas (2N - 1 network calls both)."""
    n = 8
    d = _diffusers("HeunDiscreteScheduler", timestep_spacing=spacing, steps_offset=offset)
    sched = _schedule_of(d)
    sig = interpolated_sigmas(sched, n, timestep_spacing=spacing, steps_offset=offset)
    x = _start(float(sig[0]))
    theirs = _run_diffusers(d, x, n)
    calls = []

    def counted(xx, t):
        calls.append(1)
        return eps_np(xx, t)

    ours = sample_karras_heun(karras_denoiser(counted, sched, prediction_type="eps"), x, sigmas=sig)
    assert len(calls) == 2 * n - 1 == len(d.timesteps)
    assert _rel(ours, theirs) < 2e-6


def test_euler_ancestral_discrete_with_explicit_noise():
    """EulerAncestralDiscreteScheduler with a seeded generator == sample_karras_euler_ancestral given the same draws."""
    import torch

    n, seed = 10, 1234
    d = _diffusers("EulerAncestralDiscreteScheduler", timestep_spacing="leading", steps_offset=1)
    sched = _schedule_of(d)
    sig = interpolated_sigmas(sched, n, timestep_spacing="leading", steps_offset=1)
    x = _start(float(sig[0]))
    theirs = _run_diffusers(d, x, n, generator_seed=seed)
    gen = torch.Generator().manual_seed(seed)  # diffusers draws one float32 N(0, I) per step
    draws = np.stack(
        [torch.randn(SHAPE, generator=gen, dtype=torch.float32).double().numpy() for _ in range(n)]
    )
    ours = sample_karras_euler_ancestral(
        karras_denoiser(eps_np, sched, prediction_type="eps"), x, sigmas=sig, noise=draws, eta=1.0
    )
    assert _rel(ours, theirs) < 2e-6


# --------------------------------------------------------------------------------------------
# k-diffusion loops, re-derived
# --------------------------------------------------------------------------------------------


def kd_to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def kd_sample_euler(
    model, x, sigmas, draws, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, heun=False
):
    """k-diffusion sample_euler / sample_heun (draw i at step i, used when γ_i > 0)."""
    n = len(sigmas) - 1
    for i in range(n):
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + draws[i] * s_noise * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat)
        d = kd_to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if not heun or sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = kd_to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


def kd_sample_euler_ancestral(model, x, sigmas, draws, eta=1.0, s_noise=1.0):
    """k-diffusion sample_euler_ancestral with get_ancestral_step."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s)
        up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5) if eta else 0.0
        down = (s_next**2 - up**2) ** 0.5
        x = x + kd_to_d(x, s, denoised) * (down - s)
        if s_next > 0:
            x = x + draws[i] * s_noise * up
    return x


def _kd_denoiser(x, sigma):
    """A nonlinear denoiser D(x; σ) (host σ for the re-derivation, shape (B,) for refdiff)."""
    s = np.asarray(sigma, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.tanh(x) / (1.0 + s * s) + 0.05 * s


@pytest.mark.parametrize("heun", [False, True])
@pytest.mark.parametrize("churn", [0.0, 40.0])
def test_k_diffusion_euler_heun(heun, churn):
    """k-diffusion sample_euler / sample_heun (s_churn, s_noise) == sample_karras_euler / _heun with S_churn, S_noise."""
    sig = karras_sigmas(12, 0.002, 80.0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(SHAPE) * 80.0
    draws = rng.standard_normal((12,) + SHAPE)
    ref = kd_sample_euler(
        _kd_denoiser,
        x,
        [float(v) for v in sig],
        draws,
        s_churn=churn,
        s_tmin=0.05,
        s_tmax=50.0,
        s_noise=1.003,
        heun=heun,
    )
    fn = sample_karras_heun if heun else sample_karras_euler
    ours = fn(
        _kd_denoiser,
        x,
        sigmas=sig,
        noise=draws,
        S_churn=churn,
        S_tmin=0.05,
        S_tmax=50.0,
        S_noise=1.003,
    )
    assert _rel(ours, ref) < 1e-13


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_k_diffusion_euler_ancestral(eta):
    """k-diffusion sample_euler_ancestral(eta, s_noise) == sample_karras_euler_ancestral(eta=, S_noise=)."""
    sig = karras_sigmas(10, 0.002, 80.0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(SHAPE) * 80.0
    draws = rng.standard_normal((10,) + SHAPE)
    ref = kd_sample_euler_ancestral(
        _kd_denoiser, x, [float(v) for v in sig], draws, eta=eta, s_noise=0.9
    )
    ours = sample_karras_euler_ancestral(
        _kd_denoiser, x, sigmas=sig, noise=draws, eta=eta, S_noise=0.9
    )
    assert _rel(ours, ref) < 1e-13


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_kdpm2_discrete(spacing, offset):
    """KDPM2DiscreteScheduler (ε) == sample_karras_dpm_2 with karras_denoiser(timestep='interp').

    diffusers evaluates the second stage at the geometric midpoint √(σ_i σ_{i+1}) and calls the
    network at its fractional timestep (log-σ interpolation, ``_sigma_to_t``), which the bridge's
    ``timestep="interp"`` reproduces; the last step to σ = 0 is Euler in both (2N - 1 calls).
    """
    from refdiff.samplers.karras_dpm import sample_karras_dpm_2

    n = 8
    d = _diffusers("KDPM2DiscreteScheduler", timestep_spacing=spacing, steps_offset=offset)
    sched = _schedule_of(d)
    sig = interpolated_sigmas(sched, n, timestep_spacing=spacing, steps_offset=offset)
    x = _start(float(sig[0]))
    theirs = _run_diffusers(d, x, n)
    ours = sample_karras_dpm_2(
        karras_denoiser(eps_np, sched, prediction_type="eps", timestep="interp"), x, sigmas=sig
    )
    assert _rel(ours, theirs) < 2e-6
