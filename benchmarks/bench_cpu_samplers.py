"""CPU sampler loops: refdiff against diffusers' schedulers and against refdiff's own arithmetic floor.

Per-step CPU time (``time.process_time``, one thread) of whole sampling loops with a model that
returns a constant array, so that only the sampler's own work is measured:

* DDIM (η = 0), DDPM (fixed-small variance, noise drawn in the loop), DPM-Solver++(2M) and Euler
  (Karras σ family, driven through :func:`refdiff.samplers.adapters.karras_denoiser` so that it
  takes the same ε-network as diffusers' ``EulerDiscreteScheduler``);
* refdiff on NumPy float64 and float32; diffusers' scheduler loops (``set_timesteps`` then
  ``step`` per timestep, as its pipelines do) on torch CPU float32 and float64, when diffusers is
  installed;
* the *floor*: the same per-step arithmetic written as bare NumPy expressions with constant
  coefficients (the same full-array operations as refdiff's loop, the model call and the noise
  draw), i.e. what any Python loop doing this arithmetic must pay.

glibc's malloc is pinned first (``--malloc pinned``, the default: ``mallopt`` keeps freed
temporaries of every size in the heap instead of returning them to the OS), so that every column
pays the same, small, cost per temporary; with the default allocator a 1.5 MB temporary is
sometimes a fresh ``mmap`` that page-faults, and a batch-64 loop's time then moves by up to 4× from
run to run depending on the allocator's dynamic threshold (``--malloc default`` shows it).

Each cell is the minimum over ``--repeats`` runs of (loop time / steps); compare ratios within
one run only (the machine may be shared). Usage::

    python benchmarks/bench_cpu_samplers.py [--steps 50] [--repeats 7] [--batches 1,64] [--json F]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refdiff.schedules import linear  # noqa: E402
from refdiff.samplers.adapters import karras_denoiser, karras_grid  # noqa: E402
from refdiff.samplers.discrete import sample_ddim, sample_ddpm  # noqa: E402
from refdiff.samplers.dpm_solver import NoiseScheduleVP, sample_dpm_solver  # noqa: E402
from refdiff.samplers.karras import sample_karras_euler  # noqa: E402

LOOPS = ("ddim", "ddpm", "dpmpp_2m", "euler")


def pin_malloc() -> bool:
    """Keep freed temporaries in glibc's heap (no mmap, no trim), so allocation costs the same in every column."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    )


