"""Sampling throughput at batch 256 and the share of each step spent outside the network.

Samplers (``--samplers``): ``ddim50`` (DDIM, η = 0, 50 steps, trailing spacing) and ``dpmpp20``
(multistep DPM-Solver++(2M), 20 model evaluations). Each is run by refdiff's sampling path
(``refdiff.train.sampling.run_sampler``: the registry samplers ``ddim`` and ``dpmpp_2m``, the
same code ``refdiff sample`` uses) and, when diffusers is installed, by diffusers' own
scheduler loop (``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` with ``set_timesteps`` and
``step``) — each loop driving refdiff's network and diffusers' ``UNet2DModel`` of the same
architecture (``--loops``, ``--models``). No clipping of x̂0 in either loop.

The network is wrapped once by ``refdiff.backends.torch.fast.make_inference_fn`` with the same
settings for both models (``--net``: eager | compile | graph | compile-graph; bf16 autocast and
channels_last unless ``--fp32`` / ``--no-channels-last``).

Per row: one untimed warm-up run (compilation, graph capture, cuDNN autotuning), ``--repeats``
timed runs (median; CUDA: synchronised before and after, wall clock), then one instrumented run
with CUDA events around every network call: outside share = 1 − (Σ network-call GPU time) /
(run time), i.e. the sampler's own kernels plus the time the GPU waits for the host between
network calls (host syncs, Python). A second estimate times the network alone for the same
number of calls (``share_outside_direct``). Target: ≤ 1 %.

Usage::

    python benchmarks/bench_sample.py                                  # batch 256, CUDA graphs
    python benchmarks/bench_sample.py --net compile-graph --json results/sample.json
    python benchmarks/bench_sample.py --device cpu --preset tiny --batch 2 --scale-steps 0.1 \\
        --repeats 1 --net eager                                          # a check of the script
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

SAMPLERS = {"ddim50": ("ddim", 50), "dpmpp20": ("dpmpp_2m", 20)}
NETS = {
    "eager": (None, False),
    "compile": ("default", False),
    "graph": (None, True),
    "compile-graph": ("default", True),
}
MODELS = ("refdiff", "diffusers")
LOOPS = ("refdiff", "diffusers")


def _split(s):
    return [v.strip() for v in s.split(",") if v.strip()]


class TimedNet:
    """Calls the network and records its time: CUDA events around each call, or host time on CPU."""

    def __init__(self, fn, device):
        self.fn, self.cuda = fn, str(device).startswith("cuda")
        self.events, self.host = [], []

    def __call__(self, x, t):
        import torch

        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = self.fn(x, t)
            b.record()
            self.events.append((a, b))
        else:
            t0 = time.perf_counter()
            out = self.fn(x, t)
            self.host.append(time.perf_counter() - t0)
        return out

    def total_ms(self) -> float:
        if self.cuda:
            self.events[-1][1].synchronize()
            return sum(a.elapsed_time(b) for a, b in self.events)
        return sum(self.host) * 1e3

    @property
    def calls(self) -> int:
        return len(self.events) + len(self.host)


def refdiff_loop(sampler: str, steps: int, net, x_T, schedule):
    """Sample with refdiff's registry sampler through ``run_sampler`` (η = 0, no clipping)."""
    import torch

    from refdiff.train.sampling import run_sampler

    return run_sampler(
        sampler,
        net,
        schedule,
        x_T,
        steps=steps,
        noise_sampler=lambda: torch.randn_like(x_T),
        clip_x0=False,
    )


