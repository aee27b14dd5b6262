"""Shared pieces of the benchmark scripts: environment report, diffusers twin of a UNetConfig,
analytic FLOP count, timing, JSON and Markdown output.

Imported by ``bench_train.py`` and ``bench_sample.py`` (they put this folder on ``sys.path``).
"""

from __future__ import annotations

import gc
import json
import math
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ environment
def env_info(device) -> dict[str, Any]:
    """Versions and hardware: torch, CUDA, cuDNN, GPU, triton, diffusers, refdiff commit."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if torch.backends.cudnn.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = p.name
        info["gpu_memory_gb"] = round(p.total_memory / 1e9, 1)
        info["sms"] = p.multi_processor_count
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    for mod in ("triton", "diffusers", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            info[mod] = None
    try:
        info["refdiff_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["refdiff_dirty"] = bool(dirty)
    except Exception:  # noqa: BLE001 - not a checkout
        info["refdiff_commit"] = None
    return info


def diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


# ------------------------------------------------------------------------------ the models
def diffusers_kwargs(cfg) -> dict[str, Any]:
    """``UNet2DModel`` arguments for the same network as a refdiff UNetConfig (DDPM options only)."""
    unsupported = {
        "use_scale_shift_norm": False,
        "resblock_updown": False,
        "num_classes": None,
        "learn_sigma": False,
        "conv_resample": True,
    }
    bad = {k: getattr(cfg, k) for k, v in unsupported.items() if getattr(cfg, k) != v}
    if bad:
        raise ValueError(
            f"the diffusers comparison covers the DDPM options only; this config sets {bad}"
        )
    levels = len(cfg.channel_mult)
    res = [cfg.image_size // 2**i for i in range(levels)]
    attn = [r in cfg.attention_resolutions for r in res]
    chans = [cfg.model_channels * m for m in cfg.channel_mult]
    heads = {cfg.heads_for(c) for c, a in zip(chans, attn) if a} | {cfg.heads_for(chans[-1])}
    if heads == {1}:
        head_dim = None  # diffusers: one head of all channels
    else:
        dims = {c // cfg.heads_for(c) for c, a in zip(chans, attn) if a} | {
            chans[-1] // cfg.heads_for(chans[-1])
        }
        if len(dims) != 1:
            raise ValueError("diffusers' UNet2DModel takes one attention_head_dim for every layer")
        head_dim = dims.pop()
    return dict(
        sample_size=cfg.image_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.output_channels,
        block_out_channels=tuple(chans),
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        dropout=cfg.dropout,
        attention_head_dim=head_dim,
        norm_num_groups=cfg.num_groups,
        norm_eps=1e-5,
        act_fn="silu",
        add_attention=True,
    )


def diffusers_unet(cfg):
    """diffusers' ``UNet2DModel`` with the same architecture as ``cfg`` (float32, CPU)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**diffusers_kwargs(cfg))


def diffusers_forward(net, x, t):
    """ε̂ from a (possibly compiled) UNet2DModel."""
    return net(x, t, return_dict=False)[0]


def forward_macs(cfg) -> int:
    """Multiply-accumulates of one forward pass per image (convolutions, linear maps, attention)."""
    from refdiff.unet import layout

    mc, e, size = cfg.model_channels, cfg.time_embed_dim, cfg.image_size
    macs = mc * e + e * e  # time MLP
    if cfg.num_classes is not None:
        pass  # an embedding lookup: no MACs
    macs += cfg.in_channels * mc * 9 * size * size  # conv_in
    for b in layout(cfg):
        r = b.res
        if b.kind == "res":
            ro = r // 2 if b.updown == "down" else (2 * r if b.updown == "up" else r)
            tout = 2 * b.cout if cfg.use_scale_shift_norm else b.cout
            macs += b.cin * b.cout * 9 * ro * ro + b.cout * b.cout * 9 * ro * ro + e * tout
            if b.cin != b.cout:
                macs += b.cin * b.cout * ro * ro
        elif b.kind == "attn":
            n, c = r * r, b.cin
            macs += 4 * n * c * c + 2 * n * n * c  # qkv + proj, QKᵀ and AV
        elif b.kind == "downsample" and b.conv:
            macs += b.cin * b.cout * 9 * (r // 2) ** 2
        elif b.kind == "upsample" and b.conv:
            macs += b.cin * b.cout * 9 * (2 * r) ** 2
    macs += mc * cfg.output_channels * 9 * size * size  # conv_out
    return macs


def train_flops_per_image(cfg) -> float:
    """Forward + backward ≈ 3 × forward, 2 FLOP per MAC."""
    return 6.0 * forward_macs(cfg)


# ------------------------------------------------------------------------------ timing
def synchronize(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed_repeats(fn: Callable[[int], Any], *, device, iters: int, repeats: int) -> list[float]:
    """Milliseconds per iteration of ``fn(k)`` for each of ``repeats`` runs of ``iters`` calls.

    CUDA: events around each run (no host sync inside); CPU: ``perf_counter`` (synchronous).
    """
    import torch

    out = []
    cuda = str(device).startswith("cuda")
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for k in range(iters):
                fn(k)
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / iters)
        else:
            t0 = time.perf_counter()
            for k in range(iters):
                fn(k)
            out.append((time.perf_counter() - t0) * 1e3 / iters)
    return out


def median(v):
    return statistics.median(v) if v else float("nan")


def reset_peak(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> tuple[float | None, float | None]:
    """(max allocated, max reserved) in GB since the last reset; None on CPU."""
    import torch

    if str(device).startswith("cuda"):
        return (
            torch.cuda.max_memory_allocated(device) / 1e9,
            torch.cuda.max_memory_reserved(device) / 1e9,
        )
    return None, None


def cleanup(device) -> None:
    """Free what one configuration left behind (compiled graphs, cached blocks)."""
    import torch

    try:
        import torch._dynamo

        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ output
def write_json(path, payload) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def read_rows(paths) -> tuple[list[dict], list[dict]]:
    """Rows and environments from several JSON outputs; a later row replaces an earlier one of the same key."""
    rows: dict[tuple, dict] = {}
    envs = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        envs.append(d.get("env", {}))
        for r in d.get("rows", []):
            rows[(r.get("model"), r.get("config"), r.get("variant"))] = r
    return list(rows.values()), envs


def fmt(v, nd=0, none="–"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return f"{v:,.{nd}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
