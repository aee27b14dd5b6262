"""Every public array function of the covered reference modules has a conformance case.

A function added to a module's ``__all__`` without a case (``refdiff/conformance/case_*.py``)
fails here, unless it is listed in ``EXEMPT`` with the reason it cannot run on a backend. Every
registered sampler must have a case too (the samplers family does that automatically for the
known families; ``case_samplers.EXCLUDED`` lists the deliberate exceptions).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from refdiff.conformance.cases import all_cases, covered_names

MODULES = ("schedules", "diffusion", "parameterizations", "kl", "losses", "sde", "edm", "guidance")

#: Public callables that are host-only by design (no arrays of a backend go in or come out).
EXEMPT = {
    # registry and index bookkeeping on the host (integers and names, no arrays)
    "schedules.list_schedules",
    "schedules.register_schedule",
    # timestep index arithmetic: host integer arrays, checked exactly in tests/oracle
    "schedules.space_timesteps",
    "schedules.spaced_timesteps",
    # importance samplers of t: host NumPy state updated from host loss values
    "losses.UniformSampler",
    "losses.LossSecondMomentResampler",
    # validation / conversion of a host float guidance weight
    "guidance.check_scale",
    "guidance.cfg_weight",
    # validation of a prediction-type name (a string in, a string out)
    "parameterizations.prediction_type",
    # host floats in, host floats out (the DDPM loop's folded x̂0; runs on backends through the
    # samplers.ddpm case, and tests/oracle/test_gaussian.py checks it against x0_from_output_at)
    "parameterizations.x0_linear_coefficients",
}


def _public_callables(modname: str):
    mod = importlib.import_module(f"refdiff.{modname}")
    for name in getattr(mod, "__all__", ()):
        obj = getattr(mod, name)
        if callable(obj) and (inspect.isfunction(obj) or inspect.isclass(obj)):
            yield f"{modname}.{name}"


@pytest.mark.parametrize("modname", MODULES)
def test_every_public_function_has_a_case(modname):
    covered = covered_names()
    missing = [n for n in _public_callables(modname) if n not in covered and n not in EXEMPT]
    assert not missing, (
        f"no conformance case for {missing}: add one in "
        "refdiff/conformance/case_*.py, or list it in EXEMPT with the reason"
    )


def test_exemptions_are_real_and_needed():
    public = {n for m in MODULES for n in _public_callables(m)}
    assert EXEMPT <= public, EXEMPT - public
    assert not EXEMPT & covered_names()


def test_every_registered_sampler_has_a_case():
    from refdiff.conformance.case_samplers import EXCLUDED
    from refdiff.samplers import list_samplers

    names = set(all_cases())
    missing = [s for s in list_samplers() if f"samplers.{s}" not in names and s not in EXCLUDED]
    assert not missing, f"registered samplers without a conformance case: {missing}"


def test_a_newly_registered_sampler_is_checked_without_new_test_code():
    from refdiff.samplers import _REGISTRY, register_sampler
    from refdiff.samplers.discrete import ddim_sample, ddim_step

    def sample_coverage_probe(*args, **kwargs):
        return ddim_sample(*args, **kwargs)

    register_sampler("coverage_probe", family="discrete", stochastic=False, step=ddim_step)(
        sample_coverage_probe
    )
    try:
        assert "samplers.coverage_probe" in all_cases()
    finally:
        _REGISTRY.pop("coverage_probe", None)


def test_a_newly_registered_schedule_is_checked_without_new_test_code():
    from refdiff import schedules

    schedules.register_schedule("coverage_probe", schedules.linear)
    try:
        assert "schedules.coverage_probe" in all_cases()
    finally:
        schedules._REGISTRY.pop("coverage_probe", None)


#: Elementwise math functions of the array API standard (the ones whose edge values matter).
ELEMENTWISE_MATH = {
    "abs",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "cbrt",
    "ceil",
    "clip",
    "copysign",
    "cos",
    "cosh",
    "divide",
    "exp",
    "expm1",
    "floor",
    "floor_divide",
    "hypot",
    "isfinite",
    "isinf",
    "isnan",
    "log",
    "log1p",
    "log2",
    "log10",
    "logaddexp",
    "maximum",
    "minimum",
    "nextafter",
    "pow",
    "reciprocal",
    "remainder",
    "round",
    "sign",
    "signbit",
    "sin",
    "sinh",
    "sqrt",
    "square",
    "tan",
    "tanh",
    "trunc",
}


def _namespace_calls() -> set[str]:
    """Names ``xp.<name>(`` called anywhere in the reference's source."""
    import re
    from pathlib import Path

    import refdiff

    root = Path(refdiff.__file__).parent
    found: set[str] = set()
    for path in root.rglob("*.py"):
        found.update(re.findall(r"\bxp\.([a-z_0-9]+)\(", path.read_text(encoding="utf-8")))
    return found


def test_every_elementwise_function_the_reference_calls_has_edge_values():
    from refdiff.conformance.edges import FUNCTIONS

    used = _namespace_calls() & ELEMENTWISE_MATH
    missing = used - set(FUNCTIONS)
    assert not missing, (
        f"the reference calls xp.{', xp.'.join(sorted(missing))} but "
        "refdiff/conformance/edges.py has no edge values for them"
    )
    assert {"erf", "erfc"} <= set(FUNCTIONS)  # through refdiff._xp (not xp.)


def test_functions_listed_out_of_scope_are_never_called():
    from tests.test_sensitivity import NEVER_CALLED

    called = _namespace_calls() & NEVER_CALLED
    assert not called, f"listed out of scope as never called, but the reference calls {called}"
