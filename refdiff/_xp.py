"""Array-API helpers shared by the reference: namespace lookup, broadcasting, table gathers, erf."""

from __future__ import annotations

import weakref
from typing import Any
from collections.abc import Callable

import numpy as np
import array_api_compat as _compat
from array_api_compat import array_namespace, device as _device, is_array_api_obj

from ._errors import RefdiffShapeError, fail
from ._typing import Array, Device, Namespace

__all__ = [
    "array_namespace",
    "device_of",
    "append_dims",
    "gather",
    "as_timesteps",
    "trusted_timesteps",
    "check_same_shape",
    "check_broadcast",
    "as_float_array",
    "check_leading_axes",
    "erf",
    "erfc",
    "register_special",
    "is_numpy",
    "is_array",
]


def is_array(x: object) -> bool:
    """Whether x is an array of an array-API namespace (a plain bool: arrays stay ``Array`` to the type checker)."""
    return is_array_api_obj(x)


def device_of(x: Array) -> Device:
    """The device an array lives on (array_api_compat.device)."""
    return _device(x)


def is_numpy(xp: Namespace) -> bool:
    """True for NumPy or its array-api-compat wrapper."""
    return _compat.is_numpy_namespace(xp)


def append_dims(a: Array, ndim: int) -> Array:
    """Reshape ``a`` to ``a.shape + (1,) * (ndim - a.ndim)`` so it broadcasts against an ndim array."""
    xp = array_namespace(a)
    if a.ndim > ndim:
        fail(
            "coefficient",
            a,
            f"has {a.ndim} dimensions, more than the {ndim} of the data",
            RefdiffShapeError,
        )
    shape = tuple(a.shape)
    if all(isinstance(d, int) for d in shape):
        return xp.reshape(a, shape + (1,) * (ndim - a.ndim))
    # A length not known yet (None; NaN in Dask): new axes by indexing, which needs no sizes.
    return a[(...,) + (None,) * (ndim - a.ndim)]


_VALIDATED: list[
    tuple[weakref.ref[Any], int]
] = []  # (weakref to a validated timestep array, T): skip re-checking the same array


def _already_validated(t: Array, num_timesteps: int) -> bool:
    for ref, T in _VALIDATED:
        if ref() is t and T == num_timesteps:
            return True
    return False


def _remember_validated(t: Array, num_timesteps: int) -> None:
    try:
        ref = weakref.ref(t)
    except TypeError:  # an array type without weak references: just re-check next time
        return
    _VALIDATED.append((ref, num_timesteps))
    del _VALIDATED[:-8]


def trusted_timesteps(t: Array, num_timesteps: int) -> Array:
    """Mark an integer timestep array that the caller drew in [0, num_timesteps) as validated.

    For code that cannot read the array back, e.g. a training step being captured as a CUDA
    graph: the gathers that follow skip their range check for this array (object). Returns t.
    """
    _remember_validated(t, num_timesteps)
    return t


def as_timesteps(t: Array, num_timesteps: int, *, like: Array, name: str = "t") -> Array:
    """Validate integer timesteps in [0, num_timesteps) and return them as an array next to ``like``.

    The value check reads the array back (one device synchronisation on a GPU); an array already
    validated against the same T is not checked again, so the coefficient gathers of one step cost
    one check, not one each. (Mutating a validated array in place defeats this cache.)
    """
    xp = array_namespace(like)
    if not is_array(t):
        if (
            isinstance(t, bool)
            or not isinstance(t, (int, np.integer))
            and not (
                isinstance(t, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in t)
            )
        ):
            fail(name, t, f"expected integer timesteps in [0, {num_timesteps})")
        t = xp.asarray(t, dtype=xp.int64, device=_device(like))
    elif _already_validated(t, num_timesteps):
        return t
    if not xp.isdtype(t.dtype, "integral"):
        fail(
            name,
            t,
            f"expected an integer dtype for timesteps in [0, {num_timesteps}), got {t.dtype}",
        )
    if t.ndim and t.shape[0] == 0:
        return t
    if bool(xp.any((t < 0) | (t >= num_timesteps))):
        lo, hi = int(xp.min(t)), int(xp.max(t))
        fail(name, t, f"timesteps must lie in [0, {num_timesteps}); got values from {lo} to {hi}")
    _remember_validated(t, num_timesteps)
    return t


