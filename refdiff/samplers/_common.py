"""Helpers shared by the sampler loops: explicit noise draws, step counts, model-output checks."""

from __future__ import annotations

from typing import Callable

from .._errors import RefdiffShapeError, RefdiffValueError, check_int, check_real, fail
from .._xp import array_namespace

__all__ = ["draw_noise", "check_steps", "check_output", "check_eta", "check_decreasing",
           "call_progress"]


def draw_noise(noise, i: int, like, *, name: str = "noise"):
    """The i-th standard-normal draw: ``noise[i]`` of an array of draws, or ``noise(i)`` of a callable."""
    if noise is None:
        fail(name, noise, "this sampler is stochastic: pass noise= (an array of draws with the "
             "draw index first, or a callable noise(i) -> array of x's shape)")
    z = noise(i) if callable(noise) else noise[i, ...]
    if tuple(z.shape) != tuple(like.shape):
        raise RefdiffShapeError(f"{name} draw {i} has shape {tuple(z.shape)} but x has shape "
                                f"{tuple(like.shape)}; they must match")
    return z


def check_steps(steps, *, name: str = "steps") -> int:
    """A positive integer number of steps."""
    return check_int(name, steps, minimum=1)


def check_output(out, x, *, name: str = "model output"):
    """Raise unless the model output has x's shape."""
    if tuple(getattr(out, "shape", ())) != tuple(x.shape):
        raise RefdiffShapeError(f"{name} has shape {tuple(getattr(out, 'shape', ()))} but x has "
                                f"shape {tuple(x.shape)}; they must match")
    return out


def check_eta(eta) -> float:
    """η ≥ 0 (the DDIM / ancestral noise scale)."""
    return check_real("eta", eta, lo=0.0)


def check_decreasing(name: str, values) -> None:
    """Raise unless a 1-D host array of noise levels or times strictly decreases."""
    import numpy as np
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        fail(name, values, "expected a 1-D grid with at least two entries")
    if not np.all(np.isfinite(v)):
        fail(name, values, "every entry must be finite")
    d = np.diff(v)
    if np.any(d >= 0):
        i = int(np.flatnonzero(d >= 0)[0])
        raise RefdiffValueError(f"{name} must strictly decrease; entry {i + 1} ({float(v[i + 1])!r}) "
                                f"is not below entry {i} ({float(v[i])!r})")


def call_progress(progress: Callable | None, i: int, n: int) -> None:
    """Report step i of n to an optional progress callback."""
    if progress is not None:
        progress(i, n)


def xp_of(x):
    """The array namespace of x."""
    return array_namespace(x)
