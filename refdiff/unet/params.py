"""The UNet's layout and its flat, stably named parameter dict (shapes, count, deterministic init).

Names are dot-separated without framework prefixes, so a PyTorch module whose sub-modules carry
the same names loads the dict with ``load_state_dict``. Conv weights are OIHW, linear weights
(out, in). The attention ``qkv`` is a linear map (3C, C) on the channel axis: rows [0, C) give q,
[C, 2C) k, [2C, 3C) v, and inside each, head ``h`` owns channels [h·d, (h+1)·d) with d = C/heads.
The dict's order is the order of execution.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .._errors import check_int, fail
from .._typing import Array, Device, DType, Namespace
from .config import UNetConfig

__all__ = [
    "Block",
    "layout",
    "param_shapes",
    "count_params",
    "init_params",
    "random_params",
    "ZERO_INIT",
]


class Block(NamedTuple):
    """One step of the network's execution plan."""

    kind: str  # "res", "attn", "downsample", "upsample"
    name: str  # parameter prefix, e.g. "down.1.res.0"
    cin: int  # channels in (after any skip concatenation)
    cout: int  # channels out
    res: int  # spatial side length of the block's input
    heads: int = 0  # attention heads (attn)
    updown: str = ""  # "down" / "up" for BigGAN resampling res blocks, else ""
    conv: bool = True  # down/upsample with a conv (False: avg-pool / plain nearest)
    pop: int = 0  # channels of the skip activation concatenated before the block (up path)
    push: bool = False  # whether the block's output is stored as a skip activation (down path)


def layout(config: UNetConfig) -> list[Block]:
    """The execution plan between ``conv_in`` and ``norm_out`` (Ho et al. 2020, App. B; Dhariwal & Nichol 2021, §3)."""
    cfg = config
    mc, res = cfg.model_channels, cfg.image_size
    blocks: list[Block] = []
    skips = [mc]  # conv_in's output is the first skip activation
    ch = mc
    last = len(cfg.channel_mult) - 1
    for level, mult in enumerate(cfg.channel_mult):
        for i in range(cfg.num_res_blocks):
            attn = res in cfg.attention_resolutions
            blocks.append(Block("res", f"down.{level}.res.{i}", ch, mc * mult, res, push=not attn))
            ch = mc * mult
            if attn:
                blocks.append(
                    Block(
                        "attn",
                        f"down.{level}.attn.{i}",
                        ch,
                        ch,
                        res,
                        heads=cfg.heads_for(ch),
                        push=True,
                    )
                )
            skips.append(ch)
        if level != last:
            if cfg.resblock_updown:
                blocks.append(
                    Block(
                        "res", f"down.{level}.downsample.res", ch, ch, res, updown="down", push=True
                    )
                )
            else:
                blocks.append(
                    Block(
                        "downsample",
                        f"down.{level}.downsample.op",
                        ch,
                        ch,
                        res,
                        conv=cfg.conv_resample,
                        push=True,
                    )
                )
            skips.append(ch)
            res //= 2
    blocks.append(Block("res", "mid.res.0", ch, ch, res))
    blocks.append(Block("attn", "mid.attn.0", ch, ch, res, heads=cfg.heads_for(ch)))
    blocks.append(Block("res", "mid.res.1", ch, ch, res))
    for level in range(last, -1, -1):
        mult = cfg.channel_mult[level]
        for i in range(cfg.num_res_blocks + 1):
            skip = skips.pop()
            blocks.append(Block("res", f"up.{level}.res.{i}", ch + skip, mc * mult, res, pop=skip))
            ch = mc * mult
            if res in cfg.attention_resolutions:
                blocks.append(
                    Block("attn", f"up.{level}.attn.{i}", ch, ch, res, heads=cfg.heads_for(ch))
                )
        if level != 0:
            if cfg.resblock_updown:
                blocks.append(Block("res", f"up.{level}.upsample.res", ch, ch, res, updown="up"))
            else:
                blocks.append(
                    Block(
                        "upsample", f"up.{level}.upsample.op", ch, ch, res, conv=cfg.conv_resample
                    )
                )
            res *= 2
    assert not skips
    return blocks


# (name suffix, kind of init) for each parameter; kinds: "conv", "linear", "qkv", "zero", "one", "embed"
def _res_params(cfg: UNetConfig, b: Block) -> list[tuple[str, tuple[int, ...], str]]:
    e = cfg.time_embed_dim
    tout = 2 * b.cout if cfg.use_scale_shift_norm else b.cout
    p = [
        ("norm1.weight", (b.cin,), "one"),
        ("norm1.bias", (b.cin,), "zero"),
        ("conv1.weight", (b.cout, b.cin, 3, 3), "conv"),
        ("conv1.bias", (b.cout,), "zero"),
        ("temb.weight", (tout, e), "linear"),
        ("temb.bias", (tout,), "zero"),
        ("norm2.weight", (b.cout,), "one"),
        ("norm2.bias", (b.cout,), "zero"),
        ("conv2.weight", (b.cout, b.cout, 3, 3), "zeroconv"),
        ("conv2.bias", (b.cout,), "zero"),
    ]
    if b.cin != b.cout:
        p += [("skip.weight", (b.cout, b.cin, 1, 1), "conv"), ("skip.bias", (b.cout,), "zero")]
    return p


def _attn_params(b: Block) -> list[tuple[str, tuple[int, ...], str]]:
    c = b.cin
    return [
        ("norm.weight", (c,), "one"),
        ("norm.bias", (c,), "zero"),
        ("qkv.weight", (3 * c, c), "qkv"),
        ("qkv.bias", (3 * c,), "zero"),
        ("proj.weight", (c, c), "zerolinear"),
        ("proj.bias", (c,), "zero"),
    ]


