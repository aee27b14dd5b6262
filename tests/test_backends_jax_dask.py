"""The JAX and Dask backends, default devices of wrapped namespaces, and lazy-shape gathers."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest

from refdiff import _xp
from refdiff.backends import _registry, from_namespace, get_backend, list_backends

HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_DASK = importlib.util.find_spec("dask") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
needs_dask = pytest.mark.skipif(not HAS_DASK, reason="dask is not installed")


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (JAX's 64-bit mode is process-wide) and return stdout."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_builtins_are_listed_without_importing_them():
    out = _run(
        "import sys, refdiff.backends as b; rows = {r.name: r for r in b.list_backends()}; "
        "print(sorted(rows)); print([m for m in ('jax', 'dask') if m in sys.modules])"
    )
    names, loaded = out.splitlines()
    assert "'jax'" in names and "'dask'" in names
    assert loaded == "[]"
    rows = {r.name: r for r in list_backends()}
    assert rows["jax"].available == HAS_JAX and rows["dask"].available == HAS_DASK
    hints = {n: b.hint for n, b in _registry._BUILTINS.items()}
    assert "refdiff[jax]" in hints["jax"] and "refdiff[dask]" in hints["dask"]


# --------------------------------------------------------------------------------------------
# from_namespace: the default device comes from the namespace
# --------------------------------------------------------------------------------------------


@needs_jax
def test_from_namespace_jax_finds_the_device_of_a_fresh_array():
    """JAX's inspection API answers default_device() with None; arrays land on jax.devices()[0]."""
    import jax
    import jax.numpy as jnp

    assert jnp.__array_namespace_info__().default_device() is None  # why the fallback exists
    b = from_namespace(jnp, name="jax")
    assert b.device == jax.devices()[0]
    assert b.device == b.device_of(b.asarray(np.zeros(3), "float32"))
    assert "freshly created array" in b.describe()["device_source"]


@needs_dask
def test_from_namespace_dask_uses_the_inspection_api():
    import array_api_compat.dask.array as dx

    b = from_namespace(dx)
    assert b.device == "cpu"
    assert b.describe()["device_source"] == "__array_namespace_info__().default_device()"


def test_from_namespace_given_device_is_reported_as_given():
    import array_api_strict as xs

    b = from_namespace(xs, device=xs.Device("device1"))
    assert b.describe()["device_source"] == "given"


# --------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------


@needs_jax
def test_jax_rng_is_a_fresh_subkey_per_draw():
    """Draw k of seed s is jax.random.normal(split(key_k)[1]) with key_0 = key(s), key_{k+1} =
    split(key_k)[0]: derived here from jax.random directly, not from the backend."""
    import jax

    b = get_backend("jax")
    rng = b.make_rng(11)
    first, second = (b.to_numpy(b.normal(rng, (5,), "float32")) for _ in range(2))
    key = jax.random.key(11)
    expect = []
    for _ in range(2):
        key, sub = jax.random.split(key)
        expect.append(np.asarray(jax.random.normal(sub, (5,), dtype="float32")))
    np.testing.assert_array_equal(first, expect[0])
    np.testing.assert_array_equal(second, expect[1])
    assert not np.array_equal(first, second)
    again = b.to_numpy(b.normal(b.make_rng(11), (5,), "float32"))
    np.testing.assert_array_equal(again, first)
    u = b.to_numpy(b.uniform(b.make_rng(3), (1000,), "float32"))
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 6 * math.sqrt(1 / 12 / 1000)


@needs_jax
def test_jax_without_x64_skips_float64_with_the_way_to_turn_it_on():
    out = _run(
        "import os; os.environ.pop('JAX_ENABLE_X64', None)\n"
        "from refdiff.backends import get_backend\n"
        "b = get_backend('jax'); print(b.float_dtypes); print(b.unsupported_reason('float64'))\n"
        "print(repr(b.unsupported_reason('float32'))); print(b.describe()['x64'])"
    )
    dtypes, reason, f32, x64 = out.splitlines()
    assert "float64" not in dtypes and "float32" in dtypes
    assert "64-bit mode" in reason and "x64=True" in reason and "JAX_ENABLE_X64=1" in reason
    assert "refdiff.backends.jax:with_x64" in reason
    assert f32 == "''" and x64 == "False"


@needs_jax
def test_jax_with_x64_checks_float64_and_erf_is_jax_scipy():
    out = _run(
        "import numpy as np, jax\n"
        "from refdiff.backends import get_backend\n"
        "from refdiff import _xp\n"
        "b = get_backend('refdiff.backends.jax:with_x64'); print(b.float_dtypes)\n"
        "x = b.asarray(np.array([-3.0, -0.5, 0.0, 1e-300, 2.0, 6.0]), 'float64')\n"
        "e, c = _xp.erf(x), _xp.erfc(x)\n"
        "print(type(e).__module__.split('.')[0], e.dtype, c.dtype, b.device_of(e) == b.device)\n"
        "print(','.join(repr(float(v)) for v in np.concatenate([b.to_numpy(e), b.to_numpy(c)])))"
    )
    dtypes, kinds, values = out.splitlines()
    assert "float64" in dtypes
    assert kinds == "jaxlib float64 float64 True"
    got = [float(v) for v in values.split(",")]
    import mpmath

    xs = [-3.0, -0.5, 0.0, 1e-300, 2.0, 6.0]
    want = [float(mpmath.erf(v)) for v in xs] + [float(mpmath.erfc(v)) for v in xs]
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


