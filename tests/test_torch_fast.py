"""The torch backend's fast paths (backends/torch/fast.py) against plain torch and the reference.

* The fused GroupNorm(+add)+SiLU Triton kernel, run on CPU by Triton's interpreter, against a
  float64 torch formulation (forward and all gradients; NCHW and channels_last; group sizes that
  are not powers of two; several pixel chunks), and inside the whole UNet.
* The training step against a hand-written step (same noise, same dropout draws) whose loss is
  refdiff's own L_simple, one torch.optim.Adam step and the EMA formula; the snapshot/restore
  used around CUDA-graph warm-up; the inference wrapper.
* GPU-marked twins run the real kernel, the CUDA conformance with the kernel on, and the
  captured training step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from refdiff._errors import RefdiffValueError  # noqa: E402
from refdiff.backends.torch import fast as tf  # noqa: E402
from refdiff.backends.torch.unet import (  # noqa: E402
    TorchUNet,
    compare_with_reference,
    fast_paths,
    from_config,
)
from refdiff.unet import get_preset, random_params  # noqa: E402

needs_triton = pytest.mark.skipif(not tf.triton_available(), reason="needs the triton package")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MICRO = get_preset(
    "tiny",
    channel_mult=(1,),
    attention_resolutions=(4,),
    model_channels=16,
    num_groups=4,
    image_size=4,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rel(a, ref) -> float:
    return float((a.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max())


def _check_op(n, c, h, w, groups, dtype, channels_last, with_add, act, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 1.7 + 0.6
    wt = torch.randn(c, generator=g, dtype=torch.float64) * 0.5 + 1.0
    bs = torch.randn(c, generator=g, dtype=torch.float64) * 0.3
    e = torch.randn(n, c, generator=g, dtype=torch.float64) if with_add else None
    dy = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    xs = x.to(dtype).to(device)
    if channels_last:
        xs = xs.contiguous(memory_format=torch.channels_last)
    xs.requires_grad_(True)
    ws = wt.float().to(device).requires_grad_(True)
    bss = bs.float().to(device).requires_grad_(True)
    es = e.to(dtype).to(device).requires_grad_(True) if with_add else None
    y = tf.fused_group_norm_act(xs, ws, bss, groups, 1e-5, add=es, act=act)
    y.backward(dy.to(dtype).to(device))
    # reference: the same rounded inputs, float64, plain torch ops and autograd
    leaf = lambda a: a.detach().cpu().double().requires_grad_(True)  # noqa: E731
    xr, wr, br = leaf(xs), leaf(ws), leaf(bss)
    er = leaf(es) if with_add else None
    yr = tf.group_norm_act_reference(xr, wr, br, groups, 1e-5, add=er, act=act)
    yr.backward(dy.to(dtype).double())
    assert y.dtype == dtype and y.shape == x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    errs = {
        "y": _rel(y.detach().cpu(), yr.detach()),
        "dx": _rel(xs.grad.cpu(), xr.grad),
        "dw": _rel(ws.grad.cpu(), wr.grad),
        "db": _rel(bss.grad.cpu(), br.grad),
    }
    if with_add:
        errs["de"] = _rel(es.grad.cpu(), er.grad)
    return errs


# (n, c, h, w, groups, channels_last, add, act): 12 channels per group (not a power of two),
# 16 channels x 324 pixels (three pixel chunks), a 1-pixel-wide map, GN alone.
CASES = [
    (2, 24, 5, 7, 2, False, True, "silu"),
    (2, 24, 5, 7, 2, True, True, "silu"),
    (1, 32, 18, 18, 2, True, False, "silu"),
    (2, 16, 6, 1, 4, False, True, "none"),
]


def _case_id(c) -> str:
    return f"{c[1]}c{c[2]}x{c[3]}g{c[4]}{'-cl' if c[5] else ''}{'-add' if c[6] else ''}-{c[7]}"


def _unet_check() -> dict:
    """Output and every parameter gradient of a small UNet, fused kernel vs plain torch ops."""
    p = random_params(MICRO, 4)
    a = from_config(MICRO).load_params(p).set_fast_paths(fused_norm="triton").eval()
    b = from_config(MICRO).load_params(p).eval()
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.standard_normal((1, 3, 4, 4)), dtype=torch.float32)
    t = torch.tensor([321])
    ya = a(x, t)
    ya.square().sum().backward()
    yb = b(x, t)
    yb.square().sum().backward()
    out = {"out": _rel(ya, yb.double())}
    out.update(
        {
            name: _rel(pa.grad, pb.grad.double())
            for (name, pa), pb in zip(a.named_parameters(), b.parameters())
        }
    )
    return out


def _interpreter_checks() -> dict:
    """Every interpreter check; run in a fresh process (triton reads TRITON_INTERPRET at import)."""
    out = {
        _case_id(c): _check_op(*c[:5], torch.float32, *c[5:], "cpu", seed=i)
        for i, c in enumerate(CASES)
    }
    out["bf16"] = _check_op(2, 48, 6, 6, 4, torch.bfloat16, True, True, "silu", "cpu", seed=3)
    out["unet"] = _unet_check()
    return out


@pytest.fixture(scope="module")
def interpreted():
    """Results of :func:`_interpreter_checks` from a subprocess with ``TRITON_INTERPRET=1``."""
    if not tf.triton_available():
        pytest.skip("needs the triton package")
    root = Path(__file__).resolve().parent.parent
    code = (
        "import json, torch; torch.set_num_threads(1); "
        "from tests.test_torch_fast import _interpreter_checks as f; print('RESULT' + json.dumps(f()))"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fused_group_norm_act_float32_matches_float64_torch(case, interpreted):
    errs = interpreted[_case_id(case)]
    assert max(errs.values()) < 2e-6, errs
    assert max(errs.values()) > 0, errs  # really float32 arithmetic


def test_fused_group_norm_act_bfloat16_is_bfloat16_accurate(interpreted):
    errs = interpreted["bf16"]
    # y, dx and de are bf16 tensors (one rounding, 2^-8 relative); dw and db are float32 sums
    assert errs["y"] < 1e-2 and errs["dx"] < 1e-2 and errs["de"] < 1e-2, errs
    assert errs["dw"] < 1e-5 and errs["db"] < 1e-5, errs


def test_fused_path_inside_the_unet_matches_the_torch_path(interpreted):
    errs = interpreted["unet"]
    assert errs.pop("out") < 2e-6
    assert len(errs) == len(list(TorchUNet(MICRO).parameters()))
    assert max(errs.values()) < 1e-5, max(errs, key=errs.get)


def test_fused_op_rejects_what_it_cannot_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(1, 8, 2, 2)
    w, b = torch.ones(8), torch.zeros(8)
    with pytest.raises(
        RefdiffValueError, match=r"x.device='cpu' is invalid: the fused GroupNorm runs on CUDA"
    ):
        tf.fused_group_norm_act(x, w, b, 4)
    with pytest.raises(
        RefdiffValueError,
        match=r"x.dtype='float64' is invalid: the fused GroupNorm computes in float32",
    ):
        tf.fused_group_norm_act(x.double(), w, b, 4)
    with pytest.raises(KeyError, match=r"act='relu' is not a known activation"):
        tf.fused_group_norm_act(x, w, b, 4, act="relu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(
        RefdiffValueError, match=r"num_groups=3 is invalid: must divide the 8 channels"
    ):
        tf.fused_group_norm_act(x, w, b, 3)
    with pytest.raises(
        RefdiffValueError, match=r"add.shape='\(1, 4\)' is invalid: expected shape \(1, 8\)"
    ):
        tf.fused_group_norm_act(x, w, b, 4, add=torch.zeros(1, 4))


def test_fast_path_switches():
    m = TorchUNet(MICRO)
    with pytest.raises(RefdiffValueError, match=r"fused_norm='fast' is invalid: expected one of"):
        m.set_fast_paths(fused_norm="fast")
    with pytest.raises(RefdiffValueError, match=r"fused_norm='x' is invalid"):
        with fast_paths(fused_norm="x"):
            pass
    from refdiff.backends.torch import unet as tu

    assert tu._FAST_DEFAULTS["fused_norm"] == "torch"
    with fast_paths(fused_norm="auto"):
        assert tu._FAST_DEFAULTS["fused_norm"] == "auto"
        # "auto" never picks the kernel on CPU: bit-identical to the torch path
        p = random_params(MICRO, 1)
        x, t = torch.randn(2, 3, 4, 4), torch.tensor([1, 2])
        a = from_config(MICRO).load_params(p).eval()
        b = from_config(MICRO).load_params(p).set_fast_paths(fused_norm="torch").eval()
        assert torch.equal(a(x, t), b(x, t))
    assert tu._FAST_DEFAULTS["fused_norm"] == "torch"


def test_channels_last_model_matches_nchw_model():
    p = random_params(MICRO, 2)
    a = from_config(MICRO, dtype=torch.float64).load_params(p).eval()
    b = (
        from_config(MICRO, dtype=torch.float64)
        .load_params(p)
        .eval()
        .to(memory_format=torch.channels_last)
    )
    x, t = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([5, 900])
    ya, yb = a(x, t), b(x, t)
    assert yb.is_contiguous(memory_format=torch.channels_last)
    assert _rel(yb, ya) < 1e-13


# ----------------------------------------------------------------------------- training step
def _manual_step(model, x0, t, w, sched, lr, decay):
    """Algorithm 1 of Ho et al. 2020 by hand: refdiff's L_simple, torch.optim.Adam, the EMA formula."""
    import array_api_compat.torch as xp

    from refdiff.losses import training_losses

    s = sched.to(xp, dtype=torch.float64)
    noise = torch.randn_like(x0)
    terms = training_losses(s, lambda x, tt: model(x, tt), x0, t, noise=noise)
    assert terms["loss"].shape == (x0.shape[0],)
    loss = torch.mean(terms["loss"] * w)
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=False)
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    gnorm = math.sqrt(sum(float(torch.sum(p.grad**2)) for p in model.parameters()))
    opt.step()
    ema = [decay * b + (1 - decay) * p.detach() for b, p in zip(before, model.parameters())]
    return loss.detach(), ema, gnorm


