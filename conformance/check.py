"""The harness: run one check example on the oracle and on a backend, and compare.

Backend isolation (DESIGN.md, "The conformance suite"): every input is drawn on the host in NumPy
float64 and quantised to the dtype under test; the oracle (the reference on NumPy float64) sees the
quantised values widened back to float64, the backend sees them in its dtype on its device (one
host->device copy, here in the harness). Schedules are moved the same way: the oracle gets the
host tables rounded to the dtype, the backend gets them through ``Schedule.to`` (or its
override). Only the operation under test runs on the backend; its results must be native arrays
of the backend, on its device, in the dtype under test, and within the tolerance of their class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import numpy as np

from refdiff._errors import RefdiffError
from refdiff.backends import Backend, quantise
from refdiff.schedules import TABLE_NAMES, Schedule

from . import tolerances as _tol
from .strategies import DEVICE, DTYPE, XP, Bind, Build, Call, HostArray, NoiseSource, Raw, Sched

__all__ = [
    "ConformanceMismatch",
    "Comparison",
    "compare",
    "flatten",
    "check_call",
    "run_case",
    "ulp",
    "default_scale",
    "OracleSide",
    "BackendSide",
    "add_note",
]

_TINY = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}


class ConformanceMismatch(AssertionError):
    """A backend result differs from the oracle by more than its tolerance (or in kind)."""


def add_note(exc: BaseException, text: str) -> None:
    """exc.add_note where available (Python >= 3.11), else append to the message."""
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    elif exc.args:
        exc.args = (f"{exc.args[0]}\n{text}",) + tuple(exc.args[1:])


# --------------------------------------------------------------------------------------------
# Sides: how host values become oracle inputs and backend inputs
# --------------------------------------------------------------------------------------------


class OracleSide:
    """The float64 NumPy reference, fed the inputs rounded to the dtype under test.

    Every float input it converts (array, scalar, schedule, model output, noise source) is a
    numbered *leaf*. For the sensitivity estimate (the atol scale of composite operations) the
    harness runs the oracle again on perturbed leaves: ``perturb`` (shape -> an array of ±1)
    multiplies every element of every leaf by (1 ± eps) with those signs; ``only=k`` restricts
    that to leaf k, or without ``perturb`` moves leaf k alone by +eps·|value|.
    """

    def __init__(
        self,
        dtype: str,
        perturb: Callable[[tuple], np.ndarray] | None = None,
        only: int | None = None,
        compute: str = "float64",
    ):
        self.dtype = dtype
        self.perturb = perturb
        self.only = only
        self.compute = compute  # "float32": the same formula evaluated in float32
        self.n_leaves = 0
        self.leaf_sizes: dict[int, int] = {}  # leaf -> the largest size it was seen with
        self._schedules: dict[int, tuple[Schedule, Schedule]] = {}

    @property
    def perturbing(self) -> bool:
        return self.perturb is not None or self.only is not None or self.compute != "float64"

    def new_leaf(self) -> int:
        self.n_leaves += 1
        return self.n_leaves - 1

    def jiggle(self, q: np.ndarray, leaf: int) -> np.ndarray:
        """q as leaf ``leaf`` of this side sees it (perturbed or not)."""
        self.leaf_sizes[leaf] = max(self.leaf_sizes.get(leaf, 0), int(np.size(q)))
        if self.only is not None and self.only != leaf:
            return q
        e = _tol.eps(self.dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            if self.perturb is not None:
                return q * (1.0 + self.perturb(np.shape(q)) * e)
            if self.only == leaf:
                return q + np.abs(q) * e
        return q

    def float_array(self, a: np.ndarray):
        return self.jiggle(quantise(a, self.dtype), self.new_leaf()).astype(
            self.compute, copy=False
        )

    def int_array(self, a: np.ndarray):
        return np.array(a, copy=True)

    def scalar(self, v: float) -> float:
        return float(self.jiggle(quantise(np.float64(v), self.dtype), self.new_leaf()))

    def marker(self, what: str):
        import array_api_compat.numpy as cnp

        return {"xp": cnp, "device": None, "dtype": getattr(cnp, self.compute)}[what]

    def schedule(self, s: Schedule) -> Schedule:
        hit = self._schedules.get(id(s))
        if hit is None or hit[0] is not s:
            leaf = self.new_leaf()
            if self.dtype == "float64" and not self.perturbing:
                moved = s
            else:
                import array_api_compat.numpy as cnp

                tables = {
                    n: self.jiggle(quantise(getattr(s, n), self.dtype), leaf).astype(
                        self.compute, copy=False
                    )
                    for n in TABLE_NAMES
                }
                moved = _replace_tables(s.to(cnp, dtype=getattr(cnp, self.compute)), tables)
            hit = self._schedules[id(s)] = (s, moved)
        return hit[1]


def random_signs(rng: np.random.Generator) -> Callable[[tuple], np.ndarray]:
    """Independent random ±1 per element, from ``rng``."""
    return lambda shape: rng.choice((-1.0, 1.0), shape)


def alternating_signs(shape: tuple) -> np.ndarray:
    """+1, −1, +1, ... along the flattened array: a direction that changes every sample's spread.

    Moving a whole leaf by +eps·|value| scales it, which leaves scale-invariant outputs (a ratio
    of standard deviations) unchanged however ill-conditioned they are; random signs miss that
    too whenever a sample's few elements happen to draw the same sign, or two leaves that are
    nearly proportional draw the same pattern.
    """
    return np.where(np.arange(math.prod(shape)) % 2 == 0, 1.0, -1.0).reshape(shape)


def _noise_callable(src: NoiseSource, side):
    """noise(i): draw i of ``src`` as the side sees it (one leaf for all draws on the oracle side)."""
    cache: dict[int, Any] = {}
    if isinstance(side, OracleSide):
        leaf = side.new_leaf()

        def make(i):
            return side.jiggle(quantise(src.draw(i), side.dtype), leaf).astype(
                side.compute, copy=False
            )
    else:

        def make(i):
            return side.float_array(src.draw(i))

    def noise(i):
        i = int(i)
        if i not in cache:
            cache[i] = make(i)
        return cache[i]

    return noise


def _jiggled_outputs(fn, side: OracleSide):
    """fn whose float outputs are one more leaf of the side: the rounding of a model evaluation,
    which perturbing the model's inputs alone does not reproduce (a denoiser D(x) ≈ x moves with
    x, so x − D(x) would not move at all)."""
    leaf = side.new_leaf()

    def jiggled(*args, **kwargs):
        out = fn(*args, **kwargs)
        if isinstance(out, np.ndarray) and out.dtype.kind == "f":
            return side.jiggle(out, leaf).astype(out.dtype, copy=False)
        return out

    return jiggled


def _replace_tables(s: Schedule, tables: dict) -> Schedule:
    import dataclasses

    return dataclasses.replace(s, **tables)


class BackendSide:
    """The backend under test: inputs copied onto its device in the dtype under test."""

    def __init__(self, backend: Backend, dtype: str, *, cache_schedules: bool = True):
        self.backend = backend
        self.dtype = dtype
        self.cache = cache_schedules
        self._schedules: dict[int, tuple[Schedule, Any]] = {}

    #: At most this many input arrays per example are re-read to catch in-place modification.
    WATCH = 16

    def float_array(self, a: np.ndarray):
        host = quantise(a, self.dtype)
        x = self.backend.asarray(host, self.dtype)
        self._watch(x, host)
        return x

    def int_array(self, a: np.ndarray):
        a = np.asarray(a)
        name = "bool" if a.dtype == np.bool_ else "int64"
        x = self.backend.asarray(a.astype(name), name)
        self._watch(x, a)
        return x

    def _watch(self, x, host: np.ndarray) -> None:
        if self.backend.immutable_arrays:
            return
        watched = self.__dict__.setdefault("watched", [])
        if len(watched) < self.WATCH:
            watched.append((x, np.array(host, copy=True)))

    def modified_inputs(self) -> list[tuple]:
        """(position, host value) of the watched inputs whose backend copy changed since."""
        out = []
        for i, (x, host) in enumerate(self.__dict__.pop("watched", [])):
            now = np.asarray(self.backend.to_numpy(x), dtype=np.float64)
            want = np.asarray(host, dtype=np.float64)
            if now.shape != want.shape or not np.array_equal(now, want, equal_nan=True):
                out.append((i, want))
        return out

    def scalar(self, v: float) -> float:
        return float(quantise(np.float64(v), self.dtype))

    def marker(self, what: str):
        b = self.backend
        return {"xp": b.xp, "device": b.device, "dtype": b.dtype(self.dtype)}[what]

    def schedule(self, s: Schedule):
        hit = self._schedules.get(id(s)) if self.cache else None
        if hit is None or hit[0] is not s:
            hit = (s, self.backend.move_schedule(s, self.dtype))
            if self.cache:
                self._schedules[id(s)] = hit
        return hit[1]


def convert(value: Any, side) -> Any:
    """A host value as the given side sees it (recursively through tuples, lists, dicts)."""
    if isinstance(value, Raw):
        return value.value
    if value is XP or value is DEVICE or value is DTYPE:
        return side.marker(value.what)
    if isinstance(value, HostArray):
        return (
            side.float_array(value.value)
            if isinstance(side, OracleSide)
            else quantise(value.value, side.dtype)
        )
    if isinstance(value, NoiseSource):
        return _noise_callable(value, side)
    if isinstance(value, Sched):
        return side.schedule(value.schedule)
    if isinstance(value, Schedule):
        return side.schedule(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return side.float_array(value)
        return side.int_array(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return side.scalar(value)
    if isinstance(value, Bind):
        import functools

        fn = functools.partial(value.fn, **convert(value.kwargs, side))
        if isinstance(side, OracleSide) and side.perturbing:
            return _jiggled_outputs(fn, side)  # a model's own rounding, for the scale estimate
        return fn
    if isinstance(value, Build):
        return value.factory(*convert(value.args, side), **convert(value.kwargs, side))
    if isinstance(value, tuple):
        items = [convert(v, side) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [convert(v, side) for v in value]
    if isinstance(value, dict):
        return {k: convert(v, side) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def flatten(result: Any, prefix: str = "") -> dict[str, Any]:
    """Name every array in a result: NamedTuple fields, tuple indices, dict keys, schedule tables."""
    if isinstance(result, Schedule):
        out = {prefix + n: getattr(result, n) for n in TABLE_NAMES}
        out[prefix + "timestep_map"] = result.timestep_map
        return out
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        items = [(f, getattr(result, f)) for f in result._fields]
    elif isinstance(result, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(result)]
    elif isinstance(result, dict):
        items = list(result.items())
    else:
        return {prefix.rstrip(".") or "out": result}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def ulp(r: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` at |r| (floored at the smallest normal)."""
    mag = np.maximum(np.abs(r), _TINY[dtype])
    return _tol.eps(dtype) * np.exp2(np.floor(np.log2(mag)))


