"""The backend's random numbers: normal and uniform draws per dtype on the backend's device.

Each check draws from the backend's own generator (``make_rng``, ``normal``, ``uniform``) and holds
the draws to N(0, 1) or U[0, 1) with the statistical tests of :mod:`refdiff.conformance.rng`: the
mean (≈1.0e8 normal draws: a mean of 1e-3 is about 10 standard deviations of the sample mean),
the variance (2^24 draws: a 1 % variance error is more than 20 standard deviations), the counts
beyond ±3 and ±4 sd, 64 equiprobable bins, repeated blocks within and across draws, the same draws
for the same seed, and independent streams for different seeds. Every statistical test has a
false-alarm probability of at most 1e-9 per run; the recorded ratio is the worst
deviation/threshold.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from refdiff.conformance import rng as R

#: The generator seed; the environment variable REFDIFF_RNG_SEED overrides it (to repeat the
#: checks on other streams).
SEED = 20240607


def _seed() -> int:
    return int(os.environ.get("REFDIFF_RNG_SEED") or SEED)


_CENTRE = {"normal": 0.0, "uniform": 0.5}


def _draws(backend, dtype: str, kind: str, seed: int):
    """draw() -> the next CHUNK draws of ``kind`` from one generator, as a host array."""
    gen = backend.make_rng(seed)
    fn = getattr(backend, kind)

    def draw(size: int = R.CHUNK) -> np.ndarray:
        x = fn(gen, (size,), dtype)
        assert backend.is_native(x), (
            f"backend {backend.name} {kind}() returned {type(x).__module__}.{type(x).__name__}, "
            "not an array of the backend"
        )
        assert backend.device_of(x) == backend.device, (
            f"backend {backend.name} {kind}() draws are on {backend.device_of(x)}, not on the "
            f"backend's device {backend.device}"
        )
        got = backend.dtype_name(x.dtype)
        assert got == dtype, f"backend {backend.name} {kind}() returned {got}, asked for {dtype}"
        assert tuple(x.shape) == (size,), (
            f"{kind}() returned shape {tuple(x.shape)}, asked ({size},)"
        )
        return backend.to_numpy(x)

    return draw


def _check(backend, dtype: str, kind: str, refdiff_check) -> None:
    seed = _seed()
    stats = (R.normal_statistics if kind == "normal" else R.uniform_statistics)(
        _draws(backend, dtype, kind, seed), dtype
    )
    n = 1 << 20
    first, again, other = (
        np.asarray(_draws(backend, dtype, kind, s)(n), dtype=np.float64)
        for s in (seed, seed, seed + 1)
    )
    stats += R.stream_statistics(first, again, other, _CENTRE[kind])
    for s in stats:
        refdiff_check.record(s.name, s.ratio)
    bad = [s for s in stats if not s.ok]
    assert not bad, (
        f"backend {backend.name} {kind}() draws in {dtype} on {backend.device} fail "
        f"{len(bad)} statistical test(s) (each has false-alarm probability <= {R.ALPHA:g}):\n  "
        + "\n  ".join(s.describe() for s in bad)
    )


@pytest.mark.refdiff_check("rng.normal")
def test_normal(refdiff_backend, refdiff_dtype, refdiff_check):
    """normal(rng, shape, dtype): N(0, 1), no repeats, reproducible per seed, independent seeds."""
    _check(refdiff_backend, refdiff_dtype, "normal", refdiff_check)


@pytest.mark.refdiff_check("rng.uniform")
def test_uniform(refdiff_backend, refdiff_dtype, refdiff_check):
    """uniform(rng, shape, dtype): U[0, 1), no repeats, reproducible per seed, independent seeds."""
    _check(refdiff_backend, refdiff_dtype, "uniform", refdiff_check)
