"""The conformance suite: every registered case, on every requested backend and dtype.

Parametrized from the case registry (``refdiff.conformance.cases``): a newly registered case —
or a newly registered schedule or sampler, through the case families — is checked here with no
new test code. Run it with ``pytest --pyargs refdiff.conformance --refdiff-backend B``,
``refdiff verify --backend B`` or ``refdiff.verify(backend=B)``.
"""

from __future__ import annotations

import pytest

from refdiff.conformance.cases import case_names, get_case


@pytest.mark.parametrize("refdiff_case", case_names())
def test_case(refdiff_case, refdiff_check):
    """The backend computes the case's operation like the float64 oracle, within its tolerance."""
    refdiff_check.run(get_case(refdiff_case))
