"""The ``refdiff train``, ``refdiff sample`` and ``refdiff bpd`` subcommands.

``refdiff.cli`` calls :func:`register` with its subparsers; each subcommand stores its handler as
``func`` (``args.func(args) -> int`` exit status). Also runnable alone:
``python -m refdiff.train.cli train ...`` (and under ``torchrun ... -m refdiff.train.cli train ...``).
Nothing here imports torch until a command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from .._typing import Array, Device, DType, Namespace
    from ..unet.config import UNetConfig
    from .checkpoint import Checkpoint
    from .driver import TrainConfig

__all__ = ["register", "main", "run_train", "run_sample", "run_bpd", "build_parser"]

_S = argparse.SUPPRESS


def _sampler_names() -> list[str]:
    try:
        from .sampling import available_samplers

        return available_samplers()
    except ImportError:  # the help text only; the commands check names again
        return ["ddim", "ddpm"]


def _bool_flag(p: argparse._ActionsContainer, name: str, help: str) -> None:
    p.add_argument(name, action="store_true", default=_S, help=help)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .driver import LOSSES, T_SAMPLERS, TrainConfig

    d = TrainConfig.__dataclass_fields__
    dflt = lambda k: d[k].default  # noqa: E731
    p = sub.add_parser(
        "train",
        help="train the UNet (PyTorch backend)",
        description="Train the refdiff UNet. Writes OUT/checkpoint.safetensors (atomically), "
        "OUT/metrics.jsonl, OUT/samples/step_*.png and OUT/config.json. Under torchrun "
        "(WORLD_SIZE > 1) it trains data-parallel with DDP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=_S,
    )
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="folder for checkpoint, metrics and sample grids")
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        help="continue the run in OUT (or from the checkpoint PATH) up to --steps in total",
    )
    _bool_flag(
        g,
        "--weights-only",
        "with --resume: accept a checkpoint without run state and continue "
        "from its weights with a fresh data order (not bit-identical to an uninterrupted run)",
    )
    g.add_argument(
        "--backend", choices=["torch", "cupy"], help=f"training backend (default {dflt('backend')})"
    )
    g.add_argument("--steps", type=int, help=f"total optimizer steps (default {dflt('steps')})")
    g.add_argument("--batch", type=int, help=f"global batch size (default {dflt('batch')})")
    g.add_argument("--seed", type=int, help="seed of weights, data order, noise (default 0)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--dtype", choices=["float32", "float64"], help="weight dtype (default float32)")
    _bool_flag(g, "--bf16", "bfloat16 autocast")
    _bool_flag(g, "--channels-last", "channels_last memory format")
    _bool_flag(g, "--compile", "torch.compile the network")
    g.add_argument(
        "--no-tf32",
        dest="tf32",
        action="store_false",
        default=_S,
        help="exact float32 on CUDA (TF32 is on by default for training)",
    )
    _bool_flag(g, "--no-progress", "no progress bar")
    g = p.add_argument_group("model")
    g.add_argument(
        "--preset", help=f"UNet preset: ddpm-cifar10, small, tiny (default {dflt('preset')})"
    )
    g.add_argument("--image-size", type=int, help="override the preset's image size")
    g.add_argument("--channels", type=int, help="override the preset's image channels")
    g.add_argument("--model-channels", type=int, help="override the base channel count")
    g.add_argument("--dropout", type=float, help="override the dropout probability")
    g.add_argument("--num-classes", type=int, help="class-conditional with this many classes")
    _bool_flag(g, "--class-cond", "class-conditional with the data's number of classes")
    g.add_argument(
        "--unet", help="JSON object of further UNetConfig overrides, e.g. '{\"num_heads\": 4}'"
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="digits (embedded), or a .npy file, CIFAR-10 python batches, an image "
        "folder (prefix cifar10:, folder:, npy: to choose) (default digits)",
    )
    g.add_argument("--data-size", type=int, help="number of embedded digits images (default 10000)")
    _bool_flag(g, "--hflip", "random horizontal flips")
    g = p.add_argument_group("diffusion and loss")
    g.add_argument(
        "--schedule",
        help="beta schedule name (linear, cosine, ...; NAME+ztsnr for zero terminal SNR)",
    )
    g.add_argument("--T", type=int, help="diffusion steps (default 1000)")
    g.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        help="simple (L_simple), hybrid, kl/vlb, ... (default simple)",
    )
    g.add_argument(
        "--mean-type",
        choices=["eps", "x0", "v", "mu"],
        help="what the network predicts (default eps)",
    )
    g.add_argument(
        "--var-type",
        choices=["fixed_small", "fixed_large", "learned", "learned_range"],
        help="variance (default fixed_small; learned_range for hybrid)",
    )
    g.add_argument(
        "--lambda-vlb", type=float, help="weight of the VLB term in the hybrid loss (default 0.001)"
    )
    g.add_argument(
        "--t-sampler", choices=list(T_SAMPLERS), help="timestep sampling (default uniform)"
    )
    g.add_argument(
        "--label-dropout",
        type=float,
        help="label dropout for classifier-free guidance (default 0.1)",
    )
    g = p.add_argument_group("optimizer")
    g.add_argument("--lr", type=float, help=f"learning rate (default {dflt('lr')})")
    g.add_argument("--warmup", type=int, help="linear warm-up steps (default 0)")
    g.add_argument("--optimizer", choices=["adam", "adamw"], help="(default adam)")
    g.add_argument("--weight-decay", type=float, help="(default 0)")
    g.add_argument(
        "--ema",
        type=float,
        help=f"EMA decay (default {dflt('ema')}); with the warm-up, "
        "update n uses min(EMA, (1+n)/(10+n))",
    )
    g.add_argument(
        "--no-ema-warmup",
        dest="ema_warmup",
        action="store_false",
        default=_S,
        help="a constant EMA decay from the first step",
    )
    g.add_argument(
        "--grad-clip", type=float, help="clip the global gradient norm; 0 = off (default 1.0)"
    )
    g = p.add_argument_group("logging, checkpoints, samples")
    g.add_argument("--log-every", type=int, help="steps between metrics records (default 10)")
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints; 0 = at the end only")
    g.add_argument(
        "--sample-every", type=int, help="steps between sample grids; 0 = at the end only"
    )
    g.add_argument("--n-samples", type=int, help="images per sample grid; 0 = none (default 16)")
    g.add_argument(
        "--sampler", help="sampler for the grids (default ddim): " + ", ".join(_sampler_names())
    )
    g.add_argument(
        "--sample-steps",
        type=int,
        help="sampler steps for the grids, at most T (default min(50, T))",
    )
    p.set_defaults(func=run_train)


_CFG_KEYS = {
    "backend",
    "preset",
    "data",
    "data_size",
    "hflip",
    "steps",
    "batch",
    "lr",
    "warmup",
    "optimizer",
    "weight_decay",
    "ema",
    "ema_warmup",
    "grad_clip",
    "schedule",
    "T",
    "loss",
    "mean_type",
    "var_type",
    "lambda_vlb",
    "t_sampler",
    "label_dropout",
    "seed",
    "dtype",
    "device",
    "bf16",
    "channels_last",
    "compile",
    "tf32",
    "log_every",
    "ckpt_every",
    "sample_every",
    "n_samples",
    "sampler",
    "sample_steps",
}
_UNET_FLAGS = {
    "image_size": "image_size",
    "channels": "in_channels",
    "model_channels": "model_channels",
    "dropout": "dropout",
    "num_classes": "num_classes",
}


def _train_config(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    from .._errors import RefdiffValueError
    from .driver import TrainConfig

    given = vars(args)
    kw = {k: given[k] for k in _CFG_KEYS if k in given}
    unet: dict[str, Any] = {}
    if "unet" in given:
        try:
            extra = json.loads(given["unet"])
        except json.JSONDecodeError as exc:
            raise RefdiffValueError(
                f"--unet={given['unet']!r} is not a JSON object ({exc})"
            ) from None
        if not isinstance(extra, dict):
            raise RefdiffValueError(f"--unet={given['unet']!r} is not a JSON object")
        unet.update(extra)
    for flag, field in _UNET_FLAGS.items():
        if flag in given:
            unet[field] = given[flag]
    if given.get("class_cond") and "num_classes" not in unet:
        from .data import load_data

        ds = load_data(
            kw.get("data", "digits"), split="train", image_size=4, channels=1, digits_size=1
        )
        if ds.num_classes is None:
            raise RefdiffValueError(
                f"--class-cond: data={kw.get('data', 'digits')!r} has no labels"
            )
        unet["num_classes"] = ds.num_classes
    if unet:
        kw["unet"] = unet
    explicit = set(kw)
    kw.setdefault("tf32", True)  # the command line trains with TF32 on CUDA unless --no-tf32
    return TrainConfig(**kw), explicit


def _fail(cmd: str, exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename!r}" if exc.filename else ""
        msg = f"{exc.strerror}{where}"
    else:
        msg = str(exc)
    print(f"refdiff {cmd}: error: {msg}", file=sys.stderr)
    return 1


def _known_errors() -> tuple[type[Exception], ...]:
    from .._errors import RefdiffError

    return (RefdiffError, ValueError, KeyError, OSError, FloatingPointError, ImportError)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``refdiff train``."""
    from .._errors import RefdiffValueError
    from .driver import train

    try:
        cfg, explicit = _train_config(args)
        if getattr(args, "weights_only", False) and not getattr(args, "resume", None):
            raise RefdiffValueError("--weights-only applies to --resume only")
        res = train(
            cfg,
            args.out,
            resume=getattr(args, "resume", None),
            explicit=explicit,
            progress=not getattr(args, "no_progress", False),
            weights_only=getattr(args, "weights_only", False),
        )
    except _known_errors() as exc:
        return _fail("train", exc)
    last = res["last"]
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        loss = last.get("loss")
        msg = f"trained to step {res['step']}"
        if loss is not None:
            msg += f" (loss {loss:.4g})"
        print(
            f"{msg}; checkpoint {res['checkpoint']}; metrics {res['metrics']}"
            + (f"; samples {res['samples']}" if res["samples"] else "")
        )
    return 0


