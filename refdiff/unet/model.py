"""The whole UNet: forward with a cache, hand-written backward, both by chaining :mod:`.layers`.

Structure (Ho et al. 2020, App. B; Dhariwal & Nichol 2021, §3):

* time embedding: sinusoid(t) → dense(4C) → SiLU → dense(4C), plus a label embedding when
  class-conditional; each residual block sees SiLU of it;
* residual block: GN → SiLU → [resample] → conv3×3 → (+ dense(SiLU(emb)), or AdaGN
  GN(h)·(1+s)+b) → GN → SiLU → dropout → conv3×3, added to the (resampled) input, through a
  1×1 conv when the channel count changes;
* attention block: x + proj(MHA(GN(x)));
* down path: conv_in, then per level ``num_res_blocks`` residual (+ attention) blocks and a
  downsample (strided conv 3×3, avg-pool, or BigGAN residual block); every module's output is kept;
* middle: residual, attention, residual;
* up path: per level ``num_res_blocks + 1`` residual (+ attention) blocks, each taking the
  channel concatenation with the matching kept activation, then an upsample (nearest ×2 + conv);
* out: GN → SiLU → conv3×3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np

from .._errors import RefdiffShapeError, RefdiffValueError, check_int, fail
from .._typing import Array, Device, DType, Namespace
from .._xp import array_namespace, device_of, is_array
from . import layers as L
from .config import UNetConfig
from .layers import shape_fail
from .params import Block, layout, param_shapes

__all__ = [
    "unet_forward",
    "unet_backward",
    "unet_vjp",
    "unet_apply",
    "dropout_masks",
    "dropout_shapes",
    "loss_and_grad",
    "check_params",
]


# ----------------------------------------------------------------------------- validation
def check_params(params: Mapping[str, Array], config: UNetConfig) -> None:
    """Raise unless ``params`` holds exactly the names and shapes of :func:`param_shapes`."""
    if not isinstance(config, UNetConfig):
        fail("config", config, "expected a refdiff.unet.UNetConfig (see get_preset)")
    if not isinstance(params, Mapping):
        fail("params", params, "expected a dict of parameter arrays (see init_params)")
    shapes = param_shapes(config)
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise RefdiffValueError(
            f"params do not match the config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
            f", unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for k, s in shapes.items():
        if tuple(params[k].shape) != s:
            raise RefdiffShapeError(
                f"params[{k!r}] has shape {tuple(params[k].shape)}; the config needs {s}"
            )


def _check_inputs(
    params: Mapping[str, Array], config: UNetConfig, x: Array, t: Array, y: Array | None
) -> tuple[Namespace, Array, Array | None]:
    check_params(params, config)
    xp = array_namespace(x, *params.values())
    cfg = config
    if (
        x.ndim != 4
        or x.shape[1] != cfg.in_channels
        or x.shape[2] != cfg.image_size
        or x.shape[3] != cfg.image_size
    ):
        shape_fail(
            "x",
            x.shape,
            f"expected shape (batch, {cfg.in_channels}, {cfg.image_size}, "
            f"{cfg.image_size}) for this config",
            RefdiffShapeError,
        )
    bsz = x.shape[0]
    if not is_array(t):
        t = xp.asarray(t, device=device_of(x))
    if t.ndim == 0:
        t = xp.broadcast_to(xp.reshape(t, (1,)), (bsz,))
    if tuple(t.shape) != (bsz,):
        shape_fail(
            "t",
            t.shape,
            f"expected shape ({bsz},) (one timestep per batch element)",
            RefdiffShapeError,
        )
    if not (xp.isdtype(t.dtype, "integral") or xp.isdtype(t.dtype, "real floating")):
        fail("t.dtype", str(t.dtype), "expected an integer or real floating dtype")
    if cfg.num_classes is None:
        if y is not None:
            raise RefdiffValueError(
                "y was given but this config is unconditional (num_classes=None); pass y=None"
            )
    else:
        if y is None:
            fail(
                "y",
                None,
                f"class labels are required (num_classes={cfg.num_classes}); pass "
                f"y={cfg.num_classes} (the null label) for unconditional outputs",
            )
        if not is_array(y):
            y = xp.asarray(y, device=device_of(x))
        if y.ndim == 0:
            y = xp.broadcast_to(xp.reshape(y, (1,)), (bsz,))
        if tuple(y.shape) != (bsz,) or not xp.isdtype(y.dtype, "integral"):
            shape_fail(
                "y",
                y.shape,
                f"expected integer labels of shape ({bsz},), got dtype {y.dtype}",
                RefdiffValueError,
            )
        if bool(xp.any(y < 0)) or bool(xp.any(y > cfg.num_classes)):
            fail(
                "y",
                y,
                f"labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null label)",
            )
    return xp, t, y


def _resampled(b: Block) -> int:
    return b.res // 2 if b.updown == "down" else b.res * 2 if b.updown == "up" else b.res


def dropout_shapes(config: UNetConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the dropout masks, keyed by residual block name (e.g. ``"down.0.res.1"``)."""
    batch = check_int("batch", batch, minimum=1)
    return {
        b.name: (batch, b.cout, _resampled(b), _resampled(b))
        for b in layout(config)
        if b.kind == "res"
    }


