"""refdiff backends (installed as ``refdiff.backends``): the registry and the backend protocol.

>>> from refdiff.backends import get_backend, list_backends
>>> b = get_backend("numpy")              # the oracle; "torch@cuda", "cupy", "jax", "dask", ...
>>> [r.name for r in list_backends()]     # doctest: +SKIP

Importing this package imports none of PyTorch, CuPy, JAX or Dask: built-in backends are loaded
from strings when first asked for. The torch and cupy subpackages also hold those libraries' GPU
code (UNet twins, trainers, fast paths and kernels). Third parties register in the entry-point
group ``refdiff.backends`` (``mylib = "mylib.refdiff_backend:make_backend"``), pass an import string
``"pkg.mod:factory"``, call :func:`register_backend`, or wrap any array-API namespace with
:func:`from_namespace`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

from ._base import (
    DTYPE_NAMES,
    SCHEDULE_TO,
    Backend,
    BackendUnavailableError,
    UnknownBackendError,
    from_namespace,
    quantise,
)
from ._registry import (
    ENTRY_POINT_GROUP,
    BackendInfo,
    get_backend,
    list_backends,
    parse_spec,
    refresh_backends,
    register_backend,
    unregister_backend,
)

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendUnavailableError",
    "UnknownBackendError",
    "from_namespace",
    "get_backend",
    "list_backends",
    "register_backend",
    "unregister_backend",
    "refresh_backends",
    "parse_spec",
    "quantise",
    "DTYPE_NAMES",
    "SCHEDULE_TO",
    "ENTRY_POINT_GROUP",
]


# Deprecated module paths (one release): the torch and CuPy code moved into subpackages. An import
# of an old path returns the new module, with a DeprecationWarning naming it.
_MOVED = {
    "torch_unet": "torch.unet",
    "torch_train": "torch.train",
    "torch_fast": "torch.fast",
    "cupy_unet": "cupy.unet",
    "cupy_train": "cupy.train",
    "_cuda_emu": "cupy._emu",
    "_kernel_ref": "cupy._kernel_ref",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve ``refdiff.backends.<old>`` to its new module (see :data:`_MOVED`)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
        prefix, _, short = fullname.rpartition(".")
        if prefix != __name__ or short not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(
            f"{spec.name} moved to {new}; the old path is deprecated and goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        """The module is the already-imported new one: nothing to run."""


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