def _specs(config: UNetConfig) -> list[tuple[str, tuple[int, ...], str]]:
    cfg = config
    mc, e = cfg.model_channels, cfg.time_embed_dim
    out = [
        ("time_embed.0.weight", (e, mc), "linear"),
        ("time_embed.0.bias", (e,), "zero"),
        ("time_embed.1.weight", (e, e), "linear"),
        ("time_embed.1.bias", (e,), "zero"),
    ]
    if cfg.num_classes is not None:
        out.append(("label_embed.weight", (cfg.num_classes + 1, e), "embed"))
    out += [
        ("conv_in.weight", (mc, cfg.in_channels, 3, 3), "conv"),
        ("conv_in.bias", (mc,), "zero"),
    ]
    for b in layout(cfg):
        if b.kind == "res":
            items = _res_params(cfg, b)
        elif b.kind == "attn":
            items = _attn_params(b)
        elif b.conv:
            items = [("weight", (b.cout, b.cin, 3, 3), "conv"), ("bias", (b.cout,), "zero")]
        else:
            items = []
        out += [(f"{b.name}.{k}", s, kind) for k, s, kind in items]
    out += [
        ("norm_out.weight", (mc,), "one"),
        ("norm_out.bias", (mc,), "zero"),
        ("conv_out.weight", (cfg.output_channels, mc, 3, 3), "zeroconv"),
        ("conv_out.bias", (cfg.output_channels,), "zero"),
    ]
    return out


#: Parameters that Ho et al. initialise to (nearly) zero, so each residual branch starts as the identity.
ZERO_INIT = ("conv2.weight", "proj.weight", "conv_out.weight")


def param_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Flat dict of parameter names to shapes, in execution order.

    Parameters
    ----------
    config : UNetConfig

    Returns
    -------
    dict[str, tuple[int, ...]]
    """
    _check_config(config)
    return {name: shape for name, shape, _ in _specs(config)}


def count_params(config: UNetConfig) -> int:
    """Total number of scalar parameters (35,746,307 for ``ddpm-cifar10``, Ho et al. 2020's "35.7M")."""
    return sum(math.prod(s) for s in param_shapes(config).values())


def _check_config(config: Any) -> None:
    if not isinstance(config, UNetConfig):
        fail("config", config, "expected a refdiff.unet.UNetConfig (see get_preset)")


def _fan(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _draw(
    rng: np.random.Generator, shape: tuple[int, ...], kind: str, *, zero_init: bool
) -> np.ndarray:
    if kind == "zero":
        return np.zeros(shape)
    if kind == "one":
        return np.ones(shape)
    if kind == "embed":
        return rng.standard_normal(shape)
    if kind in ("zeroconv", "zerolinear") and zero_init:
        return np.zeros(shape)
    fan_in, fan_out = _fan(shape)
    if kind == "qkv":  # three C×C maps stacked: fan of one of them
        fan_out = fan_in
    limit = math.sqrt(3.0 / ((fan_in + fan_out) / 2.0))  # variance scaling, fan_avg, uniform
    return rng.uniform(-limit, limit, size=shape)


def _move(
    arrays: dict[str, np.ndarray], xp: Namespace | None, dtype: DType | None, device: Device | None
) -> dict[str, Array]:
    if xp is None:
        if dtype is None:
            return arrays
        return {k: v.astype(dtype) for k, v in arrays.items()}
    dtype = xp.float64 if dtype is None else dtype
    kw = {} if device is None else {"device": device}
    return {k: xp.asarray(v, dtype=dtype, **kw) for k, v in arrays.items()}


def init_params(
    config: UNetConfig,
    seed: int = 0,
    *,
    xp: Namespace | None = None,
    dtype: DType | None = None,
    device: Device | None = None,
    zero_init: bool = True,
) -> dict[str, Array]:
    """Deterministic initial parameters (Ho et al. 2020's ``default_init``: variance scaling, fan_avg, uniform).

    Weights are uniform in ±√(3/fan_avg); biases 0; GroupNorm scales 1; the label embedding N(0, 1);
    the last conv of each residual block, each attention output projection and ``conv_out`` are
    zero (Ho et al.'s scale 1e-10), so every residual branch starts as the identity.
    Drawn in float64 with NumPy's PCG64 on the host, then moved.

    Parameters
    ----------
    config : UNetConfig
    seed : int
        Seed of ``numpy.random.default_rng``.
    xp, dtype, device
        Target namespace (default NumPy), dtype (default float64) and device.
    zero_init : bool
        If False, the zero-initialised weights are drawn like the others instead (useful for
        gradient checks, where zero output weights would hide every upstream gradient).

    Returns
    -------
    dict[str, array]
        Parameters in the order of :func:`param_shapes`.
    """
    _check_config(config)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    arrays = {
        name: _draw(rng, shape, kind, zero_init=zero_init) for name, shape, kind in _specs(config)
    }
    return _move(arrays, xp, dtype, device)


def random_params(
    config: UNetConfig,
    seed: int = 0,
    *,
    xp: Namespace | None = None,
    dtype: DType | None = None,
    device: Device | None = None,
    spread: float = 0.2,
) -> dict[str, Array]:
    """Parameters with every entry random (no zeros, no ones): for gradient and backend checks.

    Weights as :func:`init_params` with ``zero_init=False``; biases, GroupNorm shifts and the
    deviation of GroupNorm scales from 1 are N(0, spread²).
    """
    _check_config(config)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape, kind in _specs(config):
        a = _draw(rng, shape, kind, zero_init=False)
        if kind in ("zero", "one"):
            a = a + spread * rng.standard_normal(shape)
        arrays[name] = a
    return _move(arrays, xp, dtype, device)
