"""The planted-bug meta-suite: realistic single-bug backends, each of which the suite must catch.

Each entry of :data:`PLANTED` is one defect a real backend could have, swapped into an honest
backend through public extension points: a subclass with an ``overrides`` table, a generator
method, or a namespace function replaced only inside :meth:`Backend.checking` (the oracle, NumPy
float64, is untouched). Each runs ``refdiff.verify`` on the few checks that should catch it, with
a handful of examples and no shrinking (the fast profile), and asserts that the run fails at the
expected checks. The honest numpy, array_api_strict and torch backends pass the very same
selections. :data:`OUT_OF_SCOPE` lists defects that provably cannot change any reference result,
with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import numpy as np
import pytest

import refdiff
from refdiff.backends import SCHEDULE_TO
from refdiff.backends.numpy import NumpyBackend
from refdiff.backends.strict import StrictBackend
from refdiff.conformance.tolerances import TABLE

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

TABLE_CHECKS = "schedules.linear or schedules.cosine"
EXP_CHECK = "tables.exp_log_alphas_cumprod"
SAMPLER_CHECK = "samplers.ddpm"
QSAMPLE_CHECK = "diffusion.q_sample"
ILVR_CHECK = "guidance.ilvr_sample"


def run(backend, select: str, *, dtypes="float64,float32", n: int = 6):
    """verify() on a -k selection with n examples per check (no shrinking: failures expected)."""
    return refdiff.verify(
        backend=backend, dtypes=dtypes, max_examples=n, shrink=False, extra_args=["-k", select]
    )


def failed_checks(report) -> set[str]:
    return {f"{r.check}[{r.dtype}]" for r in report.failures()}


def _eps(x) -> float:
    """Machine epsilon of an array's dtype (strict, numpy or torch)."""
    name = str(x.dtype).rpartition(".")[2]
    return float(np.finfo(np.dtype(name)).eps)


def _tiny(x) -> float:
    name = str(x.dtype).rpartition(".")[2]
    return float(np.finfo(np.dtype(name)).tiny)


# --------------------------------------------------------------------------------------------
# Backends with one replaced namespace function
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _patched(obj, patches: dict[str, Callable]):
    """Replace obj.<name> by make(xp, good) for each entry; restore after."""
    saved = {name: getattr(obj, name) for name in patches}
    try:
        for name, make in patches.items():
            setattr(obj, name, make(obj, saved[name]))
        yield
    finally:
        for name, good in saved.items():
            setattr(obj, name, good)


@contextlib.contextmanager
def _patched_specials(namespace: str, patches: dict[str, Callable]):
    """Replace the registered special functions (erf, erfc) of a namespace; restore after."""
    from refdiff import _xp

    saved = {op: _xp._SPECIAL.get((op, namespace)) for op in patches}
    try:
        for op, make in patches.items():
            _xp._SPECIAL[(op, namespace)] = make(saved[op])
        yield
    finally:
        for op, good in saved.items():
            if good is None:
                _xp._SPECIAL.pop((op, namespace), None)
            else:
                _xp._SPECIAL[(op, namespace)] = good


