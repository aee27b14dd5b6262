"""GPU training smoke run and throughput: train a preset for a few hundred steps, report loss curve and img/s.

Usage (on a CUDA machine)::

    python benchmarks/train_smoke_gpu.py                       # ddpm-cifar10, 300 steps, batch 128, fp32/TF32
    python benchmarks/train_smoke_gpu.py --bf16 --channels-last --compile
    python benchmarks/train_smoke_gpu.py --out gpu-results/train_smoke   # result.json, metrics, grid

It runs ``refdiff.train.train`` (the same driver as ``refdiff train``) on the embedded digits
rendered at the preset's size, then prints one JSON object: the device, the options, the loss
curve (one point per ``--log-every`` steps), the median img/s of the logged intervals after the
first (compilation and cuDNN autotuning happen in the first), the peak GPU memory, and whether
the loss fell (last logged loss < ``--fall`` × first). Exit status 1 if it did not.
``--device cpu --preset tiny --steps 20`` runs anywhere (a check of the script itself).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-tf32", action="store_true")
    ap.add_argument("--n-samples", type=int, default=16, help="sample grid at the end (0: none)")
    ap.add_argument("--fall", type=float, default=0.5, help="required ratio last/first logged loss")
    ap.add_argument(
        "--out",
        default=None,
        help="results folder: result.json, metrics.jsonl, config.json and "
        "the sample grid are copied here (the run itself, with its large checkpoint, goes to "
        "--run-dir)",
    )
    ap.add_argument("--run-dir", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)

    import torch

    from refdiff.train.driver import TrainConfig, train
    from refdiff.train.metrics import read_metrics

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU"}))
        return 0
    out = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="refdiff_smoke_"))
    cfg = TrainConfig(
        preset=args.preset,
        data="digits",
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        log_every=args.log_every,
        device=args.device,
        bf16=args.bf16,
        channels_last=args.channels_last,
        compile=args.compile,
        tf32=not args.no_tf32,
        n_samples=args.n_samples,
        sample_steps=50,
        ckpt_every=0,
    )
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = train(cfg, out, progress=True)
    wall = time.perf_counter() - t0
    recs = read_metrics(out / "metrics.jsonl")
    rates = sorted(r["img_per_s"] for r in recs[1:]) or [recs[0]["img_per_s"]]
    first, last = recs[0]["loss"], recs[-1]["loss"]
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "batch": args.batch,
        "steps": args.steps,
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "tf32": not args.no_tf32,
        "img_per_s_median": rates[len(rates) // 2],
        "img_per_s_max": rates[-1],
        "peak_mem_gib": (torch.cuda.max_memory_allocated() / 2**30)
        if args.device.startswith("cuda")
        else None,
        "wall_s": wall,
        "loss_first": first,
        "loss_last": last,
        "loss_fell": last < args.fall * first,
        "loss_curve": [[r["step"], r["loss"]] for r in recs],
        "samples": str(res["samples"]),
        "out": str(out),
    }
    text = json.dumps(result, indent=1)
    print(text)
    targets = [Path(args.json)] if args.json else []
    if args.out:
        res_dir = Path(args.out)
        res_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "config.json"):
            shutil.copy2(out / name, res_dir / name)
        if res["samples"]:
            shutil.copy2(res["samples"], res_dir / "samples.png")
        targets.append(res_dir / "result.json")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
    if not args.run_dir and args.out:
        shutil.rmtree(out, ignore_errors=True)  # the temporary run (its checkpoint is large)
    return 0 if result["loss_fell"] else 1


if __name__ == "__main__":
    sys.exit(main())