def _time(run: Callable[[], Any], steps: int, repeats: int) -> float:
    """Minimum over ``repeats`` of the CPU time of ``run()`` per step, in µs (one untimed warm-up run)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        run()
        best = min(best, time.process_time() - t0)
    return best / steps * 1e6


# ------------------------------------------------------------------------------ refdiff loops
def refdiff_runs(shape, dtype, steps: int):
    S = linear(1000)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    const = np.full(shape, 0.1, dtype=dtype)

    def model(x, t):
        return const

    gen = np.random.default_rng(1)

    def draw(k):
        return gen.standard_normal(shape, dtype=dtype)

    ns = NoiseScheduleVP.discrete(S)
    den = karras_denoiser(model, S)
    sig = karras_grid(S, steps)
    return {
        "ddim": lambda: sample_ddim(model, x, schedule=S, steps=steps),
        "ddpm": lambda: sample_ddpm(model, x, schedule=S, steps=steps, noise=draw),
        "dpmpp_2m": lambda: sample_dpm_solver(
            model,
            x,
            noise_schedule=ns,
            steps=steps,
            order=2,
            method="multistep",
            algorithm_type="dpmsolver++",
        ),
        "euler": lambda: sample_karras_euler(den, x * float(sig[0]), sigmas=sig),
    }


# ------------------------------------------------------------------------------ floors
def floor_runs(shape, dtype, steps: int):
    """The same per-step arithmetic as bare NumPy expressions with fixed host-float coefficients."""
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal(shape).astype(dtype)
    const = np.full(shape, 0.1, dtype=dtype)
    gen = np.random.default_rng(1)
    a, b, c, d, s = 1.01, 0.1, 0.99, 0.05, 0.01

    def model(x, t):
        return const

    def ddim():
        x = x_T
        for k in range(steps):
            e = model(x, k)
            x0 = a * x - b * e
            x = c * x0 + d * e
        return x

    def ddpm():
        # the posterior mean folded to a·x + b·ε on the host, then the noise
        x = x_T
        for k in range(steps):
            e = model(x, k)
            mean = a * x + b * e
            x = mean + s * gen.standard_normal(shape, dtype=dtype) if k < steps - 1 else mean
        return x

    def dpmpp_2m():
        # x̂0 = (x − σε)/α, then x' = a·x − (b + c·w)·x̂0 + c·w·x̂0_prev
        x, prev = x_T, None
        for k in range(steps):
            e = model(x, k)
            x0 = (x - b * e) / a
            x = c * x - d * x0 if prev is None else c * x - d * x0 + s * prev
            prev = x0
        return x

    def euler():
        # D = x − σ·ε(x/√(1+σ²)), then x' = D + (σ'/σ)(x − D)
        x = x_T
        for k in range(steps):
            e = model(x * a, k)
            D = x - b * e
            x = D + c * (x - D)
        return x

    return {"ddim": ddim, "ddpm": ddpm, "dpmpp_2m": dpmpp_2m, "euler": euler}


# ------------------------------------------------------------------------------ diffusers loops
def diffusers_runs(shape, dtype_name: str, steps: int):
    try:
        import torch
        from diffusers import (
            DDIMScheduler,
            DDPMScheduler,
            DPMSolverMultistepScheduler,
            EulerDiscreteScheduler,
        )
    except ImportError:
        return None
    torch.set_num_threads(1)
    dt = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=g, dtype=dt)
    const = torch.full(shape, 0.1, dtype=dt)
    kw = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")

    def model(x, t):
        return const

    def loop(sched, *, scale=False, generator=None):
        def run():
            sched.set_timesteps(steps)
            x = x_T * sched.init_noise_sigma if scale else x_T
            for t in sched.timesteps:
                xin = sched.scale_model_input(x, t) if scale else x
                out = model(xin, t)
                x = (
                    sched.step(out, t, x, generator=generator)
                    if generator is not None
                    else sched.step(out, t, x)
                ).prev_sample
            return x

        return run

    gen = torch.Generator().manual_seed(1)
    return {
        "ddim": loop(DDIMScheduler(**kw, timestep_spacing="trailing")),
        "ddpm": loop(DDPMScheduler(**kw, timestep_spacing="trailing"), generator=gen),
        "dpmpp_2m": loop(
            DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2)
        ),
        "euler": loop(EulerDiscreteScheduler(**kw, use_karras_sigmas=True), scale=True),
    }


# ------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes of B×3×32×32")
    p.add_argument("--loops", default=",".join(LOOPS))
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--malloc",
        choices=("pinned", "default"),
        default="pinned",
        help="pin glibc's malloc thresholds first (see the module docstring)",
    )
    a = p.parse_args(argv)
    pinned = a.malloc == "pinned" and pin_malloc()
    loops = [s for s in a.loops.split(",") if s]
    for s in loops:
        if s not in LOOPS:
            p.error(f"--loops: unknown loop {s!r}; allowed: {', '.join(LOOPS)}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for B in [int(v) for v in a.batches.split(",")]:
        shape = (B, 3, 32, 32)
        cols = {
            "refdiff f64": refdiff_runs(shape, np.float64, a.steps),
            "refdiff f32": refdiff_runs(shape, np.float32, a.steps),
            "floor f64": floor_runs(shape, np.float64, a.steps),
            "floor f32": floor_runs(shape, np.float32, a.steps),
        }
        for name in ("float32", "float64"):
            d = diffusers_runs(shape, name, a.steps)
            if d is not None:
                cols[f"diffusers f{name[5:]}"] = d
        for loop in loops:
            row = {"loop": loop, "shape": "×".join(map(str, shape))}
            for col, runs in cols.items():
                row[col] = round(_time(runs[loop], a.steps, a.repeats), 1)
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    header = [
        "loop",
        "shape",
        "refdiff f64",
        "refdiff f32",
        "floor f64",
        "floor f32",
        "diffusers f32",
        "diffusers f64",
    ]
    print(
        f"\nµs/step, min of {a.repeats} runs of {a.steps} steps, one thread, malloc "
        f"{'pinned' if pinned else 'default'}; load average at start: {load}"
    )
    print(
        "| "
        + " | ".join(header + ["f32 vs diffusers f32", "f64 vs diffusers f64", "f64 vs floor f64"])
        + " |"
    )
    print("|" + "---|" * (len(header) + 3))
    for r in rows:

        def ratio(num, den):
            return f"{r[num] / r[den]:.2f}" if den in r and num in r else "–"

        cells = [str(r.get(h, "–")) for h in header]
        cells += [
            ratio("refdiff f32", "diffusers f32"),
            ratio("refdiff f64", "diffusers f64"),
            ratio("refdiff f64", "floor f64"),
        ]
        print("| " + " | ".join(cells) + " |")
    out = {
        "steps": a.steps,
        "repeats": a.repeats,
        "load": load,
        "malloc_pinned": pinned,
        "rows": rows,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, ensure_ascii=False))
    return out


if __name__ == "__main__":
    main()
