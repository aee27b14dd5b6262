"""Peer rows of docs/PEERS.md, "Newer samplers" section: diffusers' UniPC, DEIS, PNDM and flow-matching schedulers.

Each test runs the live diffusers scheduler's ``set_timesteps`` / ``step`` loop on CPU torch with
a t-dependent network and the single refdiff call (named options only) that reproduces it, and
asserts the agreement written in the row. diffusers keeps its σ / ᾱ tables in float32 (and the
flow schedulers step in float32), so the refdiff schedule is built from diffusers' own float32 ᾱ
table and the agreement is at float32 level: max |refdiff − diffusers| / max |diffusers|.

Time conventions bridged by options: diffusers' integer timestep k of a 1000-step discrete
schedule is refdiff's continuous time t = (k + 1)/1000 on ``NoiseScheduleVP.discrete`` (clip off)
and the model sees k through ``model_time="dpm_solver"``; the flow schedulers feed the network
σ·1000 (``model_time="diffusers"``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import schedules
from refdiff.samplers.deis import sample_deis
from refdiff.samplers.dpm_solver import NoiseScheduleVP
from refdiff.samplers.flow import (
    FlowSchedule,
    resolution_shift,
    sample_flow_euler,
    sample_flow_heun,
    shift_time,
)
from refdiff.samplers.pndm import sample_pndm
from refdiff.samplers.unipc import sample_unipc

diffusers = pytest.importorskip("diffusers", reason="diffusers (test extra) checks the live peer")
torch = pytest.importorskip("torch", reason="diffusers runs on torch")

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # diffusers' numpy-2 __array__ notice

SHAPE = (2, 3, 4, 4)
TOL = 5e-6  # float32 tables and steps on the diffusers side (measured: at most 1.6e-6)


def net(x, t):
    """A network with a t-dependent output (NumPy): 0.3 x + 0.1 sin(t/100) (t of shape (B,))."""
    t = np.asarray(t, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    return 0.3 * x + 0.1 * np.sin(t / 100.0)


def _x_T(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE)


def _run(sched, x: np.ndarray, n: int, **set_kw) -> np.ndarray:
    sched.set_timesteps(n, **set_kw)
    xt = torch.from_numpy(x.astype(np.float32))
    for t in sched.timesteps:
        out = net(xt.double().numpy(), np.full(SHAPE[0], float(t)))
        xt = sched.step(torch.from_numpy(out.astype(np.float32)), t, xt).prev_sample
    return xt.double().numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _vp_of(sched) -> NoiseScheduleVP:
    return NoiseScheduleVP.discrete(
        alphas_cumprod=sched.alphas_cumprod.double().numpy(), clip_lambda=None
    )


def _linspace_times(n: int) -> np.ndarray:
    """diffusers' "linspace" spacing: round(linspace(0, 999, n + 1))[::-1][:-1] (integer k)."""
    return np.linspace(0, 999, n + 1).round()[::-1][:-1]


# --------------------------------------------------------------------------------------------
# UniPC
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, final", [("bh2", "zero"), ("bh2", "sigma_min"), ("bh1", "sigma_min")]
)
@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_matches_diffusers(variant, final, corrector, order):
    n = 10
    sched = diffusers.UniPCMultistepScheduler(
        solver_type=variant,
        solver_order=order,
        final_sigmas_type=final,
        disable_corrector=[] if corrector else list(range(n)),
    )
    x = _x_T()
    ref = _run(sched, x, n)
    k = _linspace_times(n)
    assert np.array_equal(sched.timesteps.numpy(), k)
    grid = (
        {"timesteps": (k + 1) / 1000, "final_sigma": "zero"}
        if final == "zero"
        else {"timesteps": np.append((k + 1) / 1000, 1 / 1000)}
    )
    out = sample_unipc(
        net,
        x,
        noise_schedule=_vp_of(sched),
        steps=n,
        order=order,
        variant=variant,
        use_corrector=corrector,
        model_time="dpm_solver",
        **grid,
    )
    assert _rel(out, ref) < TOL