@dataclass
class Comparison:
    """The outcome of comparing one output with the oracle."""

    ok: bool
    ratio: float  # worst (|a − r|) / (atol·scale + rtol·|r|); 0 when equal
    size: int
    n_bad: int = 0
    max_abs: float = 0.0
    abs_index: tuple = ()
    allowed_at_abs: float = 0.0
    max_rel: float = 0.0
    rel_index: tuple = ()
    max_ulp: float = 0.0
    actual_at: float = math.nan
    expected_at: float = math.nan
    reason: str = ""  # a structural mismatch (shape, NaN/inf positions)


def _index(flat_i: int, shape: tuple) -> tuple:
    return tuple(int(i) for i in np.unravel_index(flat_i, shape)) if shape else ()


def compare(
    actual: np.ndarray,
    expected: np.ndarray,
    tol: _tol.Tolerance,
    scale: np.ndarray | float,
    mask: np.ndarray | None = None,
) -> Comparison:
    """Compare elementwise: NaN/inf must match exactly, finite values within tolerance.

    ``mask`` (True = compare) leaves out elements of a documented ill-posed domain.
    """
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(expected, dtype=np.float64)
    if a.shape != r.shape:
        return Comparison(
            False,
            math.inf,
            r.size,
            r.size,
            reason=f"shape {a.shape}, but the oracle's is {r.shape}",
        )
    if a.size == 0:
        return Comparison(True, 0.0, 0)
    if mask is not None:
        keep = np.broadcast_to(np.asarray(mask, dtype=bool), r.shape)
        a, r = np.where(keep, a, 0.0), np.where(keep, r, 0.0)
    nan_a, nan_r = np.isnan(a), np.isnan(r)
    inf_r = np.isinf(r)
    bad_special = (nan_a != nan_r) | (inf_r & (a != r)) | (~np.isfinite(a) & np.isfinite(r))
    fin = np.isfinite(r) & np.isfinite(a)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(fin, np.abs(a - r), 0.0)
    # Below the smallest normal number no dtype keeps relative precision (subnormals, flushed
    # to zero on some devices): an absolute floor of that size, except for exact checks.
    floor = _TINY[tol.dtype] if tol.cls != "exact" else 0.0
    allowed = (
        tol.atol * np.broadcast_to(np.asarray(scale, dtype=np.float64), r.shape)
        + tol.rtol * np.abs(np.where(fin, r, 0.0))
        + floor
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, np.where(allowed > 0, err / allowed, math.inf))
    ratio = np.where(bad_special, math.inf, ratio)
    worst = int(np.argmax(ratio))
    n_bad = int(np.count_nonzero(ratio > 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err == 0, 0.0, err / np.abs(np.where(fin, r, 1.0)))
    ulps = np.where(fin, err / ulp(r, tol.dtype), 0.0)
    ia, ir = int(np.argmax(err)), int(np.argmax(rel))
    reason = ""
    if bad_special.any():
        i = int(np.flatnonzero(bad_special.reshape(-1))[0])
        reason = (
            f"non-finite values differ at {_index(i, r.shape)}: backend "
            f"{a.reshape(-1)[i]!r}, oracle {r.reshape(-1)[i]!r}"
        )
    return Comparison(
        ok=n_bad == 0,
        ratio=float(ratio.reshape(-1)[worst]),
        size=r.size,
        n_bad=n_bad,
        max_abs=float(err.reshape(-1)[ia]),
        abs_index=_index(ia, r.shape),
        allowed_at_abs=float(np.broadcast_to(allowed, r.shape).reshape(-1)[ia]),
        max_rel=float(rel.reshape(-1)[ir]),
        rel_index=_index(ir, r.shape),
        max_ulp=float(np.max(ulps)),
        actual_at=float(a.reshape(-1)[worst]),
        expected_at=float(r.reshape(-1)[worst]),
        reason=reason,
    )


def default_scale(
    inputs: list[np.ndarray], ref: np.ndarray, sensitivity: np.ndarray | None = None
) -> np.ndarray:
    """The condition-aware scale of an output: elementwise max of |ref| and the sensitivity
    estimate, max(Σ_k |x_k·∂f/∂x_k|, |f32 − f64|/eps32) (see :class:`_LazySensitivity`).

    The magnitude of the inputs does not enter: an output that is small because the function is
    well conditioned there (t ≈ 1e-3 from λ ≈ 9) gets an allowance relative to itself, so an
    ill-computed small output is caught however large its inputs. Only when no sensitivity
    estimate exists are the float inputs that broadcast to ref (reduced over the non-batch axes
    when they do not) used instead.
    """
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.where(np.isfinite(ref), np.abs(ref), 0.0)
    if sensitivity is not None and np.shape(sensitivity) == ref.shape:
        return np.maximum(scale, sensitivity)
    for x in inputs:
        x = np.abs(np.where(np.isfinite(x), x, 0.0))
        try:
            if np.broadcast_shapes(x.shape, ref.shape) == ref.shape:
                scale = np.maximum(scale, x)
                continue
        except ValueError:
            pass
        if ref.ndim >= 1 and x.ndim >= 1 and x.shape[0] == ref.shape[0]:
            red = x.reshape(x.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (ref.ndim - 1))
            scale = np.maximum(scale, red)
        else:
            scale = np.maximum(scale, float(x.max(initial=0.0)))
    return scale


def _float_inputs(value: Any, out: list) -> list:
    """Every float array among the (oracle-side) converted arguments, schedules excluded."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _float_inputs(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _float_inputs(v, out)
    return out


# --------------------------------------------------------------------------------------------
# One example
# --------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a failure message needs to say how to reproduce it.

    ``spec`` is the ``--backend`` argument exactly as the user passed it ("torch@cuda:1",
    "pkg.mod:factory"), ``device`` the ``--device`` argument if one was given: the reproducer
    repeats them verbatim, never the backend's internal name or a device object's repr.
    """

    check: str
    backend: str
    device: str
    dtype: str
    profile: str = "refdiff-ci"
    spec: str | None = None
    device_arg: str | None = None
    max_examples: int | None = None
    instance: bool = False  # a Backend object handed to refdiff.verify (no shell form)

    def reproducer(self) -> str:
        """A command that reruns this check the way it was run (pasteable into a shell)."""
        import shlex

        spec = self.spec if self.spec is not None else self.backend
        k = shlex.quote(self.check)
        if self.instance:
            extra = "" if self.max_examples is None else f", max_examples={self.max_examples}"
            return (
                f"refdiff.verify(backend=<the Backend object {spec!r}>, "
                f"dtypes={self.dtype!r}, profile={self.profile!r}{extra}, "
                f"extra_args=['-k', {self.check!r}])"
            )
        cli = [f"--backend {shlex.quote(spec)}"]
        py = [f"--refdiff-backend {shlex.quote(spec)}"]
        if self.device_arg:
            cli.append(f"--device {shlex.quote(self.device_arg)}")
            py.append(f"--refdiff-device {shlex.quote(self.device_arg)}")
        cli += [f"--dtypes {self.dtype}", f"--profile {self.profile}"]
        py += [f"--refdiff-dtypes {self.dtype}", f"--refdiff-profile {self.profile}"]
        if self.max_examples is not None:
            cli.append(f"--max-examples {self.max_examples}")
            py.append(f"--refdiff-max-examples {self.max_examples}")
        return (
            f"refdiff verify {' '.join(cli)} -k {k}   (or: pytest --pyargs "
            f"refdiff.conformance {' '.join(py)} -k {k})"
        )


def _mismatch_text(ctx: Context, name: str, cmp: Comparison, tol: _tol.Tolerance, cls: str) -> str:
    head = f"{ctx.check}[{ctx.dtype}] output {name!r} on backend {ctx.backend} ({ctx.device})"
    if cmp.reason:
        return f"{head}: {cmp.reason}"
    pct = 100.0 * cmp.n_bad / max(cmp.size, 1)
    return "\n".join(
        [
            f"{head} mismatches the oracle: {cmp.n_bad} / {cmp.size} elements ({pct:.3g}%)",
            f"  max abs err {cmp.max_abs:.3g} at {cmp.abs_index} (allowed {cmp.allowed_at_abs:.3g})",
            f"  max rel err {cmp.max_rel:.3g} at {cmp.rel_index}; max ulp err {cmp.max_ulp:.4g}",
            f"  worst element: backend {cmp.actual_at!r}, oracle {cmp.expected_at!r}; "
            f"error/allowed = {cmp.ratio:.3g}",
            f"  tolerance: {tol.describe()}",
        ]
    )


def _check_native(backend: Backend, ctx: Context, name: str, x: Any, oracle: Any) -> None:
    """Backend results must be backend arrays, on its device, in the dtype under test."""
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        if isinstance(oracle, (bool, int, float)) and not isinstance(oracle, np.generic):
            return
    if not backend.is_native(x):
        raise ConformanceMismatch(
            f"{ctx.check}[{ctx.dtype}] output {name!r} is a {type(x).__module__}."
            f"{type(x).__name__}, not an array of backend {ctx.backend} (a silent fallback?)"
        )
    dev = backend.device_of(x)
    if dev != backend.device:
        raise ConformanceMismatch(
            f"{ctx.check}[{ctx.dtype}] output {name!r} is on device {dev}, but backend "
            f"{ctx.backend}'s inputs were on {backend.device}: results must stay on the input's "
            "device"
        )
    want_float = np.asarray(oracle).dtype.kind == "f"
    got = backend.dtype_name(x.dtype)
    if want_float and got != ctx.dtype:
        raise ConformanceMismatch(
            f"{ctx.check}[{ctx.dtype}] output {name!r} has dtype {got}, expected {ctx.dtype} "
            "(a silent promotion or a default-dtype leak)"
        )


def check_call(
    case,
    backend: Backend,
    dtype: str,
    call: Call,
    record: Callable,
    ctx: Context,
    backend_side: BackendSide | None = None,
) -> None:
    """Run one example on both sides and compare every output; raise ConformanceMismatch if not."""
    fn = case.function()
    o_side = OracleSide(dtype)
    o_args, o_kwargs = convert(call.args, o_side), convert(call.kwargs, o_side)
    oracle_error = None
    try:
        expected = fn(*o_args, **o_kwargs)
    except RefdiffError as exc:  # invalid input: the backend must refuse it the same way
        oracle_error = exc
    b_side = backend_side or BackendSide(backend, dtype)
    b_side.__dict__.pop("watched", None)
    b_fn = backend.op(case.name, fn)
    with backend.checking():
        b_args, b_kwargs = convert(call.args, b_side), convert(call.kwargs, b_side)
        try:
            actual = b_fn(*b_args, **b_kwargs)
            backend.synchronize()
        except RefdiffError as exc:
            if oracle_error is not None and type(exc) is type(oracle_error):
                record(None, 0.0)
                return
            if oracle_error is None and dtype != "float64" and case.boundary_rejects:
                from hypothesis import reject

                reject()
            raise
    changed = b_side.modified_inputs()
    if changed:
        raise ConformanceMismatch(
            f"{ctx.check}[{ctx.dtype}] on backend {ctx.backend} modified {len(changed)} of its input "
            f"arrays in place (input {changed[0][0]} in the order the arguments were converted, "
            "shape {}): operations must not write into their arguments".format(
                tuple(np.shape(changed[0][1]))
            )
        )
    if oracle_error is not None:
        if dtype != "float64":
            # The quantised input sits on a validity boundary that the float64 oracle places a
            # rounding error away (e.g. λ_T computed in float32 vs float64): outside the domain.
            from hypothesis import reject

            reject()
        raise ConformanceMismatch(
            f"{ctx.check}[{ctx.dtype}]: the oracle raised {type(oracle_error).__name__}"
            f"({oracle_error}) but backend {ctx.backend} returned a result"
        )
    exp, act = flatten(expected), flatten(actual)
    if set(exp) != set(act):
        raise ConformanceMismatch(
            f"{ctx.check}[{ctx.dtype}]: backend outputs {sorted(act)} but the oracle's are "
            f"{sorted(exp)}"
        )
    inputs = _float_inputs((o_args, o_kwargs), [])
    sens = _LazySensitivity(fn, call, dtype, exp, o_side.n_leaves, o_side.leaf_sizes)
    for name in exp:
        _compare_output(
            case, backend, ctx, name, act[name], exp[name], inputs, (o_args, o_kwargs), record, sens
        )


class _LazySensitivity:
    """The sensitivity of the oracle to rounding-level perturbations, per output (on demand).

    Two estimates, elementwise maximum, divided by eps: (a) Σ_k over the leaves one at a time of
    the larger of |f(leaf k moved by +eps·|leaf|) − f| — the terms' magnitudes of a linear
    combination, however they cancel in the result — and |f(leaf k × (1 ± eps), alternating
    signs) − f|, which sees what scaling a leaf cannot (:func:`alternating_signs`); (b) max over
    two runs of |f(every element of every leaf × (1 ± eps), random signs) − f|. A
    backward-stable computation in the dtype under test errs by about eps times this, which
    makes it the natural atol scale of composite operations: a value obtained by
    cancellation between large terms gets an allowance proportional to the terms. A third
    estimate, |f32 − f64|/eps32 from the same formula evaluated in float32 NumPy, covers the
    rounding of intermediate results that cancel exactly in the oracle.
    """

    RANDOM_RUNS = 2

    def __init__(
        self,
        fn,
        call: Call,
        dtype: str,
        expected: dict,
        n_leaves: int,
        leaf_sizes: dict[int, int] | None = None,
    ):
        self.fn, self.call, self.dtype, self.expected = fn, call, dtype, expected
        self.n_leaves = n_leaves
        self.leaf_sizes = leaf_sizes or {}
        self._value: dict | None = None

    def __call__(self, name: str) -> np.ndarray | None:
        if self._value is None:
            self._value = self._compute()
        return self._value.get(name)

    def _run(self, side: OracleSide) -> dict | None:
        try:
            return flatten(
                self.fn(*convert(self.call.args, side), **convert(self.call.kwargs, side))
            )
        except Exception:  # noqa: BLE001 - a perturbation may cross a validity boundary
            return None

    def _delta(self, got: dict | None, ref: dict) -> dict:
        out = {}
        for n, r in ref.items():
            g = np.asarray(got.get(n) if got else np.nan, dtype=np.float64)
            if g.shape != r.shape:
                out[n] = np.zeros(r.shape)
                continue
            both = np.isfinite(g) & np.isfinite(r)
            with np.errstate(invalid="ignore", over="ignore"):
                out[n] = np.where(both, np.abs(g - r), 0.0)
        return out

    def _compute(self) -> dict:
        e = _tol.eps(self.dtype)
        ref = {
            n: np.asarray(v, dtype=np.float64)
            for n, v in self.expected.items()
            if np.asarray(v).dtype.kind == "f"
        }
        one_at_a_time = {n: np.zeros(v.shape) for n, v in ref.items()}
        for k in range(self.n_leaves):
            moves = [None] + ([alternating_signs] if self.leaf_sizes.get(k, 2) > 1 else [])
            leaf = {n: np.zeros(v.shape) for n, v in ref.items()}
            for signs in moves:
                side = OracleSide(self.dtype, only=k, perturb=signs)
                for n, d in self._delta(self._run(side), ref).items():
                    leaf[n] = np.maximum(leaf[n], d)
            for n, d in leaf.items():
                one_at_a_time[n] += d
        randomised = {n: np.zeros(v.shape) for n, v in ref.items()}
        for k in range(self.RANDOM_RUNS):
            side = OracleSide(self.dtype, perturb=random_signs(np.random.default_rng(20240 + k)))
            for n, d in self._delta(self._run(side), ref).items():
                randomised[n] = np.maximum(randomised[n], d)
        out = {n: np.maximum(one_at_a_time[n], randomised[n]) / e for n in ref}
        for n, amp in self._low_precision(ref).items():
            out[n] = np.maximum(out[n], amp)
        return out

    def _low_precision(self, ref: dict) -> dict:
        """|f32 − f64| / eps32 per element: the same formula evaluated in float32 NumPy measures how
        much the formula amplifies the rounding of its *intermediate* results (which perturbing
        the inputs does not see when they cancel exactly in the oracle, as in b + (a − b)).
        Elements where float32 leaves its normal range (overflow, subnormal results) carry no
        estimate."""
        got = self._run(OracleSide(self.dtype, compute="float32"))
        if not got:
            return {}
        tiny, e32 = 2.0**-126, 2.0**-23
        out = {}
        for n, r in ref.items():
            g = np.asarray(got.get(n, np.nan), dtype=np.float64)
            if g.shape != r.shape:
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                usable = (
                    np.isfinite(g)
                    & np.isfinite(r)
                    & (np.abs(r) < 2.0**127)
                    & ((np.abs(g) >= tiny) | (g == 0))
                    & ((np.abs(r) >= tiny) | (r == 0))
                )
                out[n] = np.where(usable, np.abs(g - r), 0.0) / e32
        return out


def _compare_output(case, backend, ctx, name, x, ref, inputs, oracle_call, record, sens) -> None:
    _check_native(backend, ctx, name, x, ref)
    a = backend.to_numpy(x) if backend.is_native(x) else np.asarray(x)
    r = np.asarray(ref)
    cls = case.tol_class(name)
    if r.dtype.kind not in "fc":
        cls = "exact"
    elif case.quantise_ref:
        r = quantise(r, ctx.dtype)
    if a.shape == r.shape and np.array_equal(
        a.astype(np.float64), r.astype(np.float64), equal_nan=True
    ):
        record(name, 0.0)  # bit-identical: no tolerance (nor its scale) needed
        return
    n, steps = case.sizes(oracle_call, r)
    tol = _tol.tolerance(cls, ctx.dtype, n=n, steps=steps, check=case.name, output=name)
    scale = 0.0 if cls == "exact" else case.scale_for(name, oracle_call, r, inputs, sens)
    mask = case.domain(oracle_call, name, r, ctx.dtype) if case.domain is not None else None
    cmp = compare(a, r.astype(np.float64), tol, scale, mask)
    record(name, cmp.ratio)
    if not cmp.ok:
        raise ConformanceMismatch(_mismatch_text(ctx, name, cmp, tol, cls))


def run_case(
    case, backend: Backend, dtype: str, *, settings, record: Callable, ctx: Context
) -> None:
    """Run a check as a Hypothesis property with the given settings.

    The property is named after the check, backend and dtype, which keys Hypothesis's example
    database and (derandomized) seed per check.
    """
    from hypothesis import given

    strategy = case.inputs(dtype)
    side = BackendSide(backend, dtype)

    def conformance_property(call):
        try:
            check_call(case, backend, dtype, call, record, ctx, side)
        except Exception as exc:
            add_note(exc, f"reproduce: {ctx.reproducer()}")
            raise

    import re

    conformance_property.__name__ = conformance_property.__qualname__ = re.sub(
        r"\W", "_", f"conformance_{case.name}_{backend.name}_{dtype}"
    )
    settings(given(call=strategy)(conformance_property))()
