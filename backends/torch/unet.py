"""The UNet as a ``torch.nn.Module``, built from the same :class:`refdiff.unet.UNetConfig` and parameter names.

``TorchUNet(config).state_dict()`` has exactly the keys and shapes of
:func:`refdiff.unet.param_shapes`, so a dict from :func:`refdiff.unet.init_params` (or a
checkpoint written by any backend) loads with :meth:`TorchUNet.load_params`, and
:meth:`TorchUNet.export_params` gives the dict back. The forward is written with native torch
operations (not the reference code), and :func:`compare_with_reference` checks it — outputs, the
L_simple loss and autograd gradients — against the float64 NumPy reference.

Fast paths (``backends/torch/fast.py``): each GroupNorm that is followed by SiLU (and the
time-embedding add before the second one) can run as one fused Triton kernel, chosen per model
with :meth:`TorchUNet.set_fast_paths` or for every model in a block with :func:`fast_paths`:
``fused_norm="torch"`` (the default: plain torch ops, the formulation the conformance suite has
always checked), ``"triton"`` (always the kernel; CUDA, float32/bf16/fp16) or ``"auto"`` (the
kernel on CUDA in eager mode, plain torch ops on CPU, in float64 and while ``torch.compile``
traces, where Inductor fuses them itself). A model moved to channels_last converts its input to
channels_last too.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refdiff._errors import RefdiffShapeError, RefdiffValueError, fail
from refdiff.unet import layers as _ref_layers
from refdiff.unet.config import UNetConfig
from refdiff.unet.layers import shape_fail
from refdiff.unet.model import dropout_masks as _dropout_masks
from refdiff.unet.model import unet_forward, unet_backward
from refdiff.unet.params import Block, init_params, layout, param_shapes, random_params

__all__ = [
    "TorchUNet",
    "from_config",
    "compare_with_reference",
    "timestep_embedding",
    "resolve_dtype",
    "fast_paths",
    "FUSED_NORM_MODES",
]

_GN_EPS = _ref_layers.GN_EPS

#: Choices of ``fused_norm``: plain torch ops, the Triton kernel, or the kernel where it applies.
FUSED_NORM_MODES = ("torch", "triton", "auto")
_FAST_DEFAULTS = {"fused_norm": "torch"}
_FUSABLE = (torch.float32, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def fast_paths(*, fused_norm: str = "auto"):
    """Within the block, models without their own :meth:`TorchUNet.set_fast_paths` choice use these."""
    if fused_norm not in FUSED_NORM_MODES:
        fail("fused_norm", fused_norm, f"expected one of {FUSED_NORM_MODES}")
    _register_ops(fused_norm)
    old = dict(_FAST_DEFAULTS)
    _FAST_DEFAULTS["fused_norm"] = fused_norm
    try:
        yield
    finally:
        _FAST_DEFAULTS.update(old)


def _use_fused(mode: str, x: torch.Tensor) -> bool:
    """Whether this forward uses the fused GroupNorm kernel (``mode`` from FUSED_NORM_MODES)."""
    if mode == "torch":
        return False
    if mode == "triton":
        return True
    if torch.compiler.is_compiling():
        return False
    return x.device.type == "cuda" and x.dtype in _FUSABLE and _triton_ok()


def _register_ops(mode: str | None) -> None:
    """Register the fused op before any ``torch.compile`` trace can reach it (registration is not traceable)."""
    if mode in ("triton", "auto"):
        from .fast import register_ops

        register_ops()


def _triton_ok() -> bool:
    from .fast import triton_available

    return triton_available()


def group_norm_act(x, norm: nn.GroupNorm, *, act: str = "silu", add=None, fused: bool = False):
    """act(GN(x + add)) with ``add`` of shape (N, C): the fused kernel, or the torch ops."""
    if fused:
        from .fast import fused_group_norm_act

        return fused_group_norm_act(
            x, norm.weight, norm.bias, norm.num_groups, norm.eps, add=add, act=act
        )
    h = norm(x if add is None else x + add[:, :, None, None].to(x.dtype))
    return F.silu(h) if act == "silu" else h


def resolve_dtype(dtype) -> torch.dtype:
    """A torch dtype from a torch dtype or a name ("float32", "float64", "bfloat16", "float16")."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "float64": torch.float64,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }
    if str(dtype) not in names:
        fail("dtype", dtype, f"expected a torch floating dtype or one of {sorted(names)}")
    return names[str(dtype)]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [sin(tω_k), cos(tω_k)], ω_k = P^(−k/(d/2−1)), in float64 (Ho et al. 2020)."""
    dt = torch.float64 if t.device.type != "mps" else torch.float32
    half = dim // 2
    k = torch.arange(half, dtype=dt, device=t.device)
    freqs = torch.exp(k * (-math.log(max_period) / (half - 1)))
    ang = t.to(dt)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class ResBlock(nn.Module):
    """GN → SiLU → [resample] → conv → +temb / AdaGN → GN → SiLU → dropout → conv, plus skip."""

    def __init__(self, cfg: UNetConfig, b: Block):
        super().__init__()
        g, e = cfg.num_groups, cfg.time_embed_dim
        self.cout, self.updown = b.cout, b.updown
        self.scale_shift, self.p = cfg.use_scale_shift_norm, cfg.dropout
        self.norm1 = nn.GroupNorm(g, b.cin, eps=_GN_EPS)
        self.conv1 = nn.Conv2d(b.cin, b.cout, 3, padding=1)
        self.temb = nn.Linear(e, 2 * b.cout if self.scale_shift else b.cout)
        self.norm2 = nn.GroupNorm(g, b.cout, eps=_GN_EPS)
        self.conv2 = nn.Conv2d(b.cout, b.cout, 3, padding=1)
        self.skip = nn.Conv2d(b.cin, b.cout, 1) if b.cin != b.cout else None

    def _resample(self, x):
        if self.updown == "down":
            return F.avg_pool2d(x, 2)
        if self.updown == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x, emb_act, mask=None, *, fused: bool = False):
        h = group_norm_act(x, self.norm1, fused=fused)
        h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        e = self.temb(emb_act)
        if self.scale_shift:
            e = e[:, :, None, None].to(h.dtype)
            scale, shift = e[:, : self.cout], e[:, self.cout :]
            h = F.silu(self.norm2(h) * (1 + scale) + shift)
        else:
            h = group_norm_act(h, self.norm2, add=e, fused=fused)
        if self.training:
            if mask is not None:
                h = h * mask
            elif self.p > 0:
                h = F.dropout(h, self.p, training=True)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


class AttnBlock(nn.Module):
    """x + proj(MHA(GN(x))) over the H·W positions; qkv rows are [q | k | v], heads contiguous."""

    def __init__(self, cfg: UNetConfig, b: Block):
        super().__init__()
        c = b.cin
        self.heads = b.heads
        self.norm = nn.GroupNorm(cfg.num_groups, c, eps=_GN_EPS)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def forward(self, x, *, fused: bool = False):
        bsz, c, hh, ww = x.shape
        n, nh = hh * ww, self.heads
        h = group_norm_act(x, self.norm, act="none", fused=fused)
        h = h.reshape(bsz, c, n).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(h).split(c, dim=-1)
        q, k, v = (z.reshape(bsz, n, nh, c // nh).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, d)
        a = a.transpose(1, 2).reshape(bsz, n, c)
        return x + self.proj(a).transpose(1, 2).reshape(bsz, c, hh, ww)


class Resample(nn.Module):
    """Strided 3×3 conv / 2×2 average pool (down), or nearest ×2 then an optional 3×3 conv (up)."""

    def __init__(self, b: Block):
        super().__init__()
        self.kind = b.kind
        self.op = None
        if b.conv:
            self.op = nn.Conv2d(
                b.cin, b.cout, 3, stride=2 if b.kind == "downsample" else 1, padding=1
            )

    def forward(self, x):
        if self.kind == "downsample":
            return F.avg_pool2d(x, 2) if self.op is None else self.op(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.op is None else self.op(x)


def _insert(root: nn.Module, path: list[str], module: nn.Module) -> None:
    node = root
    for part in path[:-1]:
        if part not in node._modules:
            node.add_module(part, nn.ModuleDict())
        node = node._modules[part]
    node.add_module(path[-1], module)


class TorchUNet(nn.Module):
    """The refdiff UNet in PyTorch; ``state_dict`` keys equal :func:`refdiff.unet.param_shapes` keys.

    Parameters
    ----------
    config : UNetConfig

    Notes
    -----
    ``forward(x, t, y=None, *, dropout_masks=None)``: in training mode dropout uses the given
    masks (keyed as :func:`refdiff.unet.dropout_masks`) or, without them, torch's RNG; in
    eval mode there is no dropout. The sinusoidal embedding is computed in float64 and cast.
    If the module is in channels_last memory (``model.to(memory_format=torch.channels_last)``),
    x is converted to channels_last before the first convolution. The GroupNorm path is chosen
    by :meth:`set_fast_paths` (default: the process default of :func:`fast_paths`, "torch").
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            fail("config", config, "expected a refdiff.unet.UNetConfig (see get_preset)")
        self.config = cfg = config
        mc, e = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.ModuleList([nn.Linear(mc, e), nn.Linear(e, e)])
        self.label_embed = (
            nn.Embedding(cfg.num_classes + 1, e) if cfg.num_classes is not None else None
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        self._plan: list[tuple[Block, nn.Module]] = []
        for b in layout(cfg):
            if b.kind == "res":
                m: nn.Module = ResBlock(cfg, b)
                path = b.name.split(".")
            elif b.kind == "attn":
                m = AttnBlock(cfg, b)
                path = b.name.split(".")
            else:
                m = Resample(b)
                path = b.name.split(".")[:-1]  # ".op" is the conv inside Resample
            _insert(self, path, m)
            self._plan.append((b, m))
        self.norm_out = nn.GroupNorm(cfg.num_groups, mc, eps=_GN_EPS)
        self.conv_out = nn.Conv2d(mc, cfg.output_channels, 3, padding=1)
        self.fused_norm: str | None = None

    def set_fast_paths(self, *, fused_norm: str | None = None) -> TorchUNet:
        """Choose this model's GroupNorm path: "torch", "triton", "auto", or None (the process default)."""
        if fused_norm is not None and fused_norm not in FUSED_NORM_MODES:
            fail("fused_norm", fused_norm, f"expected one of {FUSED_NORM_MODES} or None")
        _register_ops(fused_norm)
        self.fused_norm = fused_norm
        return self

    def forward(self, x, t, y=None, *, dropout_masks: Mapping[str, Any] | None = None):
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            shape_fail(
                "x",
                x.shape,
                f"expected shape (batch, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size})",
                RefdiffShapeError,
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        dtype = self.conv_in.weight.dtype
        emb = self.time_embed[1](
            F.silu(self.time_embed[0](timestep_embedding(t, cfg.model_channels).to(dtype)))
        )
        if self.label_embed is not None:
            if y is None:
                fail(
                    "y",
                    None,
                    f"class labels are required (num_classes={cfg.num_classes}); "
                    f"pass y={cfg.num_classes} (the null label) for unconditional outputs",
                )
            emb = emb + self.label_embed(torch.as_tensor(y, device=x.device))
        elif y is not None:
            raise RefdiffValueError(
                "y was given but this config is unconditional (num_classes=None); pass y=None"
            )
        emb_act = F.silu(emb)
        fused = _use_fused(self.fused_norm or _FAST_DEFAULTS["fused_norm"], x)
        if (
            self.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
            and not self.conv_in.weight.is_contiguous()
        ):
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        kept = [h]
        for b, m in self._plan:
            if b.pop:
                h = torch.cat([h, kept.pop()], dim=1)
            if b.kind == "res":
                mask = None
                if dropout_masks is not None and self.training and cfg.dropout > 0:
                    mask = torch.as_tensor(dropout_masks[b.name], dtype=h.dtype, device=h.device)
                h = m(h, emb_act, mask, fused=fused)
            elif b.kind == "attn":
                h = m(h, fused=fused)
            else:
                h = m(h)
            if b.push:
                kept.append(h)
        return self.conv_out(group_norm_act(h, self.norm_out, fused=fused))

    # ------------------------------------------------------------------ the shared dict
    def load_params(self, params: Mapping[str, Any]) -> TorchUNet:
        """Copy a refdiff parameter dict (NumPy arrays or tensors) into the module, checking names and shapes."""
        shapes = param_shapes(self.config)
        missing = [k for k in shapes if k not in params]
        extra = [k for k in params if k not in shapes]
        if missing or extra:
            raise RefdiffValueError(
                f"params do not match the config: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        own = dict(self.named_parameters())
        with torch.no_grad():
            for k, s in shapes.items():
                v = params[k]
                if tuple(v.shape) != s:
                    raise RefdiffShapeError(
                        f"params[{k!r}] has shape {tuple(v.shape)}; the config needs {s}"
                    )
                src = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
                own[k].copy_(src.to(device=own[k].device, dtype=own[k].dtype))
        return self

    def export_params(self) -> dict[str, np.ndarray]:
        """The parameters as a refdiff dict of NumPy arrays (in :func:`param_shapes` order)."""
        own = dict(self.named_parameters())
        return {k: own[k].detach().to("cpu").numpy().copy() for k in param_shapes(self.config)}


def from_config(config: UNetConfig, seed: int = 0, dtype=torch.float32, device="cpu") -> TorchUNet:
    """A :class:`TorchUNet` on ``device``/``dtype`` holding :func:`refdiff.unet.init_params` (config, seed)."""
    model = TorchUNet(config).to(device=device, dtype=resolve_dtype(dtype))
    return model.load_params(init_params(config, seed))


@contextlib.contextmanager
def _no_tf32():
    cuda_mm, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = cuda_mm, cudnn


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(a - ref))) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def compare_with_reference(
    config: UNetConfig, dtype=torch.float64, device="cpu", seed: int = 0, *, batch: int = 2
) -> dict[str, Any]:
    """Run the torch module and the float64 NumPy reference on the same weights and inputs and compare.

    Weights are :func:`refdiff.unet.random_params` (no zero-initialised layers, so every gradient
    is exercised), inputs x_t, t, ε, labels and dropout masks are drawn on the host; all are
    rounded to ``dtype`` first so that input rounding is not counted. The loss is L_simple
    (Ho et al. 2020, Eq. 14) on the ε channels; gradients come from autograd. TF32 is off.

    Returns
    -------
    dict
        ``max_rel_err_out`` (max |out − out_ref| / max |out_ref|), ``max_rel_err_grad`` (the same
        per parameter, worst over parameters), ``rel_err_loss``, ``worst_param`` and
        ``dtype``/``device`` strings.
    """
    dt = resolve_dtype(dtype)
    np_dt = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}.get(
        dt
    )
    rng = np.random.default_rng(seed + 1)
    cfg = config
    q = (
        (lambda a: a.astype(np_dt).astype(np.float64))
        if np_dt is not None
        else (lambda a: torch.as_tensor(a).to(dt).double().numpy())
    )
    params = {k: q(v) for k, v in random_params(cfg, seed).items()}
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    x = q(rng.standard_normal(shape))
    t = rng.integers(0, 1000, size=batch)
    eps_ch = cfg.output_channels // (2 if cfg.learn_sigma else 1)
    eps = q(rng.standard_normal((batch, eps_ch) + shape[2:]))
    y = rng.integers(0, cfg.num_classes + 1, size=batch) if cfg.num_classes is not None else None
    masks = _dropout_masks(cfg, batch, rng)
    masks = {k: q(v) for k, v in masks.items()}
    # reference (float64 NumPy)
    out_ref, cache = unet_forward(params, cfg, x, t, y=y, dropout_masks=masks, train=True)
    diff = out_ref[:, :eps_ch] - eps
    loss_ref = float(np.mean(diff * diff))
    g_out = diff * (2.0 / diff.size)
    if cfg.learn_sigma:
        g_out = np.concatenate([g_out, np.zeros_like(g_out)], axis=1)
    grads_ref = unet_backward(params, cfg, cache, g_out)
    # torch
    with _no_tf32():
        model = TorchUNet(cfg).to(device=device, dtype=dt).load_params(params)
        model.train()
        tt = lambda a: torch.as_tensor(a, device=device, dtype=dt)  # noqa: E731
        out = model(
            tt(x),
            torch.as_tensor(t, device=device),
            None if y is None else torch.as_tensor(y, device=device),
            dropout_masks={k: tt(v) for k, v in masks.items()},
        )
        loss = torch.mean((out[:, :eps_ch] - tt(eps)) ** 2)
        loss.backward()
    out_t = out.detach().double().cpu().numpy()
    errs = {
        k: _rel(p.grad.detach().double().cpu().numpy(), grads_ref[k])
        for k, p in model.named_parameters()
    }
    worst = max(errs, key=errs.get)
    return {
        "max_rel_err_out": _rel(out_t, out_ref),
        "max_rel_err_grad": errs[worst],
        "rel_err_loss": abs(float(loss.detach()) - loss_ref) / abs(loss_ref),
        "worst_param": worst,
        "dtype": str(dt).replace("torch.", ""),
        "device": str(device),
    }
