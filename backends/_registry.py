"""Where backends come from: built-ins, runtime registrations, entry points and import strings.

Resolution order of :func:`get_backend` for a name: a runtime registration
(:func:`register_backend`), a built-in (numpy, array_api_strict, torch, cupy, jax, dask), an
entry point of the group ``refdiff.backends``, or an import string ``"pkg.mod:factory"``. Built-ins
are imported
lazily from strings (the library behind them is imported only when the backend is built), so
``import refdiff.backends`` imports none of torch, cupy, jax or dask.

A *factory* is a callable taking an optional keyword ``device`` and returning a
:class:`~refdiff.backends.Backend` (an array-API namespace is accepted too and wrapped with
:func:`~refdiff.backends.from_namespace`). A ``Backend`` instance may be registered directly.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from ._base import Backend, BackendUnavailableError, UnknownBackendError, from_namespace

__all__ = [
    "BackendInfo",
    "get_backend",
    "list_backends",
    "register_backend",
    "unregister_backend",
    "refresh_backends",
    "ENTRY_POINT_GROUP",
    "parse_spec",
]

#: The entry-point group third-party backends register in.
ENTRY_POINT_GROUP = "refdiff.backends"


@dataclass(frozen=True)
class _Builtin:
    module: str  # the library whose presence makes the backend available
    target: str  # "module:attribute" of the backend class
    hint: str  # how to install the library


_BUILTINS: dict[str, _Builtin] = {
    "numpy": _Builtin("numpy", "refdiff.backends.numpy:NumpyBackend", "pip install numpy"),
    "array_api_strict": _Builtin(
        "array_api_strict",
        "refdiff.backends.strict:StrictBackend",
        "pip install array-api-strict (or pip install 'refdiff[test]')",
    ),
    "torch": _Builtin(
        "torch",
        "refdiff.backends.torch:TorchBackend",
        "pip install torch (CPU-only: --index-url https://download.pytorch.org/whl/cpu)"
        ", or pip install 'refdiff[torch]'",
    ),
    "cupy": _Builtin(
        "cupy",
        "refdiff.backends.cupy:CupyBackend",
        "pip install cupy-cuda12x (or cupy-cuda13x), or pip install 'refdiff[cupy]'",
    ),
    "jax": _Builtin(
        "jax",
        "refdiff.backends.jax:JaxBackend",
        "pip install jax (CPU), or pip install 'refdiff[jax]'",
    ),
    "dask": _Builtin(
        "dask",
        "refdiff.backends.dask:DaskBackend",
        "pip install 'dask[array]', or pip install 'refdiff[dask]'",
    ),
}
_ALIASES = {"strict": "array_api_strict", "np": "numpy", "pytorch": "torch"}
_RUNTIME: dict[str, Any] = {}


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`list_backends`."""

    name: str
    available: bool  # its library is importable (a GPU backend may still lack a device)
    source: str  # "builtin", "registered" or "entry point"
    target: str  # what gets imported / called
    hint: str  # install hint when unavailable, else ""

    def __str__(self) -> str:
        state = "available" if self.available else f"not installed: {self.hint}"
        return f"{self.name} ({self.source}; {state})"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _entry_points() -> tuple:
    try:
        return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # noqa: BLE001 - broken metadata must not break refdiff
        return ()


def list_backends() -> list[BackendInfo]:
    """Every known backend, available or not (with install hints), without importing any of them."""
    rows = [BackendInfo(n, True, "registered", repr(v), "") for n, v in _RUNTIME.items()]
    for n, b in _BUILTINS.items():
        if n not in _RUNTIME:
            ok = _importable(b.module)
            rows.append(BackendInfo(n, ok, "builtin", b.target, "" if ok else b.hint))
    seen = {r.name for r in rows}
    for ep in _entry_points():
        if ep.name not in seen:
            rows.append(BackendInfo(ep.name, True, "entry point", ep.value, ""))
            seen.add(ep.name)
    return rows


def refresh_backends() -> None:
    """Forget cached entry points (after installing a plugin in a running process)."""
    _entry_points.cache_clear()


def register_backend(name: str, factory: Callable[..., Any] | Backend | str) -> None:
    """Register a backend: a factory ``f(device=None) -> Backend``, an instance, or an import string."""
    if not isinstance(name, str) or not name or "@" in name or "," in name:
        from refdiff._errors import fail

        fail("name", name, "expected a non-empty backend name without '@' or ','")
    _RUNTIME[name] = factory