@needs_jax
def test_jax_devices_and_errors():
    import jax

    b = get_backend("jax@cpu")
    assert b.device == jax.devices("cpu")[0] and b.describe()["platform"] == "cpu"
    from refdiff.backends import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="cpu device"):
        get_backend("jax@cpu:7")
    with pytest.raises(ValueError, match="x64"):
        get_backend("jax").__class__(x64="yes")


# --------------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------------


@needs_dask
def test_dask_inputs_cross_a_chunk_boundary_and_stay_lazy():
    import dask.array as da

    b = get_backend("dask")
    x = b.asarray(np.arange(10.0).reshape(5, 2), "float32")
    assert isinstance(x, da.Array) and x.chunks == ((3, 2), (2,))
    e = _xp.erf(x)
    assert isinstance(e, da.Array) and e.dtype == np.float32
    from scipy import special

    np.testing.assert_array_equal(
        b.to_numpy(e), special.erf(np.arange(10.0, dtype=np.float32).reshape(5, 2))
    )
    r1, r2 = b.make_rng(5), b.make_rng(5)
    a, c = b.to_numpy(b.normal(r1, (4,), "float32")), b.to_numpy(b.normal(r1, (4,), "float32"))
    np.testing.assert_array_equal(a, b.to_numpy(b.normal(r2, (4,), "float32")))
    assert not np.array_equal(a, c) and a.dtype == np.float32


@needs_dask
def test_gather_at_a_zero_index_has_the_index_shape():
    """Dask names an array built from NumPy data after its content; the index array [0] and the
    chunk-offset array [0] Dask builds inside integer-array indexing then share a name and the
    result claims the table's shape (https://github.com/dask/dask/issues/6709). The backend's
    inputs get unique names, so gathers see the shape of t."""
    b = get_backend("dask")
    table = b.asarray(np.linspace(0.0, 1.0, 7), "float64")
    for tv in ([0], [0, 0], 0, [[0, 3]]):
        t = b.asarray(np.array(tv), "int64")
        g = _xp.gather(table, t, 3)
        want = np.linspace(0.0, 1.0, 7)[np.array(tv)]
        want = want.reshape(want.shape + (1,) * (3 - want.ndim))
        assert g.shape == want.shape
        np.testing.assert_array_equal(b.to_numpy(g), want)


@needs_dask
def test_gather_with_a_lazy_length_index():
    """t of unknown length (a boolean-masked Dask array: shape (nan,)) gathers and broadcasts."""
    import dask.array as da
    import array_api_compat.dask.array as dx

    table = dx.asarray(np.arange(10.0) ** 2)
    raw = da.from_array(np.array([0, 5, 7, 2, 9]), chunks=2)
    t = raw[raw > 1]
    assert math.isnan(t.shape[0])
    g = _xp.gather(table, t, 3)
    np.testing.assert_array_equal(g.compute(), np.array([25.0, 49.0, 4.0, 81.0])[:, None, None])


def test_gather_and_append_dims_on_known_shapes_are_unchanged():
    table = np.arange(6.0) * 10
    g0 = _xp.gather(table, np.array(2), 2)
    assert g0.shape == (1, 1) and float(g0[0, 0]) == 20.0
    np.testing.assert_array_equal(_xp.gather(table, np.array([[1, 2]]), 3), [[[10.0], [20.0]]])
    assert _xp.gather(table, np.array([1, 2, 3]), 4).shape == (3, 1, 1, 1)


# --------------------------------------------------------------------------------------------
# The conformance suite on both (CPU), as CI runs it
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("refdiff.backends.jax:with_x64", marks=needs_jax),
        pytest.param("dask", marks=needs_dask),
    ],
)
def test_conformance_suite_passes(backend):
    import refdiff

    rep = refdiff.verify(backend=backend, dtypes="float64,float32", max_examples=4)
    assert rep.ok, rep.format()
    assert rep.counts["passed"] > 250 and not rep.counts["skipped"], rep.counts


def test_spec_records_what_get_backend_was_given():
    """A reproduce line must name what resolves to the backend again, not its display name."""
    assert get_backend("numpy@cpu").spec == "numpy"
    b = get_backend("refdiff.backends.numpy:NumpyBackend")
    assert b.name == "numpy" and b.spec == "refdiff.backends.numpy:NumpyBackend"
    from refdiff.backends.numpy import NumpyBackend

    assert NumpyBackend().spec is None