def dropout_masks(
    config: UNetConfig,
    batch: int,
    rng: np.random.Generator | int,
    *,
    xp: Namespace | None = None,
    dtype: DType | None = None,
    device: Device | None = None,
) -> dict[str, Array]:
    """Explicit inverted-dropout masks m ∈ {0, 1/(1−p)} for every residual block (Srivastava et al. 2014).

    Parameters
    ----------
    config : UNetConfig
    batch : int
    rng : numpy.random.Generator or int
        Host RNG (or a seed); the masks are Bernoulli(1 − p) draws in block order.
    xp, dtype, device
        Where to put the masks (default: NumPy float64).

    Returns
    -------
    dict[str, array]
        Empty when ``config.dropout == 0``.
    """
    if config.dropout == 0.0:
        return {}
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    keep = 1.0 - config.dropout
    out = {k: (rng.random(s) < keep) / keep for k, s in dropout_shapes(config, batch).items()}
    if xp is None:
        return out if dtype is None else {k: v.astype(dtype) for k, v in out.items()}
    kw = {} if device is None else {"device": device}
    return {
        k: xp.asarray(v, dtype=xp.float64 if dtype is None else dtype, **kw) for k, v in out.items()
    }


# ----------------------------------------------------------------------------- blocks
# Every layer is called through the operation table ``O`` (refdiff.unet.layers.resolve_ops), so a
# backend can replace hot operations by fused kernels while this code stays the same.
def _resample_fwd(O: SimpleNamespace, kind: str, x: Array) -> Array:
    return O.avg_pool2x(x) if kind == "down" else O.upsample_nearest2x(x)


def _resample_bwd(O: SimpleNamespace, kind: str, g: Array) -> Array:
    return O.avg_pool2x_backward(g) if kind == "down" else O.upsample_nearest2x_backward(g)


def _res_forward(
    O: SimpleNamespace,
    params: Mapping[str, Array],
    cfg: UNetConfig,
    b: Block,
    x: Array,
    emb_act: Array,
    mask: Array | None,
) -> tuple[Array, dict[str, Any]]:
    xp = array_namespace(x)
    n, G = b.name, cfg.num_groups
    h1 = O.group_norm_silu(x, params[f"{n}.norm1.weight"], params[f"{n}.norm1.bias"], groups=G)
    xs = x
    if b.updown:
        h1 = _resample_fwd(O, b.updown, h1)
        xs = _resample_fwd(O, b.updown, x)
    c1 = O.conv2d(h1, params[f"{n}.conv1.weight"], params[f"{n}.conv1.bias"])
    e = O.linear(emb_act, params[f"{n}.temb.weight"], params[f"{n}.temb.bias"])
    if cfg.use_scale_shift_norm:
        scale = xp.reshape(e[:, : b.cout], (-1, b.cout, 1, 1))
        shift = xp.reshape(e[:, b.cout :], (-1, b.cout, 1, 1))
        n2_in = c1
        n2 = O.group_norm(c1, params[f"{n}.norm2.weight"], params[f"{n}.norm2.bias"], groups=G)
        h2 = n2 * (1.0 + scale) + shift
        a2 = O.silu(h2)
    else:
        scale = n2 = h2 = None
        n2_in = c1 + xp.reshape(e, (-1, b.cout, 1, 1))
        a2 = O.group_norm_silu(
            n2_in, params[f"{n}.norm2.weight"], params[f"{n}.norm2.bias"], groups=G
        )
    d = a2 if mask is None else O.dropout(a2, mask)
    c2 = O.conv2d(d, params[f"{n}.conv2.weight"], params[f"{n}.conv2.bias"])
    if b.cin != b.cout:
        skip = O.conv2d(xs, params[f"{n}.skip.weight"], params[f"{n}.skip.bias"], padding=0)
    else:
        skip = xs
    cache = dict(
        x=x, h1=h1, xs=xs, n2_in=n2_in, n2=n2, scale=scale, h2=h2, d=d, mask=mask, emb_act=emb_act
    )
    return skip + c2, cache


