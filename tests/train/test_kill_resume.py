"""A training process killed (SIGKILL) in the middle of a checkpoint write: the previous checkpoint
survives intact, the next start removes the partial write and the metrics written after the
checkpoint, and the resumed run ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from refdiff.train.checkpoint import load_checkpoint
from refdiff.train.metrics import read_metrics

# float64, dropout on, a checkpoint and a metrics record every step
CFG = dict(
    preset="tiny", batch=4, T=10, dtype="float64", ema=0.9, log_every=1, ckpt_every=1, n_samples=0
)
STEPS, KILL_AT = 5, 3

# The child trains; while writing the checkpoint of step KILL_AT it stops between writing the
# temporary file and renaming it over the checkpoint, and says so in a marker file.
CHILD = r"""
import json, os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import refdiff.train.driver as D
out, steps, kill_at, cfg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
resume = len(sys.argv) > 5
real_save, real_replace = D.save_checkpoint, os.replace

def hang(src, dst):
    Path(out, "WRITING").write_text(str(src))
    time.sleep(600)

def save(path, **kw):
    if kw["step"] == kill_at:
        os.replace = hang
    try:
        return real_save(path, **kw)
    finally:
        os.replace = real_replace

D.save_checkpoint = save
D.train(D.TrainConfig(steps=steps, **cfg), out, resume=resume or None, progress=False)
"""


def _child(out, steps: int, kill_at: int, *resume: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(steps), str(kill_at), json.dumps(CFG), *resume],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    return err


def test_kill_during_checkpoint_write_then_resume_is_bit_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ref = _child(straight, STEPS, -1)  # the uninterrupted run, alongside
    victim = _child(killed, STEPS, KILL_AT)
    marker = killed / "WRITING"
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline, "the child never reached the checkpoint write"
            time.sleep(0.05)
    finally:  # never leave a child behind, whatever happened
        for p in (victim,) if marker.exists() else (victim, ref):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL

    # the kill left the temporary file and the previous checkpoint, intact and loadable
    tmp = killed / os.path.basename(marker.read_text())
    assert tmp.name.startswith(".checkpoint.safetensors.tmp-") and tmp.stat().st_size > 0
    assert load_checkpoint(killed / "checkpoint.safetensors").step == KILL_AT - 1
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == list(
        range(1, KILL_AT + 1)
    )

    err = _finish(_child(killed, STEPS, -1, "resume"))
    assert (
        f"removed {tmp.name} (" in err
        and "a checkpoint write an interrupted run left behind" in err
    )
    assert f"dropped 1 metrics records after step {KILL_AT - 1}" in err
    assert not tmp.exists() and not list(killed.glob(".checkpoint.safetensors.tmp-*"))
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == list(range(1, STEPS + 1))

    _finish(ref)
    a = load_checkpoint(straight / "checkpoint.safetensors")
    b = load_checkpoint(killed / "checkpoint.safetensors")
    assert a.step == b.step == STEPS
    for section in ("params", "ema", "optimizer", "rng"):
        da, db = getattr(a, section), getattr(b, section)
        assert da.keys() == db.keys() and da
        for k in da:
            np.testing.assert_array_equal(da[k], db[k], err_msg=f"{section}/{k}")
    assert a.state == b.state
    la, lb = read_metrics(straight / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
