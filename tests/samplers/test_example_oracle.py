"""examples/oracle_in_your_tests.py runs green, and its checks catch the bugs it claims to catch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "oracle_in_your_tests.py"


@pytest.fixture()
def example():
    spec = importlib.util.spec_from_file_location("oracle_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_runs_as_a_script():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


def test_example_catches_the_stride_bug(example, monkeypatch):
    """diffusers pitfall: prev = t − T//n does not match linspace spacing (issue 12633)."""
    monkeypatch.setattr(
        example.MyDDIM, "prev_timestep", lambda self, t: int(t) - self.T // len(self.timesteps)
    )
    with pytest.raises(AssertionError):
        example.test_stochastic_loop_has_refdiffs_output_law()


def test_example_catches_a_final_alpha_bar_of_alpha_bar_0(example, monkeypatch):
    """The LDM pitfall: the last step lands at ᾱ_0 instead of 1, leaving √(1−ᾱ_0)·ε̂."""
    orig = example.MyDDIM.step

    def step(self, eps, t, x, *, eta=0.0, noise=None):
        if self.prev_timestep(t) < 0:
            a, a0 = self.alphas_cumprod[t], self.alphas_cumprod[0]
            x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
            return (np.sqrt(a0) * x0 + np.sqrt(1 - a0) * eps).astype(self.dtype)
        return orig(self, eps, t, x, eta=eta, noise=noise)

    monkeypatch.setattr(example.MyDDIM, "step", step)
    with pytest.raises(AssertionError):
        example.test_full_loop_is_exact_on_point_mass_data()


def test_example_catches_a_float16_table(example, monkeypatch):
    monkeypatch.setattr(example, "make_scheduler", lambda: example.MyDDIM(dtype=np.float16))
    with pytest.raises(AssertionError):
        example.test_one_step_matches_refdiff()
