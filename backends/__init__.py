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
