"""docs/CONFORMANCE.md, "Adding a backend": the JAX worked example runs as written and passes."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed"
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFORMANCE.md"
MODULE = "my_jax_backend"


def _example_source() -> str:
    """The python block of the "Adding a backend" section that starts with ``# my_jax_backend.py``."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Adding a backend\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    found = [b for b in blocks if b.startswith(f"# {MODULE}.py\n")]
    assert len(found) == 1, f"expected one '# {MODULE}.py' block in the section, found {len(found)}"
    return found[0]


@pytest.fixture
def example(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(_example_source(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(MODULE, None)
    yield
    sys.modules.pop(MODULE, None)


@pytest.mark.parametrize("factory", ["wrapped", "MyJax"])
def test_example_resolves_as_the_text_says(example, factory):
    import jax

    from refdiff.backends import get_backend

    b = get_backend(f"{MODULE}:{factory}")
    assert b.device == jax.devices()[0]
    x = b.asarray(np.array([1.5, -2.0]), "float32")
    assert b.is_native(x) and b.device_of(x) == b.device and b.dtype_name(x.dtype) == "float32"
    assert "float64" in b.float_dtypes or not jax.config.jax_enable_x64
    if factory == "wrapped":
        assert "freshly created array" in b.describe()["device_source"]
    else:
        rng = b.make_rng(0)
        a, c = (np.asarray(b.normal(rng, (4,), "float32")) for _ in range(2))
        assert not np.array_equal(a, c)  # a fresh key per draw
        np.testing.assert_array_equal(a, np.asarray(b.normal(b.make_rng(0), (4,), "float32")))


@pytest.mark.parametrize("factory", ["wrapped", "MyJax"])
def test_example_passes_conformance_checks(example, factory):
    """A slice of the suite (RNG, host copies, a gather, a sampler, erf) on float32."""
    import refdiff

    rep = refdiff.verify(
        backend=f"{MODULE}:{factory}",
        dtypes="float32",
        max_examples=3,
        extra_args=["-k", "backend. or diffusion.q_sample or kl.vb_terms_bpd or samplers.ddim"],
    )
    assert rep.ok, rep.format()
    assert rep.counts["passed"] >= 6, rep.counts