def test_train_step_equals_a_hand_written_step():
    from refdiff import schedules

    cfg = get_preset("tiny")
    sched = schedules.linear(1000)
    p = random_params(cfg, 7)
    a = from_config(cfg, dtype=torch.float64).load_params(p)
    b = from_config(cfg, dtype=torch.float64).load_params(p).train()
    step = tf.make_train_step(a, schedule=sched, lr=1e-3, ema_decay=0.9, track_grad_norm=True)
    x0 = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 517, 999])
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    torch.manual_seed(11)
    loss = step(x0, t, w)
    torch.manual_seed(11)  # the same ε and dropout draws
    loss_ref, ema_ref, gnorm_ref = _manual_step(b, x0, t, w, sched, 1e-3, 0.9)
    assert loss.ndim == 0 and abs(float(loss) - float(loss_ref)) <= 1e-13 * float(loss_ref)
    assert float(step.grad_norm) == pytest.approx(gnorm_ref, rel=1e-12)
    assert float(torch.mean(step.per_sample_loss * w)) == pytest.approx(float(loss), rel=1e-14)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14, msg=name)
    for e, r in zip(step.ema, ema_ref):
        torch.testing.assert_close(e, r, rtol=1e-12, atol=1e-14)
    moved = max(
        float((pa.detach() - torch.as_tensor(p[n])).abs().max()) for n, pa in a.named_parameters()
    )
    assert 0.5e-3 < moved <= 1.01e-3  # one Adam step moves by about lr
    assert step.steps == 1


