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

MODULES = ("schedules", "diffusion", "parameterizations", "kl", "losses", "sde", "edm",
           "guidance")

#: Public callables that are host-only by design (no arrays of a backend go in or come out).
EXEMPT = {
    # registry and index bookkeeping on the host (integers and names, no arrays)
    "schedules.list_schedules", "schedules.register_schedule",
    # timestep index arithmetic: host integer arrays, checked exactly in tests/oracle
    "schedules.space_timesteps", "schedules.spaced_timesteps",
    # importance samplers of t: host NumPy state updated from host loss values
    "losses.UniformSampler", "losses.LossSecondMomentResampler",
    # validation / conversion of a host float guidance weight
    "guidance.check_scale", "guidance.cfg_weight",
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
    assert not missing, (f"no conformance case for {missing}: add one in "
                         "refdiff/conformance/case_*.py, or list it in EXEMPT with the reason")


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

    register_sampler("coverage_probe", family="discrete", stochastic=False,
                     step=ddim_step)(ddim_sample)
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
