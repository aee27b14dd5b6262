"""The JAX backend: ``jax.numpy`` (array API compliant) on one JAX device, CPU or accelerator.

``jax`` is imported only when the backend is built. JAX computes in float32 unless its 64-bit
mode is on (``jax_enable_x64``, also set by the environment variable ``JAX_ENABLE_X64=1``):
without it this backend does not claim float64, so the float64 checks are skipped and
:meth:`JaxBackend.unsupported_reason` says how to turn the mode on (``x64=True``, or the
registered factory ``refdiff.backends.jax:with_x64``). Noise comes from ``jax.random`` with
explicit keys: a seed gives a key, and every draw splits off a fresh subkey.
"""

from __future__ import annotations

import importlib
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np

from ._base import SCHEDULE_TO, Backend, BackendUnavailableError

__all__ = ["JaxBackend", "JaxKeys", "INSTALL_HINT", "KNOWN_FAILURES_CPU", "with_x64"]

INSTALL_HINT = "pip install jax (CPU), or pip install 'refdiff[jax]'"

X64_HINT = (
    "JAX computes in float32 unless its 64-bit mode is on: build the backend with "
    "JaxBackend(x64=True), use --backend refdiff.backends.jax:with_x64, or set "
    "JAX_ENABLE_X64=1 before starting Python"
)


def _import_jax():
    try:
        return importlib.import_module("jax")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'jax' needs JAX, which is not installed: {INSTALL_HINT}"
        ) from exc


def _resolve_device(jax: Any, device: Any) -> Any:
    """A jax Device from None (JAX's default), a Device, "cpu", "gpu", "tpu" or "platform:index"."""
    if device is None:
        return jax.devices()[0]
    if not isinstance(device, str) and hasattr(device, "platform"):
        return device
    text = str(device).strip().lower()
    platform, _, index = text.partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    try:
        devices = jax.devices(platform)
    except RuntimeError as exc:
        raise BackendUnavailableError(
            f"device={device!r} was requested for backend 'jax' but JAX has no {platform!r} "
            f"platform here ({exc}); its devices: {', '.join(map(str, jax.devices()))}"
        ) from None
    try:
        i = int(index) if index else 0
    except ValueError:
        from refdiff._errors import fail

        fail("device", device, "expected 'cpu', 'gpu', 'tpu', 'platform:index' or a jax Device")
    if not 0 <= i < len(devices):
        raise BackendUnavailableError(
            f"device={device!r}: JAX sees {len(devices)} {platform} device(s)"
        )
    return devices[i]


_DAZ = (
    "XLA on CPU treats subnormal inputs as zero (denormals-are-zero, by design: "
    "https://github.com/jax-ml/jax/issues/16200, https://github.com/jax-ml/jax/issues/37762; "
    "no switch to turn it off: https://github.com/openxla/xla/issues/22858)"
)

#: Check -> the upstream JAX behaviour that fails it, on the CPU platform.
KNOWN_FAILURES_CPU: dict[str, str] = {
    "tables.log_one_minus_alphas_cumprod_log1p[float64]": (
        "XLA's float64 log1p on CPU is up to 129 ulp off for x in about (-0.53, -0.28), "
        "worst near 1/sqrt(2) - 1 (https://github.com/jax-ml/jax/issues/39707)"
    ),
    "edges.log": f"log of a subnormal is -inf and of a negative subnormal -inf, not NaN: {_DAZ}",
    "edges.sqrt": f"sqrt of a subnormal is 0 and of a negative subnormal -0, not NaN: {_DAZ}",
    "edges.floor": f"floor of a negative subnormal is -0, not -1: {_DAZ}",
    "edges.pow": "pow of a subnormal base on CPU is off by a factor of up to sqrt(2) "
    "(pow(2**-1074, 0.5) = 2**-537.5, exact 2**-537; float32 likewise): XLA's CPU pow does not "
    "handle subnormal inputs (see https://github.com/jax-ml/jax/issues/37762)",
    "edges.sinh": "jnp.sinh on CPU is about 9.3 eps off in float64 for 10 <= |x| < 512 and 249 eps "
    "for |x| >= 512, and 12.6 eps in float32 for |x| >= 32 (against mpmath; NumPy's is within "
    "0.5 eps), above the suite's 8 eps (see https://github.com/pearu/functional_algorithms/issues/51)",
}


