"""The algorithms of the CuPy UNet kernels, run on the CPU with their NumPy reference device.

``backends/cupy/unet.py`` orchestrates the shifted-GEMM convolution and the fused normalisation
against a device object; here that device is ``backends/cupy/_kernel_ref.NumpyDevice`` (column-major
cuBLAS emulated on flat buffers with cuBLAS's argument rules and bounds checks). Everything is
compared with the generic array-API layers of ``refdiff.unet`` (im2col convolution, unfused
GroupNorm/SiLU) and the optimiser functions of ``refdiff.unet.optim`` — an independent
formulation of the same mathematics.
"""

from __future__ import annotations


import numpy as np
import pytest

from refdiff._errors import RefdiffShapeError, RefdiffValueError
from refdiff.backends.cupy import unet as CU
from refdiff.backends._base import quantise
from refdiff.backends.cupy._kernel_ref import NumpyDevice, cublas_gemm, round_operand
from refdiff.unet import (
    adam_step,
    adamw_step,
    clip_grad_norm,
    dropout_masks,
    ema_update,
    get_preset,
    loss_and_grad,
    random_params,
)
from refdiff.unet import layers as L


# (batch, cin, cout, h, w, k, stride, padding): every layer kind of the UNet and odd corners
GEOMETRIES = [
    (2, 3, 5, 8, 8, 3, 1, 1),  # conv 3x3 "same"
    (2, 4, 6, 8, 8, 3, 2, 1),  # strided downsample conv
    (2, 4, 6, 7, 9, 3, 2, 1),  # odd sizes with stride 2 (bottom/right remainders)
    (2, 4, 6, 8, 8, 1, 1, 0),  # 1x1 skip conv
    (1, 3, 2, 6, 5, 3, 1, 0),  # "valid" padding (no reuse of the packed gradient)
    (2, 3, 4, 9, 7, 3, 2, 2),  # padding 2 with stride 2
    (1, 2, 3, 5, 5, 3, 3, 1),  # stride 3: nine phase planes
    (1, 2, 2, 6, 6, 5, 1, 2),  # 5x5 kernel
]


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("geo", GEOMETRIES)
def test_every_valid_output_row_is_computed_and_reads_stay_in_its_sample(geo):
    B, C, O, H, W, k, s, p = geo
    g = CU.conv_geometry((B, C, H, W), (O, C, k, k), stride=s, padding=p)
    assert (g.ho, g.wo) == ((H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
    for b in range(B):
        for y in range(g.ho):
            for x in range(g.wo):
                row = b * g.hq * g.wq + y * g.wq + x
                assert row < g.m_eff
                for i, j, ph, off in g.taps():
                    # the tap reads padded pixel (y*s + i, x*s + j) of sample b in its phase plane
                    yy, xx = y * s + i, x * s + j
                    assert ph == (yy % s) * s + xx % s
                    assert row + off == b * g.hq * g.wq + (yy // s) * g.wq + xx // s
                    assert yy // s < g.hq and xx // s < g.wq
    # the input-gradient plane: output (y, x) reads rows y..y+k-1 of the same sample
    for y in range(H):
        assert y + k - 1 < g.hq2
    assert g.m_eff2 == g.rows2 - ((k - 1) * g.wq2 + k - 1)
    assert g.reuse_wide_grad == (s == 1 and 2 * p == k - 1)


def test_geometry_errors_name_the_argument():
    with pytest.raises(RefdiffShapeError, match="x of shape .* NCHW"):
        CU.conv_geometry((2, 3, 8), (4, 3, 3, 3))
    with pytest.raises(RefdiffShapeError, match="w has 2 input channels"):
        CU.conv_geometry((2, 3, 8, 8), (4, 2, 3, 3))
    with pytest.raises(
        RefdiffValueError, match="padding=3 is invalid: must be at most kernel size - 1 = 2"
    ):
        CU.conv_geometry((2, 3, 8, 8), (4, 3, 3, 3), padding=3)
    with pytest.raises(RefdiffValueError, match="stride=0 is invalid"):
        CU.conv_geometry((2, 3, 8, 8), (4, 3, 3, 3), stride=0)
    with pytest.raises(RefdiffShapeError, match="too small"):
        CU.conv_geometry((1, 1, 2, 2), (1, 1, 5, 5), padding=0)


# ----------------------------------------------------------------------------- cuBLAS emulation
@pytest.mark.parametrize("ta", [0, 1])
@pytest.mark.parametrize("tb", [0, 1])
def test_emulated_gemm_is_column_major_cublas(ta, tb):
    """Element (i, j) of a stored matrix sits at off + i + j·ld; op = transpose when the flag is 1."""
    rng = np.random.default_rng(ta * 2 + tb)
    m, n, k, lda, ldb, ldc = 4, 3, 5, 7, 8, 6
    a_off, b_off, c_off = 3, 2, 5
    A = rng.standard_normal(100)
    Bm = rng.standard_normal(100)
    Cm = rng.standard_normal(60)
    C0 = Cm.copy()

    def stored(buf, off, rows, cols, ld):
        return np.array([[buf[off + i + j * ld] for j in range(cols)] for i in range(rows)])

    opa = stored(A, a_off, m, k, lda) if ta == 0 else stored(A, a_off, k, m, lda).T
    opb = stored(Bm, b_off, k, n, ldb) if tb == 0 else stored(Bm, b_off, n, k, ldb).T
    cublas_gemm(ta, tb, m, n, k, 1.0, A, a_off, lda, Bm, b_off, ldb, 0.5, Cm, c_off, ldc)
    expect = opa @ opb + 0.5 * stored(C0, c_off, m, n, ldc)
    np.testing.assert_allclose(stored(Cm, c_off, m, n, ldc), expect, rtol=1e-14, atol=1e-14)
    # nothing outside the C view changed
    mask = np.ones(60, bool)
    for i in range(m):
        for j in range(n):
            mask[c_off + i + j * ldc] = False
    np.testing.assert_array_equal(Cm[mask], C0[mask])


def test_emulated_gemm_enforces_cublas_rules_and_bounds():
    A, B, C = np.zeros(20), np.zeros(20), np.zeros(20)
    with pytest.raises(RefdiffValueError, match="lda=2 is invalid: must be at least max.1, 3."):
        cublas_gemm(0, 0, 3, 2, 2, 1.0, A, 0, 2, B, 0, 2, 0.0, C, 0, 3)
    with pytest.raises(RefdiffValueError, match="ldc=1 is invalid"):
        cublas_gemm(0, 0, 3, 2, 2, 1.0, A, 0, 3, B, 0, 2, 0.0, C, 0, 1)
    with pytest.raises(
        RefdiffValueError, match="operand A spans elements \\[15, 21\\) of a buffer of 20"
    ):
        cublas_gemm(0, 0, 3, 2, 2, 1.0, A, 15, 3, B, 0, 2, 0.0, C, 0, 3)
    with pytest.raises(RefdiffValueError, match="operand C"):
        cublas_gemm(0, 0, 3, 2, 2, 1.0, A, 0, 3, B, 0, 2, 0.0, C, 18, 3)


def test_row_major_wrapper_matches_numpy():
    rng = np.random.default_rng(5)
    dev = NumpyDevice()
    for ta in (False, True):
        for tb in (False, True):
            M, N, K = 5, 4, 3
            A = rng.standard_normal((K, M) if ta else (M, K))
            Bm = rng.standard_normal((N, K) if tb else (K, N))
            Abuf = np.concatenate([np.zeros(7), A.reshape(-1)])  # offset 7 into a buffer
            Cbuf = np.full(2 + M * N, np.nan)
            CU.gemm_rm(
                dev, ta, tb, M, N, K, Abuf, 7, A.shape[1], Bm, 0, Bm.shape[1], Cbuf, 2, N, 0.0
            )  # beta 0: NaN in C ignored
            expect = (A.T if ta else A) @ (Bm.T if tb else Bm)
            np.testing.assert_allclose(Cbuf[2:].reshape(M, N), expect, rtol=1e-14)


def test_operand_rounding_of_the_tensor_core_precisions():
    one = np.float32(1.0)
    ulp10, ulp7 = 2.0**-10, 2.0**-7
    x = np.array(
        [1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, -(1 + 3 * 2**-11), 3.0e38, np.inf, np.nan],
        dtype=np.float32,
    )
    tf = round_operand(x, "tf32")
    # ties to even: 1 + half an ulp -> 1; 1 + 1.5 ulp -> 1 + 2 ulp; below half -> 1
    np.testing.assert_array_equal(
        tf[:4], np.array([one, 1 + 2 * ulp10, one, -(1 + 2 * ulp10)], dtype=np.float32)
    )
    assert np.isinf(tf[5]) and np.isnan(tf[6])
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(1000) * 10.0 ** rng.integers(-20, 20, 1000)).astype(np.float32)
    np.testing.assert_array_equal(
        round_operand(y, "bf16"), quantise(y, "bfloat16").astype(np.float32)
    )
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(
            round_operand(y, "fp16"), y.astype(np.float16).astype(np.float32)
        )
    t = round_operand(y, "tf32")
    assert np.all(np.abs(t - y) <= np.abs(y) * 2.0**-11 * (1 + 1e-6))
    assert np.all(t.view(np.uint32) & np.uint32((1 << 13) - 1) == 0)
    assert np.all(np.abs(round_operand(y, "bf16") - y) <= np.abs(y) * ulp7 / 2 * (1 + 1e-6))
    np.testing.assert_array_equal(round_operand(y, "fp32"), y)
    np.testing.assert_array_equal(round_operand(y.astype(np.float64), "tf32"), y.astype(np.float64))


# ----------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("geo", GEOMETRIES)
def test_shifted_gemm_convolution_matches_im2col_in_float64(geo):
    B, C, O, H, W, k, s, p = geo
    rng = np.random.default_rng(sum(geo))
    x = rng.standard_normal((B, C, H, W))
    w = rng.standard_normal((O, C, k, k))
    b = rng.standard_normal(O)
    dev = NumpyDevice()
    y = CU.conv2d(dev, x, w, b, stride=s, padding=p)
    y_ref = L.conv2d(x, w, b, stride=s, padding=p)
    assert y.shape == y_ref.shape and y.dtype == np.float64
    assert _rel(y, y_ref) < 1e-13
    g = rng.standard_normal(y.shape)
    for got, ref in zip(
        CU.conv2d_backward(dev, g, x, w, stride=s, padding=p),
        L.conv2d_backward(g, x, w, stride=s, padding=p),
    ):
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-13


def test_convolution_of_non_contiguous_input_and_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)[:, ::2]  # channel-strided view
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    dev = NumpyDevice("fp32")
    y = CU.conv2d(dev, x, w)
    assert y.dtype == np.float32
    y64 = L.conv2d(x.astype(np.float64), w.astype(np.float64))
    assert _rel(y, y64) < 1e-5
    with pytest.raises(RefdiffValueError, match="one floating dtype"):
        CU.conv2d(dev, x, w.astype(np.float64))


@pytest.mark.parametrize(
    "precision,lo,hi", [("tf32", 3e-5, 3e-3), ("bf16", 3e-4, 2e-2), ("fp16", 3e-5, 3e-3)]
)
def test_tensor_core_precisions_stay_within_their_accuracy_budget(precision, lo, hi):
    """Relative error of a 3x3 conv vs float64: above the float32 level (rounding happened), below the budget."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    ref = L.conv2d(x.astype(np.float64), w.astype(np.float64))
    e32 = _rel(CU.conv2d(NumpyDevice("fp32"), x, w), ref)
    err = _rel(CU.conv2d(NumpyDevice(precision), x, w), ref)
    assert e32 < 1e-5
    assert lo < err < hi


# ----------------------------------------------------------------------------- GroupNorm (+ SiLU)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 3e-6)])
@pytest.mark.parametrize(
    "shape,groups", [((2, 8, 4, 4), 4), ((3, 12, 5, 3), 3), ((2, 6), 2), ((1, 4, 1, 1), 4)]
)
def test_fused_group_norm_matches_the_generic_layers(dtype, tol, shape, groups):
    rng = np.random.default_rng(len(shape) + groups)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    ops = CU.make_ops("numpy")
    x64, ga64, be64, g64 = (a.astype(np.float64) for a in (x, gamma, beta, g))
    y = ops["group_norm_silu"](x, gamma, beta, groups=groups)
    assert y.dtype == dtype
    assert _rel(y, L.group_norm_silu(x64, ga64, be64, groups=groups)) < tol
    assert (
        _rel(
            ops["group_norm"](x, gamma, beta, groups=groups),
            L.group_norm(x64, ga64, be64, groups=groups),
        )
        < tol
    )
    for got, ref in zip(
        ops["group_norm_silu_backward"](g, x, gamma, beta, groups=groups),
        L.group_norm_silu_backward(g64, x64, ga64, be64, groups=groups),
    ):
        assert got.dtype == dtype and _rel(got, ref) < tol * 10
    for got, ref in zip(
        ops["group_norm_backward"](g, x, gamma, groups=groups),
        L.group_norm_backward(g64, x64, ga64, groups=groups),
    ):
        assert _rel(got, ref) < tol * 10


def test_group_norm_errors():
    ops = CU.make_ops("numpy")
    x = np.zeros((2, 6, 2, 2))
    with pytest.raises(RefdiffValueError, match="groups=4 is invalid: must divide the 6 channels"):
        ops["group_norm"](x, np.ones(6), np.zeros(6), groups=4)
    with pytest.raises(RefdiffShapeError, match="gamma has shape .5,."):
        ops["group_norm"](x, np.ones(5), np.zeros(5), groups=3)
    with pytest.raises(
        RefdiffValueError, match="only='conv3d' is invalid: expected names from conv2d"
    ):
        CU.make_ops("numpy", only=["conv3d"])


# ----------------------------------------------------------------------------- optimizer
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "decoupled,wd,clip", [(False, 0.0, None), (False, 0.01, 0.5), (True, 0.05, 1e3)]
)
def test_fused_adam_ema_equals_refdiff_optim_bit_for_bit(dtype, decoupled, wd, clip):
    """Two steps of the fused update over a flat arena == adam(w)_step + ema_update (+ clip_grad_norm)."""
    rng = np.random.default_rng(int(decoupled) + int(wd * 100))
    shapes = {"a": (3, 4), "b": (5,), "c": (2, 2, 2)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    ema = {k: v + dtype(0.1) for k, v in params.items()}
    flat = lambda d: np.concatenate([d[k].reshape(-1) for k in shapes])  # noqa: E731
    fp, fe = flat(params), flat(ema)
    fm, fv = np.zeros_like(fp), np.zeros_like(fp)
    state = None
    dev = NumpyDevice()
    step_fn = adamw_step if decoupled else adam_step
    for step in (1, 2):
        grads = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        fg = flat(grads)
        if clip is not None:
            grads, total = clip_grad_norm(grads, clip)
            c = clip / (total + 1e-6)  # clip_grad_norm's own coefficient
            coef = np.asarray(np.where(c < 1.0, c, 1.0), dtype=dtype).reshape(1)
            # the trainer's coefficient comes from the float64 sum of squares of the flat grads
            c64 = clip / (np.sqrt(dev.sumsq(fg)) + 1e-6)
            assert abs(float(c64) - float(c)) <= 1e-5 * float(c)
        else:
            coef = np.ones(1, dtype=dtype)
        params, state = step_fn(
            params, grads, state, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd
        )
        ema = ema_update(ema, params, 0.999)
        sc = CU.adam_ema_scalars(
            dtype,
            lr=1e-3,
            betas=(0.9, 0.99),
            eps=1e-8,
            weight_decay=wd,
            decoupled=decoupled,
            step=step,
            ema_decay=0.999,
        )
        dev.adam_ema(fp, fg, fm, fv, fe, coef, sc)
        np.testing.assert_array_equal(fp, flat(params))
        np.testing.assert_array_equal(fm, flat(state["m"]))
        np.testing.assert_array_equal(fv, flat(state["v"]))
        np.testing.assert_array_equal(fe, flat(ema))


def test_sum_of_squares_in_float64():
    a = np.full(1000, 0.1, dtype=np.float32)
    s = NumpyDevice().sumsq(a)
    assert s.dtype == np.float64 and s.shape == ()
    assert abs(float(s) - 1000 * float(np.float32(0.1)) ** 2) < 1e-9


# ----------------------------------------------------------------------------- the whole UNet
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {
            "use_scale_shift_norm": True,
            "resblock_updown": True,
            "num_classes": 3,
            "num_heads": 2,
            "learn_sigma": True,
            "dropout": 0.0,
        },
    ],
)
def test_whole_unet_with_the_overrides_matches_the_generic_reference(variant):
    cfg = get_preset("tiny", **variant)
    p = random_params(cfg, seed=1)
    rng = np.random.default_rng(2)
    B = 2
    x = rng.standard_normal((B, cfg.in_channels, cfg.image_size, cfg.image_size))
    t = np.array([3, 711])
    eps = rng.standard_normal(x.shape)
    y = np.array([0, 3]) if cfg.num_classes else None
    masks = dropout_masks(cfg, B, 4) if cfg.dropout else None
    kw = dict(y=y, dropout_masks=masks, train=masks is not None)
    l0, g0 = loss_and_grad(p, cfg, x, t, eps, **kw)
    ops = CU.make_ops("numpy")
    l1, g1 = loss_and_grad(p, cfg, x, t, eps, ops=ops, **kw)
    assert abs(float(l1) - float(l0)) <= 1e-13 * abs(float(l0))
    assert list(g1) == list(g0)
    for k in g0:
        assert _rel(g1[k], g0[k]) < 1e-11, k