def unregister_backend(name: str) -> None:
    """Remove a runtime registration (built-ins and entry points cannot be removed)."""
    _RUNTIME.pop(name, None)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split "name@device" (e.g. "torch@cuda:1") into (name, device); no "@" means no device."""
    if "@" in spec:
        name, device = spec.rsplit("@", 1)
        return name.strip(), device.strip() or None
    return spec.strip(), None


def _load(target: str) -> Any:
    """Import "pkg.mod:attr" (or "pkg.mod" for a module); a module not found on sys.path is
    looked for in the current directory too, as ``python -m`` would (the ``refdiff`` script does
    not put the current directory on sys.path)."""
    import os
    import sys

    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != module.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _instantiate(obj: Any, name: str, device: Any) -> Backend:
    """A Backend from an instance, a factory/class, or an array namespace."""
    if isinstance(obj, Backend):
        if device is not None and str(device) != str(obj.device):
            from refdiff._errors import fail

            fail("device", device, f"backend {name!r} is a fixed instance on {obj.device}")
        return obj
    if callable(obj) and not _is_namespace(obj):
        obj = obj() if device is None else obj(device=device)
        if isinstance(obj, Backend):
            return obj
    if _is_namespace(obj):
        return from_namespace(obj, name=name, device=device)
    raise TypeError(
        f"backend {name!r} resolved to {obj!r}, which is neither a refdiff Backend "
        "nor an array-API namespace"
    )


def _is_namespace(obj: Any) -> bool:
    return hasattr(obj, "asarray") and hasattr(obj, "float64") and not isinstance(obj, type)


def _available_text() -> str:
    rows = list_backends()
    ok = ", ".join(repr(r.name) for r in rows if r.available)
    missing = "; ".join(f"{r.name!r} ({r.hint})" for r in rows if not r.available)
    text = f"available: {ok}"
    if missing:
        text += f"; not installed: {missing}"
    return text + "; or an import string 'package.module:factory'"


def _from_builtin(name: str, device: Any) -> Backend:
    b = _BUILTINS[name]
    if not _importable(b.module):
        raise BackendUnavailableError(
            f"backend {name!r} needs the {b.module!r} package, which is not installed: {b.hint}"
        )
    return _instantiate(_load(b.target), name, device)


def _from_entry_point(name: str, device: Any) -> Backend | None:
    for ep in _entry_points():
        if ep.name == name:
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin: warn, then report unknown
                warnings.warn(
                    f"refdiff backend entry point {name!r} ({ep.value}) failed to load: {exc!r}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                raise BackendUnavailableError(
                    f"backend {name!r} (entry point {ep.value}) failed to load: {exc!r}"
                ) from exc
            return _instantiate(obj, name, device)
    return None


def get_backend(name: str | Backend = "numpy", *, device: Any = None) -> Backend:
    """The backend called ``name`` on ``device`` (``"name@device"`` is accepted too).

    Parameters
    ----------
    name : str or Backend
        A built-in ("numpy", "array_api_strict", "torch", "cupy", "jax", "dask"), a name registered with
        :func:`register_backend` or through the ``refdiff.backends`` entry-point group, an import
        string "package.module:factory", or a Backend (returned as is).
    device : optional
        The device ("cpu", "cuda", "cuda:1", an array_api_strict device name, ...); the backend's
        default when omitted.

    Raises
    ------
    UnknownBackendError
        The name is not known; the message lists the available backends and install hints.
    BackendUnavailableError
        The library is not installed (the message says how to install it) or the device is not
        present (e.g. CUDA requested without a GPU).
    """
    if isinstance(name, Backend):
        return _instantiate(name, name.name, device)
    if not isinstance(name, str):
        raise UnknownBackendError(f"backend={name!r} is not a backend name; {_available_text()}")
    base, dev = parse_spec(name)
    backend = _resolve(base, device if device is not None else dev)
    backend.spec = base  # what resolves to it again: a reproduce line names this, not .name
    return backend


def _resolve(base: str, device: Any) -> Backend:
    base = _ALIASES.get(base, base)
    if base in _RUNTIME:
        obj = _RUNTIME[base]
        return _instantiate(_load(obj) if isinstance(obj, str) else obj, base, device)
    if base in _BUILTINS:
        return _from_builtin(base, device)
    found = _from_entry_point(base, device)
    if found is not None:
        return found
    if ":" in base:
        try:
            obj = _load(base)
        except (ImportError, AttributeError) as exc:
            raise UnknownBackendError(
                f"backend={base!r} looks like an import string but could not be loaded "
                f"({exc}); {_available_text()}"
            ) from exc
        return _instantiate(obj, base.rpartition(":")[2] or base, device)
    raise UnknownBackendError(f"backend={base!r} is not a known backend; {_available_text()}")
