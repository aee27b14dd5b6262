"""Error in units in the last place of float64, measured against an mpmath value."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np


def ulp_error(computed: float, exact) -> float:
    """|computed - exact| / ulp(exact); 0 when both are the same infinity or exactly zero."""
    if mp.isinf(exact) or exact == 0:
        return 0.0 if float(exact) == computed else math.inf
    ref = float(exact)
    spacing = float(np.spacing(abs(ref))) if ref != 0 else 5e-324
    return float(abs(mp.mpf(float(computed)) - exact) / spacing)


def worst_ulp(computed, exact) -> tuple[float, int]:
    """The worst ulp error over a table and its index."""
    errs = [ulp_error(float(c), e) for c, e in zip(np.asarray(computed), exact)]
    i = int(np.argmax(errs))
    return errs[i], i
