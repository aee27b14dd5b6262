"""The backend's own contributions: host copies, device, dtype and ``describe``.

The harness copies (asarray/to_numpy) must be exact. The backend's random numbers are checked in
``test_rng.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from refdiff.backends import quantise


def _assert_native(backend, x, dtype: str, what: str) -> None:
    assert backend.is_native(x), f"{what}: {type(x)} is not an array of backend {backend.name}"
    assert backend.device_of(x) == backend.device, (
        f"{what}: on device {backend.device_of(x)}, backend device is {backend.device}"
    )
    assert backend.dtype_name(x.dtype) == dtype, f"{what}: dtype {x.dtype}, expected {dtype}"


@pytest.mark.refdiff_check("backend.asarray")
def test_asarray_roundtrip(refdiff_backend, refdiff_dtype, refdiff_check):
    """Host -> backend -> host is exact for values representable in the dtype (the harness's copies)."""
    host = quantise(np.random.default_rng(7).standard_normal((3, 5)) * 10.0, refdiff_dtype)
    host[0, :3] = (0.0, -0.0, np.inf)
    x = refdiff_backend.asarray(host, refdiff_dtype)
    _assert_native(refdiff_backend, x, refdiff_dtype, "asarray")
    back = refdiff_backend.to_numpy(x).astype(np.float64)
    np.testing.assert_array_equal(back, host)
    refdiff_check.record("roundtrip", 0.0)


@pytest.mark.refdiff_check("backend.describe")
def test_describe(refdiff_backend, refdiff_dtype, refdiff_check):
    """describe() names the backend, its library version and device (for report headers)."""
    d = refdiff_backend.describe()
    for key in ("backend", "namespace", "library_version", "device", "float_dtypes", "refdiff"):
        assert key in d, f"describe() lacks {key!r}: {d}"
    assert refdiff_dtype in d["float_dtypes"]
    refdiff_backend.synchronize()
    refdiff_check.record("describe", 0.0)


_REFERENCE_OPS = (
    "exp",
    "expm1",
    "log",
    "log1p",
    "sqrt",
    "logaddexp",
    "asinh",
    "sinh",
    "tanh",
    "maximum",
    "minimum",
    "round",
    "floor",
    "clip",
    "abs",
    "where",
    "sum",
    "mean",
    "std",
    "cumulative_sum",
    "take",
    "astype",
    "reshape",
)


@pytest.mark.refdiff_check("backend.namespace")
def test_namespace_is_the_arrays_own(refdiff_backend, refdiff_dtype, refdiff_check):
    """The reference calls the namespace its arrays report (``array_namespace(x)``), so a backend's
    ``xp`` must provide the same functions: a wrapper around another namespace is never called."""
    from array_api_compat import array_namespace

    b = refdiff_backend
    x = b.asarray(np.zeros(2), refdiff_dtype)
    ns = array_namespace(x)
    differ = [
        op
        for op in _REFERENCE_OPS
        if hasattr(b.xp, op) and getattr(ns, op, None) is not getattr(b.xp, op)
    ]
    assert ns is b.xp or not differ, (
        f"backend {b.name} wraps namespace {getattr(b.xp, '__name__', b.xp)!r}, but its arrays "
        f"report {getattr(ns, '__name__', ns)!r}, whose {', '.join(differ)} the reference calls "
        "instead: the wrapped functions are never checked. Give from_namespace the namespace the "
        "arrays report, and replace functions on it inside Backend.checking() (or use overrides)"
    )
    refdiff_check.record("namespace", 0.0)