class PatchedStrict(StrictBackend):
    """array_api_strict with some namespace functions replaced while checks run."""

    def __init__(
        self,
        name: str,
        patches: dict[str, Callable] | None = None,
        specials: dict[str, Callable] | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.patches, self.special_patches = patches or {}, specials or {}

    @contextlib.contextmanager
    def checking(self):
        with (
            super().checking(),
            _patched(self.xp, self.patches),
            _patched_specials("array_api_strict", self.special_patches),
        ):
            yield


class PatchedTorch:
    """Factory of torch CPU backends with namespace functions replaced while checks run."""

    def __new__(cls, name: str, patches: dict[str, Callable]):
        from refdiff.backends.torch import TorchBackend

        class _Patched(TorchBackend):
            @contextlib.contextmanager
            def checking(self):
                with super().checking(), _patched(self.xp, patches):
                    yield

        return _Patched(device="cpu", name=name)


# ---- the replaced functions (each realistic: a textbook formula or a common shortcut) ------


def naive_logaddexp(xp, good):
    return lambda x1, x2: xp.log(xp.exp(x1) + xp.exp(x2))


def nan_logaddexp(xp, good):
    """max + log1p(exp(−|x − y|)): right for finite values, NaN at logaddexp(±inf, ±inf)."""

    def f(x1, x2):
        return xp.maximum(x1, x2) + xp.log1p(xp.exp(-xp.abs(x1 - x2)))

    return f


def naive_asinh(xp, good):
    return lambda x: xp.log(x + xp.sqrt(x * x + 1.0))


def float32_limits_exp(xp, good):
    """An exp whose range checks use float32's limits in every dtype (inf above 88.72, 0 below
    −103.97)."""

    def f(x):
        r = good(x)
        r = xp.where(x > 88.72283935546875, xp.full_like(x, math.inf), r)
        return xp.where(x < -103.97208404541016, xp.zeros_like(x), r)

    return f


def log_with_floor(xp, good):
    """log(x + tiny): finite at 0 (a common guard against -inf)."""
    return lambda x: good(x + _tiny(x))


def nan_dropping_maximum(xp, good):
    return lambda x1, x2: xp.where(x1 > x2, x1, x2)


def nan_dropping_minimum(xp, good):
    return lambda x1, x2: xp.where(x1 < x2, x1, x2)


def round_half_away(xp, good):
    return lambda x: xp.sign(x) * xp.floor(xp.abs(x) + 0.5)


def floor_by_truncation(xp, good):
    return lambda x: xp.astype(xp.astype(x, xp.int64), x.dtype)


def sqrt_60ulp(xp, good):
    return lambda x: good(x) * (1.0 + 60.0 * _eps(x))


def sqrt_via_log(xp, good):
    return lambda x: xp.exp(0.5 * xp.log(x))


def sqrt_flushing_subnormals(xp, good):
    """Denormals-are-zero: subnormal inputs read as 0 (fast-math on some devices)."""
    return lambda x: good(xp.where(xp.abs(x) < _tiny(x), xp.zeros_like(x), x))


def naive_log1p(xp, good):
    return lambda x: xp.log(1.0 + x)


def naive_expm1(xp, good):
    return lambda x: xp.exp(x) - 1.0


def naive_tanh(xp, good):
    def f(x):
        e = xp.exp(2.0 * x)
        return (e - 1.0) / (e + 1.0)

    return f


def naive_sinh(xp, good):
    return lambda x: (xp.exp(x) - xp.exp(-x)) * 0.5


def exp_k_ulp(k: float):
    def make(xp, good):
        return lambda x: good(x) * (1.0 + k * _eps(x))

    return make


def exp_in_float32(xp, good):
    """exp evaluated in float32 whatever the input dtype (a single-precision kernel)."""
    return lambda x: xp.astype(good(xp.astype(x, xp.float32)), x.dtype)


def nan_dropping_clip(xp, good):
    def f(x, /, min=None, max=None):
        lo = xp.full_like(x, -math.inf if min is None else float(min))
        hi = xp.full_like(x, math.inf if max is None else float(max))
        return xp.where(x >= lo, xp.where(x <= hi, x, hi), lo)

    return f


def float32_sum(xp, good):
    """sum accumulated in float32 whatever the dtype."""

    def f(x, /, *, axis=None, dtype=None, keepdims=False):
        r = good(xp.astype(x, xp.float32), axis=axis, keepdims=keepdims)
        return xp.astype(r, x.dtype)

    return f


def std_ignoring_correction(xp, good):
    def f(x, /, *, axis=None, correction=0.0, keepdims=False):
        return good(x, axis=axis, correction=1.0, keepdims=keepdims)

    return f


def low_order_erf(good):
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): fine for float32 plots, wrong in float64."""

    def erf(x):
        import array_api_strict as xp

        a = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
        s, z = xp.sign(x), xp.abs(x)
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (a[0] + t * (a[1] + t * (a[2] + t * (a[3] + t * a[4]))))
        return s * (1.0 - poly * xp.exp(-z * z))

    return erf


def erfc_as_one_minus_erf(good):
    def erfc(x):
        from refdiff import _xp

        return 1.0 - _xp.erf(x)

    return erfc


# --------------------------------------------------------------------------------------------
# Backends with a bad generator
# --------------------------------------------------------------------------------------------


class BadRNG(NumpyBackend):
    """NumPy whose normal/uniform draws are post-processed by ``normal_fix``/``uniform_fix``."""

    def __init__(
        self,
        name: str,
        *,
        normal_fix: Callable | None = None,
        uniform_fix: Callable | None = None,
        make_rng: Callable | None = None,
    ):
        super().__init__(name=name)
        self.normal_fix, self.uniform_fix, self._make = normal_fix, uniform_fix, make_rng

    def make_rng(self, seed: int):
        return self._make(seed) if self._make else super().make_rng(seed)

    def normal(self, rng, shape, dtype: str = "float64"):
        z = super().normal(rng, shape, dtype)
        return self.normal_fix(z) if self.normal_fix else z

    def uniform(self, rng, shape, dtype: str = "float64"):
        u = super().uniform(rng, shape, dtype)
        return self.uniform_fix(u) if self.uniform_fix else u


def _repeat_second_half(z):
    h = z.shape[0] // 2
    return np.concatenate([z[:h], z[:h]]).astype(z.dtype)


def _ar1(rho: float):
    """Each draw mixed with the previous one (a generator whose outputs are not independent)."""

    def fix(z):
        out = z.copy()
        out[1:] = (z[1:] + rho * z[:-1]) / math.sqrt(1.0 + rho * rho)
        return out.astype(z.dtype)

    return fix


class _Restarting:
    """A 'generator' that is only a seed: every draw restarts the stream (state not advanced)."""

    def __init__(self, seed):
        self.seed = seed

    def standard_normal(self, shape, dtype=np.float64):
        return np.random.default_rng(self.seed).standard_normal(shape, dtype=dtype)

    def random(self, shape):
        return np.random.default_rng(self.seed).random(shape)


class WrongDtypeRNG(NumpyBackend):
    """normal() ignores the dtype argument and returns float64."""

    def normal(self, rng, shape, dtype: str = "float64"):
        return rng.standard_normal(tuple(shape))


class UniformOnDefaultDevice(StrictBackend):
    """uniform() forgets device= (strict's default device is not the backend's)."""

    def uniform(self, rng, shape, dtype: str = "float64"):
        return self.xp.asarray(rng.random(tuple(shape)), dtype=self.dtype(dtype))


# --------------------------------------------------------------------------------------------
# Backends with a bad operation override (existing extension point)
# --------------------------------------------------------------------------------------------


def _float32_cumprod_tables(schedule, xp, *, device, dtype):
    """A backend that rebuilds ᾱ on the device as cumprod(1 − β) in float32, then casts up."""
    moved = schedule.to(xp, device=device, dtype=dtype)
    alphas = np.asarray(schedule.alphas, dtype=np.float32)
    ab = np.cumprod(alphas, dtype=np.float32).astype(np.float64)
    return dataclasses.replace(
        moved,
        alphas_cumprod=xp.asarray(ab, dtype=dtype, device=device),
        sqrt_alphas_cumprod=xp.asarray(np.sqrt(ab), dtype=dtype, device=device),
    )


def _ddpm_dropping_noise_at_step_1(model, x_T, *, schedule, noise, **options):
    """DDPM ancestral sampling whose second step forgets to add σ_t z."""
    from refdiff.samplers.discrete import ddpm_sample

    def draws(i):
        z = noise(i)
        return z * 0.0 if i == 1 else z

    return ddpm_sample(model, x_T, schedule=schedule, noise=draws, **options)


def _q_sample_without_noise(schedule, x0, t, *, noise):
    from refdiff.diffusion import q_sample

    return q_sample(schedule, x0, t, noise=noise * 0.0)


def _q_sample_reusing_its_input(schedule, x0, t, *, noise):
    """A fused q_sample that uses its x0 argument as scratch space once it is done with it."""
    from refdiff.diffusion import q_sample

    out = q_sample(schedule, x0, t, noise=noise)
    x0[...] = 0.0
    return out


def _ilvr_low_pass_in_float32(model, x_T, *, factor, **options):
    """ILVR whose low-pass filter φ_N computes its block means in float32 (a kernel's shortcut)."""
    from refdiff._xp import array_namespace
    from refdiff.guidance import ilvr_sample, low_pass

    xp = array_namespace(x_T)

    def phi(a):
        return xp.astype(low_pass(xp.astype(a, xp.float32), factor), a.dtype)

    return ilvr_sample(model, x_T, factor=factor, low_pass_fn=phi, **options)


def _tables_on_default_device(schedule, xp, *, device, dtype):
    """A table move that ignores device= (arrays land on the namespace's default device)."""
    return schedule.to(xp, dtype=dtype)


def _q_sample_result_on_cpu(schedule, x0, t, *, noise):
    """A fused q_sample that copies its result back to the default device."""
    import array_api_strict as xp

    from refdiff.diffusion import q_sample

    return q_sample(schedule, x0, t, noise=noise).to_device(xp.Device("CPU_DEVICE"))


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planted:
    """One planted bug: the backend, the checks run, and those that must fail."""

    id: str
    make: Callable[[], Any]
    select: str
    must_fail: tuple[str, ...]  # "check[dtype]" that must be among the failures
    dtypes: str = "float64,float32"
    n: int = 6
    torch: bool = False
    says: str = ""  # a phrase the failure message must contain


def _strict(name, **patches):
    return lambda: PatchedStrict(name, patches)


def _strict_special(name, **specials):
    return lambda: PatchedStrict(name, specials=specials)


def _rng(name, **kw):
    return lambda: BadRNG(name, **kw)


def _both(check: str) -> tuple[str, ...]:
    return (f"{check}[float64]", f"{check}[float32]")


_EXP_ALLOWED = TABLE["elementwise"].rtol + TABLE["elementwise"].atol
TFL_VP, TFL_SUBVP = "sde.VPSDE.t_from_lambda", "sde.SubVPSDE.t_from_lambda"

PLANTED: list[Planted] = [
    # -- random numbers ---------------------------------------------------------------------
    Planted(
        "normal-variance-0.99",
        _rng("rng_var099", normal_fix=lambda z: z * math.sqrt(0.99)),
        "rng.normal",
        ("rng.normal[float32]",),
        dtypes="float32",
        says="variance:",
    ),
    Planted(
        "normal-mean-1e-3",
        _rng("rng_mean1e3", normal_fix=lambda z: z + 1e-3),
        "rng.normal",
        ("rng.normal[float32]",),
        dtypes="float32",
        says="mean:",
    ),
    Planted(
        "normal-clipped-at-3-sd",
        _rng("rng_clip3", normal_fix=lambda z: np.clip(z, -3, 3)),
        "rng.normal",
        ("rng.normal[float32]",),
        dtypes="float32",
        says="draws above +3 sd:",
    ),
    Planted(
        "normal-second-half-repeats",
        _rng("rng_half", normal_fix=_repeat_second_half),
        "rng.normal",
        ("rng.normal[float64]",),
        dtypes="float64",
        says="repeated block:",
    ),
    Planted(
        "normal-serially-correlated",
        _rng("rng_ar1", normal_fix=_ar1(0.02)),
        "rng.normal",
        ("rng.normal[float64]",),
        dtypes="float64",
        says="serial correlation:",
    ),
    Planted(
        "normal-ignores-seed",
        _rng("rng_noseed", make_rng=lambda seed: np.random.default_rng(0)),
        "rng.normal",
        ("rng.normal[float32]",),
        dtypes="float32",
        says="sign agreement with the next seed",
    ),
    Planted(
        "normal-not-reproducible",
        _rng("rng_entropy", make_rng=lambda seed: np.random.default_rng()),
        "rng.normal",
        ("rng.normal[float32]",),
        dtypes="float32",
        says="same seed, same draws:",
    ),
    Planted(
        "normal-wrong-dtype",
        lambda: WrongDtypeRNG(name="rng_f64_only"),
        "rng.normal",
        ("rng.normal[float32]",),
        dtypes="float32",
        says="returned float64, asked for float32",
    ),
    Planted(
        "uniform-state-not-advanced",
        _rng("rng_restart", make_rng=_Restarting),
        "rng.uniform",
        ("rng.uniform[float32]",),
        dtypes="float32",
        says="recur in draw 1",
    ),
    Planted(
        "uniform-range-0.99",
        _rng("rng_u099", uniform_fix=lambda u: u * 0.99),
        "rng.uniform",
        ("rng.uniform[float64]",),
        dtypes="float64",
        says="draws at or above 1 − 2^-10:",
    ),
    Planted(
        "uniform-on-default-device",
        lambda: UniformOnDefaultDevice(name="strict_u_dev"),
        "rng.uniform",
        ("rng.uniform[float32]",),
        dtypes="float32",
        says="not on the backend's device",
    ),
    # -- namespace functions: accuracy where small outputs come from large inputs -------------
    Planted(
        "naive-logaddexp-in-t_from_lambda",
        _strict("strict_naive_lae", logaddexp=naive_logaddexp),
        f"{TFL_VP} or edges.logaddexp",
        (f"{TFL_VP}[float64]", "edges.logaddexp[float64]"),
    ),
    Planted(
        "naive-asinh-in-t_from_lambda",
        _strict("strict_naive_asinh", asinh=naive_asinh),
        f"{TFL_SUBVP} or edges.asinh",
        (f"{TFL_SUBVP}[float64]", "edges.asinh[float64]"),
    ),
    Planted(
        "logaddexp-nan-at-infinities",
        _strict("strict_nan_lae", logaddexp=nan_logaddexp),
        "edges.logaddexp",
        _both("edges.logaddexp"),
    ),
    # -- edge values -----------------------------------------------------------------------
    Planted(
        "float32-limits-in-float64-exp",
        _strict("strict_f32_exp", exp=float32_limits_exp),
        "edges.exp",
        ("edges.exp[float64]",),
        dtypes="float64",
    ),
    Planted(
        "log-of-zero-finite",
        _strict("strict_log0", log=log_with_floor),
        "edges.log",
        _both("edges.log"),
    ),
    Planted(
        "nan-dropping-maximum",
        _strict("strict_max", maximum=nan_dropping_maximum),
        "edges.maximum",
        _both("edges.maximum"),
    ),
    Planted(
        "nan-dropping-minimum",
        _strict("strict_min", minimum=nan_dropping_minimum),
        "edges.minimum",
        _both("edges.minimum"),
    ),
    Planted(
        "nan-dropping-clip",
        _strict("strict_clip", clip=nan_dropping_clip),
        "edges.clip",
        _both("edges.clip"),
    ),
    Planted(
        "round-half-away-from-zero",
        _strict("strict_round", round=round_half_away),
        "edges.round",
        _both("edges.round"),
    ),
    Planted(
        "floor-by-truncation",
        _strict("strict_floor", floor=floor_by_truncation),
        "edges.floor",
        _both("edges.floor"),
    ),
    Planted(
        "sqrt-flushing-subnormal-inputs",
        _strict("strict_daz_sqrt", sqrt=sqrt_flushing_subnormals),
        "edges.sqrt",
        _both("edges.sqrt"),
    ),
    Planted(
        "naive-tanh", _strict("strict_tanh", tanh=naive_tanh), "edges.tanh", _both("edges.tanh")
    ),
    Planted(
        "naive-sinh", _strict("strict_sinh", sinh=naive_sinh), "edges.sinh", _both("edges.sinh")
    ),
    # -- accuracy of the elementwise functions --------------------------------------------------
    Planted(
        "sqrt-60-ulp", _strict("strict_sqrt60", sqrt=sqrt_60ulp), "edges.sqrt", _both("edges.sqrt")
    ),
    Planted(
        "sqrt-as-exp-half-log",
        _strict("strict_sqrt_log", sqrt=sqrt_via_log),
        "edges.sqrt",
        _both("edges.sqrt"),
    ),
    Planted(
        "low-order-erf",
        _strict_special("strict_as_erf", erf=low_order_erf),
        "edges.erf or discretized_gaussian_log_likelihood",
        ("edges.erf[float64]", "kl.discretized_gaussian_log_likelihood[erf][float64]"),
        dtypes="float64",
    ),
    Planted(
        "erfc-as-one-minus-erf",
        _strict_special("strict_erfc", erfc=erfc_as_one_minus_erf),
        "edges.erfc",
        _both("edges.erfc"),
    ),
    Planted(
        "naive-log1p",
        _strict("strict_log1p", log1p=naive_log1p),
        "edges.log1p or tables.log_one_minus_alphas_cumprod_log1p",
        _both("edges.log1p") + _both("tables.log_one_minus_alphas_cumprod_log1p"),
    ),
    Planted(
        "naive-expm1",
        _strict("strict_expm1", expm1=naive_expm1),
        "edges.expm1 or tables.one_minus_alphas_cumprod_expm1",
        _both("edges.expm1") + _both("tables.one_minus_alphas_cumprod_expm1"),
    ),
    Planted(
        "exp-off-by-twice-the-allowance",
        _strict("strict_exp_2x", exp=exp_k_ulp(2 * _EXP_ALLOWED)),
        f"{EXP_CHECK} or edges.exp",
        _both(EXP_CHECK) + _both("edges.exp"),
    ),
    Planted(
        "float64-exp-in-float32",
        _strict("strict_exp_f32", exp=exp_in_float32),
        f"{EXP_CHECK} or edges.exp or {QSAMPLE_CHECK}",
        (f"{EXP_CHECK}[float64]", "edges.exp[float64]"),
        dtypes="float64",
    ),
    Planted(
        "sum-accumulated-in-float32",
        _strict("strict_sum32", sum=float32_sum),
        "losses.sum_flat",
        ("losses.sum_flat[float64]",),
        dtypes="float64",
    ),
    Planted(
        "std-ignores-correction",
        _strict("strict_std", std=std_ignoring_correction),
        "guidance.rescale_cfg",
        ("guidance.rescale_cfg[float64]",),
    ),
    # -- operation overrides: tables, samplers, devices ------------------------------------------
    Planted(
        "float32-cumprod-in-float64-run",
        lambda: NumpyBackend(
            name="numpy_f32_cumprod", overrides={SCHEDULE_TO: _float32_cumprod_tables}
        ),
        f"{TABLE_CHECKS} or {QSAMPLE_CHECK}",
        ("schedules.linear[float64]", "schedules.cosine[float64]", f"{QSAMPLE_CHECK}[float64]"),
        dtypes="float64",
    ),
    Planted(
        "ddpm-drops-noise-at-one-step",
        lambda: NumpyBackend(
            name="numpy_ddpm_drop", overrides={SAMPLER_CHECK: _ddpm_dropping_noise_at_step_1}
        ),
        SAMPLER_CHECK,
        _both(SAMPLER_CHECK),
        n=10,
    ),
    Planted(
        "q_sample-without-noise",
        lambda: NumpyBackend(
            name="numpy_q_nonoise", overrides={QSAMPLE_CHECK: _q_sample_without_noise}
        ),
        QSAMPLE_CHECK,
        _both(QSAMPLE_CHECK),
    ),
    Planted(
        "q_sample-overwrites-its-input",
        lambda: NumpyBackend(
            name="numpy_q_scratch", overrides={QSAMPLE_CHECK: _q_sample_reusing_its_input}
        ),
        QSAMPLE_CHECK,
        _both(QSAMPLE_CHECK),
        says="modified 1 of its input arrays in place",
    ),
    Planted(
        "ilvr-low-pass-in-float32",
        lambda: NumpyBackend(
            name="numpy_ilvr_f32", overrides={ILVR_CHECK: _ilvr_low_pass_in_float32}
        ),
        ILVR_CHECK,
        (f"{ILVR_CHECK}[float64]",),
        dtypes="float64",
    ),
    Planted(
        "tables-on-the-default-device",
        lambda: StrictBackend(
            name="strict_wrong_device", overrides={SCHEDULE_TO: _tables_on_default_device}
        ),
        f"schedules.linear or {QSAMPLE_CHECK}",
        ("schedules.linear[float32]", f"{QSAMPLE_CHECK}[float32]"),
        dtypes="float32",
    ),
    Planted(
        "q_sample-result-on-cpu",
        lambda: StrictBackend(
            name="strict_cpu_result", overrides={QSAMPLE_CHECK: _q_sample_result_on_cpu}
        ),
        QSAMPLE_CHECK,
        (f"{QSAMPLE_CHECK}[float64]",),
        dtypes="float64",
    ),
    # -- the same kind of defects in torch CPU -----------------------------------------------
    Planted(
        "torch-naive-logaddexp",
        lambda: PatchedTorch("torch_naive_lae", {"logaddexp": naive_logaddexp}),
        f"{TFL_VP} or edges.logaddexp",
        (f"{TFL_VP}[float64]", "edges.logaddexp[float64]"),
        torch=True,
    ),
    Planted(
        "torch-sqrt-60-ulp",
        lambda: PatchedTorch("torch_sqrt60", {"sqrt": sqrt_60ulp}),
        "edges.sqrt",
        _both("edges.sqrt"),
        torch=True,
    ),
]

#: Defects that provably cannot change any reference result (and so are not planted), with why.
OUT_OF_SCOPE: dict[str, str] = {
    "abs(-0.0) returning -0.0": (
        "every use of abs in the reference feeds a comparison, a sort key or a maximum, where "
        "-0.0 == +0.0; the suite compares ±0 as equal there (edges.abs does not check the sign)"
    ),
    "maximum/minimum(+0.0, -0.0) returning either zero": (
        "the standard leaves the sign implementation-defined and the reference's maximum/minimum "
        "results feed clipping and comparisons only"
    ),
    "a wrong atan, atan2, acos, asin, tan, cosh, log2, log10, cbrt or hypot": (
        "the reference never calls them on backend arrays (the cosine schedule and every table "
        "are built on the host in float64 NumPy and moved once); "
        "tests/test_conformance_coverage.py checks that the source calls none of them"
    ),
    "uniform() returning exactly 1.0 once in 2^53 float64 draws": (
        "no reference function draws from the backend's generator (noise is explicit), and at "
        "that rate no test of any size could see it"
    ),
}


#: Namespace functions the out-of-scope list relies on the reference never calling.
NEVER_CALLED = {"atan", "atan2", "acos", "asin", "tan", "cosh", "log2", "log10", "cbrt", "hypot"}


@pytest.mark.parametrize(
    "bug", [pytest.param(p, id=p.id, marks=needs_torch if p.torch else ()) for p in PLANTED]
)
def test_planted_bug_is_caught(bug: Planted):
    rep = run(bug.make(), bug.select, dtypes=bug.dtypes, n=bug.n)
    assert not rep.ok, f"planted bug {bug.id} was not caught:\n{rep.format()}"
    bad = failed_checks(rep)
    missing = set(bug.must_fail) - bad
    assert not missing, f"planted bug {bug.id}: {sorted(missing)} passed; failed: {sorted(bad)}"
    text = "\n".join(r.message for r in rep.failures())
    assert bug.says in text, f"planted bug {bug.id}: {bug.says!r} not in\n{text}"


def test_there_are_at_least_30_planted_bugs():
    assert len({p.id for p in PLANTED}) == len(PLANTED) >= 30


# --------------------------------------------------------------------------------------------
# Details of a few failures: the message, the ratio, the reproducer
# --------------------------------------------------------------------------------------------


def test_float32_cumprod_message_names_output_tolerance_and_reproducer():
    rep = run(Float32Cumprod(), "schedules.linear", dtypes="float64")
    msg = next(r.message for r in rep.failures() if r.check == "schedules.linear")
    assert "alphas_cumprod" in msg and "tolerance: exact" in msg and "max ulp err" in msg, msg
    assert "reproduce: refdiff.verify(backend=<the Backend object 'numpy_f32_cumprod'>" in msg, msg


def Float32Cumprod():
    return NumpyBackend(name="numpy_f32_cumprod", overrides={SCHEDULE_TO: _float32_cumprod_tables})


def test_exp_off_by_twice_the_allowance_fails_at_twice_the_limit():
    rep = run(PatchedStrict("strict_exp_2x", {"exp": exp_k_ulp(2 * _EXP_ALLOWED)}), EXP_CHECK)
    assert failed_checks(rep) == set(_both(EXP_CHECK))
    worst = max(r.ratio for r in rep.failures())
    assert 1.5 < worst < 2.5, worst  # twice the allowance, as planted


def test_exp_off_by_less_than_the_tolerance_passes():
    rep = run(PatchedStrict("strict_exp_4", {"exp": exp_k_ulp(4.0)}), EXP_CHECK)
    assert rep.ok, rep.format()
    assert max(r.ratio for r in rep.checks) < 0.5


def test_edge_failure_names_the_value():
    rep = run(PatchedStrict("strict_log0", {"log": log_with_floor}), "edges.log", dtypes="float64")
    msg = rep.failures()[0].message
    assert "log(0.0) = " in msg and "reference -inf" in msg, msg


def test_rng_failure_names_the_statistic():
    rep = run(
        BadRNG("rng_var099", normal_fix=lambda z: z * math.sqrt(0.99)),
        "rng.normal",
        dtypes="float32",
    )
    msg = rep.failures()[0].message
    assert "variance" in msg and "false-alarm probability <= 1e-09" in msg, msg


def test_wrong_device_messages():
    rep = run(
        StrictBackend(
            name="strict_wrong_device", overrides={SCHEDULE_TO: _tables_on_default_device}
        ),
        f"schedules.linear or {QSAMPLE_CHECK}",
        dtypes="float32",
    )
    msgs = " ".join(r.message for r in rep.failures())
    assert "is on device" in msgs and "results must stay on the input's device" in msgs
    assert "can not be combined" in msgs  # strict refuses to mix the two devices


def test_patches_are_restored_after_the_run():
    import array_api_strict as xp

    from refdiff import _xp

    b = PatchedStrict(
        "strict_restore",
        {"exp": exp_k_ulp(100.0), "log": log_with_floor},
        specials={"erf": low_order_erf},
    )
    before = (xp.exp, xp.log, _xp._SPECIAL.get(("erf", "array_api_strict")))
    rep = run(b, "edges.exp or edges.erf", dtypes="float64", n=1)
    assert failed_checks(rep) == {"edges.exp[float64]", "edges.erf[float64]"}
    assert (xp.exp, xp.log, _xp._SPECIAL.get(("erf", "array_api_strict"))) == before


# --------------------------------------------------------------------------------------------
# The honest backends pass every selection above
# --------------------------------------------------------------------------------------------

ALL_SELECTED = " or ".join(sorted({f"({p.select})" for p in PLANTED}))


@pytest.mark.parametrize(
    "name", ["numpy", "array_api_strict", pytest.param("torch", marks=needs_torch)]
)
def test_honest_backends_pass_the_planted_selections(name):
    rep = run(name, ALL_SELECTED)
    assert rep.ok, rep.format()
    assert all(r.ratio is not None and r.ratio <= 1.0 for r in rep.checks if r.ratio is not None)
    wanted = {c.rsplit("[", 1)[0] for p in PLANTED for c in p.must_fail}
    assert wanted <= {r.check for r in rep.checks}, wanted - {r.check for r in rep.checks}


def test_sqrt_60_ulp_fails_by_a_wide_margin():
    rep = run(PatchedStrict("strict_sqrt60", {"sqrt": sqrt_60ulp}), "edges.sqrt")
    assert min(r.ratio for r in rep.failures()) > 5.0, rep.format()  # 60 ulp against 8


# --------------------------------------------------------------------------------------------
# The sensitivity estimate (the atol scale of composite operations)
# --------------------------------------------------------------------------------------------


def _componentwise_condition(f, args: list[np.ndarray]) -> np.ndarray:
    """Σ_j |∂f/∂x_j|·|x_j| over every element of every argument, by central differences."""
    total = np.zeros_like(f(*args))
    for a in range(len(args)):
        for j in np.ndindex(args[a].shape):
            h = 1e-6 * abs(args[a][j])
            up = [x.copy() for x in args]
            dn = [x.copy() for x in args]
            up[a][j] += h
            dn[a][j] -= h
            total += np.abs((f(*up) - f(*dn)) / (2 * h)) * abs(args[a][j])
    return total


def test_sensitivity_sees_a_scale_invariant_ill_conditioned_ratio():
    """rescale_cfg's std ratio is invariant to scaling a leaf, and with cond ∝ guided − 0.1 also
    to the same sign pattern on both: moving each leaf with alternating signs still sees that a
    sample (2.65, 2.52) has a spread 40 times smaller than its values (found by a random torch
    run that a scale of |ref| failed at 1.13× the allowance)."""
    from refdiff.conformance.check import OracleSide, _LazySensitivity, convert, flatten
    from refdiff.conformance.strategies import Call
    from refdiff.guidance import rescale_cfg

    g = np.array(
        [[-0.5617020195299823, -1.358491093299317], [2.6479142261066544, 2.515433619770786]]
    )
    c = 0.5 * (g - 0.1)
    call = Call((g, c), {"phi": 1.0})
    side = OracleSide("float64")
    expected = flatten(rescale_cfg(*convert(call.args, side), **convert(call.kwargs, side)))
    sens = _LazySensitivity(rescale_cfg, call, "float64", expected, side.n_leaves, side.leaf_sizes)(
        "out"
    )
    cond = _componentwise_condition(lambda a, b: rescale_cfg(a, b, phi=1.0), [g, c])
    assert cond[1].min() > 60  # the second sample is ill-conditioned ...
    assert np.all(sens >= 0.5 * cond), (sens, cond)  # ... and the estimate sees it
