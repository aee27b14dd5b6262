"""Training throughput and peak memory of the refdiff UNet: CuPy (refdiff kernels) vs PyTorch eager, same precision.

One run measures both backends on the same synthetic batch stream and prints img/s, ms/step,
peak memory and the ratio CuPy / PyTorch::

    python benchmarks/bench_cupy_train.py                       # ddpm-cifar10, batch 128, TF32, CUDA
    python benchmarks/bench_cupy_train.py --precision fp32      # strict float32 on both
    python benchmarks/bench_cupy_train.py --device cpu --preset tiny --batch 4 --steps 2 --warmup 1
                                                                # smoke run: NumPy stands in for CuPy

A step is the whole training step of each backend's trainer (``backends/cupy/train.py``,
``backends/torch/train.py``): host batch to device, q_sample, forward, backward, clipping, Adam,
EMA. Both use float32 weights; ``--precision`` sets the GEMM/convolution precision of both:
``tf32`` (CuPy: CUBLAS_COMPUTE_32F_FAST_TF32 and CuPy's TF32 matmul; torch:
``allow_tf32`` for cuBLAS and cuDNN), ``fp32`` (strict on both), ``bf16`` (CuPy: fp32 storage,
bf16 tensor-core inputs; torch: bf16 autocast). Timing: ``--warmup`` untimed steps, then
``--steps`` timed steps ended by a device synchronisation (the trainer's ``collect``).
Peak memory: ``torch.cuda.max_memory_allocated``; for CuPy the memory pool's total bytes after
the run (the pool keeps freed blocks, so this is its high-water mark); on the CPU, tracemalloc's
peak for the NumPy stand-in and nothing for torch (its CPU allocator is not traced).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

PRECISIONS = ("tf32", "fp32", "bf16")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ddpm-cifar10", help="UNet preset (default ddpm-cifar10)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (compilation, autotune)"
    )
    p.add_argument("--precision", choices=PRECISIONS, default="tf32")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--backends", default="cupy,torch", help="comma-separated: cupy, torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p


def _train_config(backend: str, args) -> Any:
    from refdiff.train.driver import TrainConfig

    return TrainConfig(
        backend=backend,
        preset=args.preset,
        batch=args.batch,
        dtype="float32",
        device=args.device,
        bf16=args.precision == "bf16" and backend == "torch",
        lr=2e-4,
        grad_clip=1.0,
        ema=0.9999,
        seed=args.seed,
        steps=args.warmup + args.steps,
    )


def _batches(args, unet_cfg, n: int):
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, unet_cfg.in_channels, unet_cfg.image_size, unet_cfg.image_size)
    for _ in range(n):
        x0 = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        t = rng.integers(0, 1000, size=args.batch)
        yield x0, t, np.ones(args.batch, dtype=np.float32)


def _torch_precision(precision: str, cuda: bool):
    import torch

    if cuda:
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True


def run_backend(name: str, args) -> dict[str, Any]:
    """Time ``args.steps`` training steps of one backend; returns img/s, ms/step and peak bytes."""
    from refdiff.train.driver import build_schedule
    from refdiff.unet.config import get_preset

    cfg = _train_config(name, args)
    unet_cfg = get_preset(args.preset)
    sched = build_schedule("linear", 1000)
    cuda = args.device != "cpu"
    traced = False
    if name == "cupy":
        from refdiff.backends.cupy.train import make_trainer

        if cuda:
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
        else:
            tracemalloc.start()
            traced = True
        trainer = make_trainer(cfg, unet_cfg, sched, precision=args.precision)
    elif name == "torch":
        import torch

        from refdiff.backends.torch.train import make_trainer

        _torch_precision(args.precision, cuda)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        trainer = make_trainer(cfg, unet_cfg, sched)
    else:
        raise SystemExit(f"--backends: unknown backend {name!r}; expected cupy or torch")
    try:
        batches = _batches(args, unet_cfg, args.warmup + args.steps)
        step = 0
        for _ in range(args.warmup):
            x0, t, w = next(batches)
            step += 1
            trainer.step(x0, None, t, w, step)
        trainer.collect()  # synchronises the device
        t0 = time.perf_counter()
        for _ in range(args.steps):
            x0, t, w = next(batches)
            step += 1
            trainer.step(x0, None, t, w, step)
        stats = trainer.collect()
        elapsed = time.perf_counter() - t0
        if name == "cupy":
            peak = (
                cupy.get_default_memory_pool().total_bytes()
                if cuda
                else tracemalloc.get_traced_memory()[1]
            )
        else:
            peak = torch.cuda.max_memory_allocated() if cuda else None
        desc = trainer.describe()
    finally:
        if traced:
            tracemalloc.stop()
        trainer.close()
    return {
        "backend": name,
        "img_per_s": args.batch * args.steps / elapsed,
        "ms_per_step": 1000.0 * elapsed / args.steps,
        "peak_bytes": peak,
        "loss": stats.get("loss"),
        "describe": desc,
    }


def main(argv=None) -> dict[str, Any]:
    """Run the benchmark; print a table and the CuPy / PyTorch ratio; return the results."""
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    for n in names:
        if n not in ("cupy", "torch"):
            raise SystemExit(f"--backends: unknown backend {n!r}; expected cupy or torch")
    results = [run_backend(n, args) for n in names]
    by = {r["backend"]: r for r in results}
    ratio = (
        by["cupy"]["img_per_s"] / by["torch"]["img_per_s"]
        if "cupy" in by and "torch" in by
        else None
    )
    out = {
        "preset": args.preset,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "precision": args.precision,
        "device": args.device,
        "results": results,
        "ratio_cupy_over_torch": ratio,
        "python": platform.python_version(),
        "gpu": next((r["describe"].get("gpu") for r in results if r["describe"].get("gpu")), None),
    }
    print(
        f"# {args.preset}, batch {args.batch}, {args.precision}, device {args.device}"
        f"{', GPU ' + out['gpu'] if out['gpu'] else ''}; {args.steps} timed steps after "
        f"{args.warmup} warm-up"
    )
    print(f"{'backend':8s} {'img/s':>10s} {'ms/step':>10s} {'peak MiB':>10s} {'loss':>10s}")
    for r in results:
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        print(
            f"{r['backend']:8s} {r['img_per_s']:10.1f} {r['ms_per_step']:10.2f} {peak:>10s} "
            f"{r['loss']:10.4f}"
        )
    if ratio is not None:
        print(f"ratio cupy/torch (img/s): {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