def _add_sample(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sample",
        help="sample a grid of images from a checkpoint",
        description="Draw images from a training checkpoint with a registered sampler and "
        "save them as a PNG grid (and optionally as a .npy array).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--ckpt", required=True, help="checkpoint file (DIR/checkpoint.safetensors) or run folder"
    )
    p.add_argument(
        "--sampler",
        default="ddim",
        help="a registered sampler for a network trained on discrete timesteps: "
        + ", ".join(_sampler_names()),
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps, at most the checkpoint's T (the schedule is respaced; "
        "default min(50, T))",
    )
    p.add_argument(
        "--spacing",
        default="trailing",
        help="respacing of the discrete samplers: trailing, leading, linspace (diffusers), "
        "ddim, sections (improved-diffusion)",
    )
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--batch", type=int, default=0, help="images per model call (0: all at once)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (a .png file)")
    p.add_argument(
        "--npy", default=None, help="also save the samples (N, C, H, W) in [-1, 1] here (.npy)"
    )
    p.add_argument("--nrow", type=int, default=0, help="images per grid row (0: square)")
    p.add_argument("--seed", type=int, default=0, help="seed of the host noise")
    p.add_argument(
        "--label",
        type=int,
        default=None,
        help="class label for every image (class-conditional models; "
        "default: cycle through the classes)",
    )
    p.add_argument(
        "--no-ema", action="store_true", help="use the raw weights instead of the EMA weights"
    )
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="do not stop at the first sampler step whose state or predicted x0 is NaN/inf",
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "numpy"],
        help="torch (fast) or numpy (the float64 reference UNet; slow)",
    )
    p.add_argument("--device", default="auto", help="torch device")
    p.add_argument(
        "--dtype", default=None, choices=["float32", "float64"], help="default: the checkpoint's"
    )
    p.set_defaults(func=run_sample)


