"""The backend protocol: an array-API namespace plus what the standard lacks.

A backend contributes only what the Python array API standard does not define (DESIGN.md, "The
one rule"): device placement, the float dtypes a device supports, a native random generator, the
special functions the reference needs (``erf``/``erfc``), ``synchronize``, a ``describe()`` for
reports, optional ``overrides`` of named operations, and the ``known_failures`` it declares.
Everything else is the generic array-API code of ``refdiff``, run on the backend's arrays.

Host <-> backend copies (:meth:`Backend.asarray`, :meth:`Backend.to_numpy`) are for the harness and
the CLI only; the reference itself never copies silently.
"""

from __future__ import annotations

import contextlib
import importlib
import platform
from types import MappingProxyType
from typing import Any
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from refdiff._errors import RefdiffError, UnknownNameError

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "UnknownBackendError",
    "from_namespace",
    "DTYPE_NAMES",
    "quantise",
    "SCHEDULE_TO",
]

#: Floating dtypes the harness knows by name, most to least precise.
DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")

#: The overrides key of the operation that moves a host schedule onto a backend.
SCHEDULE_TO = "schedules.Schedule.to"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class BackendUnavailableError(RefdiffError, RuntimeError):
    """A backend whose library is missing, or whose device (e.g. a CUDA GPU) is not present."""


class UnknownBackendError(UnknownNameError, ValueError):
    """A backend name that is neither built in, registered, an entry point nor an import string."""