def test_unipc_bh1_onto_zero_is_nan_in_diffusers():
    """diffusers' bh1 step onto σ = 0 forms B(h)·0 with B(h) = −h = −inf: every output is NaN.
    refdiff's step onto clean data is the data prediction (the h → ∞ limit of either B(h)), which is
    what diffusers' bh2 step computes there."""
    n = 6
    sched = diffusers.UniPCMultistepScheduler(solver_type="bh1", final_sigmas_type="zero")
    x = _x_T()
    assert np.all(np.isnan(_run(sched, x, n)))
    ref = _run(diffusers.UniPCMultistepScheduler(solver_type="bh2", final_sigmas_type="zero"), x, n)
    k = _linspace_times(n)
    kw = dict(
        noise_schedule=_vp_of(sched),
        steps=n,
        timesteps=(k + 1) / 1000,
        final_sigma="zero",
        model_time="dpm_solver",
    )
    bh1 = sample_unipc(net, x, variant="bh1", **kw)
    assert np.all(np.isfinite(bh1))
    assert _rel(sample_unipc(net, x, variant="bh2", **kw), ref) < TOL


def test_unipc_noise_prediction_matches_diffusers():
    n = 8
    sched = diffusers.UniPCMultistepScheduler(
        predict_x0=False, solver_type="bh2", solver_order=2, final_sigmas_type="sigma_min"
    )
    x = _x_T(1)
    ref = _run(sched, x, n)
    k = _linspace_times(n)
    out = sample_unipc(
        net,
        x,
        noise_schedule=_vp_of(sched),
        steps=n,
        order=2,
        variant="bh2",
        algorithm_type="noise_prediction",
        timesteps=np.append((k + 1) / 1000, 1 / 1000),
        model_time="dpm_solver",
    )
    assert _rel(out, ref) < TOL


# --------------------------------------------------------------------------------------------
# DEIS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n", [8, 20])
def test_deis_matches_diffusers(order, n):
    sched = diffusers.DEISMultistepScheduler(solver_order=order)
    x = _x_T(2)
    ref = _run(sched, x, n)
    k = _linspace_times(n)
    out = sample_deis(
        net,
        x,
        noise_schedule=_vp_of(sched),
        steps=n,
        order=order,
        timesteps=np.append((k + 1) / 1000, 1 / 1000),
        model_time="dpm_solver",
    )
    assert _rel(out, ref) < TOL


# --------------------------------------------------------------------------------------------
# PNDM
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip_prk_steps", [False, True])
@pytest.mark.parametrize("n", [10, 25])
def test_pndm_matches_diffusers(skip_prk_steps, n):
    sched = diffusers.PNDMScheduler(skip_prk_steps=skip_prk_steps)
    x = _x_T(3)
    ref = _run(sched, x, n)
    base = schedules.from_alphas_cumprod(sched.alphas_cumprod.double().numpy())
    out = sample_pndm(
        net,
        x,
        schedule=base,
        steps=n,
        spacing="leading",
        final_alpha_bar="alpha_bar_0",
        skip_prk_steps=skip_prk_steps,
    )
    assert _rel(out, ref) < TOL


def test_pndm_steps_offset_matches_diffusers():
    """Stable Diffusion's configuration: scaled_linear β, steps_offset=1, skip_prk_steps."""
    n = 12
    sched = diffusers.PNDMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        skip_prk_steps=True,
    )
    x = _x_T(4)
    ref = _run(sched, x, n)
    base = schedules.from_alphas_cumprod(sched.alphas_cumprod.double().numpy())
    out = sample_pndm(
        net,
        x,
        schedule=base,
        steps=n,
        spacing="leading",
        steps_offset=1,
        final_alpha_bar="alpha_bar_0",
        skip_prk_steps=True,
    )
    assert _rel(out, ref) < TOL


# --------------------------------------------------------------------------------------------
# Flow matching
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [4, 28])
def test_flow_euler_matches_diffusers(shift, n):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    x = _x_T(5)
    ref = _run(sched, x, n)
    out = sample_flow_euler(
        net,
        x,
        noise_schedule=FlowSchedule(shift=shift),
        steps=n,
        spacing="diffusers",
        model_time="diffusers",
    )
    assert _rel(out, ref) < TOL


