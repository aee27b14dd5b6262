"""Data parallelism: 2 gloo processes under torchrun train to the same weights as 1 process with the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from refdiff.train.checkpoint import load_checkpoint  # noqa: E402
from refdiff.train.driver import TrainConfig, train  # noqa: E402
from refdiff.train.metrics import read_metrics  # noqa: E402

# dropout 0: with dropout each rank draws its own masks, so the runs would agree only in law
ARGS = [
    "--preset",
    "tiny",
    "--dropout",
    "0",
    "--dtype",
    "float64",
    "--steps",
    "3",
    "--batch",
    "4",
    "--T",
    "20",
    "--n-samples",
    "0",
    "--log-every",
    "1",
    "--device",
    "cpu",
    "--no-progress",
]


def test_two_gloo_processes_equal_one_with_the_doubled_batch(tmp_path):
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "refdiff.train.cli",
        "train",
        *ARGS,
        "--out",
        str(ddp_out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    train(
        TrainConfig(
            preset="tiny",
            unet={"dropout": 0.0},
            dtype="float64",
            steps=3,
            batch=4,
            T=20,
            n_samples=0,
            log_every=1,
            device="cpu",
        ),
        one_out,
        progress=False,
    )
    a = load_checkpoint(ddp_out / "checkpoint.safetensors")
    b = load_checkpoint(one_out / "checkpoint.safetensors")
    assert a.state["world_size"] == 2 and b.state["world_size"] == 1
    assert {"torch_cpu/0", "torch_cpu/1"} <= set(a.rng)
    init_moved = 0
    for k in b.params:
        # equal up to the summation order of the gradient all-reduce: ~1e-16 relative in the
        # gradients; Adam's g/(√v + ε) can amplify that for entries with |g| near ε, hence 1e-10
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=0, atol=1e-10, err_msg=k)
        np.testing.assert_allclose(a.ema[k], b.ema[k], rtol=0, atol=1e-10, err_msg=k)
        init_moved += int(np.max(np.abs(b.params[k] - a.ema[k])) > 1e-6)
    assert init_moved > 0  # the weights did move, so the comparison has teeth
    la, lb = read_metrics(ddp_out / "metrics.jsonl"), read_metrics(one_out / "metrics.jsonl")
    assert [r["step"] for r in la] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in la], [r["loss"] for r in lb], rtol=1e-12)
    np.testing.assert_allclose(
        [r["grad_norm"] for r in la], [r["grad_norm"] for r in lb], rtol=1e-10
    )
