"""The one tolerance table of the conformance suite, keyed by operation class.

A backend result ``a`` passes against the float64 oracle ``r`` (computed from the *same*
quantised inputs) when, elementwise,

    |a − r| <= atol + rtol·|r|,   rtol = k_r·eps,   atol = k_a·eps·scale,

with ``eps`` the machine epsilon of the dtype under test and ``scale`` the condition-aware
magnitude of ``r``: by default, elementwise, the larger of |r| and Σ_k |x_k·∂r/∂x_k| over every
float input x_k (estimated by rerunning the oracle with each input moved by one eps), so that
``atol·scale`` is ``k_a`` times the error the rounding of the inputs alone would cause, and
|r_f32 − r|/eps_f32, the same formula evaluated in float32 NumPy (the rounding of intermediate
results that cancel exactly in the oracle, e.g. b + w·(a − b) at w = 1). The
inputs' own magnitude does not enter: a small output of a well-conditioned function (t ≈ 1e-3
from λ ≈ 9) is held to its own precision. A check whose formula cancels internally may supply
the magnitude of its terms instead (e.g. Σ|terms| for a reduction). Both rtol and atol are always
given. The multipliers grow with the size of a reduction (√n) or the number of steps of a
trajectory (k), never otherwise: widening a check is done only by a named entry in
:data:`WIDENED`, with its reason.

Why these numbers: the oracle runs the *same formula* as the backend, so the only differences are
rounding. One correctly rounded operation costs ≤ 0.5 ulp; libm, CUDA's libdevice and PyTorch's
vectorised kernels differ by 1–2 ulp per transcendental call (exp, log, sqrt, tanh, erf), and a
diffusion coefficient composes a handful of them — 8·eps covers that with room while still
failing an ``exp`` that is 16 ulp off. Cancellation-prone forms (log-variances, KL terms,
differences of nearby quantities) get 32·eps. A float64 elementwise check therefore allows about
1.8e-15, far tighter than ``torch.testing``'s 1e-7: anything looser would hide real bugs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping

__all__ = [
    "EPS",
    "ToleranceClass",
    "Tolerance",
    "TABLE",
    "WIDENED",
    "Widening",
    "tolerance",
    "eps",
    "table_rows",
]

#: Machine epsilon (spacing of 1.0) of each dtype the suite knows.
EPS: Mapping[str, float] = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}


@dataclass(frozen=True)
class ToleranceClass:
    """One row of the table: multipliers of eps for rtol and for atol·scale, and how they grow."""

    name: str
    rtol: float
    atol: float
    grows: str  # "none", "sqrt_n" (reductions over n terms) or "steps" (k-step trajectories)
    rationale: str


#: The table. Keys are the operation classes checks declare.
TABLE: Mapping[str, ToleranceClass] = {
    "exact": ToleranceClass(
        "exact",
        0.0,
        0.0,
        "none",
        "table moves, gathers, index maps, clipping: a cast is correctly rounded and a copy is "
        "exact, so any difference is a bug",
    ),
    "elementwise": ToleranceClass(
        "elementwise",
        8.0,
        8.0,
        "none",
        "schedule coefficients, marginal/posterior means, parameterization maps: a few "
        "operations of ≤ 1–2 ulp each (libm vs libdevice vs vectorised kernels)",
    ),
    "cancellation": ToleranceClass(
        "cancellation",
        32.0,
        32.0,
        "none",
        "log-variances, KL and likelihood terms, differences of nearby numbers: error relative to "
        "the terms, not to the (small) result",
    ),
    "reduction": ToleranceClass(
        "reduction",
        4.0,
        4.0,
        "sqrt_n",
        "sums/means over n terms: summation order differs between backends (pairwise, tree, "
        "atomics); rtol 4·eps·√n, atol 4·eps·√n·Σ|terms|",
    ),
    "trajectory": ToleranceClass(
        "trajectory",
        8.0,
        8.0,
        "steps",
        "k-step sampler outputs: per-step elementwise error accumulating linearly in k",
    ),
}


@dataclass(frozen=True)
class Widening:
    """A named widening of one check's tolerance, with its reason."""

    factor: float
    reason: str


#: (check name, output name or "*") -> Widening. Empty is the goal; every entry needs a reason.
WIDENED: dict[tuple[str, str], Widening] = {}


@dataclass(frozen=True)
class Tolerance:
    """A concrete tolerance for one dtype: ``|a − r| <= atol·scale + rtol·|r|``."""

    cls: str
    dtype: str
    rtol: float
    atol: float  # multiplied by the check's scale
    eps: float
    factor: float = 1.0  # growth (√n or k) times any widening
    widened: str | None = None

    def describe(self) -> str:
        """E.g. "elementwise: rtol 8·eps = 9.5e-07, atol 8·eps·scale (float32)"."""
        row = TABLE[self.cls]
        grow = f" × {self.factor:.3g}" if self.factor != 1.0 else ""
        text = (
            f"{self.cls}: rtol {row.rtol:g}·eps{grow} = {self.rtol:.2g}, "
            f"atol {row.atol:g}·eps{grow}·scale = {self.atol:.2g}·scale ({self.dtype})"
        )
        if self.widened:
            text += f"; widened: {self.widened}"
        return text


def eps(dtype: str) -> float:
    """Machine epsilon of a dtype name."""
    try:
        return EPS[dtype]
    except KeyError:
        raise KeyError(f"dtype={dtype!r} has no tolerance; known: {', '.join(EPS)}") from None


def tolerance(
    cls: str,
    dtype: str,
    *,
    n: int = 1,
    steps: int = 1,
    check: str | None = None,
    output: str | None = None,
) -> Tolerance:
    """The tolerance of class ``cls`` at ``dtype`` (n: reduction size, steps: trajectory length)."""
    try:
        row = TABLE[cls]
    except KeyError:
        raise KeyError(
            f"tolerance class {cls!r} is not in the table; classes: {', '.join(TABLE)}"
        ) from None
    e = eps(dtype)
    factor = {"none": 1.0, "sqrt_n": math.sqrt(max(n, 1)), "steps": float(max(steps, 1))}[row.grows]
    wide = None
    if check is not None:
        w = WIDENED.get((check, output or "*")) or WIDENED.get((check, "*"))
        if w is not None:
            factor *= w.factor
            wide = f"×{w.factor:g} ({w.reason})"
    return Tolerance(cls, dtype, row.rtol * e * factor, row.atol * e * factor, e, factor, wide)


def table_rows(dtypes=("float64", "float32")) -> list[dict]:
    """The table as rows for documentation and reports."""
    rows = []
    for c in TABLE.values():
        row = {
            "class": c.name,
            "rtol_eps": c.rtol,
            "atol_eps": c.atol,
            "grows": c.grows,
            "rationale": c.rationale,
        }
        for d in dtypes:
            row[f"rtol_{d}"] = c.rtol * EPS[d]
        rows.append(row)
    return rows
