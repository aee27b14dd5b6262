"""The backend's own contributions: host copies, native RNG (statistically), device and dtype.

The standard has no RNG, so each backend brings a generator (DESIGN.md, "The one rule"); these
checks hold it to N(0, 1) within stated statistical bounds, to determinism per seed, and to the
backend's device and dtype. The harness copies (asarray/to_numpy) must be exact.
"""

from __future__ import annotations

import math

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


@pytest.mark.refdiff_check("backend.normal")
def test_normal(refdiff_backend, refdiff_dtype, refdiff_check):
    """normal(rng, shape, dtype): native, on the device, deterministic per seed, and N(0, 1).

    With n = 40000 draws the sample mean has sd 1/√n and the sample variance sd √(2/n); both are
    held to 6 sd (a false alarm has probability ~2e-9 per check); the fraction below 0 and the
    fraction beyond ±1.96 are held to 6 binomial sd of 1/2 and 0.05.
    """
    b, n = refdiff_backend, 40000
    z = b.normal(b.make_rng(1234), (n,), refdiff_dtype)
    _assert_native(b, z, refdiff_dtype, "normal")
    again = b.to_numpy(b.normal(b.make_rng(1234), (n,), refdiff_dtype))
    h = b.to_numpy(z).astype(np.float64)
    np.testing.assert_array_equal(h, again.astype(np.float64), err_msg="same seed, other draws")
    other = b.to_numpy(b.normal(b.make_rng(1235), (n,), refdiff_dtype)).astype(np.float64)
    assert not np.array_equal(h, other), "different seeds gave the same draws"
    mean, var = h.mean(), h.var()
    ratios = {
        "mean": abs(mean) / (6.0 / math.sqrt(n)),
        "variance": abs(var - 1.0) / (6.0 * math.sqrt(2.0 / n)),
        "P(z<0)": abs((h < 0).mean() - 0.5) / (6.0 * math.sqrt(0.25 / n)),
        "P(|z|>1.96)": abs((np.abs(h) > 1.959964).mean() - 0.05) / (6.0 * math.sqrt(0.0475 / n)),
    }
    for name, r in ratios.items():
        refdiff_check.record(name, r)
    bad = {k: v for k, v in ratios.items() if v > 1.0}
    assert not bad, f"backend {b.name} normal draws fail N(0, 1) at 6 sd: {bad} (mean {mean}, var {var})"


@pytest.mark.refdiff_check("backend.describe")
def test_describe(refdiff_backend, refdiff_dtype, refdiff_check):
    """describe() names the backend, its library version and device (for report headers)."""
    d = refdiff_backend.describe()
    for key in ("backend", "namespace", "library_version", "device", "float_dtypes", "refdiff"):
        assert key in d, f"describe() lacks {key!r}: {d}"
    assert refdiff_dtype in d["float_dtypes"]
    refdiff_backend.synchronize()
    refdiff_check.record("describe", 0.0)
