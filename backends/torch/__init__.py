"""The PyTorch backend: CPU and CUDA, float64 and float32 (bfloat16 and float16 on request).

``torch`` is imported only when the backend is built (``import refdiff.backends`` never imports
it). While conformance checks run, :meth:`TorchBackend.checking` turns TF32 off for matmul and
cuDNN and restores the previous settings afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from .._base import Backend, BackendUnavailableError

__all__ = ["TorchBackend", "INSTALL_HINT"]

INSTALL_HINT = (
    "pip install torch  (CPU-only wheel: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu), or pip install 'refdiff[torch]'"
)


def _import_torch():
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'torch' needs PyTorch, which is not installed: {INSTALL_HINT}"
        ) from exc


def _resolve_device(torch, device):
    """torch.device from a string/int/device; CUDA without a GPU is a clear error."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "none (a CPU-only build)"
            raise BackendUnavailableError(
                f"device={device!r} was requested for backend 'torch' but no CUDA GPU is available "
                f"(torch {torch.__version__}, CUDA runtime {built}); use device='cpu' or run on a "
                "machine with an NVIDIA GPU and a CUDA build of PyTorch"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailableError(f"device={device!r} was requested but MPS is not available")
    return dev


class TorchBackend(Backend):
    """PyTorch through ``array_api_compat.torch`` on one device ("cpu", "cuda", "cuda:1", "mps")."""

    name = "torch"
    install_hint = INSTALL_HINT

    def __init__(
        self,
        device: Any = None,
        *,
        overrides: Mapping[str, Callable] | None = None,
        known_failures: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        torch = _import_torch()
        import array_api_compat.torch as xp

        self._torch = torch
        super().__init__(
            xp,
            name=name,
            device=_resolve_device(torch, device),
            overrides=overrides,
            known_failures=known_failures,
        )

    @property
    def float_dtypes(self) -> tuple[str, ...]:
        """float64 (except on MPS), float32, and the opt-in bfloat16 and float16."""
        base = ("float32",) if self.device.type == "mps" else ("float64", "float32")
        return base + ("bfloat16", "float16")

    def dtype(self, name: str):
        """torch dtypes by name (bfloat16 included, which the array API lacks)."""
        if name in ("bfloat16", "float16"):
            return getattr(self._torch, name)
        return super().dtype(name)

    def asarray(self, a, dtype: str | None = None):
        """A tensor on the device; reduced precision goes through float64 (values already rounded)."""
        a = np.asarray(a)
        t = self._torch.as_tensor(np.array(a, copy=True))
        dt = self.dtype(dtype) if dtype is not None else None
        return t.to(device=self.device, dtype=dt)

    def to_numpy(self, x) -> np.ndarray:
        """Detach, move to the CPU, widen bfloat16/float16 to float32 and convert."""
        x = x.detach().to("cpu")
        if x.dtype in (self._torch.bfloat16, self._torch.float16):
            x = x.to(self._torch.float32)
        return x.numpy().copy()

    def is_native(self, x) -> bool:
        """Only torch tensors are native."""
        return isinstance(x, self._torch.Tensor)

    def make_rng(self, seed: int):
        """A torch.Generator on the backend's device, seeded."""
        return self._torch.Generator(device=self.device).manual_seed(int(seed))

    def normal(self, rng, shape, dtype: str = "float64"):
        """torch.randn with the given generator, on the device, in ``dtype``."""
        return self._torch.randn(
            tuple(shape), generator=rng, dtype=self.dtype(dtype), device=self.device
        )

    def uniform(self, rng, shape, dtype: str = "float64"):
        """torch.rand with the given generator, on the device, in ``dtype``."""
        return self._torch.rand(
            tuple(shape), generator=rng, dtype=self.dtype(dtype), device=self.device
        )

    def synchronize(self) -> None:
        """torch.cuda.synchronize on a CUDA device."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def checking(self) -> Iterator[None]:
        """TF32 off (matmul, cuDNN convolutions and RNNs) while checking; restored after."""
        saved = _tf32_save(self._torch)
        try:
            _tf32_off(self._torch)
            yield
        finally:
            _tf32_restore(self._torch, saved)

    def describe(self) -> dict[str, Any]:
        """Versions, CUDA/cuDNN versions, device name and the TF32 flags."""
        torch = self._torch
        d = super().describe()
        d["library_version"] = torch.__version__
        d["cuda_runtime"] = torch.version.cuda
        d["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        d["default_dtype"] = str(torch.get_default_dtype())
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            d["device_name"] = props.name
            d["compute_capability"] = f"{props.major}.{props.minor}"
        else:
            d["device_name"] = self.device.type
        d["tf32"] = _tf32_flags(torch)
        return d


_NEW_API = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")


def _sub(torch, path: str):
    obj = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _has_new_tf32_api(torch) -> bool:
    return all(hasattr(_sub(torch, p), "fp32_precision") for p in _NEW_API)


def _tf32_flags(torch) -> dict[str, Any]:
    """The TF32 switches as PyTorch reports them (new fp32_precision API where it exists)."""
    if _has_new_tf32_api(torch):
        flags = {p + ".fp32_precision": _sub(torch, p).fp32_precision for p in _NEW_API}
    else:
        flags = {
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        }
    flags["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return flags


def _tf32_save(torch) -> dict[str, Any]:
    if _has_new_tf32_api(torch):
        return {p: _sub(torch, p).fp32_precision for p in _NEW_API}
    return {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
        "precision": torch.get_float32_matmul_precision(),
    }


def _tf32_off(torch) -> None:
    if _has_new_tf32_api(torch):
        for p in _NEW_API:
            _sub(torch, p).fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def _tf32_restore(torch, saved: dict[str, Any]) -> None:
    if _has_new_tf32_api(torch):
        for p in _NEW_API:
            _sub(torch, p).fp32_precision = saved[p]
    else:
        torch.set_float32_matmul_precision(saved["precision"])
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn"]
