"""Helpers shared by the sampler loops: explicit noise draws, step counts, model-output checks,
and the per-step ``callback(info)`` every loop reports to."""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any
from collections.abc import Callable

import numpy as np

from .._errors import RefdiffShapeError, RefdiffValueError, check_int, check_real, fail
from .._typing import Array, DType, Noise
from .._xp import array_namespace, device_of

__all__ = [
    "StepInfo",
    "draw_noise",
    "check_steps",
    "check_output",
    "check_eta",
    "check_decreasing",
    "step_reporter",
    "check_finite",
    "batch_full",
]


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a sampler loop reports at each step (k-diffusion's ``callback`` dict, as fields).

    Attributes
    ----------
    i : int
        The step index, 0 for the first step taken.
    n : int
        The number of steps of the loop.
    x : array
        The state the step starts from.
    denoised : array or None
        The step's prediction of x0 at that state (None where a loop forms none, e.g. the
        score-SDE predictors, which use the score directly).
    t : float or int or None
        The step's time: the training-schedule timestep the model was called with (discrete
        family), or the continuous time t (vp and sde families); None on the σ scale.
    sigma : float or None
        The noise level σ of the state on the variance-exploding scale, where the loop has one
        (Karras family; σ_t/α_t for the vp family).
    """

    i: int
    n: int
    x: Any
    denoised: Any = None
    t: Any = None
    sigma: float | None = None

    def __getitem__(self, key: str) -> Any:
        """``info["x"]`` as well as ``info.x`` (k-diffusion callbacks index a dict)."""
        return getattr(self, key)


def step_reporter(callback: Callable | None, progress: Callable | None) -> Callable | None:
    """One per-step hook from ``callback(info)`` and the older ``progress(i + 1, n)``; None when neither is given."""
    if callback is not None and not callable(callback):
        fail("callback", callback, "expected None or a callable callback(info: StepInfo)")
    if progress is not None and not callable(progress):
        fail("progress", progress, "expected None or a callable progress(done, total)")
    if callback is None and progress is None:
        return None

    def report(info: StepInfo) -> None:
        if callback is not None:
            callback(info)
        if progress is not None:
            progress(info.i + 1, info.n)

    return report


def _nonfinite(a: Array) -> bool:
    if a is None:
        return False
    xp = array_namespace(a)
    return not bool(xp.all(xp.isfinite(a)))


def check_finite(callback: Callable | None = None) -> Callable:
    """A ``callback(info)`` that raises at the first step whose state or x0 prediction is not finite, then calls ``callback``.

    Use it as ``sample_ddim(..., callback=check_finite())``: a NaN or ±inf model output (or a state
    gone non-finite) stops the loop at the step where it first appears instead of returning an
    all-NaN sample. Each check reads one boolean back from the device.

    Examples
    --------
    >>> import numpy as np
    >>> from refdiff.edm import karras_sigmas
    >>> from refdiff.samplers import sample_karras_euler
    >>> broken = lambda x, sigma: x * np.nan
    >>> sample_karras_euler(broken, np.ones((1, 2)), sigmas=karras_sigmas(3, 0.1, 10.0),
    ...                     callback=check_finite())
    Traceback (most recent call last):
    ...
    refdiff._errors.RefdiffValueError: non-finite values in the x0 prediction (denoised) at step 0 of 3 (sigma=10.0): the model returned NaN or inf there (or the state overflowed); check the model and its weights
    """
    if callback is not None and not callable(callback):
        fail("callback", callback, "expected None or a callable callback(info: StepInfo)")

    def guard(info: StepInfo) -> None:
        for what, a in (("state x", info.x), ("x0 prediction (denoised)", info.denoised)):
            if _nonfinite(a):
                where = f"t={info.t!r}" if info.t is not None else f"sigma={info.sigma!r}"
                raise RefdiffValueError(
                    f"non-finite values in the {what} at step {info.i} of {info.n} ({where}): "
                    "the model returned NaN or inf there (or the state overflowed); check the "
                    "model and its weights"
                )
        if callback is not None:
            callback(info)

    return guard


def draw_noise(noise: Noise, i: int, like: Array, *, name: str = "noise") -> Array:
    """The i-th standard-normal draw: ``noise[i]`` of an array of draws, or ``noise(i)`` of a callable."""
    if noise is None:
        fail(
            name,
            noise,
            "this sampler is stochastic: pass noise= (an array of draws with the "
            "draw index first, or a callable noise(i) -> array of x's shape)",
        )
    z = noise(i) if callable(noise) else noise[i, ...]
    if tuple(z.shape) != tuple(like.shape):
        raise RefdiffShapeError(
            f"{name} draw {i} has shape {tuple(z.shape)} but x has shape "
            f"{tuple(like.shape)}; they must match"
        )
    return z


def check_steps(steps: int, *, name: str = "steps") -> int:
    """A positive integer number of steps."""
    return check_int(name, steps, minimum=1)


def check_output(out: Array, x: Array, *, name: str = "model output") -> Array:
    """Raise unless the model output has x's shape."""
    if tuple(getattr(out, "shape", ())) != tuple(x.shape):
        raise RefdiffShapeError(
            f"{name} has shape {tuple(getattr(out, 'shape', ()))} but x has "
            f"shape {tuple(x.shape)}; they must match"
        )
    return out


def check_eta(eta: Any) -> float:
    """η ≥ 0 (the DDIM / ancestral noise scale)."""
    return check_real("eta", eta, lo=0.0)


def check_decreasing(name: str, values: Array) -> None:
    """Raise unless a 1-D host array of noise levels or times strictly decreases."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        fail(name, values, "expected a 1-D grid with at least two entries")
    if not np.all(np.isfinite(v)):
        fail(name, values, "every entry must be finite")
    d = np.diff(v)
    if np.any(d >= 0):
        i = int(np.flatnonzero(d >= 0)[0])
        raise RefdiffValueError(
            f"{name} must strictly decrease; entry {i + 1} ({float(v[i + 1])!r}) "
            f"is not below entry {i} ({float(v[i])!r})"
        )


def batch_full(x: Array, value: float, *, dtype: DType | None = None) -> Array:
    """``value`` broadcast to shape (B,) in x's namespace and device (x's dtype unless given): the model's t or σ argument."""
    xp = array_namespace(x)
    return xp.full(
        (x.shape[0],), value, dtype=x.dtype if dtype is None else dtype, device=device_of(x)
    )


def host_table_index(v: float, table: list[float], mode: str) -> float:
    """The index of host value v on an increasing host table: the nearest (ties to the lower) or the fractional one (linear between neighbours, clipped to the ends)."""
    n = len(table)
    if n == 1:
        return 0.0
    below = bisect.bisect_right(table, v) - 1
    if mode == "nearest":
        lo = min(max(below, 0), n - 1)
        hi = min(lo + 1, n - 1)
        return float(hi if abs(v - table[hi]) < abs(v - table[lo]) else lo)
    lo = min(max(below, 0), n - 2)
    w = min(max((v - table[lo]) / (table[lo + 1] - table[lo]), 0.0), 1.0)
    return lo + w
