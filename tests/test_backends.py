"""The backend registry and protocol: lazy imports, resolution, errors, host copies, RNG, TF32."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import warnings

import numpy as np
import pytest

import refdiff.backends as B
from refdiff.backends import (
    Backend,
    BackendUnavailableError,
    UnknownBackendError,
    from_namespace,
    get_backend,
    list_backends,
    quantise,
)
from refdiff.backends import _registry

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


# --------------------------------------------------------------------------------------------
# Lazy imports
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stmt",
    [
        "import refdiff",
        "import refdiff.backends",
        "import refdiff.backends as b; b.list_backends(); b.get_backend('numpy'); "
        "b.get_backend('array_api_strict')",
        "import refdiff.conformance.plugin",
        "import refdiff.cli; refdiff.cli.build_parser()",
    ],
)
def test_imports_do_not_load_torch_or_cupy(stmt):
    code = (
        f"{stmt}; import sys; "
        "bad = [m for m in ('torch', 'cupy', 'jax', 'dask') if m in sys.modules]; "
        "assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_plugin_module_imports_only_pytest_and_stdlib():
    """Loaded into every pytest session of every project that installs refdiff: keep it cheap."""
    code = (
        "import sys, pytest, refdiff; before = set(sys.modules); "
        "import refdiff.conformance.plugin; "
        "new = {m for m in set(sys.modules) - before if not m.startswith('refdiff.conformance')}; "
        "bad = {m for m in new if m.split('.')[0] not in sys.stdlib_module_names}; "
        "assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------------------------
# Resolution and errors
# --------------------------------------------------------------------------------------------


def test_list_backends_has_builtins_with_hints():
    rows = {r.name: r for r in list_backends()}
    assert {"numpy", "array_api_strict", "torch", "cupy"} <= set(rows)
    assert rows["numpy"].available and rows["numpy"].source == "builtin"
    for r in rows.values():
        assert r.available or "pip install" in r.hint, r


def test_unknown_name_lists_available_backends():
    with pytest.raises(
        UnknownBackendError,
        match=r"backend='nope' is not a known backend; "
        r"available: 'numpy', 'array_api_strict'",
    ):
        get_backend("nope")
    assert issubclass(UnknownBackendError, KeyError) and issubclass(UnknownBackendError, ValueError)


def test_missing_library_gives_install_hint(monkeypatch):
    monkeypatch.setitem(
        _registry._BUILTINS,
        "fancy",
        _registry._Builtin("refdiff_no_such_lib", "x:y", "pip install fancy-lib"),
    )
    with pytest.raises(
        BackendUnavailableError,
        match=r"backend 'fancy' needs the 'refdiff_no_such_lib' package, which is "
        r"not installed: pip install fancy-lib",
    ):
        get_backend("fancy")
    row = {r.name: r for r in list_backends()}["fancy"]
    assert not row.available and row.hint == "pip install fancy-lib"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed")
def test_cupy_missing_says_how_to_install():
    with pytest.raises(BackendUnavailableError, match=r"pip install cupy-cuda12x"):
        get_backend("cupy")


@needs_torch
def test_cuda_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(
        BackendUnavailableError,
        match=r"device='cuda' was requested for backend 'torch' but no CUDA GPU "
        r"is available",
    ):
        get_backend("torch", device="cuda")
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        get_backend("torch@cuda:0")


def test_specs_aliases_and_devices():
    assert get_backend("strict@device2").device == __import__("array_api_strict").Device("device2")
    assert get_backend("np").name == "numpy"
    with pytest.raises(Exception, match=r"device='gpu7' is invalid: array_api_strict devices are"):
        get_backend("array_api_strict", device="gpu7")
    with pytest.raises(Exception, match=r"the numpy backend runs on the host only"):
        get_backend("numpy", device="cuda")


def test_import_string_and_register():
    b = get_backend("refdiff.backends.numpy:NumpyBackend")
    assert b.name == "numpy" and b.device == "cpu"
    with pytest.raises(
        UnknownBackendError,
        match=r"looks like an import string but could not "
        r"be loaded",
    ):
        get_backend("no_such_pkg.mod:factory")
    inst = from_namespace(np, name="mine")
    B.register_backend("mine", inst)
    try:
        assert get_backend("mine") is inst
        assert "mine" in {r.name for r in list_backends()}
    finally:
        B.unregister_backend("mine")
    with pytest.raises(Exception, match="without '@' or ','"):
        B.register_backend("a@b", inst)


def test_entry_points_are_found_and_broken_ones_warn(monkeypatch):
    good = importlib.metadata.EntryPoint(
        "epgood", "refdiff.backends.numpy:NumpyBackend", _registry.ENTRY_POINT_GROUP
    )
    broken = importlib.metadata.EntryPoint(
        "epbroken", "refdiff_no_such_mod:make", _registry.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(_registry, "_entry_points", lambda: (good, broken))
    assert {"epgood", "epbroken"} <= {r.name for r in list_backends()}
    assert isinstance(get_backend("epgood"), Backend)
    with pytest.warns(RuntimeWarning, match="entry point 'epbroken'"):
        with pytest.raises(BackendUnavailableError, match="failed to load"):
            get_backend("epbroken")


def test_factory_returning_a_namespace_is_wrapped():
    import array_api_strict

    B.register_backend("ns_factory", lambda device=None: array_api_strict)
    try:
        b = get_backend("ns_factory")
        assert b.xp is array_api_strict and b.name == "ns_factory"
    finally:
        B.unregister_backend("ns_factory")


# --------------------------------------------------------------------------------------------
# from_namespace and the protocol
# --------------------------------------------------------------------------------------------


def test_from_namespace_strict_keeps_device_and_dtypes():
    import array_api_strict as xp

    b = from_namespace(xp, name="strict1", device=xp.Device("device1"))
    assert b.float_dtypes == ("float64", "float32")
    host = quantise(np.linspace(-3, 3, 7), "float32")
    x = b.asarray(host, "float32")
    assert x.device == xp.Device("device1") and x.dtype == xp.float32
    np.testing.assert_array_equal(b.to_numpy(x), host)
    rng = b.make_rng(0)
    z = b.normal(rng, (4, 2), "float32")
    assert z.device == xp.Device("device1") and z.shape == (4, 2)
    nf = from_namespace(xp, name="nof64", device=xp.Device("no_float64"))
    assert nf.float_dtypes == ("float32",) and not nf.supports("float64")


def test_from_namespace_wraps_raw_modules():
    import array_api_compat.numpy as cnp

    assert from_namespace(np).xp is cnp


def _installed(name: str):
    """A parameter for builtin backend ``name``, skipped when its library is not installed."""
    missing = importlib.util.find_spec(name) is None
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{name} is not installed"))


#: The builtin backends whose float64 needs no switch (JAX's needs its 64-bit mode).
FLOAT64_BUILTINS = ["numpy", "array_api_strict", _installed("torch"), _installed("dask")]


@pytest.mark.parametrize("name", FLOAT64_BUILTINS)
def test_builtin_protocol(name):
    b = get_backend(name)
    for dt in ("float64", "float32"):
        host = quantise(np.random.default_rng(3).standard_normal(6), dt)
        x = b.asarray(host, dt)
        assert b.is_native(x) and b.device_of(x) == b.device and b.dtype_name(x.dtype) == dt
        np.testing.assert_array_equal(b.to_numpy(x).astype(np.float64), host)
        z1 = b.to_numpy(b.normal(b.make_rng(5), (100,), dt))
        z2 = b.to_numpy(b.normal(b.make_rng(5), (100,), dt))
        np.testing.assert_array_equal(z1, z2)
        assert 0.5 < z1.std() < 1.5
    assert b.has("erf") and b.has("erfc") and b.has("float64")
    d = b.describe()
    assert d["backend"] == name and d["refdiff"] and d["device"]
    b.synchronize()
    assert b.op("x", len) is len


@pytest.mark.parametrize("name", [*FLOAT64_BUILTINS, _installed("jax")])
def test_immutable_arrays_is_claimed_exactly_where_writes_are_impossible(name):
    """The suite stops watching inputs for in-place writes only where none can happen."""
    b = get_backend(name)
    x = b.asarray(np.zeros(3), "float32")
    try:
        x[0] = 1.0
    except TypeError:  # jax: "JAX arrays are immutable"
        writable = False
    else:
        writable = True
    assert b.immutable_arrays is not writable
    assert (name == "jax") is b.immutable_arrays


def test_overrides_take_precedence():
    b = from_namespace(np, name="ov", overrides={"diffusion.q_sample": max})
    assert b.op("diffusion.q_sample", min) is max and b.op("other", min) is min
    assert b.describe()["overrides"] == ["diffusion.q_sample"]


def test_strict_erf_is_scipys_on_the_same_device():
    import array_api_strict as xp
    from scipy.special import erf as sp_erf

    from refdiff import _xp

    b = get_backend("array_api_strict")
    host = np.linspace(-4, 4, 17)
    out = _xp.erf(b.asarray(host, "float64"))
    assert out.device == b.device
    np.testing.assert_array_equal(b.to_numpy(out), sp_erf(host))
    assert isinstance(out, xp._array_object.Array)


@needs_torch
def test_torch_checking_turns_tf32_off_and_restores():
    import torch

    from refdiff.backends.torch import _tf32_flags

    b = get_backend("torch")
    before = _tf32_flags(torch)
    with b.checking():
        inside = _tf32_flags(torch)
        assert all(v in ("ieee", False, "highest") for v in inside.values()), inside
    assert _tf32_flags(torch) == before
    assert "tf32" in b.describe()


@needs_torch
def test_quantise_matches_torch_rounding():
    import torch

    a = np.random.default_rng(11).standard_normal(2000) * np.exp(
        np.random.default_rng(12).uniform(-20, 20, 2000)
    )
    for name in ("bfloat16", "float16", "float32"):
        want = torch.tensor(a).to(getattr(torch, name)).double().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = quantise(a, name)
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize(
    "old,new",
    [
        ("torch_unet", "torch.unet"),
        ("torch_train", "torch.train"),
        ("torch_fast", "torch.fast"),
        ("cupy_unet", "cupy.unet"),
        ("cupy_train", "cupy.train"),
        ("_kernel_ref", "cupy._kernel_ref"),
    ],
)
def test_moved_backend_modules_import_from_their_old_paths_with_a_warning(old, new):
    import importlib
    import sys

    if old.startswith("torch"):
        pytest.importorskip("torch")
    sys.modules.pop(f"refdiff.backends.{old}", None)
    with pytest.warns(
        DeprecationWarning, match=rf"refdiff\.backends\.{old} moved to refdiff\.backends\.{new}"
    ):
        mod = importlib.import_module(f"refdiff.backends.{old}")
    assert mod is importlib.import_module(f"refdiff.backends.{new}")