class JaxKeys:
    """A stream of ``jax.random`` keys: each draw splits the current key and uses the new half."""

    def __init__(self, jax: Any, seed: int, device: Any):
        self._jax = jax
        self.key = jax.device_put(jax.random.key(int(seed)), device)

    def next(self) -> Any:
        """A fresh key, never used before (the stream advances)."""
        self.key, sub = self._jax.random.split(self.key)
        return sub


class JaxBackend(Backend):
    """``jax.numpy`` on one JAX device; float64 only with JAX's 64-bit mode on.

    Parameters
    ----------
    device : optional
        A jax Device, "cpu", "gpu", "tpu" or "platform:index" (default: ``jax.devices()[0]``).
    x64 : bool, optional
        True turns JAX's 64-bit mode on (``jax.config.update("jax_enable_x64", True)``, a
        process-wide setting); None (default) keeps the current setting.
    compilation_cache : str, bool or None
        JAX compiles every operation once per shape and dtype, which is most of a suite run's
        time on the CPU. None (default): unless JAX already has a persistent compilation cache
        (``jax_compilation_cache_dir``) or ``REFDIFF_JAX_CACHE=0`` is set, cache every compiled
        operation in ``$REFDIFF_JAX_CACHE`` or ``~/.cache/refdiff/jax``, so a second run
        skips compilation; a directory: cache there; False: leave JAX's settings alone. The
        cache is JAX's own (process-wide settings); results are those of a fresh compile.
    """

    name = "jax"
    install_hint = INSTALL_HINT
    shape_menu = True  # XLA compiles per shape: draw shapes from the suite's short menu
    immutable_arrays = True  # jax.Array has no in-place writes (nothing to watch)

    def __init__(
        self,
        device: Any = None,
        *,
        x64: bool | None = None,
        compilation_cache: str | bool | None = None,
        overrides: Mapping[str, Callable] | None = None,
        known_failures: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        jax = _import_jax()
        if x64 is not None and not isinstance(x64, bool):
            from refdiff._errors import fail

            fail("x64", x64, "expected True, False or None")
        if x64:
            jax.config.update("jax_enable_x64", True)
        self.compilation_cache = _use_compilation_cache(jax, compilation_cache)
        import jax.numpy as jnp

        self._jax = jax
        ops = {SCHEDULE_TO: _schedule_to}
        ops.update(overrides or {})
        dev = _resolve_device(jax, device)
        failures = dict(KNOWN_FAILURES_CPU) if dev.platform == "cpu" else {}
        failures.update(known_failures or {})
        super().__init__(jnp, name=name, device=dev, overrides=ops, known_failures=failures)
        if device is None:
            self.device_source = "jax.devices()[0]"

    @property
    def x64(self) -> bool:
        """Whether JAX's 64-bit mode is on (float64 arrays are float64, not float32)."""
        return bool(self._jax.config.jax_enable_x64)

    @property
    def float_dtypes(self) -> tuple[str, ...]:
        """float64 (64-bit mode only), float32, and the opt-in bfloat16 and float16."""
        return (("float64",) if self.x64 else ()) + ("float32", "bfloat16", "float16")

    def unsupported_reason(self, dtype: str) -> str:
        """Why ``dtype`` is not checked on this backend ("" when it is supported)."""
        if dtype == "float64" and not self.x64:
            return f"float64 checks need JAX's 64-bit mode, which is off. {X64_HINT}"
        return super().unsupported_reason(dtype)

    def dtype(self, name: str):
        """jax.numpy dtypes by name (bfloat16 and float16 included)."""
        if name in ("bfloat16", "float16"):
            return getattr(self.xp, name)
        return super().dtype(name)

    def dtype_name(self, dtype) -> str:
        """The name of a jax.numpy dtype (a NumPy/ml_dtypes dtype)."""
        return np.dtype(dtype).name

    def asarray(self, a, dtype: str | None = None):
        """One host -> device copy (``jax.device_put``) of a fresh host array in ``dtype``."""
        a = np.asarray(a)
        if dtype is not None:
            a = a.astype(self.dtype(dtype))
        return self._jax.device_put(a, self.device)

    def to_numpy(self, x) -> np.ndarray:
        """A host copy; bfloat16 and float16 are widened to float32."""
        h = np.array(x, copy=True)
        if h.dtype.name in ("bfloat16", "float16"):
            h = h.astype(np.float32)
        return h

    def is_native(self, x) -> bool:
        """Only jax Arrays are native."""
        return isinstance(x, self._jax.Array)

    def device_of(self, x):
        """The device a (single-device) jax Array lives on."""
        return x.device

    def make_rng(self, seed: int) -> JaxKeys:
        """A :class:`JaxKeys` stream from ``jax.random.key(seed)``, on the backend's device."""
        return JaxKeys(self._jax, seed, self.device)

    def normal(self, rng: JaxKeys, shape, dtype: str = "float64"):
        """``jax.random.normal`` with a fresh key, on the device, in ``dtype``."""
        with self._jax.default_device(self.device):
            return self._jax.random.normal(rng.next(), tuple(shape), dtype=self.dtype(dtype))

    def uniform(self, rng: JaxKeys, shape, dtype: str = "float64"):
        """``jax.random.uniform`` on [0, 1) with a fresh key, on the device, in ``dtype``."""
        with self._jax.default_device(self.device):
            return self._jax.random.uniform(rng.next(), tuple(shape), dtype=self.dtype(dtype))

    def synchronize(self) -> None:
        """Wait for all dispatched work (``jax.effects_barrier``)."""
        self._jax.effects_barrier()

    def library_version(self) -> str:
        """jax's version."""
        return str(self._jax.__version__)

    def describe(self) -> dict[str, Any]:
        """Versions, the device's platform and kind, and whether 64-bit mode is on."""
        d = super().describe()
        d["jaxlib"] = getattr(importlib.import_module("jaxlib"), "__version__", "unknown")
        d["platform"] = self.device.platform
        d["device_name"] = getattr(self.device, "device_kind", self.device.platform)
        d["x64"] = self.x64
        if not self.x64:
            d["float64"] = f"not checked: {X64_HINT}"
        d["compilation_cache"] = self.compilation_cache or "off"
        d["rng"] = "jax.random (threefry keys; a fresh subkey per draw)"
        d["erf"] = "jax.scipy.special"
        return d


def _use_compilation_cache(jax: Any, choice: str | bool | None) -> str | None:
    """Point JAX's persistent compilation cache at a directory (see JaxBackend); return it."""
    import os

    if choice is False:
        return None
    current = jax.config.jax_compilation_cache_dir
    if choice is None or choice is True:
        env = os.environ.get("REFDIFF_JAX_CACHE", "")
        if current or (choice is None and env == "0"):
            return current or None
        choice = (
            env
            if env not in ("", "0", "1")
            else os.path.join(os.path.expanduser("~"), ".cache", "refdiff", "jax")
        )
    if not isinstance(choice, (str, os.PathLike)):
        from refdiff._errors import fail

        fail("compilation_cache", choice, "expected a directory, True, False or None")
    path = os.fspath(choice)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _schedule_to(schedule, xp, *, device, dtype):
    """Schedule.to for JAX: tables cast on the host, moved by one batched ``device_put`` (no compiles).

    ``jnp.asarray(table, dtype=..., device=...)`` compiles a conversion for every table length;
    the cast is the same round-to-nearest on the host.
    """
    import dataclasses

    import array_api_compat.numpy as cnp
    import jax

    from refdiff.schedules import TABLE_NAMES

    host = schedule.to(cnp)  # validated float64 host copies
    arrays = [np.asarray(getattr(host, n)).astype(dtype) for n in TABLE_NAMES]
    *moved, tmap = jax.device_put([*arrays, np.asarray(host.timestep_map)], device)  # one call
    return dataclasses.replace(host, xp=xp, timestep_map=tmap, **dict(zip(TABLE_NAMES, moved)))


def with_x64(device: Any = None) -> JaxBackend:
    """The JAX backend with JAX's 64-bit mode turned on (float64 checked)."""
    return JaxBackend(device, x64=True, name="jax")
