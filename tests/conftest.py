"""Session-wide test settings: one BLAS thread (the tests use tiny matmuls on a 2-core machine)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _single_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: tests only run slower without it
        yield
        return
    with threadpool_limits(1):
        yield
