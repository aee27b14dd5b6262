"""Edge values of the elementwise functions the reference depends on.

Random inputs rarely reach the values where implementations differ: ±inf, NaN, ±0, subnormals,
arguments near the dtype's overflow limits, exact halves for rounding, log/log1p at 0 and −1.
:data:`FUNCTIONS` lists each function the reference calls (through the namespace its arrays
report, as the reference does), the edge values it is checked at, and its float64 oracle.

A backend passes at a value when

* the oracle result (float64, rounded to the dtype under test) is NaN or ±inf and the backend's
  is the same value, or
* the oracle result is ±0 and the backend's is below the smallest normal number in magnitude
  (an oracle that underflows early is not held against the backend), and exactly ±0 with the
  same sign where IEEE 754 defines the sign (``signed_zero``) if the backend returns a zero, or
* the oracle result is finite and nonzero and |backend − oracle| ≤ 8·eps·|oracle| + tiny, where
  eps and tiny (the smallest normal number) belong to the dtype: a correctly rounded function
  errs by 0.5 ulp, libm and vectorised kernels by 1–2; below tiny no dtype keeps relative
  precision (flush-to-zero of a subnormal *result* is allowed, of a subnormal *input* is not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FUNCTIONS", "ULP_BUDGET", "EdgeFunction", "limits", "values_for"]

#: Allowed error of a finite result, in eps of the dtype relative to the result.
ULP_BUDGET = 8.0

_LIMITS = {  # (largest finite, smallest normal, smallest subnormal, eps)
    "float64": (float(np.finfo(np.float64).max), 2.0**-1022, 2.0**-1074, 2.0**-52),
    "float32": (float(np.finfo(np.float32).max), 2.0**-126, 2.0**-149, 2.0**-23),
    "float16": (65504.0, 2.0**-14, 2.0**-24, 2.0**-10),
    "bfloat16": (3.3895313892515355e38, 2.0**-126, 2.0**-133, 2.0**-7),
}


def limits(dtype: str) -> tuple[float, float, float, float]:
    """(largest finite, smallest normal, smallest subnormal, eps) of a dtype name."""
    return _LIMITS[dtype]


@dataclass(frozen=True)
class EdgeFunction:
    """One elementwise function: how the backend computes it and its float64 oracle."""

    name: str
    backend: Callable  # backend(xp, *arrays) -> array (xp: the arrays' own namespace)
    oracle: Callable  # oracle(*float64 arrays) -> float64 array
    values: Callable  # values(dtype) -> tuple of input lists (one per argument)
    signed_zero: bool = True  # the sign of a zero result is defined (and checked)


def _common(dtype: str) -> list[float]:
    big, tiny, sub, eps = limits(dtype)
    return [
        math.nan,
        math.inf,
        -math.inf,
        0.0,
        -0.0,
        sub,
        -sub,
        tiny / 4,
        -tiny / 4,
        tiny,
        -tiny,
        big,
        -big,
        eps,
        -eps,
        0.5,
        -0.5,
        1.0,
        -1.0,
        1.5,
        -1.5,
        2.5,
        -2.5,
        3.0,
        -3.0,
        0.1,
        -0.1,
        1e-5,
        -1e-5,
        7.0,
        -7.0,
        30.0,
        -30.0,
    ]


def _exp_args(dtype: str) -> list[float]:
    # float32 exp overflows past 88.72 and leaves the normal range below -87.34 (subnormal to
    # -103.97); float64 at 709.78 and -708.40 (subnormal to -745.13)
    return [
        88.0,
        88.5,
        88.7,
        89.0,
        -87.0,
        -87.5,
        -100.0,
        -103.0,
        -104.0,
        100.0,
        200.0,
        -200.0,
        700.0,
        709.0,
        709.7,
        710.0,
        -700.0,
        -708.0,
        -709.0,
        -740.0,
        -745.0,
        -746.0,
        1e-10,
        -1e-10,
        1e-30,
        -1e-30,
        20.0,
        -20.0,
        40.0,
        -40.0,
    ]


def _log_args(dtype: str) -> list[float]:
    big, _, _, eps = limits(dtype)
    return [
        1.0 + eps,
        1.0 - eps / 2,
        2.0,
        10.0,
        1e-30,
        1e30,
        1e-300,
        1e300,
        -2.0,
        0.75,
        1e-10,
        -1e-10,
        1e-20,
        -1.0 + eps / 2,
        -1.0 - eps,
        big / 2,
    ]


def _one(fn: Callable) -> Callable:
    return lambda dtype: (fn(dtype),)


def _vals(*extra: Callable) -> Callable:
    def values(dtype: str) -> tuple[list[float]]:
        out = _common(dtype)
        for e in extra:
            out += e(dtype)
        return (out,)

    return values


def _pairs(dtype: str) -> tuple[list[float], list[float]]:
    big, _, sub, _ = limits(dtype)
    xs = [
        math.inf,
        -math.inf,
        math.inf,
        math.nan,
        1.0,
        math.nan,
        0.0,
        -0.0,
        big,
        -big,
        1000.0,
        -1000.0,
        100.0,
        -100.0,
        5.0,
        0.0,
        0.0,
        0.0,
        30.0,
        -30.0,
        sub,
        1.0,
        88.0,
        709.0,
        -745.0,
        2.0,
        -2.0,
        0.5,
    ]
    ys = [
        math.inf,
        -math.inf,
        -math.inf,
        1.0,
        math.nan,
        math.nan,
        -0.0,
        0.0,
        big,
        -big,
        1000.0,
        -1000.0,
        100.0,
        -100.0,
        -5.0,
        -18.0,
        -40.0,
        -100.0,
        30.0,
        30.0,
        -sub,
        1.0,
        88.0,
        709.0,
        -745.0,
        3.0,
        3.0,
        -0.5,
    ]
    return xs, ys


def _round_args(dtype: str) -> list[float]:
    eps = limits(dtype)[3]
    below_half = 0.5 - eps / 4
    return [
        0.5,
        1.5,
        2.5,
        3.5,
        -0.5,
        -1.5,
        -2.5,
        -3.5,
        below_half,
        -below_half,
        0.5 + eps / 2,
        1.0 / eps - 0.5,
        1.0 / eps,
        2.0 / eps,
        0.4,
        -0.4,
        1e30,
        -1e30,
        2.0**40 + 0.5,
        -(2.0**40 + 0.5),
    ]


def _pow_pairs(dtype: str) -> tuple[list[float], list[float]]:
    big, _, sub, _ = limits(dtype)
    xs = [
        0.0,
        0.0,
        -0.0,
        1.0,
        1.0,
        2.0,
        2.0,
        0.5,
        10.0,
        1e-30,
        math.inf,
        math.inf,
        math.nan,
        1.0,
        sub,
        big,
        3.0,
        100.0,
        0.25,
        7.0,
    ]
    ys = [
        0.0,
        2.0,
        0.5,
        math.nan,
        math.inf,
        -1.0,
        0.5,
        200.0,
        38.0,
        7.0,
        -1.0,
        0.5,
        0.0,
        1e30,
        0.5,
        0.5,
        1.0 / 7.0,
        0.01,
        0.75,
        -3.0,
    ]
    return xs, ys


def _trig_args(dtype: str) -> list[float]:
    return [
        math.pi / 2,
        -math.pi / 2,
        math.pi,
        2 * math.pi,
        100.0,
        999.0,
        1000.0,
        1e4,
        -1e4,
        0.7853981633974483,
        1e-10,
        -1e-10,
    ]


def _erf(xp, x):
    from refdiff import _xp

    return _xp.erf(x)


def _erfc(xp, x):
    from refdiff import _xp

    return _xp.erfc(x)


def _special(op: str) -> Callable:
    def f(x):
        from scipy import special

        return getattr(special, op)(x)

    return f


def _clip(xp, x):
    return xp.clip(x, -1.0, 1.0)


FUNCTIONS: dict[str, EdgeFunction] = {
    f.name: f
    for f in [
        EdgeFunction("exp", lambda xp, x: xp.exp(x), np.exp, _vals(_exp_args)),
        EdgeFunction("expm1", lambda xp, x: xp.expm1(x), np.expm1, _vals(_exp_args)),
        EdgeFunction("log", lambda xp, x: xp.log(x), np.log, _vals(_log_args)),
        EdgeFunction("log1p", lambda xp, x: xp.log1p(x), np.log1p, _vals(_log_args)),
        EdgeFunction("sqrt", lambda xp, x: xp.sqrt(x), np.sqrt, _vals(_log_args)),
        EdgeFunction("logaddexp", lambda xp, x, y: xp.logaddexp(x, y), np.logaddexp, _pairs),
        EdgeFunction(
            "asinh",
            lambda xp, x: xp.asinh(x),
            np.arcsinh,
            _vals(_exp_args, lambda d: [1e20, -1e20, 1e150, -1e150]),
        ),
        EdgeFunction("sinh", lambda xp, x: xp.sinh(x), np.sinh, _vals(_exp_args)),
        EdgeFunction(
            "tanh",
            lambda xp, x: xp.tanh(x),
            np.tanh,
            _vals(_exp_args, lambda d: [400.0, -400.0, 1e-8, -1e-8]),
        ),
        EdgeFunction("erf", _erf, _special("erf"), _vals(lambda d: [6.0, -6.0, 27.0, 1e-10, 0.2])),
        EdgeFunction(
            "erfc",
            _erfc,
            _special("erfc"),
            _vals(lambda d: [6.0, -6.0, 9.0, 10.0, 26.0, 27.0, 1e-10, 0.2]),
        ),
        EdgeFunction(
            "maximum", lambda xp, x, y: xp.maximum(x, y), np.maximum, _pairs, signed_zero=False
        ),
        EdgeFunction(
            "minimum", lambda xp, x, y: xp.minimum(x, y), np.minimum, _pairs, signed_zero=False
        ),
        EdgeFunction("round", lambda xp, x: xp.round(x), np.round, _vals(_round_args)),
        EdgeFunction("floor", lambda xp, x: xp.floor(x), np.floor, _vals(_round_args)),
        EdgeFunction("clip", _clip, lambda x: np.clip(x, -1.0, 1.0), _vals(), signed_zero=False),
        EdgeFunction("abs", lambda xp, x: xp.abs(x), np.abs, _vals(), signed_zero=False),
        EdgeFunction("pow", lambda xp, x, y: xp.pow(x, y), np.power, _pow_pairs),
        EdgeFunction("sin", lambda xp, x: xp.sin(x), np.sin, _vals(_trig_args)),
        EdgeFunction("cos", lambda xp, x: xp.cos(x), np.cos, _vals(_trig_args)),
        EdgeFunction("isnan", lambda xp, x: xp.isnan(x), np.isnan, _vals(), signed_zero=False),
        EdgeFunction(
            "isfinite", lambda xp, x: xp.isfinite(x), np.isfinite, _vals(), signed_zero=False
        ),
    ]
}


def values_for(fn: EdgeFunction, dtype: str) -> tuple[np.ndarray, ...]:
    """The edge inputs of ``fn`` in ``dtype`` (float64 host arrays of values exact in the dtype)."""
    from refdiff.backends import quantise

    return tuple(quantise(np.array(v, dtype=np.float64), dtype) for v in fn.values(dtype))
