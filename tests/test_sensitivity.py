"""The suite is sensitive: deliberately broken backends fail ``refdiff.verify``, honest ones pass.

Each planted bug is a small, realistic backend defect, built with the public extension points
(subclassing a built-in backend with an ``overrides`` table, or a backend whose namespace has a
bad ``exp``); each run is restricted to a few checks and examples so the file stays fast. The
honest numpy, array_api_strict and torch backends pass the very same selections.
"""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import pytest

import refdiff
from refdiff.backends import SCHEDULE_TO
from refdiff.backends.numpy import NumpyBackend
from refdiff.backends.strict import StrictBackend
from refdiff.conformance.tolerances import TABLE

HAS_TORCH = importlib.util.find_spec("torch") is not None

TABLE_CHECKS = "schedules.linear or schedules.cosine"
EXP_CHECK = "tables.exp_log_alphas_cumprod"
SAMPLER_CHECK = "samplers.ddpm"
QSAMPLE_CHECK = "diffusion.q_sample"


def run(backend, select: str, *, dtypes="float64,float32", n: int = 6):
    """verify() on a -k selection with n examples per check (no shrinking: failures expected)."""
    return refdiff.verify(backend=backend, dtypes=dtypes, max_examples=n, shrink=False,
                          extra_args=["-k", select])


def failed_checks(report) -> set[str]:
    return {f"{r.check}[{r.dtype}]" for r in report.failures()}


# --------------------------------------------------------------------------------------------
# 1. A float32 cumulative product inside a float64 run
# --------------------------------------------------------------------------------------------

def _float32_cumprod_tables(schedule, xp, *, device, dtype):
    """A backend that rebuilds ᾱ on the device as cumprod(1 − β) in float32, then casts up."""
    moved = schedule.to(xp, device=device, dtype=dtype)
    alphas = np.asarray(schedule.alphas, dtype=np.float32)
    ab = np.cumprod(alphas, dtype=np.float32).astype(np.float64)
    import dataclasses
    return dataclasses.replace(
        moved, alphas_cumprod=xp.asarray(ab, dtype=dtype, device=device),
        sqrt_alphas_cumprod=xp.asarray(np.sqrt(ab), dtype=dtype, device=device))


class Float32CumprodBackend(NumpyBackend):
    """NumPy, except that its schedule tables go through a float32 cumulative product."""

    def __init__(self, device=None):
        super().__init__(device, name="numpy_f32_cumprod",
                         overrides={SCHEDULE_TO: _float32_cumprod_tables})


def test_float32_cumprod_in_a_float64_run_fails():
    rep = run(Float32CumprodBackend(), f"{TABLE_CHECKS} or {QSAMPLE_CHECK}", dtypes="float64")
    assert not rep.ok
    bad = failed_checks(rep)
    assert {"schedules.linear[float64]", "schedules.cosine[float64]"} <= bad, bad
    assert "diffusion.q_sample[float64]" in bad, bad
    msg = next(r.message for r in rep.failures() if r.check == "schedules.linear")
    assert "alphas_cumprod" in msg and "tolerance: exact" in msg and "max ulp err" in msg, msg
    assert "reproduce: refdiff verify --backend numpy_f32_cumprod" in msg, msg


# --------------------------------------------------------------------------------------------
# 2. An exp that is off by more ulp than the tolerance allows
# --------------------------------------------------------------------------------------------

class BadExpStrictBackend(StrictBackend):
    """array_api_strict whose exp returns exp(x)·(1 + k·eps) while checks run.

    The reference finds ``exp`` through the arrays' namespace (array_api_strict itself), so the
    namespace's exp is what is replaced, only inside :meth:`checking` (the oracle, NumPy, is
    untouched).
    """

    def __init__(self, k: float, device=None):
        super().__init__(device, name=f"strict_exp_{k:g}ulp")
        self.k = k

    @contextlib.contextmanager
    def checking(self):
        xp = self.xp
        good = xp.exp
        k = self.k

        def bad_exp(x):
            e = float(np.finfo(np.dtype(str(x.dtype).rpartition(".")[2])).eps)
            return good(x) * (1.0 + k * e)

        xp.exp = bad_exp
        try:
            yield
        finally:
            xp.exp = good