def test_train_step_trains_with_bf16_channels_last_and_drawn_timesteps():
    cfg = MICRO
    m = from_config(cfg, seed=0)
    step = tf.make_train_step(
        m, bf16=True, channels_last=True, lr=3e-3, ema_decay=0.5, grad_clip=1.0
    )
    torch.manual_seed(0)
    x0 = torch.rand(8, 3, 4, 4) * 2 - 1
    losses = [float(step(x0)) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert m.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    step.set_lr(0.0)
    before = [q.detach().clone() for q in m.parameters()]
    step(x0)
    assert all(torch.equal(q, r) for q, r in zip(m.parameters(), before))


def test_snapshot_restore_undoes_warmup_steps():
    """What the CUDA-graph capture relies on: weights, EMA and Adam state restored in place."""
    m = from_config(MICRO, seed=1)
    step = tf.make_train_step(m, lr=1e-2)
    x0 = torch.rand(2, 3, 4, 4)
    snap = step._snapshot()
    ptrs = [q.data_ptr() for q in m.parameters()]
    w0 = [q.detach().clone() for q in m.parameters()]
    step(x0)
    step(x0)
    step._restore(snap)
    assert [q.data_ptr() for q in m.parameters()] == ptrs
    assert all(torch.equal(q, r) for q, r in zip(m.parameters(), w0))
    assert all(torch.equal(e, r) for e, r in zip(step.ema, w0))
    for q in m.parameters():
        st = step.optimizer.state[q]
        assert float(st["step"]) == 0 and not st["exp_avg"].any() and not st["exp_avg_sq"].any()


def test_train_step_rejects_bad_options():
    m = from_config(MICRO)
    with pytest.raises(
        RefdiffValueError,
        match=r"cuda_graphs=True is invalid: CUDA graphs need a model on a CUDA device",
    ):
        tf.make_train_step(m, cuda_graphs=True)
    with pytest.raises(RefdiffValueError, match=r"compile_mode='fast' is invalid"):
        tf.make_train_step(m, compile_mode="fast")
    with pytest.raises(
        KeyError, match=r"optimizer='sgd' is not a known optimizer; allowed: 'adam', 'adamw'"
    ):
        tf.make_train_step(m, optimizer="sgd")
    with pytest.raises(
        RefdiffValueError, match=r"fused_norm='triton' is invalid: only a refdiff TorchUNet"
    ):
        tf.prepare_model(torch.nn.Linear(2, 2), fused_norm="triton")


def test_inference_fn_matches_eval_forward():
    p = random_params(MICRO, 3)
    m = from_config(MICRO).load_params(p)
    x, t = torch.randn(4, 3, 4, 4), torch.tensor([1, 10, 100, 999])
    with torch.no_grad():
        ref = m.eval()(x, t)
    fn = tf.make_inference_fn(m, channels_last=True)
    out = fn(x, t)
    assert out.is_contiguous() and out.dtype == torch.float32
    assert _rel(out, ref.double()) < 1e-5
    out16 = tf.make_inference_fn(m, bf16=True)(x, t)
    assert out16.dtype == torch.float32 and 1e-5 < _rel(out16, ref.double()) < 5e-2


# ----------------------------------------------------------------------------- GPU (marked)
@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize(
    "case",
    CASES
    + [(128, 384, 32, 32, 32, True, True, "silu"), (128, 256, 16, 16, 32, False, False, "none")],
)
def test_cuda_fused_group_norm_act(case):
    n, c, h, w, g, cl, add, act = case
    errs = _check_op(n, c, h, w, g, torch.float32, cl, add, act, "cuda", seed=1)
    assert max(errs.values()) < 1e-5, errs
    errs = _check_op(n, c, h, w, g, torch.bfloat16, cl, add, act, "cuda", seed=2)
    assert errs["y"] < 1e-2 and errs["dx"] < 2e-2 and errs["dw"] < 1e-4, errs


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("name", ["tiny", "tiny-adm"])
def test_cuda_conformance_with_the_fused_kernel(name):
    cfg = (
        get_preset("tiny")
        if name == "tiny"
        else get_preset(
            "tiny",
            num_head_channels=8,
            attention_resolutions=(8, 4),
            use_scale_shift_norm=True,
            resblock_updown=True,
            num_classes=5,
            learn_sigma=True,
        )
    )
    with fast_paths(fused_norm="triton"):
        r = compare_with_reference(cfg, torch.float32, "cuda", 0)
    assert r["max_rel_err_out"] < 1e-5 and r["max_rel_err_grad"] < 1e-5, r


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphed_train_step_takes_exactly_one_step_per_call():
    cfg = get_preset("tiny")
    m = from_config(cfg, seed=0, device="cuda")
    p0 = [q.detach().clone() for q in m.parameters()]
    step = tf.make_train_step(
        m, bf16=True, channels_last=True, cuda_graphs=True, lr=1e-3, ema_decay=0.9
    )
    x0 = torch.rand(16, 3, 8, 8, device="cuda") * 2 - 1
    loss = step(x0)  # warm-up, restore, capture, one replay
    assert math.isfinite(float(loss))
    for q in m.parameters():
        assert float(step.optimizer.state[q]["step"]) == 1
    moved = max(float((q - r).abs().max()) for q, r in zip(m.parameters(), p0))
    assert 0.5e-3 < moved <= 1.01e-3  # one Adam step, not warm-up + one
    for e, q, r in zip(step.ema, m.parameters(), p0):
        torch.testing.assert_close(e, 0.9 * r + 0.1 * q, rtol=1e-5, atol=1e-7)
    losses = [float(step(x0)) for _ in range(40)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert float(step.optimizer.state[next(m.parameters())]["step"]) == 41