def _checkpoint_path(path: str) -> Path:
    from .driver import CHECKPOINT_NAME

    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() and (p / CHECKPOINT_NAME).exists() else p


def _model_for(
    args: argparse.Namespace, params: Mapping[str, np.ndarray], unet_cfg: UNetConfig, dtype: str
) -> tuple[Callable[..., Array], Namespace, Device, DType]:
    """(fn, xp, device, dtype) for the chosen inference backend."""
    if args.backend == "numpy":
        import array_api_compat.numpy as xp

        from ..unet.model import unet_apply

        p64 = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}

        def fn(x: Array, t: Array, y: Array | None = None) -> Array:
            return unet_apply(p64, unet_cfg, x, t, y=y)

        return fn, xp, "cpu", np.float64
    from .driver import resolve_backend

    return resolve_backend("torch").inference_fn(params, unet_cfg, device=args.device, dtype=dtype)


def _check_out_file(flag: str, path: str | None, suffix: str) -> None:
    """Raise unless ``path`` names a ``suffix`` file that can be written (checked before any work)."""
    from .._errors import fail

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        fail(flag, path, f"expected a {suffix} file name; this is a folder")
    if p.suffix.lower() != suffix:
        fail(
            flag,
            path,
            f"expected a file name ending in {suffix} (the file is written as {suffix[1:].upper()})",
        )
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        fail(flag, path, f"expected a file in a folder; {str(parent)!r} is a file")


