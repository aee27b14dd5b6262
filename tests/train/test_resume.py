"""Exact resume, the non-finite-loss stop, and the guards around resuming."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from refdiff._errors import RefdiffValueError
from refdiff.train.checkpoint import load_checkpoint
from refdiff.train.driver import TrainConfig, TrainingDivergedError, train
from refdiff.train.metrics import read_metrics

# float64 on CPU, dropout on (tiny has p = 0.1): resuming must restore torch's generator too
BASE = dict(preset="tiny", batch=4, T=20, dtype="float64", ema=0.9, log_every=1, n_samples=0)


def _assert_same(a, b):
    for section in ("params", "ema", "optimizer", "rng"):
        da, db = getattr(a, section), getattr(b, section)
        assert da.keys() == db.keys(), section
        for k in da:
            np.testing.assert_array_equal(da[k], db[k], err_msg=f"{section}/{k}")


def test_interrupted_and_resumed_run_ends_bitwise_equal(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    # the straight run also draws sample grids on the way: sampling must not touch training RNGs
    train(
        TrainConfig(steps=6, sample_every=2, sample_steps=3, **{**BASE, "n_samples": 2}),
        straight,
        progress=False,
    )
    train(TrainConfig(steps=3, **BASE), split, progress=False)
    assert load_checkpoint(split / "checkpoint.safetensors").step == 3
    train(TrainConfig(steps=6, **BASE), split, resume=True, progress=False)
    a = load_checkpoint(straight / "checkpoint.safetensors")
    b = load_checkpoint(split / "checkpoint.safetensors")
    assert a.step == b.step == 6
    _assert_same(a, b)
    assert (
        a.state["data_stream"] == b.state["data_stream"]
        and a.state["host_rng"] == b.state["host_rng"]
    )
    la, lb = read_metrics(straight / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert len(list((straight / "samples").glob("*.png"))) == 3


def test_resume_with_loss_second_moment_sampler(tmp_path):
    # importance sampling of t keeps a loss history: it must be checkpointed as well
    cfg = dict(BASE, t_sampler="loss-second-moment", T=3)
    train(TrainConfig(steps=8, **cfg), tmp_path / "a", progress=False)
    train(TrainConfig(steps=4, **cfg), tmp_path / "b", progress=False)
    train(TrainConfig(steps=8, **cfg), tmp_path / "b", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert a.rng["t_sampler/count"].min() > 0  # the history was filled
    _assert_same(a, b)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # an absurd learning rate sends the float32 weights to 1e30 after step 1: step 2's loss overflows
    cfg = TrainConfig(
        preset="tiny",
        steps=6,
        batch=4,
        T=20,
        lr=1e30,
        grad_clip=None,
        ckpt_every=1,
        log_every=1,
        n_samples=0,
    )
    with pytest.raises(
        TrainingDivergedError,
        match=re.escape(
            "training diverged: the loss is not finite (inf) "
            "at step 2; stopped at step 2; the last good "
            "checkpoint (step 1) is "
        ),
    ):
        train(cfg, tmp_path, progress=False)
    ck = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert ck.step == 1 and all(np.isfinite(v).all() for v in ck.params.values())
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def _poison_at(at):
    def hook(step, trainer):
        if step == at:
            import torch

            with torch.no_grad():
                trainer.params[0].fill_(float("nan"))

    return hook


def test_injected_nan_is_reported_at_its_step(tmp_path):
    # a hook poisons one weight after step 3, so the loss of step 4 is NaN; the check (log or
    # checkpoint step) first runs at step 4 and names it
    cfg = TrainConfig(preset="tiny", steps=8, batch=4, T=20, log_every=5, ckpt_every=2, n_samples=0)
    with pytest.raises(
        TrainingDivergedError,
        match=r"the loss is not finite \(nan\) at step 4; stopped at "
        r"step 4; the last good checkpoint \(step 2\)",
    ):
        train(cfg, tmp_path, progress=False, step_hook=_poison_at(3))
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").step == 2
    # weights poisoned right before a checkpoint (the loss of that step was still finite): not saved
    cfg = TrainConfig(preset="tiny", steps=8, batch=4, T=20, log_every=5, ckpt_every=2, n_samples=0)
    with pytest.raises(
        TrainingDivergedError,
        match=r"the weights are not finite after step 2 \(1 tensors, "
        r"e.g. time_embed.0.weight\); the checkpoint was not "
        r"written; no checkpoint was written",
    ):
        train(cfg, tmp_path / "b", progress=False, step_hook=_poison_at(2))
    assert not (tmp_path / "b" / "checkpoint.safetensors").exists()


def test_resume_guards(tmp_path):
    train(TrainConfig(steps=1, **BASE), tmp_path, progress=False)
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(f"out='{tmp_path}' already holds checkpoint.safetensors; pass --resume"),
    ):
        train(TrainConfig(steps=2, **BASE), tmp_path, progress=False)
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(
            "preset='small' differs from the checkpoint's preset='tiny'; a resumed run keeps"
        ),
    ):
        train(
            TrainConfig(steps=2, **{**BASE, "preset": "small"}),
            tmp_path,
            resume=True,
            explicit={"preset", "steps"},
            progress=False,
        )
    with pytest.raises(RefdiffValueError, match="no checkpoint to resume from"):
        train(TrainConfig(steps=2, **BASE), tmp_path / "empty", resume=True, progress=False)
    # options left at their defaults come from the checkpoint, so a bare resume works
    res = train(TrainConfig(steps=2), tmp_path, resume=True, explicit={"steps"}, progress=False)
    assert res["step"] == 2 and res["config"].preset == "tiny" and res["config"].dtype == "float64"
