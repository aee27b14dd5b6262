"""Double-double arithmetic on NumPy float64 arrays, for building schedule tables on the host.

A double-double number is an unevaluated sum ``hi + lo`` of two float64 values with
``|lo| <= ulp(hi)/2``; it carries about 106 significant bits.  Schedule tables are computed in
this arithmetic and rounded to float64 once at the end, so every table is within about one ulp
of the exact value whatever cancellation its formula contains (Dekker 1971; Hida, Li & Bailey,
"Library for double-double and quad-double arithmetic", 2007 — the algorithms below follow the
textbook error-free transformations and are written from those descriptions).

Only finite inputs are supported; callers patch singular entries (zero, infinity) explicitly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._typing import Array

_SPLITTER = 134217729.0  # 2**27 + 1, Veltkamp splitting constant for binary64


def _two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """Error-free a + b = s + e (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _quick_two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """Error-free a + b = s + e, assuming |a| >= |b| or a == 0 (Dekker's FastTwoSum)."""
    s = a + b
    e = b - (s - a)
    return s, e


def _split(a: Array) -> tuple[Array, Array]:
    """Veltkamp split of a into two 26-bit halves, a = hi + lo exactly."""
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


def _two_prod(a: Array, b: Array) -> tuple[Array, Array]:
    """Error-free a * b = p + e (Dekker's TwoProduct, no FMA needed)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


class DD:
    """An array of double-double numbers (hi + lo), with the arithmetic the schedules need."""

    __slots__ = ("hi", "lo")

    def __init__(self, hi: npt.ArrayLike, lo: npt.ArrayLike | None = None) -> None:
        self.hi = np.asarray(hi, dtype=np.float64)
        self.lo = np.zeros_like(self.hi) if lo is None else np.asarray(lo, dtype=np.float64)

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _coerce(x: DD | npt.ArrayLike) -> DD:
        return x if isinstance(x, DD) else DD(x)

    def __getitem__(self, idx: Any) -> DD:
        return DD(self.hi[idx], self.lo[idx])

    def __len__(self) -> int:
        return len(self.hi)

    def to_float(self) -> np.ndarray:
        """Round to the nearest float64 (hi + lo, one rounding)."""
        return self.hi + self.lo

    # -- arithmetic -----------------------------------------------------------------------
    def __neg__(self) -> DD:
        return DD(-self.hi, -self.lo)

    def __add__(self, other: DD | npt.ArrayLike) -> DD:
        b = DD._coerce(other)
        s, e = _two_sum(self.hi, b.hi)
        t, f = _two_sum(self.lo, b.lo)
        e = e + t
        s, e = _quick_two_sum(s, e)
        e = e + f
        s, e = _quick_two_sum(s, e)
        return DD(s, e)

    __radd__ = __add__

    def __sub__(self, other: DD | npt.ArrayLike) -> DD:
        return self + (-DD._coerce(other))

    def __rsub__(self, other: DD | npt.ArrayLike) -> DD:
        return DD._coerce(other) + (-self)

    def __mul__(self, other: DD | npt.ArrayLike) -> DD:
        b = DD._coerce(other)
        p, e = _two_prod(self.hi, b.hi)
        e = e + (self.hi * b.lo + self.lo * b.hi)
        p, e = _quick_two_sum(p, e)
        return DD(p, e)

    __rmul__ = __mul__

    def __truediv__(self, other: DD | npt.ArrayLike) -> DD:
        b = DD._coerce(other)
        q1 = self.hi / b.hi
        r = self - b * q1
        q2 = r.hi / b.hi
        r = r - b * q2
        q3 = r.hi / b.hi
        s, e = _quick_two_sum(q1, q2)
        return DD(s, e) + q3

    def __rtruediv__(self, other: DD | npt.ArrayLike) -> DD:
        return DD._coerce(other) / self

    def ldexp(self, k: int | npt.NDArray[np.int64]) -> DD:
        """Exact scaling by 2**k."""
        return DD(np.ldexp(self.hi, k), np.ldexp(self.lo, k))


_PI = DD(3.141592653589793, 1.2246467991473532e-16)
_LN2 = DD(0.6931471805599453, 2.3190468138462996e-17)


def _inverse_factorials(n: int) -> list[DD]:
    out = [DD(1.0)]
    for k in range(1, n + 1):
        out.append(out[-1] / float(k))
    return out


_INV_FACT = _inverse_factorials(40)


def sqrt(a: DD) -> DD:
    """Square root (one Newton correction of the float64 root); sqrt(0) = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.sqrt(a.hi)
        r = a - DD(y) * y
        corr = np.where(y > 0, r.hi / (2.0 * np.where(y > 0, y, 1.0)), 0.0)
    s, e = _quick_two_sum(y, corr)
    return DD(s, e)


def _expm1_reduced(r: DD) -> DD:
    """expm1(r) for |r| <= ln2/2: Taylor series of expm1(r/2**10), then 10 doublings of (1+s)²-1."""
    r = r.ldexp(-10)
    s = r * _INV_FACT[9]
    for n in range(8, 1, -1):
        s = (s + _INV_FACT[n]) * r  # Horner for expm1(r)
    s = (s + 1.0) * r
    for _ in range(10):
        s = s * 2.0 + s * s
    return s


def exp(a: DD) -> DD:
    """exp by reduction a = k ln2 + r with |r| <= ln2/2, then 2**k (1 + expm1(r))."""
    k = np.round(a.hi / _LN2.hi)
    s = _expm1_reduced(a - _LN2 * k)
    return (s + 1.0).ldexp(k.astype(np.int64))


def expm1(a: DD) -> DD:
    """exp(a) - 1, relatively accurate for small |a| too."""
    small = np.abs(a.hi) <= 0.5 * _LN2.hi
    near = _expm1_reduced(DD(np.where(small, a.hi, 0.0), np.where(small, a.lo, 0.0)))
    far = exp(DD(np.where(small, 0.0, a.hi), np.where(small, 0.0, a.lo))) - 1.0
    return DD(np.where(small, near.hi, far.hi), np.where(small, near.lo, far.lo))


def log1p(x: DD) -> DD:
    """log(1 + x) by one Newton step on expm1 from the float64 log1p; requires x > -1."""
    y = DD(np.log1p(x.hi))
    return y - (expm1(y) - x) * exp(-y)


def log(a: DD) -> DD:
    """Natural log, a > 0: log1p(a - 1) near 1 (relative accuracy), else a Newton step on exp."""
    near = np.abs(a.hi - 1.0) < 0.5
    ones = np.ones_like(a.hi)
    xa = DD(np.where(near, a.hi, ones), np.where(near, a.lo, 0.0)) - 1.0
    nl = log1p(xa)
    af = DD(np.where(near, ones, a.hi), np.where(near, 0.0, a.lo))
    y = DD(np.log(af.hi))
    fl = y + af * exp(-y) - 1.0
    return DD(np.where(near, nl.hi, fl.hi), np.where(near, nl.lo, fl.lo))


def sin(x: DD) -> DD:
    """Sine by its Taylor series; meant for |x| <= pi/2 (no argument reduction)."""
    x2 = x * x
    s = DD(np.zeros_like(x.hi))
    for n in range(39, 0, -2):
        term = _INV_FACT[n] if (n // 2) % 2 == 0 else -_INV_FACT[n]
        s = s * x2 + term
    return s * x


def cumprod(a: DD) -> DD:
    """Inclusive prefix product (Hillis-Steele scan, log2(n) vectorised passes)."""
    hi, lo = a.hi.copy(), a.lo.copy()
    k = 1
    n = len(hi)
    while k < n:
        prod = DD(hi[k:], lo[k:]) * DD(hi[:-k], lo[:-k])
        hi[k:], lo[k:] = prod.hi, prod.lo
        k *= 2
    return DD(hi, lo)


def linspace(start: DD, stop: DD, num: int) -> DD:
    """start + i (stop - start) / (num - 1) for i = 0..num-1, each in double-double."""
    i = np.arange(num, dtype=np.float64)
    if num == 1:
        return DD(start.hi * np.ones(1), start.lo * np.ones(1))
    return start + (stop - start) * DD(i) / float(num - 1)


def pi() -> DD:
    return DD(_PI.hi, _PI.lo)