def test_exp_off_by_more_than_the_tolerance_fails():
    row = TABLE["elementwise"]
    allowed = row.rtol + row.atol      # the relative allowance of tables.exp_* (scale = |ref|)
    rep = run(BadExpStrictBackend(k=2 * allowed), EXP_CHECK)
    assert not rep.ok
    assert failed_checks(rep) == {f"{EXP_CHECK}[float64]", f"{EXP_CHECK}[float32]"}
    worst = max(r.ratio for r in rep.failures())
    assert 1.5 < worst < 2.5, worst            # twice the allowance, as planted


def test_exp_off_by_less_than_the_tolerance_passes():
    rep = run(BadExpStrictBackend(k=4.0), EXP_CHECK)
    assert rep.ok, rep.format()
    assert max(r.ratio for r in rep.checks) < 0.5


# --------------------------------------------------------------------------------------------
# 3. A sampler step that drops its noise term at one step
# --------------------------------------------------------------------------------------------

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


def test_sampler_dropping_noise_at_one_step_fails():
    b = NumpyBackend(name="numpy_ddpm_drop",
                     overrides={SAMPLER_CHECK: _ddpm_dropping_noise_at_step_1,
                                QSAMPLE_CHECK: _q_sample_without_noise})
    rep = run(b, f"{SAMPLER_CHECK} or {QSAMPLE_CHECK}", n=10)
    assert not rep.ok
    bad = failed_checks(rep)
    assert {f"{SAMPLER_CHECK}[float64]", f"{SAMPLER_CHECK}[float32]",
            f"{QSAMPLE_CHECK}[float64]", f"{QSAMPLE_CHECK}[float32]"} <= bad, bad
    assert rep.backends["numpy_ddpm_drop"]["overrides"] == [QSAMPLE_CHECK, SAMPLER_CHECK]


# --------------------------------------------------------------------------------------------
# 4. Results left on the wrong device
# --------------------------------------------------------------------------------------------

def _tables_on_default_device(schedule, xp, *, device, dtype):
    """A table move that ignores device= (arrays land on the namespace's default device)."""
    return schedule.to(xp, dtype=dtype)


def _q_sample_result_on_cpu(schedule, x0, t, *, noise):
    """A fused q_sample that copies its result back to the default device."""
    import array_api_strict as xp

    from refdiff.diffusion import q_sample
    return q_sample(schedule, x0, t, noise=noise).to_device(xp.Device("CPU_DEVICE"))


def test_results_on_the_wrong_device_fail():
    b = StrictBackend(name="strict_wrong_device",
                      overrides={SCHEDULE_TO: _tables_on_default_device})
    rep = run(b, f"schedules.linear or {QSAMPLE_CHECK}", dtypes="float32")
    assert failed_checks(rep) == {"schedules.linear[float32]", f"{QSAMPLE_CHECK}[float32]"}
    msgs = " ".join(r.message for r in rep.failures())
    assert "is on device" in msgs and "results must stay on the input's device" in msgs
    assert "can not be combined" in msgs          # strict refuses to mix the two devices

    b2 = StrictBackend(name="strict_cpu_result", overrides={QSAMPLE_CHECK: _q_sample_result_on_cpu})
    rep2 = run(b2, QSAMPLE_CHECK, dtypes="float64")
    assert failed_checks(rep2) == {f"{QSAMPLE_CHECK}[float64]"}
    assert "CPU_DEVICE" in rep2.failures()[0].message


# --------------------------------------------------------------------------------------------
# The honest backends pass the same selections
# --------------------------------------------------------------------------------------------

ALL_PLANTED = f"{TABLE_CHECKS} or {EXP_CHECK} or {SAMPLER_CHECK} or {QSAMPLE_CHECK}"


@pytest.mark.parametrize("name", ["numpy", "array_api_strict",
                                  pytest.param("torch", marks=pytest.mark.skipif(
                                      not HAS_TORCH, reason="torch is not installed"))])
def test_honest_backends_pass_the_planted_selections(name):
    rep = run(name, ALL_PLANTED)
    assert rep.ok, rep.format()
    assert {r.check for r in rep.checks} == {"schedules.linear", "schedules.cosine", EXP_CHECK,
                                            SAMPLER_CHECK, QSAMPLE_CHECK}
    assert all(r.ratio is not None and r.ratio <= 1.0 for r in rep.checks)