def gather(table: Array, t: Array, ndim: int) -> Array:
    """table[t] reshaped to broadcast against data with ``ndim`` dimensions (batch axes first)."""
    xp = array_namespace(table, t)
    if t.ndim == 1:  # take's own shape: valid while the length is still lazy
        vals = xp.take(table, t, axis=0)
    elif t.ndim == 0:
        vals = xp.reshape(xp.take(table, xp.reshape(t, (1,)), axis=0), ())
    else:  # the standard's take wants 1-D indices
        vals = xp.reshape(xp.take(table, xp.reshape(t, (-1,)), axis=0), tuple(t.shape))
    return append_dims(vals, ndim)


def check_same_shape(name_a: str, a: Array, name_b: str, b: Array) -> None:
    """Raise unless ``a`` and ``b`` have the same shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise RefdiffShapeError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must match"
        )


def check_broadcast(*named: tuple[str, Array]) -> tuple[int, ...]:
    """Raise unless the shapes of the (name, array) pairs broadcast; return the broadcast shape."""
    shapes = [tuple(getattr(a, "shape", ())) for _, a in named]
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        desc = ", ".join(f"{n} {s}" for (n, _), s in zip(named, shapes))
        raise RefdiffShapeError(f"shapes do not broadcast: {desc}") from None


def as_float_array(
    value: Array, name: str, *, like: Array | None = None
) -> tuple[Namespace, Array]:
    """(xp, ``value`` as a real floating array): a Python/NumPy real becomes a 0-d float64 NumPy array,
    or a 0-d array in ``like``'s namespace, dtype and device; an array is cast to ``like``'s dtype."""
    if is_array(value):
        xp = array_namespace(value) if like is None else array_namespace(like, value)
        if not xp.isdtype(value.dtype, "real floating"):
            fail(name, value, f"expected a real floating-point array, got dtype {value.dtype}")
        if like is not None and value.dtype != like.dtype:
            value = xp.astype(value, like.dtype)
        return xp, value
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        fail(name, value, "expected a real number or a real floating-point array")
    try:
        value = float(value)
    except (TypeError, ValueError):
        fail(name, value, "expected a real number or a real floating-point array")
    if like is None:
        arr = np.asarray(value, dtype=np.float64)
        return array_namespace(arr), arr
    xp = array_namespace(like)
    return xp, xp.asarray(value, dtype=like.dtype, device=_device(like))


def check_leading_axes(name: str, a: Array, x: Array) -> None:
    """Raise unless ``a`` (0-d or shape (B,)) matches the leading axes of ``x`` (batch first)."""
    if not (a.ndim <= x.ndim and all(n in (1, m) for n, m in zip(a.shape, x.shape))):
        raise RefdiffShapeError(
            f"{name} has shape {tuple(a.shape)}, which does not match the leading axes of x with "
            f"shape {tuple(x.shape)}; expected a 0-d array or shape (B,) with B = x.shape[0]"
        )


_SPECIAL: dict[tuple[str, str], Callable[[Array], Array]] = {}


def register_special(op: str, namespace_name: str, fn: Callable[[Array], Array]) -> None:
    """Register a special function (e.g. ``erf``) for a namespace whose ``__name__`` ends in ``namespace_name``."""
    _SPECIAL[(op, namespace_name)] = fn


def _special(op: str, x: Array) -> Array:
    xp = array_namespace(x)
    name = getattr(xp, "__name__", "")
    for (o, ns), fn in _SPECIAL.items():
        if o == op and (name == ns or name.endswith("." + ns)):
            return fn(x)
    short = name.split(".")[-1]
    if op in ("erf", "erfc"):
        import importlib

        if _compat.is_numpy_namespace(xp):
            fn = getattr(importlib.import_module("scipy.special"), op)
            return xp.asarray(fn(np.asarray(x)))
        if _compat.is_torch_namespace(xp):
            return getattr(importlib.import_module("torch").special, op)(x)
        if _compat.is_cupy_namespace(xp):
            return getattr(importlib.import_module("cupyx.scipy.special"), op)(x)
        if _compat.is_jax_namespace(xp):
            return getattr(importlib.import_module("jax.scipy.special"), op)(x)
        if _compat.is_dask_namespace(xp):  # blockwise on the NumPy chunks, still lazy
            fn = getattr(importlib.import_module("scipy.special"), op)
            return x.map_blocks(fn, dtype=x.dtype)
    raise NotImplementedError(
        f"{op} is not in the array API standard and no implementation is registered for namespace "
        f"{name!r}; register one with refdiff._xp.register_special({op!r}, {short!r}, fn)"
    )


def erf(x: Array) -> Array:
    """The error function, dispatched on the array's namespace (not part of the array API standard)."""
    return _special("erf", x)


def erfc(x: Array) -> Array:
    """The complementary error function 1 - erf(x), accurate in the tails; dispatched like :func:`erf`."""
    return _special("erfc", x)