def _res_backward(
    O: SimpleNamespace,
    params: Mapping[str, Array],
    cfg: UNetConfig,
    b: Block,
    c: Mapping[str, Any],
    g: Array,
    grads: dict[str, Array],
) -> tuple[Array, Array]:
    xp = array_namespace(g)
    n, G = b.name, cfg.num_groups
    # residual branch
    gd, grads[f"{n}.conv2.weight"], grads[f"{n}.conv2.bias"] = O.conv2d_backward(
        g, c["d"], params[f"{n}.conv2.weight"]
    )
    ga2 = gd if c["mask"] is None else O.dropout_backward(gd, c["mask"])
    if cfg.use_scale_shift_norm:
        gh2 = O.silu_backward(ga2, c["h2"])
        gn2 = gh2 * (1.0 + c["scale"])
        gscale = xp.sum(gh2 * c["n2"], axis=(2, 3))
        gshift = xp.sum(gh2, axis=(2, 3))
        ge = xp.concat([gscale, gshift], axis=1)
        gc1, grads[f"{n}.norm2.weight"], grads[f"{n}.norm2.bias"] = O.group_norm_backward(
            gn2, c["n2_in"], params[f"{n}.norm2.weight"], groups=G
        )
    else:
        gc1, grads[f"{n}.norm2.weight"], grads[f"{n}.norm2.bias"] = O.group_norm_silu_backward(
            ga2, c["n2_in"], params[f"{n}.norm2.weight"], params[f"{n}.norm2.bias"], groups=G
        )
        ge = xp.sum(gc1, axis=(2, 3))
    gemb, grads[f"{n}.temb.weight"], grads[f"{n}.temb.bias"] = O.linear_backward(
        ge, c["emb_act"], params[f"{n}.temb.weight"]
    )
    gh1, grads[f"{n}.conv1.weight"], grads[f"{n}.conv1.bias"] = O.conv2d_backward(
        gc1, c["h1"], params[f"{n}.conv1.weight"]
    )
    if b.updown:
        gh1 = _resample_bwd(O, b.updown, gh1)
    gx, grads[f"{n}.norm1.weight"], grads[f"{n}.norm1.bias"] = O.group_norm_silu_backward(
        gh1, c["x"], params[f"{n}.norm1.weight"], params[f"{n}.norm1.bias"], groups=G
    )
    # skip branch
    if b.cin != b.cout:
        gxs, grads[f"{n}.skip.weight"], grads[f"{n}.skip.bias"] = O.conv2d_backward(
            g, c["xs"], params[f"{n}.skip.weight"], padding=0
        )
    else:
        gxs = g
    if b.updown:
        gxs = _resample_bwd(O, b.updown, gxs)
    return gx + gxs, gemb


def _attn_forward(
    O: SimpleNamespace, params: Mapping[str, Array], cfg: UNetConfig, b: Block, x: Array
) -> tuple[Array, dict[str, Any]]:
    n = b.name
    h = O.group_norm(x, params[f"{n}.norm.weight"], params[f"{n}.norm.bias"], groups=cfg.num_groups)
    a = O.self_attention(
        h,
        params[f"{n}.qkv.weight"],
        params[f"{n}.qkv.bias"],
        params[f"{n}.proj.weight"],
        params[f"{n}.proj.bias"],
        num_heads=b.heads,
    )
    return x + a, dict(x=x, h=h)


