"""Statistical tests of a backend's random numbers, each with a stated false-alarm probability.

The standard has no RNG, so every backend brings its own generator (``make_rng``, ``normal``,
``uniform``). These tests hold it to N(0, 1) and U[0, 1) per dtype on the backend's device. Each
statistic is compared with a bound that holds with probability at least 1 − :data:`ALPHA` for an
ideal generator, by a tail inequality that is exact or rigorous, never a normal approximation:

* the mean of n exact N(0, 1) draws is N(0, 1/n): threshold z·n^-½ with 2·Q(z) = α;
* Σ z² of n N(0, 1) draws is χ²(n): Laurent–Massart, P(S − n ≥ 2√(nx) + 2x) ≤ e^-x and
  P(n − S ≥ 2√(nx)) ≤ e^-x, with x = ln(2/α);
* the sum of n products a·b of independent N(0, 1) pairs (serial correlation of disjoint pairs):
  Chernoff with E[exp(λab)] = (1 − λ²)^(−1/2);
* a mean of bounded variables (uniform moments, indicator counts: tails, bins, sign agreement):
  Bernstein, P(|mean − μ| ≥ t) ≤ 2·exp(−n t² / (2v + 2ct/3)) with v the variance and c a bound on
  |X − μ|; a family of k bins shares α (Bonferroni, α/k per bin).

The dtype's own discretisation (a float32 uniform is a multiple of 2^-24) may shift a moment by
at most about one eps of the dtype; that is added to the moment thresholds. Tail and bin counts
are taken only in float32 and float64, where rounding moves a bin edge by less than 1e-6 of a
standard deviation of its count.

A *repeat* is a window of :data:`WINDOW` consecutive values found again elsewhere (in the same draw,
in a later draw from the same generator, or in another seed's stream). For an ideal generator
the chance of one is below (3e-8)^15 per position in float32 (the largest probability of a single
float32 value of N(0, 1) or U[0, 1) is below 3e-8) and smaller still in float64, so a repeat is a
failure, with no threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

__all__ = [
    "ALPHA",
    "WINDOW",
    "Stat",
    "bernstein_threshold",
    "chi2_bounds",
    "find_repeat",
    "gaussian_mean_threshold",
    "product_threshold",
    "normal_statistics",
    "stream_statistics",
    "uniform_statistics",
]

#: False-alarm probability of each statistical test (per run of the check).
ALPHA = 1e-9
#: Length of the window whose recurrence counts as a repeated block.
WINDOW = 16
#: Draws per backend call; several calls from the same generator make up a run (2^20: 8 MB of
#: float64, small enough for the allocator to reuse the memory between calls).
CHUNK = 1 << 20
#: Draws behind every statistic (2^24) and behind the normal mean (96·2^20 ≈ 1.0e8: enough to see
#: a mean of 1e-3, about 10 standard deviations of the sample mean).
N_STATS = 16 * CHUNK
N_NORMAL_MEAN = 96 * CHUNK
_BINS = 64
_FINE = ("float64", "float32")


@dataclass
class Stat:
    """One statistic: observed deviation from its ideal value and the threshold it must stay under."""

    name: str
    deviation: float
    threshold: float
    detail: str = ""

    @property
    def ratio(self) -> float:
        """|deviation| / threshold (> 1 fails); inf for an exact test that failed."""
        if self.threshold == 0:
            return 0.0 if self.deviation == 0 else math.inf
        return abs(self.deviation) / self.threshold

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0

    def describe(self) -> str:
        return (
            f"{self.name}: deviation {self.deviation:.4g}, allowed {self.threshold:.4g} "
            f"(ratio {self.ratio:.3g}){'; ' + self.detail if self.detail else ''}"
        )


def gaussian_mean_threshold(n: int, alpha: float = ALPHA) -> float:
    """t with P(|mean of n N(0,1)| > t) = alpha (the mean is exactly N(0, 1/n))."""
    return NormalDist().inv_cdf(1.0 - alpha / 2.0) / math.sqrt(n)


def chi2_bounds(n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """(lower, upper) deviations of S/n − 1 for S ~ χ²(n), each side with probability ≤ alpha/2."""
    x = math.log(2.0 / alpha)
    return 2.0 * math.sqrt(x / n), 2.0 * math.sqrt(x / n) + 2.0 * x / n


def bernstein_threshold(n: int, var: float, c: float, alpha: float = ALPHA) -> float:
    """t with 2·exp(−n t²/(2v + 2ct/3)) = alpha: a two-sided bound on a mean of n bounded terms."""
    L = math.log(2.0 / alpha)
    b = 2.0 * c * L / 3.0
    return (b + math.sqrt(b * b + 8.0 * n * L * var)) / (2.0 * n)


def product_threshold(n: int, alpha: float = ALPHA) -> float:
    """t with P(|Σ a_i b_i| ≥ t) ≤ alpha for n independent products of independent N(0, 1) pairs.

    Chernoff: E[exp(λab)] = (1 − λ²)^(−1/2), so P(Σ ≥ t) ≤ exp(−λt)·(1 − λ²)^(−n/2) at the
    optimal λ = (√(n² + 4t²) − n)/(2t); t is found by bisection for alpha/2 per side.
    """
    target = math.log(alpha / 2.0)

    def log_bound(t: float) -> float:
        lam = (math.sqrt(n * n + 4.0 * t * t) - n) / (2.0 * t)
        return -lam * t - 0.5 * n * math.log1p(-lam * lam)

    lo, hi = 0.0, 10.0 * math.sqrt(n) + 100.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if log_bound(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def find_repeat(h: np.ndarray, window: np.ndarray, skip: int | None = None) -> int | None:
    """The first position p (other than ``skip``) where ``h[p:p+len(window)] == window``, or None."""
    w = len(window)
    if h.size < w:
        return None
    cand = np.flatnonzero(h[: h.size - w + 1] == window[0])
    for k in range(1, w):
        if cand.size == 0:
            return None
        cand = cand[h[cand + k] == window[k]]
    cand = cand[cand != skip] if skip is not None else cand
    return int(cand[0]) if cand.size else None


@dataclass
class _Repeats:
    """Anchor windows of earlier draws, searched for in every later draw."""

    anchors: list = field(default_factory=list)
    found: list = field(default_factory=list)

    def scan(self, h: np.ndarray, label: str) -> None:
        """Search h for the first draw's and the previous draw's anchors, and for repeats of its
        own windows at 0 and at 1/3 (a second half repeating the first is found at 1/2)."""
        for where, w in self.anchors:
            p = find_repeat(h, w)
            if p is not None:
                self.found.append(f"the {WINDOW} values at {where} recur in {label} at {p}")
        for a in (0, h.size // 3):
            w = h[a : a + WINDOW].copy()
            p = find_repeat(h, w, skip=a)
            if p is not None:
                self.found.append(f"the {WINDOW} values at {label}[{a}] recur at {label}[{p}]")
        self.anchors = self.anchors[:1] + [(f"{label}[0]", h[:WINDOW].copy())]

    def stat(self) -> Stat:
        return Stat("repeated block", float(len(self.found)), 0.0, "; ".join(self.found[:3]))


def _spacing_slack(dtype: str) -> float:
    from .tolerances import eps

    return eps(dtype)


def _count_stat(name: str, count: int, n: int, p: float, alpha: float = ALPHA) -> Stat:
    t = bernstein_threshold(n, p * (1.0 - p), max(p, 1.0 - p), alpha)
    return Stat(name, count / n - p, t, f"{count} of {n}, expected {p * n:.1f}")


def _bins_stat(name: str, counts: np.ndarray, n: int, p: np.ndarray | None = None) -> Stat:
    """The worst bin of a family (Bonferroni: each bin is tested at ALPHA / number of bins)."""
    k = counts.size
    p = np.full(k, 1.0 / k) if p is None else p
    t = np.array([bernstein_threshold(n, q * (1.0 - q), max(q, 1.0 - q), ALPHA / k) for q in p])
    dev = counts / n - p
    i = int(np.argmax(np.abs(dev) / t))
    return Stat(
        name,
        float(dev[i]),
        float(t[i]),
        f"bin {i} of {k} holds {int(counts[i])}, expected {n * p[i]:.0f}",
    )


def _finite_stat(bad: int, n: int, what: str) -> Stat:
    return Stat(what, float(bad), 0.0, f"{bad} of {n} draws")


def _normal_bin_probabilities() -> np.ndarray:
    """P(bin) of N(0, 1) for the bins of :func:`_normal_bins` (below −4, 64 of width 1/8, ≥ 4)."""
    cdf = [0.0] + [NormalDist().cdf(-4.0 + k / 8.0) for k in range(65)] + [1.0]
    return np.diff(np.array(cdf))


def _normal_bins(h: np.ndarray) -> np.ndarray:
    """Counts in 66 bins: below −4, [−4 + k/8, −4 + (k+1)/8) for k < 64, at or above 4."""
    idx = np.floor((h + 4.0) * 8.0)
    np.clip(idx, -1.0, 64.0, out=idx)
    return np.bincount(idx.astype(np.int64) + 1, minlength=66)


_TAILS = {
    "below -4 sd": (4.0, -1),
    "below -3 sd": (3.0, -1),
    "above +3 sd": (3.0, 1),
    "above +4 sd": (4.0, 1),
}


def normal_statistics(draw, dtype: str) -> list[Stat]:
    """Every statistic of N(0, 1) draws; ``draw()`` returns the next CHUNK draws as a host array.

    The mean uses N_NORMAL_MEAN draws, everything else the first N_STATS.
    """
    fine = dtype in _FINE
    bins = np.zeros(66, dtype=np.int64)
    tails = dict.fromkeys(_TAILS, 0)
    s1 = s2 = sp = 0.0
    pairs = 0
    bad = n = n_mean = 0
    reps = _Repeats()
    for c in range(N_NORMAL_MEAN // CHUNK):
        x = draw()
        part = float(np.add.reduce(x.reshape(-1), dtype=np.float64))
        stats_chunk = n < N_STATS
        if stats_chunk or not math.isfinite(part):
            h = np.asarray(x, dtype=np.float64).reshape(-1)
            finite = np.isfinite(h)
            if not finite.all():
                bad += int(h.size - np.count_nonzero(finite))
                h = np.where(finite, h, 0.0)
                part = float(np.sum(h))
        s1 += part
        n_mean += x.size
        if stats_chunk:
            n += h.size
            s2 += float(np.dot(h, h))
            m = h.size // 2
            pairs += m
            sp += float(np.dot(h[0 : 2 * m : 2], h[1 : 2 * m : 2]))
            reps.scan(h, f"draw {c}")
            if fine:
                bins += _normal_bins(h)
                for name, (t, sign) in _TAILS.items():
                    tails[name] += int(
                        np.count_nonzero(h > t) if sign > 0 else np.count_nonzero(h < -t)
                    )
    slack = _spacing_slack(dtype)
    lo, hi = chi2_bounds(n)
    m2 = s2 / n - 1.0
    out = [
        _finite_stat(bad, n_mean, "non-finite draws"),
        Stat(
            "mean", s1 / n_mean, gaussian_mean_threshold(n_mean) + slack, f"mean of {n_mean} draws"
        ),
        Stat("variance", m2, (hi if m2 > 0 else lo) + slack, f"mean of z² over {n} draws"),
        Stat(
            "serial correlation",
            sp / pairs,
            product_threshold(pairs) / pairs + slack,
            f"mean of z_2i·z_2i+1 over {pairs} disjoint pairs",
        ),
        reps.stat(),
    ]
    if fine:
        p = _normal_bin_probabilities()
        nd = NormalDist()
        for name, (t, _) in _TAILS.items():
            out.append(_count_stat(f"draws {name}", tails[name], n, nd.cdf(-t)))
        out.append(_bins_stat("bins of width 1/8 sd", bins, n, p))
    return out


def uniform_statistics(draw, dtype: str) -> list[Stat]:
    """Every statistic of U[0, 1) draws; ``draw()`` returns the next CHUNK draws as a host array."""
    fine = dtype in _FINE
    s1 = s2 = sp = 0.0
    bad = out_of_range = n = pairs = 0
    low = high = 0
    bins = np.zeros(_BINS, dtype=np.int64)
    reps = _Repeats()
    edge = 2.0**-10
    for c in range(N_STATS // CHUNK):
        h = np.asarray(draw(), dtype=np.float64).reshape(-1)
        finite = np.isfinite(h)
        bad += int(h.size - np.count_nonzero(finite))
        h = np.where(finite, h, 0.5)
        out_of_range += int(np.count_nonzero((h < 0.0) | (h >= 1.0)))
        d = h - 0.5
        s1 += float(np.sum(d))
        s2 += float(np.dot(d, d))
        m = d.size // 2
        pairs += m
        sp += float(np.dot(d[0 : 2 * m : 2], d[1 : 2 * m : 2]))
        n += h.size
        reps.scan(h, f"draw {c}")
        if fine:
            low += int(np.count_nonzero(h < edge))
            high += int(np.count_nonzero(h >= 1.0 - edge))
            bins += np.bincount(
                np.clip((h * _BINS).astype(np.int64), 0, _BINS - 1), minlength=_BINS
            )
    slack = _spacing_slack(dtype)
    out = [
        _finite_stat(bad, n, "non-finite draws"),
        _finite_stat(out_of_range, n, "draws outside [0, 1)"),
        Stat(
            "mean",
            s1 / n,
            bernstein_threshold(n, 1.0 / 12.0, 0.5) + slack,
            f"mean of u − 1/2 over {n} draws",
        ),
        Stat(
            "variance",
            s2 / n - 1.0 / 12.0,
            bernstein_threshold(n, 1.0 / 80.0 - 1.0 / 144.0, 1.0 / 6.0) + slack,
            f"mean of (u − 1/2)² over {n} draws, expected 1/12",
        ),
        Stat(
            "serial correlation",
            sp / pairs,
            bernstein_threshold(pairs, 1.0 / 144.0, 0.25) + slack,
            f"mean of (u_2i − 1/2)(u_2i+1 − 1/2) over {pairs} disjoint pairs",
        ),
        reps.stat(),
    ]
    if fine:
        out.append(_count_stat("draws below 2^-10", low, n, edge))
        out.append(_count_stat("draws at or above 1 − 2^-10", high, n, edge))
        out.append(_bins_stat("equal-width bins", bins, n))
    return out


def stream_statistics(
    first: np.ndarray, again: np.ndarray, other: np.ndarray, centre: float
) -> list[Stat]:
    """Reproducibility (same seed, same draws) and seed independence (another seed's stream).

    ``first`` and ``again`` come from two generators made with the same seed, ``other`` from the
    next seed; ``centre`` is the median of the distribution (sign agreement of the centred draws
    of two independent streams is Bernoulli(1/2)).
    """
    n = first.size
    same = int(np.count_nonzero(first != again)) if first.shape == again.shape else n
    agree = int(np.count_nonzero(np.sign(first - centre) == np.sign(other - centre)))
    found = [
        p
        for p in (find_repeat(other, first[:WINDOW]), find_repeat(first, other[:WINDOW]))
        if p is not None
    ]
    return [
        Stat("same seed, same draws", float(same), 0.0, f"{same} of {n} draws differ"),
        _count_stat("sign agreement with the next seed's stream", agree, n, 0.5),
        Stat(
            "next seed's stream is a shifted copy",
            float(len(found)),
            0.0,
            f"a window of one stream recurs in the other at {found}" if found else "",
        ),
    ]