def _bits_to_bfloat16(a: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest bfloat16 (ties to even), returned as float64."""
    f = np.asarray(a, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(np.isfinite(f), out, f.astype(np.float64))


def quantise(a, dtype: str) -> np.ndarray:
    """Round host float64 values to ``dtype`` and return them as float64 (input rounding, done once)."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float64":
        return a.copy()
    if dtype == "bfloat16":
        return _bits_to_bfloat16(a)
    with np.errstate(over="ignore"):
        return a.astype(np.dtype(dtype)).astype(np.float64)


class Backend:
    """An array-API namespace on one device, with the extras the standard lacks.

    Subclasses (the built-in ``numpy``, ``array_api_strict``, ``torch`` and ``cupy`` backends)
    refine the host copies, the RNG and ``describe``; :func:`from_namespace` builds a generic one
    from any array-API namespace (its noise is drawn on the host with NumPy).

    Attributes
    ----------
    name : str
        The registry name ("numpy", "torch", a third party's name).
    xp : namespace
        The array-API namespace (array-api-compat's wrapper for NumPy, PyTorch and CuPy).
    device : object
        The device every array this backend creates lives on; results must stay there.
    overrides : Mapping[str, Callable]
        Named operations the backend implements itself (a fused kernel, a vendor scheduler), keyed
        by the conformance check name, e.g. ``"diffusion.q_sample"``; the suite checks them
        against the generic reference code. ``"schedules.Schedule.to"`` overrides the table move.
    known_failures : Mapping[str, str]
        Check name or node-id prefix -> reason (with an upstream link); the suite marks them xfail.
    default_dtypes : tuple of str
        The dtypes checked when none are asked for (bfloat16 is opt-in).
    install_hint : str
        How to install the library, shown when it is missing.
    shape_menu : bool
        True for a library that compiles every operation once per input shape (JAX/XLA): the
        conformance suite then draws its array shapes from a short fixed menu (batch 1 or 2,
        every other axis 3), so the same few compiled operations serve every example. The
        values drawn, the dtypes and the number of examples are unchanged.
    immutable_arrays : bool
        True for a library whose arrays cannot be written in place at all (JAX): the suite then
        skips copying every input back to the host after each call to catch in-place writes.
    """

    name: str = "generic"
    #: The string :func:`~refdiff.backends.get_backend` resolved to this backend ("jax",
    #: "pkg.mod:factory"; without "@device"), or None for a backend built directly.
    spec: str | None = None
    install_hint: str = ""
    default_dtypes: tuple[str, ...] = ("float64", "float32")
    shape_menu: bool = False
    immutable_arrays: bool = False

    def __init__(
        self,
        xp,
        *,
        name: str | None = None,
        device: Any = None,
        overrides: Mapping[str, Callable] | None = None,
        known_failures: Mapping[str, str] | None = None,
        specials: Mapping[str, Callable] | None = None,
        dtypes: tuple[str, ...] | None = None,
    ):
        self.xp = xp
        if name is not None:
            self.name = name
        self.device = device
        #: How the device was chosen (``describe()`` reports it): "given", or where the default
        #: came from when none was given.
        self.device_source = "given" if device is not None else "backend default"
        self.overrides = MappingProxyType(dict(overrides or {}))
        self.known_failures = MappingProxyType(dict(known_failures or {}))
        self._dtypes = tuple(dtypes) if dtypes is not None else None
        self._specials = dict(specials or {})
        self._register_specials()
        self._capabilities: dict[str, bool] = {}

    # -- dtypes ----------------------------------------------------------------------------

    @property
    def float_dtypes(self) -> tuple[str, ...]:
        """Names of the real floating dtypes this backend supports on its device."""
        if self._dtypes is not None:
            return self._dtypes
        try:
            info = self.xp.__array_namespace_info__()
            found = info.dtypes(device=self.device, kind="real floating")
            names = tuple(n for n in DTYPE_NAMES if n in found)
        except (AttributeError, TypeError, ValueError):
            names = tuple(n for n in ("float64", "float32") if hasattr(self.xp, n))
        return names

    def dtype(self, name: str):
        """The namespace's dtype object for a dtype name ("float64", "int64", ...)."""
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise UnknownNameError(
                f"dtype={name!r} is not available in backend {self.name!r}; "
                f"its float dtypes: {', '.join(self.float_dtypes)}"
            ) from None

    def dtype_name(self, dtype) -> str:
        """The name of a namespace dtype object (inverse of :meth:`dtype`)."""
        for n in DTYPE_NAMES + ("int64", "int32", "bool"):
            if hasattr(self.xp, n) and getattr(self.xp, n) == dtype:
                return n
        return str(dtype)

    def supports(self, dtype: str) -> bool:
        """True if ``dtype`` (a name) is a float dtype of this backend's device."""
        return dtype in self.float_dtypes

    def unsupported_reason(self, dtype: str) -> str:
        """Why ``dtype`` is not checked on this backend, for skip messages ("" if it is supported)."""
        if self.supports(dtype):
            return ""
        return (
            f"backend {self.name} on {self.device} does not support {dtype} "
            f"(it has {', '.join(self.float_dtypes)})"
        )

    # -- host <-> backend (harness only) ---------------------------------------------------

    def asarray(self, a, dtype: str | None = None):
        """Copy a host NumPy array onto this backend's device, as ``dtype`` (a name) if given."""
        a = np.asarray(a)
        dt = self.dtype(dtype) if dtype is not None else None
        return self.xp.asarray(a, dtype=dt, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        """Copy a backend array to a host NumPy array (harness only)."""
        try:
            return np.asarray(x)
        except (TypeError, RuntimeError, ValueError):
            return np.from_dlpack(x)

    def device_of(self, x):
        """The device an array of this backend lives on."""
        from refdiff._xp import device_of

        return device_of(x)

    def is_native(self, x) -> bool:
        """True if ``x`` is an array of this backend's namespace (not a silent NumPy fallback)."""
        from array_api_compat import array_namespace

        try:
            ns = array_namespace(x)
        except TypeError:
            return False
        return getattr(ns, "__name__", None) == getattr(self.xp, "__name__", None)

    # -- randomness ------------------------------------------------------------------------

    def make_rng(self, seed: int):
        """A generator object for :meth:`normal` (the generic backend draws on the host)."""
        return np.random.default_rng(seed)

    def normal(self, rng, shape, dtype: str = "float64"):
        """Standard normal draws of ``shape`` and ``dtype`` on the device, from ``rng``."""
        host = rng.standard_normal(tuple(shape))
        return self.asarray(quantise(host, dtype), dtype)

    def uniform(self, rng, shape, dtype: str = "float64"):
        """Uniform [0, 1) draws of ``shape`` and ``dtype`` on the device, from ``rng``."""
        host = rng.random(tuple(shape))
        # the largest value below 1 in ``dtype`` (rounding may carry a draw up to 1.0 otherwise)
        below_one = 1.0 - {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}.get(
            dtype, 2.0**-53
        )
        return self.asarray(np.minimum(quantise(host, dtype), below_one), dtype)

    # -- special functions, capabilities -----------------------------------------------------

    def _register_specials(self) -> None:
        """Register this backend's special functions (``erf``, ``erfc``) with refdiff._xp."""
        if not self._specials:
            return
        from refdiff._xp import register_special

        short = getattr(self.xp, "__name__", self.name)
        for op, fn in self._specials.items():
            register_special(op, short, fn)

    def has(self, capability: str) -> bool:
        """Whether the backend supports a capability: "erf", "erfc" or a dtype name."""
        if capability in DTYPE_NAMES:
            return self.supports(capability)
        if capability not in self._capabilities:
            self._capabilities[capability] = self._probe(capability)
        return self._capabilities[capability]

    def _probe(self, capability: str) -> bool:
        if capability in ("erf", "erfc"):
            from refdiff import _xp

            dt = "float64" if self.supports("float64") else self.float_dtypes[0]
            try:
                getattr(_xp, capability)(self.asarray(np.zeros(1), dt))
                return True
            except NotImplementedError:
                return False
        return False

    # -- operations, checking context --------------------------------------------------------

    def op(self, name: str, default: Callable) -> Callable:
        """The backend's override of operation ``name``, or the generic ``default``."""
        return self.overrides.get(name, default)

    def move_schedule(self, schedule, dtype: str):
        """A host float64 schedule moved onto this backend, cast once to ``dtype`` (overridable)."""
        generic = _generic_schedule_to
        return self.op(SCHEDULE_TO, generic)(
            schedule, self.xp, device=self.device, dtype=self.dtype(dtype)
        )

    @contextlib.contextmanager
    def checking(self) -> Iterator[None]:
        """Context in which conformance checks run (the torch backend turns TF32 off here)."""
        yield

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    # -- reports ---------------------------------------------------------------------------

    def library_version(self) -> str:
        """Version of the array library behind the namespace."""
        mod = getattr(self.xp, "__name__", "").replace("array_api_compat.", "")
        try:
            return str(importlib.import_module(mod.split(".")[0]).__version__)
        except (ImportError, AttributeError, ValueError):
            return "unknown"

    def describe(self) -> dict[str, Any]:
        """Versions, device and flags, for report headers and JSON reports."""
        import array_api_compat

        import refdiff

        return {
            "backend": self.name,
            "namespace": getattr(self.xp, "__name__", repr(self.xp)),
            "library_version": self.library_version(),
            "device": str(self.device),
            "device_source": self.device_source,
            "float_dtypes": list(self.float_dtypes),
            "overrides": sorted(self.overrides),
            "refdiff": getattr(refdiff, "__version__", "unknown"),
            "numpy": np.__version__,
            "array_api_compat": array_api_compat.__version__,
            "python": platform.python_version(),
        }

    def __repr__(self) -> str:
        return f"<refdiff backend {self.name!r} on {self.device}>"


def _generic_schedule_to(schedule, xp, *, device, dtype):
    """Schedule.to: the float64 host tables cast once into ``xp`` on ``device``."""
    return schedule.to(xp, device=device, dtype=dtype)


def _compat_namespace(xp, device):
    """array-api-compat's wrapper for a raw NumPy/PyTorch/CuPy module; other namespaces as given."""
    import array_api_compat

    name = getattr(xp, "__name__", "")
    if name in ("numpy", "torch", "cupy", "dask.array"):
        probe = xp.asarray([0.0]) if device is None else xp.asarray([0.0], device=device)
        return array_api_compat.array_namespace(probe)
    return xp


def from_namespace(
    xp,
    *,
    name: str | None = None,
    device: Any = None,
    overrides: Mapping[str, Callable] | None = None,
    known_failures: Mapping[str, str] | None = None,
    specials: Mapping[str, Callable] | None = None,
    dtypes: tuple[str, ...] | None = None,
) -> Backend:
    """A backend from any array-API namespace (noise is drawn on the host and copied over).

    Parameters
    ----------
    xp : namespace
        An array-API namespace (``array_api_strict``, ``array_api_compat.torch``, a library's own
        ``__array_namespace__``); raw ``numpy``/``torch``/``cupy`` modules are wrapped by
        array-api-compat.
    name : str, optional
        The name reports use (default: the namespace's module name).
    device : optional
        Where the backend's arrays live (default: the namespace's default device).
    overrides : mapping, optional
        Operation name -> the backend's own implementation, checked against the generic code.
    known_failures : mapping, optional
        Check name or node-id prefix -> reason; marked xfail by the suite.
    specials : mapping, optional
        ``{"erf": fn, "erfc": fn}`` for a namespace refdiff does not know; registered through
        :func:`refdiff._xp.register_special`.
    dtypes : tuple of str, optional
        The float dtypes to claim (default: from ``__array_namespace_info__``).
    """
    ns = _compat_namespace(xp, device)
    nm = name or getattr(ns, "__name__", "namespace").split(".")[-1]
    source = "given"
    if device is None:
        device, source = default_device(ns)
    b = Backend(
        ns,
        name=nm,
        device=device,
        overrides=overrides,
        known_failures=known_failures,
        specials=specials,
        dtypes=dtypes,
    )
    b.device_source = source
    return b


def default_device(xp: Any) -> tuple[Any, str]:
    """The device a namespace puts new arrays on, and where that answer came from.

    ``__array_namespace_info__().default_device()`` when the namespace answers with a device;
    otherwise (no inspection API, or ``None`` as JAX answers) the device of a freshly created
    array, ``xp.asarray(0.0)``.
    """
    try:
        dev = xp.__array_namespace_info__().default_device()
    except (AttributeError, TypeError, NotImplementedError):
        dev = None
    if dev is not None:
        return dev, "__array_namespace_info__().default_device()"
    from array_api_compat import device as _device

    try:
        return _device(xp.asarray(0.0)), "device of a freshly created array (xp.asarray(0.0))"
    except Exception:  # noqa: BLE001 - a namespace without devices: report None
        return None, "none (the namespace reports no device)"
