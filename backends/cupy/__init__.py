"""The CuPy backend: NVIDIA GPUs, float64 and float32.

``cupy`` is imported only when the backend is built. A machine without a usable CUDA device gets a
:class:`~refdiff.backends.BackendUnavailableError` saying so, not a CuPy traceback.
"""

from __future__ import annotations

import importlib
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np

from .._base import Backend, BackendUnavailableError

__all__ = ["CupyBackend", "INSTALL_HINT"]

INSTALL_HINT = "pip install cupy-cuda12x (or cupy-cuda13x), or pip install 'refdiff[cupy]'"


def _import_cupy():
    try:
        return importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'cupy' needs CuPy, which is not installed: {INSTALL_HINT}"
        ) from exc


def _device_index(device) -> int:
    """0 from None, 'cuda', 'cuda:0', 0 or a cupy.cuda.Device."""
    if device is None:
        return 0
    if hasattr(device, "id"):
        return int(device.id)
    if isinstance(device, int):
        return device
    text = str(device)
    if text in ("cuda", "gpu"):
        return 0
    for prefix in ("cuda:", "gpu:"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    from refdiff._errors import fail

    fail("device", device, "the cupy backend takes a CUDA device index, 'cuda' or 'cuda:N'")


def _resolve_device(cupy, device):
    index = _device_index(device)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError and driver errors alike
        raise BackendUnavailableError(
            f"CuPy {cupy.__version__} is installed but no CUDA GPU is usable ({exc}); the cupy "
            "backend needs an NVIDIA GPU and a matching driver"
        ) from exc
    if index >= count:
        raise BackendUnavailableError(
            f"device={device!r} was requested but only {count} CUDA device(s) are visible"
        )
    return cupy.cuda.Device(index)


class CupyBackend(Backend):
    """CuPy through ``array_api_compat.cupy`` on one CUDA device."""

    name = "cupy"
    install_hint = INSTALL_HINT

    def __init__(
        self,
        device: Any = None,
        *,
        overrides: Mapping[str, Callable] | None = None,
        known_failures: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        cupy = _import_cupy()
        dev = _resolve_device(cupy, device)
        import array_api_compat.cupy as xp

        self._cupy = cupy
        super().__init__(
            xp, name=name, device=dev, overrides=overrides, known_failures=known_failures
        )

    @property
    def float_dtypes(self) -> tuple[str, ...]:
        """float64, float32 and the opt-in float16."""
        return ("float64", "float32", "float16")

    def dtype(self, name: str):
        """CuPy dtypes by name (float16 included)."""
        if name == "float16":
            return self._cupy.float16
        return super().dtype(name)

    def asarray(self, a, dtype: str | None = None):
        """Copy a host array onto the backend's GPU."""
        dt = None if dtype is None else np.dtype(dtype)
        with self.device:
            return self._cupy.asarray(np.asarray(a), dtype=dt)

    def to_numpy(self, x) -> np.ndarray:
        """cupy.asnumpy (synchronizes)."""
        return self._cupy.asnumpy(x)

    def is_native(self, x) -> bool:
        """Only cupy.ndarray is native."""
        return isinstance(x, self._cupy.ndarray)

    def make_rng(self, seed: int):
        """cupy.random.default_rng(seed) on the backend's device."""
        with self.device:
            return self._cupy.random.default_rng(int(seed))

    def normal(self, rng, shape, dtype: str = "float64"):
        """Standard normal draws on the GPU (float32/float64 natively)."""
        with self.device:
            return rng.standard_normal(size=tuple(shape), dtype=np.dtype(dtype))

    def uniform(self, rng, shape, dtype: str = "float64"):
        """Uniform [0, 1) draws on the GPU."""
        with self.device:
            return rng.random(size=tuple(shape), dtype=np.dtype(dtype))

    def synchronize(self) -> None:
        """Wait for the device."""
        self.device.synchronize()

    def describe(self) -> dict[str, Any]:
        """Versions, CUDA runtime/driver and the device name."""
        cupy = self._cupy
        d = super().describe()
        d["library_version"] = cupy.__version__
        try:
            props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
            name = props["name"]
            d["device_name"] = name.decode() if isinstance(name, bytes) else str(name)
            d["compute_capability"] = f"{props['major']}.{props['minor']}"
            d["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            d["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        except Exception as exc:  # noqa: BLE001 - reporting must not fail
            d["device_name"] = f"unknown ({exc})"
        return d
