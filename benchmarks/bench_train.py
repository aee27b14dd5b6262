"""Training throughput and peak memory: refdiff's torch UNet against diffusers' UNet2DModel, side by side.

One process, one GPU. Both networks are the same architecture (the ``--preset``, by default
Ho et al.'s CIFAR-10 UNet: block_out_channels (128, 256, 256, 256), 2 res blocks per level,
single-head attention at 16×16 and in the middle, dropout 0.1, 35,746,307 parameters each) and
run through the *same* training step (``refdiff.backends.torch.fast.TrainStep``): noise and
timesteps drawn on the device, q_sample, L_simple, backward, Adam (fused on CUDA), EMA of the
weights. Only the network differs. Data is synthetic, already on the device (four random batches
in [-1, 1], rotated), so the numbers are the step's, not a data loader's.

Configurations (``--configs``, comma separated; default all):

  fp32                   float32, TF32 off                                 (issue 7's list)
  tf32                   float32 with TF32 matmuls/convolutions            (issue 7's list)
  bf16                   bf16 autocast (TF32 on)                           (issue 7's list)
  bf16-cl                + channels_last                                   (issue 7's list)
  bf16-cl-compile        + torch.compile()                                 (issue 7's list)
  bf16-cl-compile-ro     + torch.compile(mode="reduce-overhead")           (issue 7's list)
  bf16-cl-graph          bf16 + channels_last, whole step as one CUDA graph, no compile
  bf16-cl-compile-graph  bf16 + channels_last + torch.compile() + whole-step CUDA graph

refdiff's GroupNorm path is chosen with ``--fused-norm`` (torch | triton | auto; several give
several refdiff rows). diffusers runs every configuration too; the graph rows are not diffusers
configurations a user would find in diffusers (they use refdiff's step), so the summary compares
refdiff's best row with the best of diffusers' rows from issue 7's list and, separately, with
diffusers' best row overall.

Method (``docs/BENCHMARKS.md``): per row a fresh model (seed 0), ``--warmup`` steps (compilation,
cuDNN autotuning, graph capture happen here; their wall time is reported as ``warmup_s``), then
``--repeats`` runs of ``--steps`` steps, each timed with CUDA events; ms/step is the median run.
Peak memory is ``torch.cuda.max_memory_allocated`` over the timed runs (weights, Adam state,
EMA, activations, graph pools). img/s = batch / (ms/step). TFLOP/s uses the analytic count
3 × 2 × forward MACs per image (37.3 GFLOP for ddpm-cifar10).

Usage::

    python benchmarks/bench_train.py                                   # everything, batch 128
    python benchmarks/bench_train.py --configs fp32,tf32,bf16,bf16-cl --json results/eager.json
    python benchmarks/bench_train.py --table-from results/eager.json results/compiled.json
    python benchmarks/bench_train.py --device cpu --preset tiny --batch 4 --steps 2 --repeats 1 \\
        --warmup 1 --configs fp32,bf16-cl                                # a check of the script

A row that fails (e.g. a compile error) is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

CONFIGS = {
    "fp32": dict(
        label="fp32 (TF32 off)",
        tf32=False,
        bf16=False,
        cl=False,
        compile=None,
        graphs=False,
        std=True,
    ),
    "tf32": dict(
        label="TF32", tf32=True, bf16=False, cl=False, compile=None, graphs=False, std=True
    ),
    "bf16": dict(
        label="bf16 autocast", tf32=True, bf16=True, cl=False, compile=None, graphs=False, std=True
    ),
    "bf16-cl": dict(
        label="bf16 + channels_last",
        tf32=True,
        bf16=True,
        cl=True,
        compile=None,
        graphs=False,
        std=True,
    ),
    "bf16-cl-compile": dict(
        label="bf16 + CL + compile",
        tf32=True,
        bf16=True,
        cl=True,
        compile="default",
        graphs=False,
        std=True,
    ),
    "bf16-cl-compile-ro": dict(
        label='bf16 + CL + compile("reduce-overhead")',
        tf32=True,
        bf16=True,
        cl=True,
        compile="reduce-overhead",
        graphs=False,
        std=True,
    ),
    "bf16-cl-graph": dict(
        label="bf16 + CL + whole-step CUDA graph",
        tf32=True,
        bf16=True,
        cl=True,
        compile=None,
        graphs=True,
        std=False,
    ),
    "bf16-cl-compile-graph": dict(
        label="bf16 + CL + compile + whole-step CUDA graph",
        tf32=True,
        bf16=True,
        cl=True,
        compile="default",
        graphs=True,
        std=False,
    ),
}
MODELS = ("refdiff", "diffusers")


def _split(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def build_model(model: str, ucfg, device, variant: str):
    import torch

    if model == "refdiff":
        from refdiff.backends.torch.unet import from_config

        m = from_config(ucfg, seed=0, dtype=torch.float32, device=device)
        m.set_fast_paths(fused_norm=variant)
        return m, None
    torch.manual_seed(0)
    return bc.diffusers_unet(ucfg).to(device), bc.diffusers_forward


def run_row(model: str, cname: str, variant: str, ucfg, args, device) -> dict:
    """Build, warm up and time one (model, configuration) row."""
    import torch

    from refdiff.backends.torch.fast import make_train_step, set_tf32

    c = CONFIGS[cname]
    row = {
        "model": model,
        "config": cname,
        "variant": variant,
        "label": c["label"],
        "standard": c["std"],
        "batch": args.batch,
        "preset": args.preset,
    }
    cuda = str(device).startswith("cuda")
    if c["graphs"] and not cuda:
        row["status"] = "skipped: CUDA graphs need a CUDA device"
        return row
    step = net = None
    try:
        if cuda:
            set_tf32(c["tf32"])
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(args.seed)
        net, forward = build_model(model, ucfg, device, variant)
        compile_mode = c["compile"]
        if compile_mode == "reduce-overhead" and (not cuda or args.compile_backend != "inductor"):
            row["note"] = "reduce-overhead needs CUDA and inductor: compiled without CUDA graphs"
            compile_mode = "default"
        step = make_train_step(
            net,
            forward=forward,
            bf16=c["bf16"],
            channels_last=c["cl"],
            compile_mode=compile_mode,
            cuda_graphs=c["graphs"],
            compile_backend=args.compile_backend,
            lr=2e-4,
            ema_decay=0.9999,
        )
        shape = (args.batch, ucfg.in_channels, ucfg.image_size, ucfg.image_size)
        gen = torch.Generator(device=device).manual_seed(args.seed + 1)
        data = [torch.rand(shape, generator=gen, device=device) * 2 - 1 for _ in range(4)]
        t0 = time.perf_counter()
        loss = None
        for k in range(args.warmup):
            loss = step(data[k % 4])
        bc.synchronize(device)
        row["warmup_s"] = round(time.perf_counter() - t0, 2)
        bc.reset_peak(device)
        box = {}

        def one(k):
            box["loss"] = step(data[k % 4])

        times = bc.timed_repeats(one, device=device, iters=args.steps, repeats=args.repeats)
        loss = box.get("loss", loss)
        ms = bc.median(times)
        alloc, reserved = bc.peak_gb(device)
        flops = bc.train_flops_per_image(ucfg) * args.batch
        row.update(
            status="ok",
            ms_per_step=ms,
            ms_runs=times,
            img_per_s=args.batch * 1e3 / ms,
            tflops=flops / (ms * 1e-3) / 1e12,
            peak_alloc_gb=alloc,
            peak_reserved_gb=reserved,
            loss=float(loss) if loss is not None else None,
            params=sum(p.numel() for p in net.parameters()),
        )
        if row["loss"] is not None and not (row["loss"] == row["loss"]):
            row["status"] = "error: the loss is NaN"
    except Exception as e:  # noqa: BLE001 - record and go on
        row["status"] = (
            f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        )
        row["traceback"] = traceback.format_exc()[-4000:]
    finally:
        step = net = None  # noqa: F841 (free before cleanup)
        bc.cleanup(device)
    return row


# ------------------------------------------------------------------------------ report
def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("status") == "ok"]
    ref = [r for r in ok if r["model"] == "refdiff"]
    dif_std = [r for r in ok if r["model"] == "diffusers" and r.get("standard")]
    dif_all = [r for r in ok if r["model"] == "diffusers"]
    best = lambda rs: max(rs, key=lambda r: r["img_per_s"]) if rs else None  # noqa: E731
    out = {
        "best_refdiff": best(ref),
        "best_diffusers": best(dif_std),
        "best_diffusers_any": best(dif_all),
    }
    b, d = out["best_refdiff"], out["best_diffusers"]
    if b and d:
        out["speedup"] = b["img_per_s"] / d["img_per_s"]
        out["target_speedup"] = 1.5
        out["meets_speed"] = out["speedup"] >= 1.5
        if b.get("peak_alloc_gb") is not None and d.get("peak_alloc_gb") is not None:
            out["memory_ratio"] = b["peak_alloc_gb"] / d["peak_alloc_gb"]
            out["meets_memory"] = b["peak_alloc_gb"] <= d["peak_alloc_gb"]
    da = out["best_diffusers_any"]
    if b and da:
        out["speedup_vs_any"] = b["img_per_s"] / da["img_per_s"]
    return out


def report(rows: list[dict], envs: list[dict]) -> str:
    order = {k: i for i, k in enumerate(CONFIGS)}
    lines = []
    env = envs[-1] if envs else {}
    lines.append(
        f"device: {env.get('gpu') or env.get('cpu') or env.get('device')} | torch {env.get('torch')} "
        f"| CUDA {env.get('cuda')} | cuDNN {env.get('cudnn')} | triton {env.get('triton')} "
        f"| diffusers {env.get('diffusers')} | refdiff {env.get('refdiff_commit')}"
        f"{' (dirty)' if env.get('refdiff_dirty') else ''}"
    )
    batch = next((r.get("batch") for r in rows), None)
    lines.append(
        f"batch {batch}, preset {next((r.get('preset') for r in rows), None)}; img/s (higher is better), "
        "peak = max allocated GB; ratio = refdiff img/s / diffusers img/s"
    )
    lines.append("")
    by = {}
    for r in rows:
        by.setdefault(r["config"], {}).setdefault(r["model"], []).append(r)
    table = []
    for cname in sorted(by, key=lambda k: order.get(k, 99)):
        d = [r for r in by[cname].get("diffusers", []) if r.get("status") == "ok"]
        f = [r for r in by[cname].get("refdiff", []) if r.get("status") == "ok"]
        dr = max(d, key=lambda r: r["img_per_s"]) if d else None
        fr = max(f, key=lambda r: r["img_per_s"]) if f else None
        label = CONFIGS.get(cname, {}).get("label", cname) + (
            "" if CONFIGS.get(cname, {}).get("std", True) else " *"
        )

        def cell(r, rs):
            if r:
                return bc.fmt(r["img_per_s"]), bc.fmt(r.get("peak_alloc_gb"), 2)
            st = [x.get("status", "") for x in rs]
            return (st[0].split(":")[0] if st else "–"), "–"

        di, dm = cell(dr, by[cname].get("diffusers", []))
        fi, fm = cell(fr, by[cname].get("refdiff", []))
        ratio = bc.fmt(fr["img_per_s"] / dr["img_per_s"], 2) + "×" if (fr and dr) else "–"
        table.append([label, di, dm, fi, fm, fr["variant"] if fr else "–", ratio])
    lines.append(
        bc.markdown_table(
            [
                "configuration",
                "diffusers img/s",
                "peak GB",
                "refdiff img/s",
                "peak GB",
                "refdiff GN",
                "ratio",
            ],
            table,
        )
    )
    lines.append(
        "* not a diffusers configuration: both networks run refdiff's whole-step CUDA graph"
    )
    lines.append("")
    detail = []
    for r in sorted(
        rows, key=lambda r: (order.get(r["config"], 99), r["model"], r.get("variant", ""))
    ):
        if r.get("status") == "ok":
            runs = r.get("ms_runs") or []
            spread = (max(runs) - min(runs)) / r["ms_per_step"] * 100 if runs else float("nan")
            detail.append(
                [
                    r["model"],
                    r["config"],
                    r.get("variant", ""),
                    bc.fmt(r["ms_per_step"], 2),
                    bc.fmt(spread, 1) + "%",
                    bc.fmt(r["img_per_s"]),
                    bc.fmt(r.get("tflops"), 1),
                    bc.fmt(r.get("peak_alloc_gb"), 2),
                    bc.fmt(r.get("warmup_s"), 1),
                    bc.fmt(r.get("loss"), 4),
                ]
            )
        else:
            detail.append(
                [r["model"], r["config"], r.get("variant", ""), r.get("status", "?")[:60]]
                + [""] * 6
            )
    lines.append(
        bc.markdown_table(
            [
                "model",
                "config",
                "variant",
                "ms/step",
                "spread",
                "img/s",
                "TFLOP/s",
                "peak GB",
                "warmup s",
                "loss",
            ],
            detail,
        )
    )
    s = summarize(rows)
    lines.append("")
    b, d = s.get("best_refdiff"), s.get("best_diffusers")
    if b and d:
        lines.append(
            f"best refdiff: {b['config']} ({b['variant']}) {bc.fmt(b['img_per_s'])} img/s, "
            f"{bc.fmt(b.get('peak_alloc_gb'), 2)} GB | best diffusers (issue 7's list): {d['config']} "
            f"{bc.fmt(d['img_per_s'])} img/s, {bc.fmt(d.get('peak_alloc_gb'), 2)} GB"
        )
        mem = s.get("meets_memory")
        lines.append(
            f"speed-up {s['speedup']:.2f}× (target ≥ 1.5×: {'met' if s['meets_speed'] else 'NOT met'}); "
            f"peak memory {'≤' if mem else '>' if mem is not None else '?'} diffusers'"
            + (f" ({s['memory_ratio']:.2f}×)" if "memory_ratio" in s else "")
        )
        da = s.get("best_diffusers_any")
        if da and da is not d:
            lines.append(
                f"against diffusers' best row of any kind ({da['config']}, {bc.fmt(da['img_per_s'])} img/s): "
                f"{s['speedup_vs_any']:.2f}×"
            )
    else:
        lines.append("summary: needs an ok row of each model")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument(
        "--fused-norm",
        default="auto",
        help="refdiff GroupNorm path(s): torch, triton, auto (comma separated)",
    )
    ap.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first (compile, autotune, capture)"
    )
    ap.add_argument("--steps", type=int, default=20, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs (the median is reported)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    ap.add_argument("--json", default=None, help="write env, rows and summary here")
    ap.add_argument(
        "--table-from", nargs="+", default=None, help="print the table of earlier JSON outputs"
    )
    args = ap.parse_args(argv)

    if args.table_from:
        rows, envs = bc.read_rows(args.table_from)
        print(report(rows, envs))
        if args.json:
            bc.write_json(
                args.json,
                {"env": envs[-1] if envs else {}, "rows": rows, "summary": summarize(rows)},
            )
        return 0

    import torch

    from refdiff.unet import get_preset

    configs, models = _split(args.configs), _split(args.models)
    variants = _split(args.fused_norm)
    bad = (
        [c for c in configs if c not in CONFIGS]
        + [m for m in models if m not in MODELS]
        + [v for v in variants if v not in ("torch", "triton", "auto")]
    )
    if bad:
        ap.error(
            f"unknown configuration/model/variant {bad}; configs: {', '.join(CONFIGS)}; models: "
            f"{', '.join(MODELS)}; --fused-norm: torch, triton, auto"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU (use --device cpu for a check of the script)"}))
        return 0
    ucfg = get_preset(args.preset)
    env = bc.env_info(device)
    rows = []
    if "diffusers" in models and not bc.diffusers_available():
        print(
            "diffusers is not installed: its rows are skipped (pip install diffusers)",
            file=sys.stderr,
        )
        rows += [
            {
                "model": "diffusers",
                "config": c,
                "variant": "-",
                "status": "skipped: diffusers not installed",
                "batch": args.batch,
                "preset": args.preset,
            }
            for c in configs
        ]
        models = [m for m in models if m != "diffusers"]
    for cname in configs:
        for model in models:
            for variant in variants if model == "refdiff" else ["-"]:
                r = run_row(model, cname, variant, ucfg, args, device)
                rows.append(r)
                msg = (
                    f"{r['ms_per_step']:.2f} ms/step, {r['img_per_s']:.0f} img/s, "
                    f"peak {bc.fmt(r.get('peak_alloc_gb'), 2)} GB, warmup {r.get('warmup_s')} s"
                    if r.get("status") == "ok"
                    else r.get("status")
                )
                print(f"[{model:9s} {cname:22s} {variant:6s}] {msg}", file=sys.stderr, flush=True)
    if args.json:
        bc.write_json(
            args.json, {"env": env, "args": vars(args), "rows": rows, "summary": summarize(rows)}
        )
    print(report(rows, [env]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
