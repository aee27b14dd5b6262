"""The generated CUDA sources of the CuPy UNet kernels, checked without a GPU.

Three levels: (1) text and launch checks without any compiler (constants, signatures, argument
marshalling, launch configurations); (2) the sources compiled by the host C++ compiler against
``backends/cupy/_emu.py``'s shim and run on the CPU — each kernel against the NumPy reference of
its semantics, and the whole UNet through them against the generic reference; (3) the sources
compiled by ``nvcc`` for sm_90 (no GPU needed), when the CUDA toolkit is installed.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from refdiff._errors import RefdiffValueError
from refdiff.backends.cupy import unet as CU
from refdiff.backends.cupy._kernel_ref import NumpyDevice
from refdiff.unet import dropout_masks, get_preset, loss_and_grad, random_params
from refdiff.unet import layers as L


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


# ----------------------------------------------------------------------------- source text
@pytest.mark.parametrize(
    "dtype,ctype,sfx", [("float32", "float", "f32"), ("float64", "double", "f64")]
)
def test_every_generator_names_its_kernel_and_types(dtype, ctype, sfx):
    for gen in CU.KERNELS.values():
        sp = gen(dtype)
        assert sp.name.endswith("_" + sfx) and sp.dtype == dtype
        assert f"typedef {ctype} T;" in sp.source
        assert f'extern "C" __global__ void {sp.name}({sp.signature()})' in sp.source
        assert sp.source.count("__global__") == 1
        assert ("__syncthreads()" in sp.source) == sp.syncs
        # the accumulator is float64 for every data type where there is one
        if "A " in sp.source:
            assert "typedef double A;" in sp.source


def test_tiling_constants_are_baked_into_the_source():
    sp = CU.pack_kernel("float32", tile=16, rows=4)
    assert "constexpr int TILE = 16;" in sp.source and "constexpr int ROWS = 4;" in sp.source
    assert "__shared__ T tile[TILE][TILE + 1];" in sp.source  # padded against bank conflicts
    assert sp.consts == {"TILE": 16, "ROWS": 4}
    gn = CU.gn_forward_kernel("float64", block=128)
    assert "constexpr int BLOCK = 128;" in gn.source and "__shared__ A red[BLOCK];" in gn.source
    assert "refdiff_exp(-refdiff_fabs(v))" in gn.source  # the overflow-free sigmoid
    assert "float refdiff_exp(float v) { return expf(v); }" in gn.source
    bw = CU.gn_backward_kernel("float32", block=64)
    assert "constexpr int BLOCK = 64;" in bw.source
    assert [n for _, n in bw.params] == [
        "gy",
        "x",
        "gamma",
        "beta",
        "gx",
        "dgamma_p",
        "dbeta_p",
        "C",
        "HW",
        "G",
        "eps",
        "silu",
    ]
    ad = CU.adam_ema_kernel("float32")
    assert "pi = pi - step_size * (mi / denom);" in ad.source
    assert "const T denom = refdiff_sqrt(vi) / bc2_sqrt + eps;" in ad.source


def test_generator_arguments_are_validated():
    with pytest.raises(RefdiffValueError, match="tile=24 is invalid: expected a power of two"):
        CU.pack_kernel("float32", tile=24)
    with pytest.raises(RefdiffValueError, match="rows=64 is invalid: must be at most tile=32"):
        CU.unpack_kernel("float32", rows=64)
    with pytest.raises(RefdiffValueError, match="block=100 is invalid: expected a power of two"):
        CU.gn_forward_kernel("float32", block=100)
    with pytest.raises(
        RefdiffValueError,
        match="dtype='float16' is invalid: the CuPy UNet kernels support float32 and float64",
    ):
        CU.sumsq_kernel("float16")


# ----------------------------------------------------------------------------- marshalling, launches
def test_marshal_args_checks_types_and_converts_scalars():
    sp = CU.unpack_kernel("float32")
    yw, out = np.zeros((10, 3), np.float32), np.zeros((1, 3, 2, 2), np.float32)
    vals = CU.marshal_args(
        sp, (yw, yw, out, 1, 3, 2, 2, 2, 2, 0), lambda a: isinstance(a, np.ndarray)
    )
    assert vals[0] is yw and all(type(v) is np.int32 for v in vals[3:])
    isarr = lambda a: isinstance(a, np.ndarray)  # noqa: E731
    with pytest.raises(
        RefdiffValueError,
        match="yw.dtype='float64' is invalid: kernel refdiff_unpack_f32 needs float32",
    ):
        CU.marshal_args(sp, (yw.astype(np.float64), yw, out, 1, 3, 2, 2, 2, 2, 0), isarr)
    with pytest.raises(RefdiffValueError, match="needs a C-contiguous array"):
        CU.marshal_args(sp, (yw[:, ::2], yw, out, 1, 3, 2, 2, 2, 2, 0), isarr)
    with pytest.raises(RefdiffValueError, match="takes 10 arguments"):
        CU.marshal_args(sp, (yw,), isarr)
    with pytest.raises(RefdiffValueError, match="takes a 32-bit int"):
        CU.marshal_args(sp, (yw, yw, out, 2**31, 3, 2, 2, 2, 2, 0), isarr)
    ad = CU.adam_ema_kernel("float64")
    p = np.zeros(4)
    sc = CU.adam_ema_scalars(
        np.float64,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        decoupled=False,
        step=1,
        ema_decay=0.9,
    )
    args = (
        p,
        p,
        p,
        p,
        p,
        p[:1],
        4,
        sc["decoupled"],
        sc["wd_mul"],
        sc["wd"],
        sc["b1"],
        sc["omb1"],
        sc["b2"],
        sc["omb2"],
        sc["step_size"],
        sc["bc2_sqrt"],
        sc["eps"],
        sc["use_ema"],
        sc["decay"],
        sc["omdecay"],
    )
    vals = CU.marshal_args(ad, args, isarr)
    assert type(vals[6]) is np.int64 and type(vals[8]) is np.float64


def test_adam_scalars_follow_refdiff_optim():
    sc = CU.adam_ema_scalars(
        np.float32,
        lr=2e-4,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.01,
        decoupled=True,
        step=3,
        ema_decay=0.9999,
    )
    assert sc["step_size"] == np.float32(2e-4 / (1 - 0.9**3))
    assert sc["bc2_sqrt"] == np.float32((1 - 0.999**3) ** 0.5)
    assert sc["wd_mul"] == np.float32(1 - 2e-4 * 0.01) and sc["decoupled"] == 1
    assert sc["omdecay"] == np.float32(1 - 0.9999) and sc["use_ema"] == 1
    assert all(type(sc[k]) is np.float32 for k in ("b1", "omb1", "eps", "decay"))
    assert (
        CU.adam_ema_scalars(
            np.float64,
            lr=1,
            betas=(0.5, 0.5),
            eps=1,
            weight_decay=0,
            decoupled=False,
            step=1,
            ema_decay=None,
        )["use_ema"]
        == 0
    )


class RecordingDevice(CU.KernelDevice):
    """A kernel device that records launches instead of running them."""

    xp = np

    def __init__(self):
        super().__init__("fp32")
        self.calls = []

    def launch(self, spec, grid, block, args):
        CU.marshal_args(spec, args, lambda a: isinstance(a, np.ndarray))
        self.calls.append((spec.name, tuple(grid), tuple(block)))

    def gemm(self, *args):
        pass


def test_launch_configurations():
    dev = RecordingDevice()
    geo = CU.conv_geometry((128, 128, 32, 32), (128, 128, 3, 3))
    xq = np.empty((geo.phases * geo.rows, 128), np.float32)
    dev.pack(
        np.empty((128, 128, 32, 32), np.float32), xq, 128, 128, 32, 32, 1, 1, 1, 1, geo.hq, geo.wq
    )
    assert dev.calls[-1] == ("refdiff_pack_f32", (2, 4, 128 * 34), (32, 8, 1))
    yw = np.empty((geo.m_eff, 128), np.float32)
    dev.unpack(yw, None, np.empty((128, 128, 32, 32), np.float32), 128, 128, 32, 32, geo.hq, geo.wq)
    assert dev.calls[-1] == ("refdiff_unpack_f32", (1, 4, 128 * 32), (32, 8, 1))
    x = np.empty((128, 256, 16, 16), np.float32)
    dev.gn_forward(x, np.ones(256, np.float32), np.zeros(256, np.float32), x, 32, 256, 1e-5, True)
    assert dev.calls[-1] == ("refdiff_gn_fwd_f32", (128 * 32, 1, 1), (256, 1, 1))
    a = np.empty(35_746_307, np.float32)
    dev.sumsq(a)
    assert dev.calls[-1] == ("refdiff_sumsq_f32", (1024, 1, 1), (256, 1, 1))
    with pytest.raises(RefdiffValueError, match="pack destination"):
        dev.pack(x, xq[:10], 128, 128, 32, 32, 1, 1, 1, 1, geo.hq, geo.wq)
    with pytest.raises(RefdiffValueError, match="unpack reads row"):
        dev.unpack(yw[:100], None, x, 128, 128, 32, 32, geo.hq, geo.wq)
    with pytest.raises(RefdiffValueError, match="exceeds CUDA's limit of 65535"):
        dev.unpack(yw, None, x, 4096, 128, 32, 32, geo.hq, geo.wq)


def test_cupy_device_without_cupy_says_how_to_install():
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed")
    from refdiff.backends import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="pip install cupy-cuda12x"):
        CU.make_ops("cupy")


# ----------------------------------------------------------------------------- CPU emulation
needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="needs a C++20 compiler to emulate the CUDA kernels",
)


@pytest.fixture(scope="module")
def emu():
    from refdiff.backends.cupy._emu import EmulatedDevice

    return EmulatedDevice("fp32")


@needs_cxx
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_layout_kernels_equal_their_numpy_semantics(emu, dtype):
    rng = np.random.default_rng(7)
    ref = NumpyDevice()
    for B, C, Hs, Ws, dil, pt, pl, s, Hq, Wq in [
        (2, 5, 4, 6, 1, 1, 1, 1, 6, 8),
        (2, 3, 5, 5, 1, 1, 1, 2, 4, 4),
        (1, 6, 3, 4, 2, 1, 1, 1, 7, 9),
        (3, 9, 4, 4, 1, 0, 0, 1, 6, 6),
    ]:
        src = rng.standard_normal((B, C, Hs, Ws)).astype(dtype)
        a = np.full((s * s * B * Hq * Wq, C), np.nan, dtype)
        b = np.full_like(a, np.nan)
        emu.pack(src, a, B, C, Hs, Ws, dil, pt, pl, s, Hq, Wq)
        ref.pack(src, b, B, C, Hs, Ws, dil, pt, pl, s, Hq, Wq)
        np.testing.assert_array_equal(a, b)  # every element written, identically
        Ho, Wo = Hq - 1, Wq - 2
        yw = rng.standard_normal((B * Hq * Wq, C)).astype(dtype)
        bias = rng.standard_normal(C).astype(dtype)
        for bb in (None, bias):
            o1 = np.full((B, C, Ho, Wo), np.nan, dtype)
            o2 = np.full_like(o1, np.nan)
            emu.unpack(yw, bb, o1, B, C, Ho, Wo, Hq, Wq)
            ref.unpack(yw, bb, o2, B, C, Ho, Wo, Hq, Wq)
            np.testing.assert_array_equal(o1, o2)


@needs_cxx
@pytest.mark.parametrize("dtype,ulps", [("float32", 8), ("float64", 8)])
@pytest.mark.parametrize("silu", [False, True])
def test_emulated_group_norm_kernels_match_their_numpy_semantics(emu, dtype, ulps, silu):
    rng = np.random.default_rng(8)
    ref = NumpyDevice()
    for shape, G in [((2, 8, 5, 5), 4), ((3, 12, 3, 2), 3), ((2, 4, 1, 1), 2)]:
        hw = shape[2] * shape[3]
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
        ga, be = (
            rng.standard_normal(shape[1]).astype(dtype),
            rng.standard_normal(shape[1]).astype(dtype),
        )
        g = rng.standard_normal(shape).astype(dtype)
        y1, y2 = np.empty_like(x), np.empty_like(x)
        emu.gn_forward(x, ga, be, y1, G, hw, 1e-5, silu)
        ref.gn_forward(x, ga, be, y2, G, hw, 1e-5, silu)
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(y1, y2, rtol=ulps * eps, atol=ulps * eps)
        outs = [
            [
                np.empty_like(x),
                np.empty((shape[0], shape[1]), dtype),
                np.empty((shape[0], shape[1]), dtype),
            ]
            for _ in range(2)
        ]
        emu.gn_backward(g, x, ga, be, *outs[0], G, hw, 1e-5, silu)
        ref.gn_backward(g, x, ga, be, *outs[1], G, hw, 1e-5, silu)
        for a, b in zip(*outs):
            np.testing.assert_allclose(a, b, rtol=64 * eps, atol=64 * eps * np.max(np.abs(b)))


@needs_cxx
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_adam_and_norm_kernels(emu, dtype):
    rng = np.random.default_rng(9)
    n = 37  # > block × grid: the grid-stride loop wraps
    arrs = [rng.standard_normal(n).astype(dtype) for _ in range(5)]
    arrs[3] = np.abs(arrs[3])  # second moments are non-negative
    a1 = [a.copy() for a in arrs]
    a2 = [a.copy() for a in arrs]
    coef = np.array([0.7], dtype)
    for decoupled, wd in ((False, 0.0), (False, 0.1), (True, 0.1)):
        sc = CU.adam_ema_scalars(
            dtype,
            lr=1e-2,
            betas=(0.9, 0.99),
            eps=1e-8,
            weight_decay=wd,
            decoupled=decoupled,
            step=2,
            ema_decay=0.99,
        )
        emu.adam_ema(a1[0], a1[1], a1[2], a1[3], a1[4], coef, sc)
        NumpyDevice().adam_ema(a2[0], a2[1], a2[2], a2[3], a2[4], coef, sc)
        for u, v in zip(a1, a2):
            np.testing.assert_array_equal(u, v)
    s = emu.sumsq(arrs[1])
    assert abs(float(s) - float(np.sum(arrs[1].astype(np.float64) ** 2))) < 1e-12 * float(s)


@needs_cxx
def test_whole_unet_through_the_emulated_kernels(emu):
    """Forward and every gradient of the tiny UNet, with all six overrides running the CUDA sources."""
    cfg = get_preset("tiny")
    p = random_params(cfg, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, cfg.in_channels, cfg.image_size, cfg.image_size))
    t, eps = np.array([1, 500]), rng.standard_normal(x.shape)
    masks = dropout_masks(cfg, 2, 6)
    l0, g0 = loss_and_grad(p, cfg, x, t, eps, dropout_masks=masks, train=True)
    before = dict(emu.launches)
    l1, g1 = loss_and_grad(p, cfg, x, t, eps, dropout_masks=masks, train=True, ops=CU.make_ops(emu))
    ran = {k for k, v in emu.launches.items() if v > before.get(k, 0)}
    assert {
        "refdiff_pack_f64",
        "refdiff_unpack_f64",
        "refdiff_gn_fwd_f64",
        "refdiff_gn_bwd_f64",
    } <= ran
    assert abs(float(l1) - float(l0)) <= 1e-13 * abs(float(l0))
    for k in g0:
        assert _rel(g1[k], g0[k]) < 1e-11, k


@needs_cxx
def test_emulated_conv_float32_with_tf32_rounding(emu):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = (rng.standard_normal((8, 8, 3, 3)) / 8).astype(np.float32)
    y = CU.conv2d(emu, x, w, stride=2)
    assert _rel(y, L.conv2d(x.astype(np.float64), w.astype(np.float64), stride=2)) < 1e-5


# ----------------------------------------------------------------------------- nvcc
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs the CUDA toolkit's nvcc")
def test_sources_compile_for_sm90_with_nvcc():
    from refdiff.backends.cupy._emu import nvcc_compile

    specs = [gen(dt) for gen in CU.KERNELS.values() for dt in ("float32", "float64")]
    ptx = nvcc_compile(specs, arch="sm_90")
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == {sp.name for sp in specs}
    # the float32 kernels do their elementwise arithmetic in single precision
    assert "fma.rn.f32" in ptx or "mul.f32" in ptx or "mul.rn.f32" in ptx


# ----------------------------------------------------------------------------- CupyDevice glue
class _FakeCublas:
    """cuBLAS gemmEx on raw host addresses (column-major, via the NumPy emulation)."""

    PRECISION = {68: "fp32", 77: "tf32", 75: "bf16", 74: "fp16", 70: "fp32"}

    def __init__(self):
        self.mode = 1  # start in device pointer mode: the caller must switch
        self.computes = []

    def getPointerMode(self, handle):  # noqa: N802 - cuBLAS names
        return self.mode

    def setPointerMode(self, handle, mode):  # noqa: N802
        self.mode = mode

    def gemmEx(
        self,
        handle,
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        A,
        atype,
        lda,
        B,
        btype,
        ldb,  # noqa: N802
        beta,
        C,
        ctype,
        ldc,
        compute,
        algo,
    ):
        import ctypes

        from refdiff.backends.cupy._kernel_ref import cublas_gemm

        assert self.mode == 0 and handle == 7 and atype == btype == ctype and algo == -1
        ct = {0: ctypes.c_float, 1: ctypes.c_double}[atype]
        assert (compute == 70) == (atype == 1)

        def view(ptr, ext):
            return np.ctypeslib.as_array((ct * max(ext, 1)).from_address(ptr))

        Av = view(A, CU.gemm_operand_extent(transa, m, k, lda))
        Bv = view(B, CU.gemm_operand_extent(transb, k, n, ldb))
        Cv = view(C, CU.gemm_operand_extent(0, m, n, ldc))
        cublas_gemm(
            transa,
            transb,
            m,
            n,
            k,
            ct.from_address(alpha).value,
            Av,
            0,
            lda,
            Bv,
            0,
            ldb,
            ct.from_address(beta).value,
            Cv,
            0,
            ldc,
            precision=self.PRECISION[compute],
        )
        self.computes.append(compute)


class _FakeCupy:
    """NumPy plus a RawKernel that runs the CUDA source in the CPU emulator and a fake cuBLAS."""

    ndarray = np.ndarray

    def __init__(self, lib, specs):
        from types import SimpleNamespace

        from refdiff.backends.cupy._emu import run_kernel

        self.cublas = _FakeCublas()
        self.cuda = SimpleNamespace(
            cublas=self.cublas, device=SimpleNamespace(get_cublas_handle=lambda: 7)
        )
        self.compiled = []

        fake = self

        class RawKernel:
            def __init__(self, source, name, options=()):
                assert source == specs[name].source and "--std=c++14" in options
                self.spec = specs[name]
                fake.compiled.append(name)

            def __call__(self, grid, block, args):
                assert all(isinstance(v, (np.ndarray, np.generic)) for v in args)
                run_kernel(lib, self.spec, grid, block, args)

        self.RawKernel = RawKernel

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture(scope="module")
def fake_cupy():
    from refdiff.backends.cupy._emu import build

    specs = {
        sp.name: sp
        for sp in (gen(dt) for gen in CU.KERNELS.values() for dt in ("float32", "float64"))
    }
    return lambda: _FakeCupy(build(specs.values()), specs)


@needs_cxx
def test_cupy_device_glue_with_gpu_tiling_on_a_fake_cupy(fake_cupy, monkeypatch):
    """CupyDevice itself — RawKernel creation and caching, launch tuples with the GPU tile sizes,
    gemmEx pointer arithmetic on views, host pointer mode set and restored, compute types — with
    the sources run by the emulator and cuBLAS emulated on raw addresses."""
    monkeypatch.setattr(CU, "_ptr", lambda a: a.ctypes.data)
    fake = fake_cupy()
    dev = CU.CupyDevice("tf32", module=fake)
    ops = CU.make_ops(dev)
    rng = np.random.default_rng(6)
    for B, C, O, H, k, s, p in [
        (2, 5, 7, 6, 3, 1, 1),
        (1, 4, 6, 7, 3, 2, 1),
        (2, 6, 3, 4, 1, 1, 0),
    ]:
        x, w, b = (
            rng.standard_normal((B, C, H, H)),
            rng.standard_normal((O, C, k, k)),
            rng.standard_normal(O),
        )
        y = ops["conv2d"](x, w, b, stride=s, padding=p)
        assert _rel(y, L.conv2d(x, w, b, stride=s, padding=p)) < 1e-13
        g = rng.standard_normal(y.shape)
        for got, ref in zip(
            ops["conv2d_backward"](g, x, w, stride=s, padding=p),
            L.conv2d_backward(g, x, w, stride=s, padding=p),
        ):
            assert _rel(got, ref) < 1e-13
    x, ga, be = rng.standard_normal((2, 8, 3, 3)), rng.standard_normal(8), rng.standard_normal(8)
    g = rng.standard_normal(x.shape)
    assert (
        _rel(ops["group_norm_silu"](x, ga, be, groups=4), L.group_norm_silu(x, ga, be, groups=4))
        < 1e-13
    )
    for got, ref in zip(
        ops["group_norm_silu_backward"](g, x, ga, be, groups=4),
        L.group_norm_silu_backward(g, x, ga, be, groups=4),
    ):
        assert _rel(got, ref) < 1e-12
    assert set(fake.cublas.computes) == {70} and fake.cublas.mode == 1
    assert len(set(fake.compiled)) == len(fake.compiled)  # each kernel compiled once
    # float32 at TF32: compute type 77 and a TF32-sized error
    x32 = rng.standard_normal((1, 16, 6, 6)).astype(np.float32)
    w32 = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    err = _rel(ops["conv2d"](x32, w32), L.conv2d(x32.astype(np.float64), w32.astype(np.float64)))
    assert 3e-5 < err < 3e-3 and fake.cublas.computes[-1] == 77 and fake.cublas.mode == 1
    # the optimizer and norm kernels through the same glue
    arrs = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    arrs[3] = np.abs(arrs[3])
    ref = [a.copy() for a in arrs]
    sc = CU.adam_ema_scalars(
        np.float32,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        decoupled=False,
        step=1,
        ema_decay=0.99,
    )
    dev.adam_ema(*arrs, np.ones(1, np.float32), sc)
    NumpyDevice().adam_ema(*ref, np.ones(1, np.float32), sc)
    for a, b in zip(arrs, ref):
        np.testing.assert_array_equal(a, b)
    assert abs(float(dev.sumsq(arrs[1])) - float(np.sum(arrs[1].astype(np.float64) ** 2))) < 1e-9
