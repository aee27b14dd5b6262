"""Edge values of the elementwise functions the reference uses (see :mod:`refdiff.conformance.edges`).

Each check feeds one function its edge values in the dtype under test, on the backend's device,
through the namespace the arrays report (as the reference does), and compares with the float64
oracle rounded to the dtype. A failure names every input at which the backend differs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from refdiff.conformance.edges import FUNCTIONS, ULP_BUDGET, limits, values_for


def _fmt(v: float) -> str:
    return repr(float(v))


def _compare(fn, dtype: str, inputs, got: np.ndarray, want: np.ndarray):
    """(worst ratio, list of messages for the inputs where the backend differs)."""
    _, tiny, _, eps = limits(dtype)
    bad, worst = [], 0.0
    for i in range(want.size):
        g, w = float(got[i]), float(want[i])
        args = ", ".join(_fmt(a[i]) for a in inputs)
        call = f"{fn.name}({args})"
        if math.isnan(w) or math.isinf(w):
            if not ((math.isnan(g) and math.isnan(w)) or g == w):
                bad.append(f"{call} = {_fmt(g)}, reference {_fmt(w)}")
                worst = math.inf
            continue
        if w == 0.0:
            ok = abs(g) < tiny and not (
                g == 0.0 and fn.signed_zero and math.copysign(1, g) != math.copysign(1, w)
            )
            if not ok:
                bad.append(f"{call} = {_fmt(g)}, reference {_fmt(w)}")
                worst = math.inf
            continue
        if not math.isfinite(g):
            bad.append(f"{call} = {_fmt(g)}, reference {_fmt(w)}")
            worst = math.inf
            continue
        allowed = ULP_BUDGET * eps * abs(w) + tiny
        r = abs(g - w) / allowed
        worst = max(worst, r)
        if r > 1.0:
            bad.append(
                f"{call} = {_fmt(g)}, reference {_fmt(w)} "
                f"({abs(g - w) / (eps * abs(w)):.3g} eps off; allowed {ULP_BUDGET:g})"
            )
    return worst, bad


@pytest.mark.parametrize("refdiff_case", [f"edges.{n}" for n in FUNCTIONS])
def test_edge_values(refdiff_case, refdiff_backend, refdiff_dtype, refdiff_check):
    """The backend's function agrees with the reference at every edge value, NaN and inf included."""
    from array_api_compat import array_namespace
    from refdiff.backends import quantise

    b, dtype = refdiff_backend, refdiff_dtype
    fn = FUNCTIONS[refdiff_case.split(".", 1)[1]]
    inputs = values_for(fn, dtype)
    with np.errstate(all="ignore"):
        want = quantise(np.asarray(fn.oracle(*inputs), dtype=np.float64), dtype)
    arrays = [b.asarray(a, dtype) for a in inputs]
    with b.checking(), np.errstate(all="ignore"):  # overflow/NaN are the point here
        xp = array_namespace(*arrays)
        out = fn.backend(xp, *arrays)
        b.synchronize()
    assert b.is_native(out), f"{fn.name} returned {type(out)}, not an array of backend {b.name}"
    got = np.asarray(b.to_numpy(out), dtype=np.float64).reshape(-1)
    assert got.shape == want.shape, f"{fn.name}: shape {got.shape}, expected {want.shape}"
    worst, bad = _compare(fn, dtype, inputs, got, want.reshape(-1))
    refdiff_check.record(fn.name, worst)
    if bad:
        ctx = refdiff_check.context(refdiff_case)
        raise AssertionError(
            f"{refdiff_case}[{dtype}] on backend {b.name} ({b.device}) differs from the reference "
            f"at {len(bad)} of {want.size} edge values:\n  "
            + "\n  ".join(bad[:12])
            + f"\nreproduce: {ctx.reproducer()}"
        )
