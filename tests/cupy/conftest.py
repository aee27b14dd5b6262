"""Every CuPy-path test runs with one BLAS and one torch thread (tiny matrices, 2 shared cores)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    from ..unet import single_thread_blas

    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    with single_thread_blas():
        yield
    if torch is not None:
        torch.set_num_threads(n)
