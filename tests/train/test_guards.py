"""Guards of the training commands that one bad input cannot show: disk full during a checkpoint,
a missing optional dependency, the last-good checkpoint after --resume PATH --out NEW, a resume
from weights only, the EMA warm-up, non-finite sampler steps and bpd's up-front report."""

from __future__ import annotations

import errno
import re
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from refdiff.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from refdiff.train.driver import TrainConfig, TrainingDivergedError, ema_decay, train
from refdiff.train.metrics import read_metrics

BASE = dict(preset="tiny", batch=4, T=10, dtype="float64", log_every=1, n_samples=0)


def _poison_at(at):
    def hook(step, trainer):
        if step == at:
            import torch

            with torch.no_grad():
                trainer.params[0].fill_(float("nan"))

    return hook


def test_disk_full_during_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    import safetensors.numpy as stn

    real = stn.save_file
    calls = []

    def full(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second checkpoint: half written, then ENOSPC
            with open(filename, "wb") as fh:
                fh.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(stn, "save_file", full)
    cfg = TrainConfig(steps=4, ckpt_every=1, **BASE)
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"could not write the checkpoint of step 2 to {tmp_path / 'checkpoint.safetensors'} (No "
            f"space left on device); training stopped; the last good checkpoint (step 1) is "
            f"{tmp_path / 'checkpoint.safetensors'} (intact)"
        ),
    ):
        train(cfg, tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").step == 1
    assert not list(tmp_path.glob(".checkpoint.safetensors.tmp-*"))


def test_disk_full_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    import safetensors.numpy as stn

    from refdiff.cli import main

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(stn, "save_file", full)
    rc = main(
        [
            "train",
            "--preset",
            "tiny",
            "--T",
            "10",
            "--batch",
            "2",
            "--steps",
            "1",
            "--n-samples",
            "0",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(
        "refdiff train: error: could not write the checkpoint of step 1"
    )
    assert "Traceback" not in err and "no checkpoint was written" in err


def test_missing_safetensors_fails_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    steps = []
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            "checkpoints are safetensors files; install safetensors with: pip install 'refdiff[train]'"
        ),
    ):
        train(
            TrainConfig(steps=2, **BASE),
            tmp_path / "r",
            progress=False,
            step_hook=lambda s, tr: steps.append(s),
        )
    assert steps == [] and not (tmp_path / "r").exists()


def test_nan_stop_after_resume_into_a_new_folder_names_the_real_last_good(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(TrainConfig(steps=2, ckpt_every=1, **BASE), first, progress=False)
    src = first / "checkpoint.safetensors"
    with pytest.raises(
        TrainingDivergedError, match=re.escape(f"the last good checkpoint (step 2) is {src}")
    ):
        train(
            TrainConfig(steps=6, ckpt_every=5, **BASE),
            second,
            resume=src,
            progress=False,
            step_hook=_poison_at(3),
        )
    assert src.exists() and not (second / "checkpoint.safetensors").exists()


def test_resume_from_weights_only(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(steps=2, **BASE), run, progress=False)
    ck = load_checkpoint(run / "checkpoint.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_checkpoint(bare, params=ck.params, ema=ck.ema, step=ck.step, config=ck.config, state={})
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"checkpoint='{bare}' lacks the run state an exact resume needs (metadata 'state' has no "
            "'data_stream', 'host_rng'); to continue from its weights only"
        ),
    ):
        train(TrainConfig(steps=4, **BASE), tmp_path / "new", resume=bare, progress=False)
    res = train(
        TrainConfig(steps=4, **BASE),
        tmp_path / "new",
        resume=bare,
        weights_only=True,
        progress=False,
    )
    assert res["step"] == 4
    assert [r["step"] for r in read_metrics(tmp_path / "new" / "metrics.jsonl")] == [3, 4]


def test_ema_warmup_formula_and_the_trainer_follows_it(tmp_path):
    # decay of update n+1 is min(max, (1 + n) / (10 + n)) (diffusers' EMAModel warm-up)
    assert [ema_decay(s, 0.9999) for s in (1, 2, 11)] == [0.1, 2 / 11, 11 / 20]
    assert ema_decay(10**6, 0.9999) == 0.9999 and ema_decay(5, 0.9, warmup=False) == 0.9
    # after 2000 updates the initial weights keep weight prod(decays) ≈ 0.5 %, not 0.9999^2000 ≈ 82 %
    keep = np.prod([ema_decay(s, 0.9999) for s in range(1, 2001)])
    assert keep < 0.01 < 0.8 < 0.9999**2000
    from refdiff.unet.config import get_preset
    from refdiff.unet.params import init_params

    train(TrainConfig(steps=1, ema=0.9999, **BASE), tmp_path, progress=False)
    ck = load_checkpoint(tmp_path / "checkpoint.safetensors")
    init = init_params(get_preset("tiny"), 0)
    assert set(init) == set(ck.ema)
    for k in init:
        np.testing.assert_allclose(
            ck.ema[k], 0.1 * init[k] + 0.9 * ck.params[k], rtol=1e-12, atol=1e-15, err_msg=k
        )
    assert any(not np.array_equal(ck.ema[k], init[k]) for k in init)


def test_a_non_finite_sampler_step_is_named():
    import array_api_compat.numpy as xp

    from refdiff.train.driver import build_schedule, sample_images

    def nan_net(x, t, y=None):
        return xp.full_like(x, np.nan)

    sched = build_schedule("linear", 10)
    with pytest.raises(ValueError, match=r"non-finite values in the .* at step 0 of 5 \(t="):
        sample_images(nan_net, sched, shape=(2, 1, 4, 4), xp=xp, dtype=xp.float64, steps=5)
    out = sample_images(
        nan_net, sched, shape=(2, 1, 4, 4), xp=xp, dtype=xp.float64, steps=5, check_finite=False
    )
    assert np.isnan(out).all()  # only when asked for


def test_bpd_says_up_front_when_n_exceeds_the_data(tmp_path, capsys):
    from refdiff.cli import main

    run = tmp_path / "run"
    train(TrainConfig(steps=1, **{**BASE, "dtype": "float32"}), run, progress=False)
    data = tmp_path / "three.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    rc = main(["bpd", "--ckpt", str(run), "--data", f"npy:{data}", "--n", "5", "--batch", "2"])
    err = capsys.readouterr().err
    assert rc == 0
    note = err.index("--n=5 but ")
    assert "holds 3 images; evaluating all 3" in err
    assert "3 images x T=10 network evaluations each (30 in all)" in err
    assert note < err.index("bpd 100%|")  # before the work, and the bar has an ETA
    assert re.search(r"bpd +\d+%\|.*\[\d", err)