def _attn_backward(
    O: SimpleNamespace,
    params: Mapping[str, Array],
    cfg: UNetConfig,
    b: Block,
    c: Mapping[str, Any],
    g: Array,
    grads: dict[str, Array],
) -> Array:
    n = b.name
    (
        gh,
        grads[f"{n}.qkv.weight"],
        grads[f"{n}.qkv.bias"],
        grads[f"{n}.proj.weight"],
        grads[f"{n}.proj.bias"],
    ) = O.self_attention_backward(
        g,
        c["h"],
        params[f"{n}.qkv.weight"],
        params[f"{n}.qkv.bias"],
        params[f"{n}.proj.weight"],
        num_heads=b.heads,
    )
    gx, grads[f"{n}.norm.weight"], grads[f"{n}.norm.bias"] = O.group_norm_backward(
        gh, c["x"], params[f"{n}.norm.weight"], groups=cfg.num_groups
    )
    return g + gx


def _down_forward(
    O: SimpleNamespace, params: Mapping[str, Array], b: Block, x: Array
) -> tuple[Array, dict[str, Any]]:
    if b.conv:
        return O.conv2d(x, params[f"{b.name}.weight"], params[f"{b.name}.bias"], stride=2), dict(
            x=x
        )
    return O.avg_pool2x(x), dict(x=x)


def _down_backward(
    O: SimpleNamespace,
    params: Mapping[str, Array],
    b: Block,
    c: Mapping[str, Any],
    g: Array,
    grads: dict[str, Array],
) -> Array:
    if b.conv:
        gx, grads[f"{b.name}.weight"], grads[f"{b.name}.bias"] = O.conv2d_backward(
            g, c["x"], params[f"{b.name}.weight"], stride=2
        )
        return gx
    return O.avg_pool2x_backward(g)


def _up_forward(
    O: SimpleNamespace, params: Mapping[str, Array], b: Block, x: Array
) -> tuple[Array, dict[str, Any]]:
    u = O.upsample_nearest2x(x)
    if b.conv:
        return O.conv2d(u, params[f"{b.name}.weight"], params[f"{b.name}.bias"]), dict(u=u)
    return u, dict(u=u)


def _up_backward(
    O: SimpleNamespace,
    params: Mapping[str, Array],
    b: Block,
    c: Mapping[str, Any],
    g: Array,
    grads: dict[str, Array],
) -> Array:
    if b.conv:
        g, grads[f"{b.name}.weight"], grads[f"{b.name}.bias"] = O.conv2d_backward(
            g, c["u"], params[f"{b.name}.weight"]
        )
    return O.upsample_nearest2x_backward(g)


# ----------------------------------------------------------------------------- network
def _check_masks(
    masks: Mapping[str, Array] | None, config: UNetConfig, batch: int, train: bool
) -> Mapping[str, Array] | None:
    if not train or config.dropout == 0.0:
        return None
    if masks is None:
        fail(
            "dropout_masks",
            None,
            f"train=True with dropout={config.dropout} needs explicit "
            "masks; draw them with refdiff.unet.dropout_masks(config, batch, rng), or pass "
            "train=False",
        )
    expected = dropout_shapes(config, batch)
    missing = [k for k in expected if k not in masks]
    if missing:
        fail("dropout_masks", sorted(masks)[:4], f"missing masks for {missing[:4]}")
    for k, s in expected.items():
        if tuple(masks[k].shape) != s:
            raise RefdiffShapeError(
                f"dropout_masks[{k!r}] has shape {tuple(masks[k].shape)}; expected {s}"
            )
    return masks


