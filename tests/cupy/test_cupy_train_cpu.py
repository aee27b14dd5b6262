"""The CuPy trainer (``backends/cupy/train.py``) with NumPy standing in for CuPy (``device="cpu"``).

The step is checked against an independent composition of the reference pieces (generic
``loss_and_grad``, ``clip_grad_norm``, ``adamw_step``, ``ema_update``), its checkpoints against the
NumPy reference and the PyTorch module, its resume for exactness, and the training driver's
protocol end to end (with the driver's backend dispatch pointed at the module, as the report
proposes for ``--backend cupy --device cpu``).
"""

from __future__ import annotations


import numpy as np
import pytest

from refdiff._errors import RefdiffValueError
from refdiff.backends.cupy import train as CT
from refdiff.diffusion import q_sample
from refdiff.train.driver import TrainConfig, build_schedule
from refdiff.unet import (
    adamw_step,
    clip_grad_norm,
    dropout_shapes,
    ema_update,
    get_preset,
    init_params,
    loss_and_grad,
    unet_apply,
)


UCFG = get_preset("tiny")
SCHED = build_schedule("linear", 1000)


def _cfg(**kw):
    base = dict(
        backend="cupy",
        preset="tiny",
        batch=2,
        device="cpu",
        dtype="float64",
        lr=1e-3,
        grad_clip=1.0,
        ema=0.99,
        ema_warmup=False,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _batch(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (batch, 3, 8, 8))
    return x0, rng.integers(0, 1000, batch)


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _reference_draws(cfg, step, shape):
    """The trainer's documented random streams: N(0, 1) noise and U[0, 1) dropout draws keyed by (seed, step)."""
    noise = np.random.default_rng(CT.stream_seed(cfg.seed, step, 0)).standard_normal(shape)
    shapes = dropout_shapes(UCFG, shape[0])
    u = np.random.default_rng(CT.stream_seed(cfg.seed, step, 1)).random(
        sum(int(np.prod(s)) for s in shapes.values())
    )
    keep = 1.0 - UCFG.dropout
    flat = (u < keep) * (1.0 / keep)
    masks, off = {}, 0
    for k, s in shapes.items():
        n = int(np.prod(s))
        masks[k] = flat[off : off + n].reshape(s)
        off += n
    return noise, masks


def test_stream_seeds_are_distinct_and_reproducible():
    seeds = {CT.stream_seed(s, st, p) for s in range(3) for st in range(1, 50) for p in (0, 1)}
    assert len(seeds) == 3 * 49 * 2
    assert CT.stream_seed(1, 2, 0) == CT.stream_seed(1, 2, 0) < 2**63


def test_one_adamw_step_equals_the_reference_composition():
    cfg = _cfg(optimizer="adamw", weight_decay=0.01, warmup=4)
    tr = CT.make_trainer(cfg, UCFG, SCHED)
    p0 = init_params(UCFG, cfg.seed)
    for k in p0:
        np.testing.assert_array_equal(tr.params[k], p0[k])  # the torch backend's init too
    x0, t = _batch()
    tr.step(x0, None, t, np.ones(2), 1)
    # reference: the same draws through the generic model and refdiff.unet.optim
    noise, masks = _reference_draws(cfg, 1, x0.shape)
    x_t = q_sample(SCHED, x0, t, noise=noise)
    loss, grads = loss_and_grad(
        p0, UCFG, x_t, np.asarray(SCHED.timestep_map)[t], noise, dropout_masks=masks, train=True
    )
    grads, total = clip_grad_norm(grads, cfg.grad_clip)
    p1, st = adamw_step(
        p0,
        grads,
        None,
        lr=cfg.lr * 1 / 4,
        betas=cfg.adam_betas,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    ema = ema_update(p0, p1, cfg.ema)
    stats = tr.collect()
    assert abs(stats["loss"] - float(loss)) <= 1e-12 * float(loss)
    assert abs(stats["grad_norm"] - float(total)) <= 1e-12 * float(total)
    assert stats["lr"] == cfg.lr / 4
    state = tr.export_state()
    for k in p0:
        assert _rel(state["params"][k], p1[k]) < 1e-10, k
        assert _rel(state["ema"][k], ema[k]) < 1e-10, k
        if np.any(st["m"][k]):
            assert _rel(state["optimizer"][f"exp_avg/{k}"], st["m"][k]) < 1e-10, k
            assert _rel(state["optimizer"][f"exp_avg_sq/{k}"], st["v"][k]) < 1e-10, k
    assert float(state["optimizer"][f"step/{next(iter(p0))}"]) == 1.0


def test_importance_weights_weight_each_sample():
    """∇ of mean_b(w_b·L_b) equals the w-weighted mean of the single-sample gradients."""
    cfg = _cfg()
    tr = CT.make_trainer(cfg, UCFG, SCHED)
    x0, t = _batch(1)
    w = np.array([0.25, 1.75])
    loss, per, grads = tr.loss_and_grads(x0, None, t, w, 5)
    noise, masks = _reference_draws(cfg, 5, x0.shape)
    x_t = q_sample(SCHED, x0, t, noise=noise)
    acc = None
    for b in range(2):
        sl = slice(b, b + 1)
        lb, gb = loss_and_grad(
            tr.params,
            UCFG,
            x_t[sl],
            np.asarray(SCHED.timestep_map)[t[sl]],
            noise[sl],
            dropout_masks={k: v[sl] for k, v in masks.items()},
            train=True,
        )
        assert abs(float(per[b]) - float(lb)) <= 1e-12 * float(lb)
        acc = (
            {k: w[b] / 2 * v for k, v in gb.items()}
            if acc is None
            else {k: acc[k] + w[b] / 2 * v for k, v in gb.items()}
        )
    assert abs(float(loss) - float(np.mean(w * per))) < 1e-14
    for k in acc:
        assert _rel(grads[k], acc[k]) < 1e-10, k


def test_updates_decrease_the_loss_on_the_same_batch():
    """float32 with the default TF32 GEMMs (emulated): three Adam steps on one batch, each lowers its loss."""
    tr = CT.make_trainer(_cfg(dtype="float32", lr=2e-3, grad_clip=None), UCFG, SCHED)
    assert tr.precision == "tf32"
    x0, t = _batch(2)
    x0 = x0.astype(np.float32)
    w = np.ones(2, np.float32)
    losses = []
    for _ in range(4):
        losses.append(float(tr.loss_and_grads(x0, None, t, w, 7)[0]))
        tr.step(x0, None, t, w, 7)  # the same step number: the same noise and masks
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert tr.collect()["loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_checkpoint_samples_on_numpy_and_torch(tmp_path):
    from refdiff.train.checkpoint import load_checkpoint, save_checkpoint

    cfg = _cfg()
    tr = CT.make_trainer(cfg, UCFG, SCHED)
    for s in (1, 2):
        x0, t = _batch(s)
        tr.step(x0, None, t, np.ones(2), s)
    state = tr.export_state()
    path = save_checkpoint(
        tmp_path / "ck.safetensors",
        params=state["params"],
        ema=state["ema"],
        optimizer=state["optimizer"],
        rng=state["rng"],
        step=2,
        config={"unet": UCFG.to_dict()},
        state=state["state"],
    )
    ck = load_checkpoint(path)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 8, 8))
    t = np.array([10, 600])
    for ema in (False, True):
        fn, xp, dev, dt = tr.model_fn(ema=ema)
        ours = np.asarray(fn(xp.asarray(x, device=dev), xp.asarray(t, device=dev)))
        weights = ck.ema if ema else ck.params
        ref = unet_apply(weights, UCFG, x, t)
        assert _rel(ours, ref) < 1e-12
        torch = pytest.importorskip("torch")
        from refdiff.backends.torch.unet import from_config

        m = from_config(UCFG, dtype=torch.float64).load_params(weights).eval()
        with torch.no_grad():
            out = m(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        assert _rel(out, ref) < 1e-10


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    from refdiff.train.checkpoint import load_checkpoint, save_checkpoint

    cfg = _cfg(dtype="float32")
    batches = [(*_batch(s), np.ones(2)) for s in (1, 2, 3)]
    a = CT.make_trainer(cfg, UCFG, SCHED, precision="fp32")
    for s, (x0, t, w) in enumerate(batches, 1):
        a.step(x0.astype(np.float32), None, t, w.astype(np.float32), s)
    b = CT.make_trainer(cfg, UCFG, SCHED, precision="fp32")
    for s, (x0, t, w) in enumerate(batches[:2], 1):
        b.step(x0.astype(np.float32), None, t, w.astype(np.float32), s)
    st = b.export_state()
    path = save_checkpoint(
        tmp_path / "b.safetensors",
        params=st["params"],
        ema=st["ema"],
        optimizer=st["optimizer"],
        rng=st["rng"],
        step=2,
        config={"unet": UCFG.to_dict()},
        state=st["state"],
    )
    c = CT.make_trainer(cfg, UCFG, SCHED, precision="fp32")
    c.load_state(load_checkpoint(path))
    assert c.adam_step == 2
    x0, t, w = batches[2]
    c.step(x0.astype(np.float32), None, t, w.astype(np.float32), 3)
    sa, sc = a.export_state(), c.export_state()
    for sec in ("params", "ema", "optimizer"):
        for k in sa[sec]:
            np.testing.assert_array_equal(sa[sec][k], sc[sec][k], err_msg=f"{sec}/{k}")


def test_unsupported_options_raise():
    with pytest.raises(RefdiffValueError, match="backend='cupy' trains L_simple .* loss='hybrid'"):
        CT.make_trainer(_cfg(loss="hybrid"), UCFG, SCHED)
    with pytest.raises(RefdiffValueError, match="device='tpu' is invalid"):
        CT.make_trainer(_cfg(device="tpu"), UCFG, SCHED)
    with pytest.raises(RefdiffValueError, match="precision='int8' is invalid"):
        CT.make_trainer(_cfg(), UCFG, SCHED, precision="int8")


def test_world_size_above_one_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RefdiffValueError, match="trains on one GPU"):
        CT.make_trainer(_cfg(), UCFG, SCHED)


def test_driver_trains_samples_checkpoints_and_resumes(tmp_path, monkeypatch):
    """refdiff.train.driver.train with the cupy trainer (NumPy stand-in): the whole protocol."""
    pytest.importorskip("safetensors")
    import refdiff.train.driver as D
    from refdiff.train.checkpoint import load_checkpoint
    from refdiff.train.metrics import read_metrics

    monkeypatch.setattr(D, "resolve_backend", lambda name: CT)
    monkeypatch.setenv("REFDIFF_CUPY_PRECISION", "fp32")
    base = dict(
        backend="cupy",
        preset="tiny",
        batch=2,
        T=20,
        dtype="float32",
        device="cpu",
        log_every=1,
        n_samples=2,
        sample_steps=2,
        ema=0.9,
    )
    D.train(TrainConfig(steps=3, **base), tmp_path / "a", progress=False)
    D.train(TrainConfig(steps=2, **base), tmp_path / "b", progress=False)
    D.train(TrainConfig(steps=3, **base), tmp_path / "b", resume=True, progress=False)
    ca = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    cb = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert ca.step == cb.step == 3 and ca.state["backend"] == "cupy"
    for k in ca.params:
        np.testing.assert_array_equal(ca.params[k], cb.params[k])
        np.testing.assert_array_equal(ca.ema[k], cb.ema[k])
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3]
    assert len(list((tmp_path / "a" / "samples").glob("*.png"))) == 1
