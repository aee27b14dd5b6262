"""CI runs the conformance suite on numpy, array_api_strict and torch (CPU), float64 and float32.

Each backend runs every check of the suite with the derandomized refdiff-ci profile at
``EXAMPLES`` examples per check (``refdiff verify`` uses the profile's 12); the expected failures
of refdiff's own open bugs are listed, with reasons, in ``conformance-xfails.txt`` (strict: a fixed
bug makes CI fail until its line is removed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import refdiff

EXAMPLES = 4
XFAILS = str(Path(__file__).with_name("conformance-xfails.txt"))


@pytest.mark.parametrize("backend", [
    "numpy", "array_api_strict",
    pytest.param("torch", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                   reason="torch is not installed")),
])
def test_conformance_suite_passes(backend):
    rep = refdiff.verify(backend=backend, dtypes="float64,float32", max_examples=EXAMPLES,
                         xfails=XFAILS)
    assert rep.ok, rep.format()
    assert rep.counts["passed"] > 250 and not rep.counts["skipped"], rep.counts
    assert {r.dtype for r in rep.checks} == {"float64", "float32"}
    assert all(r.ratio is None or r.ratio <= 1.0 for r in rep.checks if r.outcome == "passed")