def unet_forward(
    params: Mapping[str, Array],
    config: UNetConfig,
    x: Array,
    t: Array,
    *,
    y: Array | None = None,
    dropout_masks: Mapping[str, Array] | None = None,
    train: bool = False,
    ops: Mapping[str, Callable[..., Any]] | SimpleNamespace | None = None,
) -> tuple[Array, dict[str, Any]]:
    """The UNet ε_θ(x_t, t[, y]) and a cache for :func:`unet_backward` (Ho et al. 2020, App. B).

    Parameters
    ----------
    params : dict[str, array]
        Named as :func:`~refdiff.unet.param_shapes`; same namespace and dtype as x.
    config : UNetConfig
    x : array (B, in_channels, image_size, image_size)
        Noisy input x_t (NCHW).
    t : array (B,) or scalar
        Timestep values for the sinusoidal embedding (schedule indices, or continuous values);
        the embedding is computed in float64 and then cast to x's dtype.
    y : array (B,) of int, optional
        Class labels in [0, num_classes]; ``num_classes`` is the null label. Required iff the
        config is class-conditional.
    dropout_masks : dict[str, array], optional
        Masks from :func:`dropout_masks`; used only when ``train`` is True (then required
        whenever ``config.dropout > 0``).
    train : bool
        Apply dropout. Without it, dropout is the identity (inference).
    ops : mapping of str to callable, optional
        Replacements for some layer operations, keyed by the names in
        :data:`refdiff.unet.layers.OP_NAMES` (see :func:`refdiff.unet.layers.resolve_ops`);
        default: the generic array-API layers.

    Returns
    -------
    out : array (B, output_channels, image_size, image_size)
    cache : dict
        What :func:`unet_backward` needs (all intermediate activations, and the operation
        table under ``"ops"``).
    """
    cfg = config
    O = L.resolve_ops(ops)
    xp, t, y = _check_inputs(params, cfg, x, t, y)
    masks = _check_masks(dropout_masks, cfg, x.shape[0], train)
    p, G = params, cfg.num_groups
    # time (and label) embedding
    temb0 = xp.astype(L.timestep_embedding(t, cfg.model_channels), x.dtype)
    e1 = O.linear(temb0, p["time_embed.0.weight"], p["time_embed.0.bias"])
    e1a = O.silu(e1)
    emb = O.linear(e1a, p["time_embed.1.weight"], p["time_embed.1.bias"])
    if cfg.num_classes is not None:
        emb = emb + L.embedding(y, p["label_embed.weight"])
    emb_act = O.silu(emb)
    # body
    h = O.conv2d(x, p["conv_in.weight"], p["conv_in.bias"])
    kept = [h]
    caches = []
    for b in layout(cfg):
        if b.pop:
            h = xp.concat([h, kept.pop()], axis=1)
        if b.kind == "res":
            h, c = _res_forward(O, p, cfg, b, h, emb_act, None if masks is None else masks[b.name])
        elif b.kind == "attn":
            h, c = _attn_forward(O, p, cfg, b, h)
        elif b.kind == "downsample":
            h, c = _down_forward(O, p, b, h)
        else:
            h, c = _up_forward(O, p, b, h)
        caches.append(c)
        if b.push:
            kept.append(h)
    # output head
    a = O.group_norm_silu(h, p["norm_out.weight"], p["norm_out.bias"], groups=G)
    out = O.conv2d(a, p["conv_out.weight"], p["conv_out.bias"])
    cache = dict(
        x=x,
        y=y,
        temb0=temb0,
        e1=e1,
        e1a=e1a,
        emb=emb,
        emb_act=emb_act,
        blocks=caches,
        h=h,
        a=a,
        ops=O,
    )
    return out, cache


def unet_vjp(
    params: Mapping[str, Array],
    config: UNetConfig,
    cache: Mapping[str, Any],
    grad_out: Array,
    *,
    ops: Mapping[str, Callable[..., Any]] | SimpleNamespace | None = None,
) -> tuple[dict[str, Array], Array]:
    """Gradients of a scalar loss with respect to the parameters and the input x, given ∂L/∂out.

    ``ops`` replaces layer operations as in :func:`unet_forward`; by default the backward uses
    the table the forward used (``cache["ops"]``).

    Returns
    -------
    grads : dict[str, array]
        Same names and order as ``params``.
    grad_x : array
        ∂L/∂x, shaped like x.
    """
    cfg, p, G = config, params, config.num_groups
    O = L.resolve_ops(cache.get("ops") if ops is None else ops)
    xp = array_namespace(grad_out, *params.values())
    grads: dict[str, Any] = {}
    g, grads["conv_out.weight"], grads["conv_out.bias"] = O.conv2d_backward(
        grad_out, cache["a"], p["conv_out.weight"]
    )
    g, grads["norm_out.weight"], grads["norm_out.bias"] = O.group_norm_silu_backward(
        g, cache["h"], p["norm_out.weight"], p["norm_out.bias"], groups=G
    )
    g_emb_act = xp.zeros_like(cache["emb_act"])
    g_kept: list[Array] = []
    plan = layout(cfg)
    for b, c in zip(reversed(plan), reversed(cache["blocks"])):
        if b.push:
            g = g + g_kept.pop()
        if b.kind == "res":
            g, ge = _res_backward(O, p, cfg, b, c, g, grads)
            g_emb_act = g_emb_act + ge
        elif b.kind == "attn":
            g = _attn_backward(O, p, cfg, b, c, g, grads)
        elif b.kind == "downsample":
            g = _down_backward(O, p, b, c, g, grads)
        else:
            g = _up_backward(O, p, b, c, g, grads)
        if b.pop:
            ch = g.shape[1] - b.pop
            g_kept.append(g[:, ch:, ...])
            g = g[:, :ch, ...]
    g = g + g_kept.pop()
    assert not g_kept
    gx, grads["conv_in.weight"], grads["conv_in.bias"] = O.conv2d_backward(
        g, cache["x"], p["conv_in.weight"]
    )
    g_emb = O.silu_backward(g_emb_act, cache["emb"])
    if cfg.num_classes is not None:
        grads["label_embed.weight"] = L.embedding_backward(g_emb, cache["y"], cfg.num_classes + 1)
    g, grads["time_embed.1.weight"], grads["time_embed.1.bias"] = O.linear_backward(
        g_emb, cache["e1a"], p["time_embed.1.weight"]
    )
    g = O.silu_backward(g, cache["e1"])
    _, grads["time_embed.0.weight"], grads["time_embed.0.bias"] = O.linear_backward(
        g, cache["temb0"], p["time_embed.0.weight"]
    )
    return {k: grads[k] for k in params}, gx