def test_flow_euler_dynamic_shift_matches_diffusers():
    """Resolution-dependent shifting (use_dynamic_shifting, μ from the token count)."""
    n, seq_len = 12, 1024
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mu = 0.5 + (1.15 - 0.5) * (seq_len - 256) / (4096 - 256)  # the pipelines' calculate_shift
    x = _x_T(6)
    ref = _run(sched, x, n, mu=mu)
    out = sample_flow_euler(
        net,
        x,
        noise_schedule=FlowSchedule(shift=resolution_shift(seq_len)),
        steps=n,
        spacing="diffusers_dynamic",
        model_time="diffusers",
    )
    assert _rel(out, ref) < TOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_heun_matches_diffusers(shift):
    n = 10
    sched = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    x = _x_T(7)
    ref = _run(sched, x, n)
    out = sample_flow_heun(
        net,
        x,
        noise_schedule=FlowSchedule(shift=shift),
        steps=n,
        spacing="diffusers",
        model_time="diffusers",
    )
    assert _rel(out, ref) < TOL


def test_the_named_options_matter():
    """Each bridging option changes the result far beyond TOL (the rows above are not vacuous)."""
    n = 10
    x = _x_T()
    k = _linspace_times(n)
    sched = diffusers.UniPCMultistepScheduler(solver_type="bh2", final_sigmas_type="sigma_min")
    ns = _vp_of(sched)
    ref = _run(sched, x, n)
    kw = dict(noise_schedule=ns, steps=n, timesteps=np.append((k + 1) / 1000, 1 / 1000))
    assert _rel(sample_unipc(net, x, model_time="dpm_solver", variant="bh1", **kw), ref) > 100 * TOL
    assert _rel(sample_unipc(net, x, model_time="continuous", **kw), ref) > 100 * TOL
    assert (
        _rel(sample_unipc(net, x, model_time="dpm_solver", lower_order_final="never", **kw), ref)
        > 100 * TOL
    )
    ref = _run(diffusers.DEISMultistepScheduler(solver_order=3), x, n)
    assert (
        _rel(sample_deis(net, x, order=3, solver_type="rhoab", model_time="dpm_solver", **kw), ref)
        > 100 * TOL
    )
    ref = _run(diffusers.PNDMScheduler(), x, n)
    base = schedules.from_alphas_cumprod(diffusers.PNDMScheduler().alphas_cumprod.double().numpy())
    assert (
        _rel(
            sample_pndm(
                net,
                x,
                schedule=base,
                steps=n,
                spacing="leading",
                final_alpha_bar="alpha_bar_0",
                skip_prk_steps=True,
            ),
            ref,
        )
        > 100 * TOL
    )
    ref = _run(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), x, n)
    assert (
        _rel(
            sample_flow_euler(
                net, x, noise_schedule=FlowSchedule(shift=3.0), steps=n, model_time="diffusers"
            ),
            ref,
        )
        > 100 * TOL
    )


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_unipc_on_flow_sigmas_matches_diffusers(shift):
    """UniPC on the rectified-flow path (diffusers' use_flow_sigmas, flow_prediction): refdiff runs
    it as the VP-style solver on ``NoiseScheduleVP.from_sde(FlowSchedule())`` with the flow
    velocity as ``model_type``; diffusers feeds the network ⌊N·σ⌋ (its int64 timesteps)."""
    n = 10
    sched = diffusers.UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction"
    )
    x = _x_T(8)
    ref = _run(sched, x, n)
    sigmas = shift_time(np.linspace(1, 1 / 1000, n + 1)[:-1], shift)
    sigmas[0] -= 1e-6  # diffusers keeps the first σ below 1 (λ finite)
    out = sample_unipc(
        net,
        x,
        noise_schedule=NoiseScheduleVP.from_sde(FlowSchedule()),
        steps=n,
        model_type="flow",
        timesteps=sigmas,
        final_sigma="zero",
        model_time=lambda t: math.floor(1000 * t),
    )
    assert _rel(out, ref) < TOL
