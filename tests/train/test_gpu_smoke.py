"""GPU smoke run: the full ddpm-cifar10 UNet trains for a few hundred steps on CUDA and its loss falls."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from refdiff.train.checkpoint import load_checkpoint  # noqa: E402
from refdiff.train.driver import TrainConfig, train  # noqa: E402
from refdiff.train.images import read_png  # noqa: E402
from refdiff.train.metrics import read_metrics  # noqa: E402


def test_ddpm_cifar10_loss_falls_on_gpu(tmp_path):
    cfg = TrainConfig(
        preset="ddpm-cifar10",
        data="digits",
        steps=300,
        batch=64,
        lr=2e-4,
        warmup=50,
        log_every=10,
        ckpt_every=150,
        n_samples=16,
        sample_steps=25,
        device="cuda",
    )
    res = train(cfg, tmp_path, progress=False)
    recs = read_metrics(tmp_path / "metrics.jsonl")
    losses = [r["loss"] for r in recs]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first = losses[0]  # mean over steps 1-10: about 1 (zero-initialised output)
    last = sum(losses[-3:]) / 3  # mean over steps 271-300
    rates = sorted(r["img_per_s"] for r in recs[1:])
    print(
        f"\nddpm-cifar10 on {torch.cuda.get_device_name()}: loss {first:.4f} -> {last:.4f}, "
        f"median {rates[len(rates) // 2]:.0f} img/s; curve {[round(v, 4) for v in losses]}"
    )
    assert 0.5 < first < 1.5
    assert last < 0.5 * first
    ck = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert ck.step == 300 and "torch_cuda/0" in ck.rng
    assert read_png(res["samples"]).shape == (4 * 33 + 1, 4 * 33 + 1, 3)
