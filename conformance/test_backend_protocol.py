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
        f"{what}: on device {backend.device_of(x)}, backend device is {backend.device}")
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