def diffusers_loop(sampler: str, steps: int, net, x_T, schedule=None):
    """Sample with diffusers' scheduler: ``set_timesteps`` then ``step`` per model evaluation."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddim":
        sch = DDIMScheduler(
            num_train_timesteps=1000,
            beta_schedule="linear",
            clip_sample=False,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
        )
    else:
        sch = DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            beta_schedule="linear",
            algorithm_type="dpmsolver++",
            solver_order=2,
        )
    sch.set_timesteps(steps, device=x_T.device)
    x = x_T
    b = x_T.shape[0]
    for t in sch.timesteps:
        eps = net(x, t.expand(b))
        x = sch.step(eps, t, x, return_dict=False)[0]
    return x


def build_net(model: str, ucfg, device, args):
    import torch

    from refdiff.backends.torch.fast import make_inference_fn

    if model == "refdiff":
        from refdiff.backends.torch.unet import from_config
        from refdiff.unet import random_params

        m = from_config(ucfg, dtype=torch.float32, device=device)
        m.load_params(random_params(ucfg, 0, spread=0.05))  # non-zero output layers
        m.set_fast_paths(fused_norm=args.fused_norm)
        forward = None
    else:
        torch.manual_seed(0)
        m = bc.diffusers_unet(ucfg).to(device)
        forward = bc.diffusers_forward
    compile_mode, graphs = NETS[args.net]
    fn = make_inference_fn(
        m,
        forward=forward,
        bf16=not args.fp32,
        channels_last=not args.no_channels_last,
        compile_mode=compile_mode,
        cuda_graphs=graphs,
        compile_backend=args.compile_backend,
    )
    return m, fn


def run_row(model, loop, sname, ucfg, args, device) -> dict:
    import torch

    from refdiff import schedules

    sampler, steps = SAMPLERS[sname]
    steps = max(2, round(steps * args.scale_steps))
    row = {
        "model": model,
        "loop": loop,
        "sampler": sname,
        "steps": steps,
        "batch": args.batch,
        "net": args.net,
        "bf16": not args.fp32,
        "channels_last": not args.no_channels_last,
        "variant": f"{loop}-loop",
        "config": sname,
    }
    m = fn = None
    try:
        torch.manual_seed(args.seed)
        m, fn = build_net(model, ucfg, device, args)
        sched = schedules.linear(1000)
        run = refdiff_loop if loop == "refdiff" else diffusers_loop
        shape = (args.batch, ucfg.in_channels, ucfg.image_size, ucfg.image_size)
        gen = torch.Generator(device=device).manual_seed(args.seed + 2)
        x_T = torch.randn(shape, generator=gen, device=device)
        t0 = time.perf_counter()
        run(sampler, steps, fn, x_T, sched)  # warm-up: compile / capture / autotune
        bc.synchronize(device)
        row["warmup_s"] = round(time.perf_counter() - t0, 2)
        bc.reset_peak(device)
        totals = []
        out = None
        for _ in range(args.repeats):
            bc.synchronize(device)
            t0 = time.perf_counter()
            out = run(sampler, steps, fn, x_T, sched)
            bc.synchronize(device)
            totals.append((time.perf_counter() - t0) * 1e3)
        total = bc.median(totals)
        # instrumented run: network time per call from events
        timed = TimedNet(fn, device)
        bc.synchronize(device)
        t0 = time.perf_counter()
        run(sampler, steps, timed, x_T, sched)
        bc.synchronize(device)
        total_i = (time.perf_counter() - t0) * 1e3
        net_ms = timed.total_ms()
        calls = timed.calls
        # the network alone, the same number of calls back to back
        t_probe = torch.full((args.batch,), 500, dtype=torch.int64, device=device)
        alone = (
            bc.timed_repeats(lambda k: fn(x_T, t_probe), device=device, iters=calls, repeats=1)[0]
            * calls
        )
        alloc, reserved = bc.peak_gb(device)
        finite = bool(torch.isfinite(out).all())
        row.update(
            status="ok" if finite else "error: non-finite samples",
            ms_total=total,
            ms_runs=totals,
            img_per_s=args.batch * 1e3 / total,
            calls=calls,
            ms_per_step=total / calls,
            net_ms_per_call=net_ms / calls,
            outside_ms_per_step=(total_i - net_ms) / calls,
            share_outside=1.0 - net_ms / total_i,
            net_alone_ms_per_call=alone / calls,
            share_outside_direct=1.0 - alone / total,
            peak_alloc_gb=alloc,
            peak_reserved_gb=reserved,
        )
    except Exception as e:  # noqa: BLE001 - record and go on
        row["status"] = (
            f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        )
        row["traceback"] = traceback.format_exc()[-4000:]
    finally:
        m = fn = None  # noqa: F841 (free before cleanup)
        bc.cleanup(device)
    return row


def report(rows, env) -> str:
    lines = [
        f"device: {env.get('gpu') or env.get('cpu') or env.get('device')} | torch {env.get('torch')} | "
        f"diffusers {env.get('diffusers')} | refdiff {env.get('refdiff_commit')}"
    ]
    r0 = rows[0] if rows else {}
    lines.append(
        f"batch {r0.get('batch')}, network: {r0.get('net')}, bf16 {r0.get('bf16')}, channels_last "
        f"{r0.get('channels_last')}; outside = share of step time not spent in the network (target ≤ 1 %)"
    )
    lines.append("")
    table = []
    for r in rows:
        if r.get("status") == "ok":
            table.append(
                [
                    r["sampler"],
                    r["model"],
                    r["loop"],
                    str(r["calls"]),
                    bc.fmt(r["img_per_s"], 1),
                    bc.fmt(r["ms_per_step"], 2),
                    bc.fmt(r["net_ms_per_call"], 2),
                    bc.fmt(r["outside_ms_per_step"], 3),
                    bc.fmt(100 * r["share_outside"], 2) + "%",
                    bc.fmt(100 * r["share_outside_direct"], 2) + "%",
                    bc.fmt(r.get("peak_alloc_gb"), 2),
                ]
            )
        else:
            table.append(
                [r["sampler"], r["model"], r["loop"], r.get("status", "?")[:70]] + [""] * 7
            )
    lines.append(
        bc.markdown_table(
            [
                "sampler",
                "network",
                "loop",
                "NFE",
                "img/s",
                "ms/step",
                "net ms/call",
                "outside ms/step",
                "outside",
                "outside (direct)",
                "peak GB",
            ],
            table,
        )
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="ddpm-cifar10")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument(
        "--net",
        default=None,
        choices=sorted(NETS),
        help="network wrapping (default: graph on CUDA, eager on CPU)",
    )
    ap.add_argument("--fused-norm", default="auto", choices=["torch", "triton", "auto"])
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--scale-steps", type=float, default=1.0, help="multiply the step counts (CPU checks)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from refdiff.unet import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU (use --device cpu for a check of the script)"}))
        return 0
    if args.net is None:
        args.net = "graph" if device.type == "cuda" else "eager"
    samplers, models, loops = _split(args.samplers), _split(args.models), _split(args.loops)
    bad = (
        [s for s in samplers if s not in SAMPLERS]
        + [m for m in models if m not in MODELS]
        + [x for x in loops if x not in LOOPS]
    )
    if bad:
        ap.error(
            f"unknown {bad}; samplers: {', '.join(SAMPLERS)}; models/loops: refdiff, diffusers"
        )
    if not bc.diffusers_available() and ("diffusers" in models or "diffusers" in loops):
        print(
            "diffusers is not installed: its rows are skipped (pip install diffusers)",
            file=sys.stderr,
        )
        models = [m for m in models if m != "diffusers"]
        loops = [x for x in loops if x != "diffusers"]
    ucfg = get_preset(args.preset)
    env = bc.env_info(device)
    rows = []
    for sname in samplers:
        for model in models:
            for loop in loops:
                r = run_row(model, loop, sname, ucfg, args, device)
                rows.append(r)
                msg = (
                    f"{r['img_per_s']:.1f} img/s, {r['ms_per_step']:.2f} ms/step, outside "
                    f"{100 * r['share_outside']:.2f}%"
                    if r.get("status") == "ok"
                    else r.get("status")
                )
                print(f"[{sname:8s} {model:9s} {loop:9s}] {msg}", file=sys.stderr, flush=True)
    if args.json:
        bc.write_json(args.json, {"env": env, "args": vars(args), "rows": rows})
    print(report(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
