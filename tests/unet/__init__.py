"""Tests of the reference UNet (refdiff.unet) and its PyTorch twin; shared finite-difference helpers."""

from __future__ import annotations

import contextlib

import numpy as np


def single_thread_blas():
    """Limit BLAS to one thread (tiny matmuls; threads only add contention on a busy 2-core box)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: the tests are only slower without it
        return contextlib.nullcontext()
    return threadpool_limits(1)


def central_difference(f, a: np.ndarray, index, h: float) -> float:
    """(f(a + h e_i) − f(a − h e_i)) / 2h, restoring ``a`` afterwards (f reads a)."""
    old = a[index]
    a[index] = old + h
    fp = f()
    a[index] = old - h
    fm = f()
    a[index] = old
    return (fp - fm) / (2.0 * h)


def numeric_gradient(f, a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite-difference gradient of the scalar f() with respect to every entry of ``a``."""
    g = np.zeros_like(a)
    for index in np.ndindex(*a.shape):
        g[index] = central_difference(f, a, index, h)
    return g


def normwise_rel_err(approx: np.ndarray, exact: np.ndarray) -> float:
    """max |approx − exact| / max |exact|."""
    return float(np.max(np.abs(approx - exact)) / np.max(np.abs(exact)))
