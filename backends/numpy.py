"""The NumPy backend: the oracle itself (float64 on the CPU), and NumPy float32 as a checked path."""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Mapping

import numpy as np

from ._base import Backend, quantise

__all__ = ["NumpyBackend"]


class NumpyBackend(Backend):
    """NumPy through ``array_api_compat.numpy``; the reference's own backend.

    Its float64 run is the oracle run against itself (a check of the harness and of determinism);
    its float32 run checks the reference's float32 path against the float64 oracle.
    """

    name = "numpy"
    install_hint = "pip install numpy"

    def __init__(
        self,
        device: Any = None,
        *,
        overrides: Mapping[str, Callable] | None = None,
        known_failures: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        import array_api_compat.numpy as xp

        if device not in (None, "cpu"):
            from refdiff._errors import fail

            fail("device", device, "the numpy backend runs on the host only: use None or 'cpu'")
        super().__init__(
            xp, name=name, device="cpu", overrides=overrides, known_failures=known_failures
        )

    @property
    def float_dtypes(self) -> tuple[str, ...]:
        """float64 and float32."""
        return ("float64", "float32")

    def asarray(self, a, dtype: str | None = None):
        """A fresh NumPy array (copied, so the harness's inputs cannot be modified in place)."""
        return np.array(a, dtype=None if dtype is None else np.dtype(dtype), copy=True)

    def to_numpy(self, x) -> np.ndarray:
        """The array itself as an ndarray (copied)."""
        return np.array(x, copy=True)

    def is_native(self, x) -> bool:
        """NumPy arrays and NumPy scalars (0-d reductions) are native."""
        return isinstance(x, (np.ndarray, np.generic))

    def make_rng(self, seed: int) -> np.random.Generator:
        """np.random.default_rng(seed) (PCG64)."""
        return np.random.default_rng(seed)

    def normal(self, rng, shape, dtype: str = "float64"):
        """Standard normal draws in the requested dtype (float32 drawn natively by NumPy)."""
        if dtype in ("float64", "float32"):
            return rng.standard_normal(tuple(shape), dtype=np.dtype(dtype))
        return self.asarray(quantise(rng.standard_normal(tuple(shape)), dtype), dtype)

    def describe(self) -> dict[str, Any]:
        """Versions plus the BLAS NumPy was built with, when NumPy reports it."""
        d = super().describe()
        d["role"] = "oracle (float64 reference)"
        return d
