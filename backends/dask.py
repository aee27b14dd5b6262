"""The Dask backend: lazy, chunked NumPy arrays through ``array_api_compat.dask.array`` (host CPU).

``dask`` is imported only when the backend is built. The harness's inputs are split into two
chunks along their first axis (when it has two or more entries), so every check runs across a
chunk boundary; nothing is computed until a result is copied back to the host. Where Dask itself
departs from the array API standard, the deviation is declared in :data:`KNOWN_FAILURES` with the
upstream behaviour it comes from.

Inputs get unique graph names (``from_array(..., name=False)``). Dask's default name is a hash of
the content, and integer-array indexing builds an internal chunk-offset array ``[0]`` the same
way: an index array equal to ``[0]`` then shares its name, and ``take(table, t)`` declares the
table's shape instead of t's (https://github.com/dask/dask/issues/6709; the computed values are
right). Unique names keep that collision out of the suite, which checks the reference.
"""

from __future__ import annotations

import importlib
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np

from ._base import Backend, BackendUnavailableError, quantise

__all__ = ["DaskBackend", "DaskKeys", "INSTALL_HINT", "KNOWN_FAILURES"]

INSTALL_HINT = "pip install 'dask[array]', or pip install 'refdiff[dask]'"

#: Check name -> the upstream Dask behaviour that makes it fail (empty: none known today).
KNOWN_FAILURES: dict[str, str] = {}


def _import_dask_array():
    try:
        return importlib.import_module("dask.array")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'dask' needs dask.array, which is not installed: {INSTALL_HINT}"
        ) from exc


class DaskKeys:
    """Seeded Dask generators: draw k uses ``dask.array.random.default_rng((seed, k))``."""

    def __init__(self, seed: int):
        self.seed, self.draws = int(seed), 0

    def next(self, da: Any) -> Any:
        """A generator never used before (the stream advances)."""
        self.draws += 1
        return da.random.default_rng((self.seed, self.draws - 1))


class DaskBackend(Backend):
    """Dask arrays of NumPy chunks, on the host CPU.

    Parameters
    ----------
    device : {None, "cpu"}
        Dask arrays (of NumPy chunks) live on the host.
    chunks : {"split", "auto"}
        "split" (default) cuts the first axis of every harness input into two chunks; "auto"
        leaves the choice to Dask (one chunk for arrays of the suite's sizes).
    """

    name = "dask"
    install_hint = INSTALL_HINT

    def __init__(
        self,
        device: Any = None,
        *,
        chunks: str = "split",
        overrides: Mapping[str, Callable] | None = None,
        known_failures: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        from refdiff._errors import check_choice, fail

        self._da = _import_dask_array()
        import array_api_compat.dask.array as xp

        if device not in (None, "cpu"):
            fail("device", device, "the dask backend runs on the host CPU only: use None or 'cpu'")
        check_choice("chunks", chunks, ("split", "auto"))
        self.chunks = chunks
        failures = dict(KNOWN_FAILURES)
        failures.update(known_failures or {})
        super().__init__(xp, name=name, device="cpu", overrides=overrides, known_failures=failures)
        if device is None:
            self.device_source = "backend default"

    @property
    def float_dtypes(self) -> tuple[str, ...]:
        """float64, float32 and the opt-in float16 (NumPy chunks)."""
        return ("float64", "float32", "float16")

    def dtype(self, name: str):
        """NumPy dtypes by name (float16 included)."""
        if name == "float16":
            return np.float16
        return super().dtype(name)

    def dtype_name(self, dtype) -> str:
        """The NumPy name of a dtype."""
        return np.dtype(dtype).name

    def asarray(self, a, dtype: str | None = None):
        """A Dask array of a fresh host copy, split in two along the first axis ("split")."""
        h = np.array(a, dtype=None if dtype is None else np.dtype(dtype), copy=True)
        if self.chunks == "split" and h.ndim and h.shape[0] >= 2:
            chunks = ((h.shape[0] + 1) // 2,) + tuple(h.shape[1:])
        else:
            chunks = "auto" if h.ndim else ()
        return self._da.from_array(h, chunks=chunks, name=False)

    def to_numpy(self, x) -> np.ndarray:
        """Compute the array and copy it to the host."""
        return np.array(x.compute() if hasattr(x, "compute") else x, copy=True)

    def is_native(self, x) -> bool:
        """Only Dask arrays are native."""
        return isinstance(x, self._da.Array)

    def device_of(self, x):
        """Dask arrays of NumPy chunks live on the host: "cpu"."""
        from refdiff._xp import device_of

        return device_of(x)

    def make_rng(self, seed: int) -> DaskKeys:
        """A :class:`DaskKeys` stream of seeded ``dask.array.random`` generators."""
        return DaskKeys(seed)

    def normal(self, rng: DaskKeys, shape, dtype: str = "float64"):
        """``standard_normal`` of a fresh Dask generator, in ``dtype`` (float16 by rounding)."""
        draw = rng.next(self._da).standard_normal(tuple(shape))
        if dtype == "float64":
            return draw
        if dtype == "float32":
            return draw.astype(np.float32)
        return draw.map_blocks(lambda b: quantise(b, dtype).astype(dtype), dtype=np.dtype(dtype))

    def uniform(self, rng: DaskKeys, shape, dtype: str = "float64"):
        """``random`` of a fresh Dask generator on [0, 1), in ``dtype``."""
        draw = rng.next(self._da).random(tuple(shape))
        if dtype == "float64":
            return draw
        below_one = np.nextafter(np.array(1.0, dtype), np.array(0.0, dtype))
        return self._da.minimum(draw.astype(np.dtype(dtype)), below_one)

    def library_version(self) -> str:
        """dask's version."""
        return str(importlib.import_module("dask").__version__)

    def describe(self) -> dict[str, Any]:
        """Versions, the chunking of harness inputs and the special-function route."""
        d = super().describe()
        d["chunks"] = self.chunks
        d["scheduler"] = "dask default (threads)"
        d["erf"] = "scipy.special, blockwise (map_blocks)"
        return d