def unet_backward(
    params: Mapping[str, Array],
    config: UNetConfig,
    cache: Mapping[str, Any],
    grad_out: Array,
    *,
    ops: Mapping[str, Callable[..., Any]] | SimpleNamespace | None = None,
) -> dict[str, Array]:
    """Hand-written backward of :func:`unet_forward`: ∂L/∂θ for every parameter, given ∂L/∂out.

    Parameters
    ----------
    params, config
        As given to :func:`unet_forward`.
    cache : dict
        The second output of :func:`unet_forward`.
    grad_out : array
        ∂L/∂out, shaped like the forward output.
    ops : mapping of str to callable, optional
        Operation replacements (default: those the forward used, ``cache["ops"]``).

    Returns
    -------
    dict[str, array]
        Gradients with the names and order of ``params``.
    """
    return unet_vjp(params, config, cache, grad_out, ops=ops)[0]


def unet_apply(
    params: Mapping[str, Array],
    config: UNetConfig,
    x: Array,
    t: Array,
    *,
    y: Array | None = None,
    ops: Mapping[str, Callable[..., Any]] | SimpleNamespace | None = None,
) -> Array:
    """Inference forward (no dropout); the model function ε_θ(x_t, t[, y]) for samplers."""
    return unet_forward(params, config, x, t, y=y, train=False, ops=ops)[0]


def loss_and_grad(
    params: Mapping[str, Array],
    config: UNetConfig,
    x_t: Array,
    t: Array,
    eps: Array,
    *,
    y: Array | None = None,
    dropout_masks: Mapping[str, Array] | None = None,
    train: bool = False,
    ops: Mapping[str, Callable[..., Any]] | SimpleNamespace | None = None,
) -> tuple[Array, dict[str, Array]]:
    """L_simple = mean‖ε − ε_θ(x_t, t)‖² and its parameter gradients (Ho et al. 2020, Eq. 14).

    With a learned variance only the first half of the output channels (the ε prediction)
    enters the loss. ``ops`` replaces layer operations in the forward and the backward (see
    :func:`unet_forward`). Returns ``(loss, grads)`` with loss a 0-d array.
    """
    out, cache = unet_forward(
        params, config, x_t, t, y=y, dropout_masks=dropout_masks, train=train, ops=ops
    )
    xp = array_namespace(out)
    c = eps.shape[1] if eps.ndim == 4 else -1
    if tuple(eps.shape) != (
        out.shape[0],
        out.shape[1] // (2 if config.learn_sigma else 1),
        out.shape[2],
        out.shape[3],
    ):
        shape_fail(
            "eps",
            eps.shape,
            f"expected the shape of x_t {tuple(x_t.shape)} with "
            f"{out.shape[1] // (2 if config.learn_sigma else 1)} channels",
            RefdiffShapeError,
        )
    diff = out[:, :c, ...] - eps
    loss = xp.mean(diff * diff)
    g = diff * (2.0 / math.prod(diff.shape))
    if config.learn_sigma:
        g = xp.concat([g, xp.zeros_like(g)], axis=1)
    return loss, unet_backward(params, config, cache, g)
