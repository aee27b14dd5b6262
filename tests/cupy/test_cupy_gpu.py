"""The CuPy UNet kernels and trainer on a CUDA GPU (marked ``gpu``; skipped without CuPy and a device).

Every override against the generic array-API code run on CuPy, in float64 and float32; the
generated kernels against their NumPy semantics; the whole UNet's forward and gradients against
the NumPy float64 reference; a few training steps whose loss falls; a checkpoint trained on CuPy
sampling on torch and NumPy with matching outputs. None of this has been run yet (no GPU was
available when it was written; see docs/CUPY.md).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

cupy = pytest.importorskip("cupy")
try:
    if cupy.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no device")
except Exception as exc:  # noqa: BLE001 - CUDARuntimeError, missing driver
    pytest.skip(f"needs a CUDA GPU ({exc})", allow_module_level=True)

import array_api_compat.cupy as cxp  # noqa: E402

from refdiff.backends.cupy import train as CT  # noqa: E402
from refdiff.backends.cupy import unet as CU  # noqa: E402
from refdiff.backends.cupy._kernel_ref import NumpyDevice  # noqa: E402
from refdiff.train.driver import TrainConfig, build_schedule  # noqa: E402
from refdiff.unet import (  # noqa: E402
    dropout_masks,
    get_preset,
    loss_and_grad,
    random_params,
    unet_apply,
)
from refdiff.unet import layers as L  # noqa: E402

GEOMETRIES = [
    (2, 3, 5, 8, 8, 3, 1, 1),
    (2, 4, 6, 8, 8, 3, 2, 1),
    (2, 4, 6, 7, 9, 3, 2, 1),
    (2, 4, 6, 8, 8, 1, 1, 0),
    (1, 3, 2, 6, 5, 3, 1, 0),
    (3, 40, 36, 16, 16, 3, 1, 1),
    (2, 64, 64, 33, 31, 3, 2, 1),
]


def _rel(a, b) -> float:
    a, b = cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _on(a, dtype=None):
    return cupy.asarray(a, dtype=dtype)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("geo", GEOMETRIES)
def test_convolution_override_vs_generic_code_on_cupy(geo, dtype, tol):
    B, C, O, H, W, k, s, p = geo
    rng = np.random.default_rng(sum(geo))
    x, w = rng.standard_normal((B, C, H, W)), rng.standard_normal((O, C, k, k)) / (3 * C) ** 0.5
    b, g = rng.standard_normal(O), None
    ops = CU.make_ops("cupy", precision="fp32")
    xd, wd, bd = _on(x, dtype), _on(w, dtype), _on(b, dtype)
    y = ops["conv2d"](xd, wd, bd, stride=s, padding=p)
    y_generic = L.conv2d(xd, wd, bd, stride=s, padding=p)  # generic code on CuPy
    assert isinstance(y, cupy.ndarray) and y.dtype == np.dtype(dtype)
    assert _rel(y, cupy.asnumpy(y_generic)) < tol
    assert _rel(y, L.conv2d(x, w, b, stride=s, padding=p)) < tol  # NumPy float64 oracle
    g = rng.standard_normal(y.shape)
    gd = _on(g, dtype)
    for got, ref in zip(
        ops["conv2d_backward"](gd, xd, wd, stride=s, padding=p),
        L.conv2d_backward(g, x, w, stride=s, padding=p),
    ):
        assert _rel(got, ref) < tol * 10


@pytest.mark.parametrize("precision,hi", [("tf32", 3e-3), ("bf16", 2e-2), ("fp16", 3e-3)])
def test_tensor_core_precisions_on_the_gpu(precision, hi):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 64, 16, 16))
    w = rng.standard_normal((64, 64, 3, 3)) / 24
    ref = L.conv2d(x, w)
    err = _rel(
        CU.make_ops("cupy", precision=precision)["conv2d"](_on(x, "float32"), _on(w, "float32")),
        ref,
    )
    assert err < hi


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 5e-6)])
@pytest.mark.parametrize(
    "shape,groups",
    [((4, 128, 32, 32), 32), ((3, 384, 16, 16), 32), ((2, 8, 5, 3), 4), ((2, 256, 4, 4), 32)],
)
def test_group_norm_overrides_vs_generic_code_on_cupy(dtype, tol, shape, groups):
    rng = np.random.default_rng(shape[1])
    x = rng.standard_normal(shape) * 2 + 0.3
    ga, be, g = (
        rng.standard_normal(shape[1]),
        rng.standard_normal(shape[1]),
        rng.standard_normal(shape),
    )
    ops = CU.make_ops("cupy")
    d = [_on(a, dtype) for a in (x, ga, be, g)]
    assert (
        _rel(
            ops["group_norm_silu"](d[0], d[1], d[2], groups=groups),
            L.group_norm_silu(x, ga, be, groups=groups),
        )
        < tol
    )
    assert (
        _rel(
            ops["group_norm"](d[0], d[1], d[2], groups=groups),
            L.group_norm(x, ga, be, groups=groups),
        )
        < tol
    )
    for got, ref in zip(
        ops["group_norm_silu_backward"](d[3], d[0], d[1], d[2], groups=groups),
        L.group_norm_silu_backward(g, x, ga, be, groups=groups),
    ):
        assert _rel(got, ref) < tol * 20
    for got, ref in zip(
        ops["group_norm_backward"](d[3], d[0], d[1], groups=groups),
        L.group_norm_backward(g, x, ga, groups=groups),
    ):
        assert _rel(got, ref) < tol * 20


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layout_and_optimizer_kernels_vs_their_numpy_semantics(dtype):
    dev, ref = CU.get_device("cupy"), NumpyDevice()
    rng = np.random.default_rng(4)
    B, C, Hs, Ws, Hq, Wq = 3, 70, 9, 11, 6, 7
    src = rng.standard_normal((B, C, Hs, Ws)).astype(dtype)
    a = cupy.full((4 * B * Hq * Wq, C), np.nan, dtype=dtype)
    b = np.full((4 * B * Hq * Wq, C), np.nan, dtype=dtype)
    dev.pack(_on(src), a, B, C, Hs, Ws, 1, 1, 1, 2, Hq, Wq)
    ref.pack(src, b, B, C, Hs, Ws, 1, 1, 1, 2, Hq, Wq)
    np.testing.assert_array_equal(cupy.asnumpy(a), b)
    n = 100_003
    arrs = [rng.standard_normal(n).astype(dtype) for _ in range(5)]
    arrs[3] = np.abs(arrs[3])
    sc = CU.adam_ema_scalars(
        dtype,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.01,
        decoupled=True,
        step=3,
        ema_decay=0.999,
    )
    coef = np.array([0.5], dtype)
    d = [_on(v) for v in arrs]
    dev.adam_ema(*d, _on(coef), sc)
    ref.adam_ema(*arrs, coef, sc)
    eps = np.finfo(dtype).eps
    for u, v in zip(d, arrs):  # the device may contract a*b+c into an FMA
        np.testing.assert_allclose(cupy.asnumpy(u), v, rtol=4 * eps, atol=4 * eps)
    assert abs(
        float(dev.sumsq(d[1])) - float(np.sum(arrs[1].astype(np.float64) ** 2))
    ) < 1e-10 * float(np.sum(arrs[1].astype(np.float64) ** 2))


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-11), ("float32", 1e-4)])
def test_whole_unet_forward_and_gradients_vs_the_numpy_reference(dtype, tol):
    cfg = get_preset("small")
    p = random_params(cfg, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, cfg.in_channels, cfg.image_size, cfg.image_size))
    t, eps = np.array([3, 400, 999]), rng.standard_normal(x.shape)
    masks = dropout_masks(cfg, 3, 5)
    l0, g0 = loss_and_grad(p, cfg, x, t, eps, dropout_masks=masks, train=True)
    ops = CU.make_ops("cupy", precision="fp32")
    pd = {k: _on(v, dtype) for k, v in p.items()}
    md = {k: _on(v, dtype) for k, v in masks.items()}
    l1, g1 = loss_and_grad(
        pd, cfg, _on(x, dtype), _on(t), _on(eps, dtype), dropout_masks=md, train=True, ops=ops
    )
    assert abs(float(l1) - float(l0)) <= tol * abs(float(l0))
    for k in g0:
        assert _rel(g1[k], g0[k]) < tol * 10, k


def test_a_few_training_steps_lower_the_loss():
    cfg = TrainConfig(backend="cupy", preset="small", batch=32, device="cuda", lr=1e-3, seed=0)
    ucfg, sched = get_preset("small"), build_schedule("linear", 1000)
    tr = CT.make_trainer(cfg, ucfg, sched)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (32, 3, 16, 16)).astype(np.float32)
    t = rng.integers(0, 1000, 32)
    w = np.ones(32, np.float32)
    before = float(tr.loss_and_grads(x0, None, t, w, 1)[0])
    for _ in range(1, 31):
        tr.step(x0, None, t, w, 1)  # one batch, one noise draw: the loss must fall
    after = float(tr.loss_and_grads(x0, None, t, w, 1)[0])
    assert np.isfinite(after) and after < 0.7 * before


def test_a_cupy_checkpoint_samples_on_torch_and_numpy(tmp_path):
    torch = pytest.importorskip("torch")
    from refdiff.backends.torch.unet import from_config
    from refdiff.train.checkpoint import load_checkpoint, save_checkpoint

    ucfg, sched = get_preset("tiny"), build_schedule("linear", 1000)
    cfg = TrainConfig(backend="cupy", preset="tiny", batch=8, device="cuda", dtype="float64")
    tr = CT.make_trainer(cfg, ucfg, sched)
    rng = np.random.default_rng(1)
    for s in (1, 2, 3):
        tr.step(rng.uniform(-1, 1, (8, 3, 8, 8)), None, rng.integers(0, 1000, 8), np.ones(8), s)
    st = tr.export_state()
    path = save_checkpoint(
        tmp_path / "c.safetensors",
        params=st["params"],
        ema=st["ema"],
        optimizer=st["optimizer"],
        rng=st["rng"],
        step=3,
        config={"unet": ucfg.to_dict()},
        state=st["state"],
    )
    ck = load_checkpoint(path)
    x, t = rng.standard_normal((4, 3, 8, 8)), np.array([0, 10, 500, 999])
    fn, xp, dev, dt = tr.model_fn(ema=True)
    ours = cupy.asnumpy(fn(cxp.asarray(x, device=dev), cxp.asarray(t, device=dev)))
    ref = unet_apply(ck.ema, ucfg, x, t)
    assert _rel(ours, ref) < 1e-11
    m = from_config(ucfg, dtype=torch.float64).load_params(ck.ema).eval()
    with torch.no_grad():
        out = m(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert _rel(out, ref) < 1e-10
