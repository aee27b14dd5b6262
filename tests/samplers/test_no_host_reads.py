"""No sampler loop reads an array back to the host once it has started stepping.

On a GPU every ``float(x)``, ``bool(x)``, ``x.item()`` or host copy of a device array waits for the
device to finish (a sync per step that leaves the GPU idle between network calls). The loops
compute their step plans from host floats before the first network call; from then on they may
only launch array work. Checked here on torch (CPU) with a function mode that raises on every
host read once the network has been called the first time.
"""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import schedules as S
from refdiff import sde as SDE
from refdiff.samplers import adapters, get_sampler, list_samplers
from refdiff.samplers.flow import FlowSchedule

torch = pytest.importorskip("torch")
from torch.overrides import TorchFunctionMode  # noqa: E402

HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
    torch.Tensor.__index__,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__array__,
}

#: Loops that must read back by design: the adaptive solvers accept or reject each step from an
#: error norm on the host (Jolicoeur-Martineau et al. 2021; Lu et al. 2022a, §4.2).
READS_BY_DESIGN = {"dpm_solver_adaptive", "karras_dpm_adaptive"}
#: SciPy's RK45 integrates NumPy arrays on the host (oracle-side only).
HOST_ONLY = {"ode_rk45"}


class HostRead(AssertionError):
    pass


class _NoHostReads(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise HostRead(f"host read {getattr(func, '__name__', func)} inside the loop")
        return func(*args, **(kwargs or {}))


class _Guard:
    """A network that turns the no-host-read mode on at its first call (the loop has started)."""

    def __init__(self):
        self.mode = _NoHostReads()
        self.on = False
        self.calls = 0

    def __call__(self, x, t):
        if not self.on:
            self.on = True
            self.mode.__enter__()
        self.calls += 1
        return 0.3 * x + t.to(x.dtype)[:, None] * 1e-4

    def close(self):
        if self.on:
            self.mode.__exit__(None, None, None)
            self.on = False


def _run(name, guard, x):
    g = torch.Generator().manual_seed(0)

    def noise(i):
        return torch.randn(tuple(x.shape), generator=g, dtype=x.dtype)

    if get_sampler(name).family == "flow":
        return get_sampler(name).fn(guard, x, noise_schedule=FlowSchedule(shift=3.0), steps=6)
    if name == "ncsn_annealed_langevin":
        sde = SDE.VESDE(sigma_min=0.01, sigma_max=5.0, N=10)
        return get_sampler(name).fn(guard, x, sde=sde, steps=4, n_steps_each=2, noise=noise)
    family = get_sampler(name).family
    steps = 40 if family == "sde" else 8
    return adapters.sample_with_discrete_model(
        name, guard, x, schedule=S.linear(1000), steps=steps, noise=noise
    )


#: Every registered sampler (a new family needs a way to run here: sample_with_discrete_model
#: refuses one it has no bridge for, which fails this test).
LOOPS = [n for n in list_samplers() if n not in HOST_ONLY]


@pytest.mark.parametrize("name", LOOPS)
def test_the_loop_reads_nothing_back_after_the_first_network_call(name):
    x = torch.as_tensor(np.random.default_rng(3).standard_normal((2, 2)))
    guard = _Guard()
    try:
        if name in READS_BY_DESIGN:
            with pytest.raises(HostRead):
                _run(name, guard, x)
            return
        out = _run(name, guard, x)
    finally:
        guard.close()
    assert guard.calls >= 2 and out.shape == x.shape
    assert bool(torch.isfinite(out).all())


def test_the_guard_catches_a_host_read():
    """The mode is live once the network has run: a per-step ``float(...)`` is caught."""
    guard = _Guard()
    x = torch.ones((2, 2), dtype=torch.float64)
    try:
        y = guard(x, torch.zeros(2, dtype=torch.int64))
        with pytest.raises(HostRead):
            float(y[0, 0])
        with pytest.raises(HostRead):
            bool((y > 0).all())
    finally:
        guard.close()
    assert float(y[0, 0]) == pytest.approx(0.3)