@needs_jax
def test_jax_cpu_declares_the_upstream_log1p_inaccuracy():
    """The declared failure is real: float64 log1p on the CPU misses mpmath by far more than the
    suite's 8 eps near x = 1/sqrt(2) - 1 (checked here in a fresh 64-bit process)."""
    b = get_backend("jax@cpu")
    reason = b.known_failures["tables.log_one_minus_alphas_cumprod_log1p[float64]"]
    assert "jax-ml/jax/issues/39707" in reason
    out = _run(
        "import jax; jax.config.update('jax_enable_x64', True)\n"
        "import numpy as np, jax.numpy as jnp\n"
        "x = np.linspace(-0.45, -0.38, 2001)\n"
        "print(','.join(repr(float(v)) for v in np.asarray(jnp.log1p(x))))"
    )
    import mpmath

    x = np.linspace(-0.45, -0.38, 2001)
    got = np.array([float(v) for v in out.split(",")])
    exact = np.array([float(mpmath.log1p(mpmath.mpf(float(v)))) for v in x])
    ulps = np.abs(got - exact) / np.spacing(np.abs(exact))
    assert ulps.max() > 16, ulps.max()


@needs_jax
def test_jax_cpu_declares_the_sinh_inaccuracy_it_has():
    """The declared sinh failure is as stated: ~9 eps in float64 below |x| = 512, ~249 eps from
    there, ~12.6 eps in float32 from |x| = 32 (mpmath at 200 bits; a fresh 64-bit process)."""
    reason = get_backend("jax@cpu").known_failures["edges.sinh"]
    assert "249 eps" in reason and "12.6 eps" in reason
    # (dtype, |x| from, |x| to, the worst error in eps lies between these)
    bands = [("float64", 10.0, 511.0, 8, 10), ("float64", 512.0, 710.0, 200, 260),
             ("float32", 32.0, 89.0, 8, 14)]  # fmt: skip
    code = (
        "import jax; jax.config.update('jax_enable_x64', True)\n"
        "import numpy as np, jax.numpy as jnp\n"
        f"for dt, lo, hi in {[b[:3] for b in bands]!r}:\n"
        "    x = np.linspace(lo, hi, 401).astype(dt)\n"
        "    print(','.join(repr(float(v)) for v in np.asarray(jnp.sinh(jnp.asarray(x)))))"
    )
    import mpmath

    for (dt, lo, hi, least, most), line in zip(bands, _run(code).splitlines()):
        x = np.linspace(lo, hi, 401).astype(dt)
        got = [float(v) for v in line.split(",")]
        with mpmath.workprec(200):
            rel = [abs((g - mpmath.sinh(float(v))) / mpmath.sinh(float(v))) for g, v in zip(got, x)]
            worst = float(max(rel)) / float(np.finfo(dt).eps)
        assert least < worst < most, (dt, lo, hi, worst)


# --------------------------------------------------------------------------------------------
# A reproduce line printed for a backend given as "pkg.mod:factory" runs when pasted
# --------------------------------------------------------------------------------------------

_BROKEN = """
from refdiff.diffusion import q_sample


def _off(schedule, x0, t, *, noise):
    return q_sample(schedule, x0, t, noise=noise) * 1.001


def make(device=None):
    import numpy as np
    from refdiff.backends import from_namespace
    return from_namespace(np, name="broken", device=device,
                          overrides={"diffusion.q_sample": _off})


def make_jax(device=None):
    from refdiff.backends.jax import JaxBackend
    return JaxBackend(device, x64=True, overrides={"diffusion.q_sample": _off})
"""


def _refdiff_script() -> str:
    import shutil
    from pathlib import Path

    here = Path(sys.executable).with_name("refdiff")
    return str(here) if here.exists() else (shutil.which("refdiff") or "refdiff")


@pytest.mark.parametrize(
    "factory", ["make", pytest.param("make_jax", marks=[needs_jax, pytest.mark.slow])]
)
def test_reproduce_line_of_an_import_string_backend_runs_when_pasted(tmp_path, factory):
    import os
    import shlex

    (tmp_path / "broken_backend_mod.py").write_text(_BROKEN)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_ENABLE_X64")}
    script = _refdiff_script()
    first = subprocess.run(
        [
            script,
            "verify",
            "--backend",
            f"broken_backend_mod:{factory}",
            "--dtypes",
            "float64",
            "--max-examples",
            "3",
            "--no-shrink",
            "-k",
            "diffusion.q_sample",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert first.returncode == 1, first.stdout + first.stderr
    lines = [ln for ln in first.stdout.splitlines() if ln.startswith("reproduce: refdiff verify")]
    assert lines, first.stdout
    command = lines[0].removeprefix("reproduce: ").split("   (or:")[0]
    assert f"broken_backend_mod:{factory}" in command
    argv = shlex.split(command)
    again = subprocess.run(
        [script, *argv[1:]], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert again.returncode == 1, again.stdout + again.stderr
    assert "diffusion.q_sample[float64] FAIL" in again.stdout, again.stdout
    assert "mismatches the oracle" in again.stdout
