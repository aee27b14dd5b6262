"""Train a small DDPM on the embedded digits, sample a grid, and measure bits/dim — on a CPU in minutes.

    python examples/train_digits.py                      # 300 steps, "small" preset at width 32 (CPU: a few min)
    python examples/train_digits.py --steps 50 --out /tmp/digits   # a quick look
    python examples/train_digits.py --device cuda --preset ddpm-cifar10 --steps 5000 --batch 128

What it does, with the same pieces as ``refdiff train`` / ``sample`` / ``bpd``:

1. trains the UNet with L_simple (Ho et al. 2020, Eq. 14) on procedurally drawn digits, writing
   ``OUT/checkpoint.safetensors``, ``OUT/metrics.jsonl`` and ``OUT/samples/step_*.png``;
2. samples 36 images from the EMA weights with DDPM ancestral steps, DDIM and DPM-Solver++(2M)
   and saves ``OUT/ddpm.png``, ``OUT/ddim.png``, ``OUT/dpmpp_2m.png``;
3. computes the VLB in bits/dim (Ho et al. 2020, Eq. 5) of a few held-out digits with a T=1000
   pass per image (``--bpd-images 0`` skips it).

Run it again with a larger ``--steps`` and the same ``--out`` to continue training exactly where
it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="runs/digits")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--channels", type=int, default=1, help="1: gray digits, 3: coloured")
    ap.add_argument(
        "--width", type=int, default=32, help="UNet base channels (the preset's model_channels)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--bpd-images",
        type=int,
        default=4,
        help="held-out images for bits/dim (T=1000 network calls per batch); 0 skips it",
    )
    args = ap.parse_args(argv)

    from refdiff.train import TrainConfig, compute_bpd, load_data, load_run, save_grid, train
    from refdiff.train.driver import CHECKPOINT_NAME, resolve_backend, sample_images
    from refdiff.train.sampling import available_samplers

    out = Path(args.out)
    unet = {"in_channels": args.channels}
    if args.preset != "ddpm-cifar10":
        unet["model_channels"] = args.width
    cfg = TrainConfig(
        preset=args.preset,
        unet=unet,
        data="digits",
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=50,
        ema=0.995,
        T=1000,
        device=args.device,
        log_every=20,
        ckpt_every=100,
        sample_every=100,
        n_samples=16,
        sampler="ddim",
        sample_steps=25,
    )
    resume = (out / CHECKPOINT_NAME).exists()
    t0 = time.perf_counter()
    res = train(cfg, out, resume=resume, explicit={"steps", "device"} if resume else None)
    print(
        f"trained to step {res['step']} in {time.perf_counter() - t0:.0f} s; "
        f"last logged loss {res['last'].get('loss', float('nan')):.4f}"
    )

    # sample from the checkpoint, as `refdiff sample` does
    ck, run_cfg, unet_cfg, schedule = load_run(out / CHECKPOINT_NAME)
    fn, xp, device, dtype = resolve_backend("torch").inference_fn(
        ck.weights(ema=True), unet_cfg, device=args.device
    )
    shape = (36, unet_cfg.in_channels, unet_cfg.image_size, unet_cfg.image_size)
    for sampler, steps in (("ddpm", 100), ("ddim", 25), ("dpmpp_2m", 15)):
        if sampler not in available_samplers():
            print(f"skipping {sampler}: not in the samplers registry of this version")
            continue
        imgs = sample_images(
            fn,
            schedule,
            shape=shape,
            xp=xp,
            device=device,
            dtype=dtype,
            sampler=sampler,
            steps=steps,
            seed=0,
        )
        save_grid(out / f"{sampler}.png", imgs, nrow=6)
        print(f"{sampler}: {steps} steps -> {out / f'{sampler}.png'}")

    # bits/dim of held-out digits, as `refdiff bpd` does
    if args.bpd_images:
        ds = load_data(
            "digits", split="test", image_size=unet_cfg.image_size, channels=unet_cfg.in_channels
        )
        x0, _ = ds.batch(np.arange(args.bpd_images), dtype=np.float64)
        t0 = time.perf_counter()
        r = compute_bpd(
            fn, schedule.to(xp, device=device, dtype=dtype), x0, xp=xp, device=device, dtype=dtype
        )
        print(
            f"VLB: {r['total_bpd'].mean():.3f} bits/dim on {args.bpd_images} held-out digits "
            f"({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