def _check_weights(ck: Checkpoint, *, ema: bool) -> dict[str, np.ndarray]:
    """The weights to run, or CheckpointError if any tensor holds NaN or inf."""
    from .checkpoint import CheckpointError

    w = ck.weights(ema=ema)
    bad = [k for k, v in w.items() if not np.all(np.isfinite(v))]
    if bad:
        which = "EMA weights" if ema and ck.ema else "weights"
        raise CheckpointError(
            f"checkpoint={str(ck.path)!r} holds non-finite {which} ({len(bad)} of {len(w)} tensors "
            f"contain NaN or inf, e.g. {bad[0]!r}): the run diverged before it was saved; use an "
            "earlier checkpoint" + ("" if not (ema and ck.ema) else " or try --no-ema")
        )
    return w


def run_sample(args: argparse.Namespace) -> int:
    """Handler of ``refdiff sample``."""
    from .._errors import check_int, fail
    from .driver import load_run, sample_images
    from .images import save_grid
    from .metrics import ProgressBar
    from .sampling import check_sampler

    try:
        check_int("--n", args.n, minimum=1)
        check_int("--batch", args.batch, minimum=0)
        check_int("--nrow", args.nrow, minimum=0)
        _check_out_file("--out", args.out, ".png")
        _check_out_file("--npy", args.npy, ".npy")
        ck, cfg, unet_cfg, schedule = load_run(_checkpoint_path(args.ckpt))
        if args.steps is None:
            args.steps = min(50, schedule.num_timesteps)
        check_sampler(
            args.sampler, steps=args.steps, T=schedule.num_timesteps, spacing=args.spacing
        )
        if args.label is not None:
            if unet_cfg.num_classes is None:
                fail(
                    "--label",
                    args.label,
                    "the checkpoint's model is unconditional (no class labels)",
                )
            if not 0 <= args.label < unet_cfg.num_classes:
                fail("--label", args.label, f"expected a class in [0, {unet_cfg.num_classes - 1}]")
        fn, xp, device, dtype = _model_for(
            args, _check_weights(ck, ema=not args.no_ema), unet_cfg, args.dtype or cfg.dtype
        )
        shape_one = (unet_cfg.in_channels, unet_cfg.image_size, unet_cfg.image_size)
        chunk = args.batch if args.batch > 0 else args.n
        outs = []
        chunks = -(-args.n // chunk)
        bar = ProgressBar(chunks * args.steps, desc="sample", unit="step")
        for i, start in enumerate(range(0, args.n, chunk)):

            def prog(k: int, n: int, i: int = i) -> None:
                bar.set(i * n + k, total=chunks * n)

            m = min(chunk, args.n - start)
            y = None
            if unet_cfg.num_classes is not None:
                lab = (
                    np.full(m, args.label)
                    if args.label is not None
                    else (np.arange(start, start + m) % unet_cfg.num_classes)
                )
                y = xp.asarray(lab.astype(np.int64), device=device)
            outs.append(
                sample_images(
                    fn,
                    schedule,
                    shape=(m,) + shape_one,
                    xp=xp,
                    device=device,
                    dtype=dtype,
                    sampler=args.sampler,
                    steps=args.steps,
                    seed=args.seed + i,
                    y=y,
                    eta=args.eta,
                    mean_type=cfg.mean_type,
                    var_type=str(cfg.var_type),
                    clip_x0=not args.no_clip,
                    spacing=args.spacing,
                    progress=prog,
                    check_finite=not args.allow_nonfinite,
                )
            )
        bar.close()
        imgs = np.concatenate(outs)
        save_grid(args.out, imgs, nrow=args.nrow or None)
        if args.npy:
            np.save(args.npy, imgs)
    except _known_errors() as exc:
        return _fail("sample", exc)
    print(
        f"wrote {args.n} samples ({args.sampler}, {args.steps} steps, checkpoint step {ck.step}) to {args.out}"
        + (f" and {args.npy}" if args.npy else "")
    )
    return 0


def _add_bpd(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bpd",
        help="VLB bits/dim of a checkpoint on held-out data",
        description="The variational bound in bits/dim (Ho et al. 2020, Eq. 5: the sum of "
        "every L_t plus the prior term) of held-out images, with "
        "refdiff.kl.calc_bpd_loop. Runs the network T times per image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint file or run folder")
    p.add_argument(
        "--data", default=None, help="dataset spec (default: the checkpoint's data, test split)"
    )
    p.add_argument(
        "--split", default="test", choices=["train", "test"], help="CIFAR-10/digits split"
    )
    p.add_argument("--n", type=int, default=64, help="number of images (the first N)")
    p.add_argument("--batch", type=int, default=32, help="images per model call")
    p.add_argument("--seed", type=int, default=0, help="seed of the forward noise")
    p.add_argument(
        "--no-ema", action="store_true", help="use the raw weights instead of the EMA weights"
    )
    p.add_argument(
        "--backend", default="torch", choices=["torch", "numpy"], help="inference backend"
    )
    p.add_argument("--device", default="auto", help="torch device")
    p.add_argument(
        "--dtype", default=None, choices=["float32", "float64"], help="default: the checkpoint's"
    )
    p.add_argument("--json", default=None, help="write the result (and per-t terms) as JSON here")
    p.set_defaults(func=run_bpd)


def run_bpd(args: argparse.Namespace) -> int:
    """Handler of ``refdiff bpd``."""
    from .._errors import check_int
    from .data import check_matches, load_data
    from .driver import compute_bpd, load_run
    from .metrics import ProgressBar

    try:
        check_int("--n", args.n, minimum=1)
        check_int("--batch", args.batch, minimum=1)
        _check_out_file("--json", args.json, ".json")
        ck, cfg, unet_cfg, schedule = load_run(_checkpoint_path(args.ckpt))
        weights = _check_weights(ck, ema=not args.no_ema)
        spec = args.data or cfg.data
        ds = load_data(
            spec,
            split=args.split,
            image_size=unet_cfg.image_size,
            channels=unet_cfg.in_channels,
            seed=cfg.seed,
        )
        check_matches(ds, image_size=unet_cfg.image_size, channels=unet_cfg.in_channels)
        if not ds.is_8bit:
            print(
                "refdiff bpd: warning: the data are not 8-bit; the discretised decoder assumes 256 levels",
                file=sys.stderr,
            )
        n = min(args.n, len(ds))
        if n < args.n:
            print(
                f"refdiff bpd: note: --n={args.n} but {ds.name} ({args.split} split) holds {len(ds)} "
                f"images; evaluating all {n}",
                file=sys.stderr,
                flush=True,
            )
        fn, xp, device, dtype = _model_for(args, weights, unet_cfg, args.dtype or cfg.dtype)
        T = schedule.num_timesteps
        print(
            f"refdiff bpd: {n} images x T={T} network evaluations each ({n * T} in all); the bar "
            "shows the time left",
            file=sys.stderr,
            flush=True,
        )
        bar = ProgressBar(n * T, desc="bpd", unit="evals")
        totals, priors, vbs, mses = [], [], [], []
        for i, start in enumerate(range(0, n, args.batch)):
            idx = np.arange(start, min(start + args.batch, n))
            x0, y = ds.batch(idx, dtype=np.float64)
            if unet_cfg.num_classes is None:
                y = None
            else:
                y = np.full(idx.size, unet_cfg.num_classes) if y is None else y
            last = [0]

            def prog(k: int, total: int, m: int = idx.size, last: list[int] = last) -> None:
                bar.update((k - last[0]) * m)
                last[0] = k

            res = compute_bpd(
                fn,
                schedule.to(xp, device=device, dtype=dtype),
                x0,
                xp=xp,
                device=device,
                dtype=dtype,
                seed=args.seed + i,
                y_host=y,
                mean_type=cfg.mean_type,
                var_type=str(cfg.var_type),
                progress=prog,
            )
            if not np.all(np.isfinite(res["total_bpd"])):
                raise FloatingPointError(
                    f"bits/dim is not finite for images {idx[0]}..{idx[-1]}: the network returned "
                    "NaN or inf (check the checkpoint's weights)"
                )
            totals.append(res["total_bpd"])
            bar.set_postfix(bpd=float(np.concatenate(totals).mean()))
            priors.append(res["prior_bpd"])
            vbs.append(res["vb"])
            mses.append(res["mse"])
        bar.close()
        total = np.concatenate(totals)
        prior = np.concatenate(priors)
        vb = np.concatenate(vbs)
        mean = float(total.mean())
        sem = float(total.std(ddof=1) / math.sqrt(total.size)) if total.size > 1 else float("nan")
        out = {
            "bpd": mean,
            "bpd_sem": sem,
            "prior_bpd": float(prior.mean()),
            "n": int(total.size),
            "T": T,
            "checkpoint": str(ck.path),
            "step": ck.step,
            "data": ds.name,
            "ema": not args.no_ema,
            "vb_per_t": vb.mean(axis=0).tolist(),
            "mse_per_t": np.concatenate(mses).mean(axis=0).tolist(),
        }
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    except _known_errors() as exc:
        return _fail("bpd", exc)
    print(
        f"bits/dim {mean:.4f} ± {sem:.4f} (VLB over T={T}; {total.size} images of {ds.name}; "
        f"prior term {out['prior_bpd']:.2e}; checkpoint step {ck.step})"
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``sample`` and ``bpd`` to an argparse subparsers object."""
    _add_train(subparsers)
    _add_sample(subparsers)
    _add_bpd(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with just these subcommands."""
    parser = argparse.ArgumentParser(
        prog="refdiff", description="refdiff training, sampling and bits/dim"
    )
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m refdiff.train.cli {train,sample,bpd} ...``."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
