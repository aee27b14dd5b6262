"""Fast paths of the torch backend: a fused GroupNorm + SiLU kernel, and a graphed training step.

Three pieces, each optional and each checked against the plain torch formulation:

* :func:`fused_group_norm_act` — ``act(GN(x + e))`` in one Triton kernel per direction
  (GroupNorm: Wu & He 2018, Eq. 1; SiLU: Elfwing et al. 2018), with the time-embedding add ``e``
  (one value per sample and channel) folded into the load. Statistics are accumulated in float32
  (Chan et al.'s pairwise update of mean and M2 over chunks), the output is written in the input
  dtype (bf16 under autocast: no float32 intermediate), and the backward recomputes the
  normalised values from x instead of saving the output. NCHW and channels_last inputs are
  read in place. It is a ``torch.library`` custom op with a fake (meta) implementation and a
  registered autograd formula, so ``torch.compile`` and CUDA-graph capture treat it as one opaque
  kernel. Triton is imported lazily, on first use; without a GPU it runs only under Triton's
  interpreter (``TRITON_INTERPRET=1``), which is how the CPU tests check it.
* :class:`TrainStep` / :func:`make_train_step` — one training step of L_simple (Ho et al. 2020,
  Eq. 14): forward noising (Eq. 4), the network under optional bf16 autocast and channels_last,
  backward, optional clipping, Adam/AdamW (fused on CUDA) and an EMA of the weights
  (``torch._foreach_lerp_``). With ``cuda_graphs=True`` the whole step — noise draw, timesteps,
  forward, backward, optimizer and EMA — is captured once as a CUDA graph and replayed; with
  ``compile_mode`` the network is ``torch.compile``-d first. The same step drives any network
  through ``forward=`` (the benchmarks run diffusers' ``UNet2DModel`` through it).
* :func:`make_inference_fn` — the network for samplers: eval mode, no grad, bf16 / channels_last /
  compile, and a CUDA graph per input shape.

Nothing here is imported by ``import refdiff``; ``backends/torch/unet.py`` imports
:func:`fused_group_norm_act` only when a model is told to use it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from refdiff._errors import RefdiffValueError, check_choice, check_int, check_real, fail

__all__ = [
    "ACTIVATIONS",
    "COMPILE_MODES",
    "register_ops",
    "triton_available",
    "triton_interpreted",
    "fused_group_norm_act",
    "group_norm_act_reference",
    "TrainStep",
    "make_train_step",
    "make_inference_fn",
    "prepare_model",
    "set_tf32",
]

ACTIVATIONS = ("silu", "none")
#: ``compile_mode`` values: None (eager) or a ``torch.compile`` mode.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ============================================================================================
# Fused GroupNorm (+ per-channel add) + activation
# ============================================================================================


def triton_interpreted() -> bool:
    """Whether Triton kernels run on Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_available() -> bool:
    """Whether the triton package is installed (it ships with the CUDA builds of torch)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


_KERNELS: dict[bool, Any] = {}


def _kernels():
    """The two Triton kernels, defined on first use (per interpreter mode: ``triton.jit`` reads it)."""
    key = triton_interpreted()
    if key in _KERNELS:
        return _KERNELS[key]
    try:
        import triton
        import triton.language as tl
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RefdiffValueError(
            "fused_norm='triton' needs the triton package (it ships with CUDA builds of torch; "
            "`pip install triton`); use fused_norm='torch'"
        ) from e

    @triton.jit
    def gn_act_fwd(
        X,
        E,
        W,
        B,
        Y,
        MEAN,
        RSTD,
        HW,
        G,
        CG,
        sxn,
        sxc,
        sxp,
        syn,
        syc,
        syp,
        sen,
        sec,
        eps,
        inv_m,
        HAS_ADD: tl.constexpr,
        ACT: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        # one program per (sample n, group g); the group is CG channels x HW pixels
        pid = tl.program_id(0)
        n = pid // G
        g = pid % G
        cl = tl.arange(0, BLOCK_C)
        cmask = cl < CG
        c = g * CG + cl
        xrow = X + n * sxn + c * sxc
        if HAS_ADD:
            e = tl.load(E + n * sen + c * sec, mask=cmask, other=0.0).to(tl.float32)
        # pass 1: mean and M2, chunk by chunk, combined pairwise (Chan, Golub & LeVeque 1983)
        cnt = 0.0
        mean = 0.0
        m2 = 0.0
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            mask = cmask[:, None] & (p < HW)[None, :]
            x = tl.load(xrow[:, None] + p[None, :] * sxp, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                x = x + e[:, None]
            nb = tl.sum(tl.sum(mask.to(tl.float32), axis=1), axis=0)
            mb = tl.sum(tl.sum(tl.where(mask, x, 0.0), axis=1), axis=0) / nb
            d = tl.where(mask, x - mb, 0.0)
            m2b = tl.sum(tl.sum(d * d, axis=1), axis=0)
            tot = cnt + nb
            delta = mb - mean
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta * delta * (cnt * nb / tot)
            cnt = tot
        rstd = 1.0 / tl.sqrt(m2 * inv_m + eps)
        tl.store(MEAN + pid, mean)
        tl.store(RSTD + pid, rstd)
        w = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
        scale = w * rstd
        yrow = Y + n * syn + c * syc
        # pass 2: z = (x - mean)·rstd·w + b, y = act(z)
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            mask = cmask[:, None] & (p < HW)[None, :]
            x = tl.load(xrow[:, None] + p[None, :] * sxp, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                x = x + e[:, None]
            z = (x - mean) * scale[:, None] + b[:, None]
            if ACT == 1:
                z = z * tl.sigmoid(z)
            tl.store(yrow[:, None] + p[None, :] * syp, z.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def gn_act_bwd(
        X,
        E,
        W,
        B,
        DY,
        MEAN,
        RSTD,
        DX,
        DWP,
        DBP,
        DE,
        HW,
        G,
        CG,
        C,
        sxn,
        sxc,
        sxp,
        sdn,
        sdc,
        sdp,
        son,
        soc,
        sop,
        sen,
        sec,
        inv_m,
        HAS_ADD: tl.constexpr,
        ACT: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        pid = tl.program_id(0)
        n = pid // G
        g = pid % G
        cl = tl.arange(0, BLOCK_C)
        cmask = cl < CG
        c = g * CG + cl
        mean = tl.load(MEAN + pid)
        rstd = tl.load(RSTD + pid)
        w = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
        if HAS_ADD:
            e = tl.load(E + n * sen + c * sec, mask=cmask, other=0.0).to(tl.float32)
        xrow = X + n * sxn + c * sxc
        drow = DY + n * sdn + c * sdc
        orow = DX + n * son + c * soc
        dw = tl.zeros([BLOCK_C], dtype=tl.float32)
        db = tl.zeros([BLOCK_C], dtype=tl.float32)
        s1 = 0.0  # Σ dL/dx̂
        s2 = 0.0  # Σ dL/dx̂ · x̂
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            mask = cmask[:, None] & (p < HW)[None, :]
            x = tl.load(xrow[:, None] + p[None, :] * sxp, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                x = x + e[:, None]
            dy = tl.load(drow[:, None] + p[None, :] * sdp, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            if ACT == 1:
                z = xhat * w[:, None] + b[:, None]
                s = tl.sigmoid(z)
                dz = dy * (s * (1.0 + z * (1.0 - s)))  # silu'(z) = σ(z)(1 + z(1 − σ(z)))
            else:
                dz = dy
            dz = tl.where(mask, dz, 0.0)
            dw += tl.sum(dz * xhat, axis=1)
            db += tl.sum(dz, axis=1)
            gx = dz * w[:, None]
            s1 += tl.sum(tl.sum(gx, axis=1), axis=0)
            s2 += tl.sum(tl.sum(gx * xhat, axis=1), axis=0)
        tl.store(DWP + n * C + c, dw, mask=cmask)
        tl.store(DBP + n * C + c, db, mask=cmask)
        a1 = s1 * inv_m
        a2 = s2 * inv_m
        de = tl.zeros([BLOCK_C], dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            mask = cmask[:, None] & (p < HW)[None, :]
            x = tl.load(xrow[:, None] + p[None, :] * sxp, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                x = x + e[:, None]
            dy = tl.load(drow[:, None] + p[None, :] * sdp, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            if ACT == 1:
                z = xhat * w[:, None] + b[:, None]
                s = tl.sigmoid(z)
                dz = dy * (s * (1.0 + z * (1.0 - s)))
            else:
                dz = dy
            gx = dz * w[:, None]
            dx = rstd * (gx - a1 - xhat * a2)  # Wu & He 2018, GN backward
            dx = tl.where(mask, dx, 0.0)
            tl.store(orow[:, None] + p[None, :] * sop, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_ADD:
                de += tl.sum(dx, axis=1)
        if HAS_ADD:
            tl.store(DE + n * C + c, de, mask=cmask)

    _KERNELS[key] = (triton, gn_act_fwd, gn_act_bwd)
    return _KERNELS[key]


def _ncp_strides(t: torch.Tensor):
    """(batch, channel, pixel) strides of a 4-D tensor whose H and W axes merge into one, else None."""
    n, c, h, w = t.shape
    if w == 1:
        sp = t.stride(2)
    elif h == 1 or t.stride(2) == w * t.stride(3):
        sp = t.stride(3)
    else:
        return None
    return t.stride(0), t.stride(1), sp


def _mergeable(t: torch.Tensor) -> torch.Tensor:
    if _ncp_strides(t) is not None:
        return t
    fmt = (
        torch.channels_last
        if t.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    return t.contiguous(memory_format=fmt)


def _blocks(cg: int, hw: int) -> tuple[int, int, int]:
    block_c = 1 << max(0, (cg - 1).bit_length())
    block_p = max(16, min(1 << max(0, (hw - 1).bit_length()), 2048 // block_c))
    return block_c, block_p, 4 if block_c * block_p >= 1024 else 2


def _fwd_impl(x, weight, bias, add, num_groups: int, eps: float, act: int):
    triton, fwd, _ = _kernels()
    x = _mergeable(x)
    n, c, h, w = x.shape
    g = num_groups
    cg, hw = c // g, h * w
    y = torch.empty_like(x)
    mean = torch.empty((n * g,), device=x.device, dtype=torch.float32)
    rstd = torch.empty((n * g,), device=x.device, dtype=torch.float32)
    bc, bp, nw = _blocks(cg, hw)
    sx, sy = _ncp_strides(x), _ncp_strides(y)
    e = add if add is not None else mean  # any pointer; unused when HAS_ADD is False
    se = (add.stride(0), add.stride(1)) if add is not None else (0, 0)
    fwd[(n * g,)](
        x,
        e,
        weight,
        bias,
        y,
        mean,
        rstd,
        hw,
        g,
        cg,
        *sx,
        *sy,
        *se,
        float(eps),
        1.0 / (cg * hw),
        HAS_ADD=add is not None,
        ACT=act,
        BLOCK_C=bc,
        BLOCK_P=bp,
        num_warps=nw,
    )
    return y, mean, rstd


def _bwd_impl(dy, x, weight, bias, add, mean, rstd, num_groups: int, act: int):
    triton, _, bwd = _kernels()
    x = _mergeable(x)
    dy = _mergeable(dy)
    n, c, h, w = x.shape
    g = num_groups
    cg, hw = c // g, h * w
    dx = torch.empty_like(x)
    dwp = torch.empty((n, c), device=x.device, dtype=torch.float32)
    dbp = torch.empty((n, c), device=x.device, dtype=torch.float32)
    de = torch.empty((n, c) if add is not None else (0,), device=x.device, dtype=torch.float32)
    bc, bp, nw = _blocks(cg, hw)
    e = add if add is not None else mean
    se = (add.stride(0), add.stride(1)) if add is not None else (0, 0)
    bwd[(n * g,)](
        x,
        e,
        weight,
        bias,
        dy,
        mean,
        rstd,
        dx,
        dwp,
        dbp,
        de,
        hw,
        g,
        cg,
        c,
        *_ncp_strides(x),
        *_ncp_strides(dy),
        *_ncp_strides(dx),
        *se,
        1.0 / (cg * hw),
        HAS_ADD=add is not None,
        ACT=act,
        BLOCK_C=bc,
        BLOCK_P=bp,
        num_warps=nw,
    )
    dw = dwp.sum(0).to(weight.dtype)
    db = dbp.sum(0).to(bias.dtype)
    de = de.to(add.dtype) if add is not None else de
    return dx, dw, db, de


_OPS: dict[str, Any] = {}


def register_ops() -> None:
    """Register the ``refdiff::group_norm_act`` custom ops (once per process; no Triton import).

    Call it before ``torch.compile`` traces a model that uses them (``TorchUNet.set_fast_paths``
    does): registering an op inside a trace is not supported.
    """
    _ops()


def _ops():
    if _OPS:
        return _OPS
    if torch.compiler.is_compiling():
        raise RefdiffValueError(
            "the fused GroupNorm op was first used inside torch.compile; call "
            "refdiff.backends.torch.fast.register_ops() (or "
            "model.set_fast_paths(fused_norm=...)) before compiling"
        )

    # explicit schemas: this module uses postponed annotations, which infer_schema cannot read
    @torch.library.custom_op(
        "refdiff::group_norm_act",
        mutates_args=(),
        schema=(
            "(Tensor x, Tensor weight, Tensor bias, Tensor? add, int num_groups, float eps, int act)"
            " -> (Tensor, Tensor, Tensor)"
        ),
    )
    def gn_act(x, weight, bias, add, num_groups, eps, act):
        return _fwd_impl(x, weight, bias, add, num_groups, eps, act)

    @gn_act.register_fake
    def _(x, weight, bias, add, num_groups, eps, act):
        n = x.shape[0]
        return (
            torch.empty_like(x),
            x.new_empty((n * num_groups,), dtype=torch.float32),
            x.new_empty((n * num_groups,), dtype=torch.float32),
        )

    @torch.library.custom_op(
        "refdiff::group_norm_act_backward",
        mutates_args=(),
        schema=(
            "(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor? add, Tensor mean, Tensor rstd,"
            " int num_groups, int act) -> (Tensor, Tensor, Tensor, Tensor)"
        ),
    )
    def gn_act_bwd(dy, x, weight, bias, add, mean, rstd, num_groups, act):
        return _bwd_impl(dy, x, weight, bias, add, mean, rstd, num_groups, act)

    @gn_act_bwd.register_fake
    def _(dy, x, weight, bias, add, mean, rstd, num_groups, act):
        de = torch.empty_like(add) if add is not None else x.new_empty((0,), dtype=torch.float32)
        return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias), de

    def setup_context(ctx, inputs, output):
        x, weight, bias, add, num_groups, eps, act = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, weight, bias, add, mean, rstd)
        ctx.num_groups, ctx.act, ctx.has_add = num_groups, act, add is not None

    def backward(ctx, dy, _dmean, _drstd):
        x, weight, bias, add, mean, rstd = ctx.saved_tensors
        dx, dw, db, de = gn_act_bwd(dy, x, weight, bias, add, mean, rstd, ctx.num_groups, ctx.act)
        return dx, dw, db, (de if ctx.has_add else None), None, None, None

    gn_act.register_autograd(backward, setup_context=setup_context)
    _OPS.update(fwd=gn_act, bwd=gn_act_bwd)
    return _OPS


def fused_group_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    eps: float = 1e-5,
    *,
    add: torch.Tensor | None = None,
    act: str = "silu",
) -> torch.Tensor:
    """act(GN(x + add)) in one Triton kernel (Wu & He 2018, Eq. 1; SiLU of Elfwing et al. 2018).

    Parameters
    ----------
    x : Tensor (N, C, H, W)
        float32, bfloat16 or float16; NCHW or channels_last. The output has x's dtype and layout.
    weight, bias : Tensor (C,)
        The GroupNorm affine parameters (any floating dtype; math in float32).
    num_groups : int
        Groups; must divide C.
    eps : float
        Added to the group variance.
    add : Tensor (N, C), optional
        Added to x per sample and channel before the normalisation (the DDPM time embedding).
    act : {"silu", "none"}

    Returns
    -------
    Tensor
        Differentiable in x, weight, bias and add.
    """
    check_choice("act", act, ACTIVATIONS, "activation after the GroupNorm")
    if x.ndim != 4:
        fail("x.shape", str(tuple(x.shape)), "expected a 4-D (N, C, H, W) tensor")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        fail(
            "x.dtype",
            str(x.dtype).replace("torch.", ""),
            "the fused GroupNorm computes in float32: expected a float32, bfloat16 "
            "or float16 tensor (use fused_norm='torch' for float64)",
        )
    if x.device.type != "cuda" and not triton_interpreted():
        fail(
            "x.device",
            str(x.device),
            "the fused GroupNorm runs on CUDA tensors (or on CPU "
            "under Triton's interpreter, TRITON_INTERPRET=1); use fused_norm='torch'",
        )
    c = x.shape[1]
    if c % num_groups:
        fail("num_groups", num_groups, f"must divide the {c} channels of x")
    if add is not None and tuple(add.shape) != (x.shape[0], c):
        fail(
            "add.shape",
            str(tuple(add.shape)),
            f"expected shape ({x.shape[0]}, {c}) (one value per sample and channel)",
        )
    y, _, _ = _ops()["fwd"](
        x, weight, bias, add, int(num_groups), float(eps), 1 if act == "silu" else 0
    )
    return y


def group_norm_act_reference(
    x, weight, bias, num_groups: int, eps: float = 1e-5, *, add=None, act: str = "silu"
):
    """The same function with torch ops: act(group_norm(x + add[:, :, None, None]))."""
    h = x if add is None else x + add[:, :, None, None].to(x.dtype)
    h = F.group_norm(h, num_groups, weight, bias, eps)
    return F.silu(h) if act == "silu" else h


# ============================================================================================
# Settings
# ============================================================================================


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in float32 matmuls and cuDNN convolutions (the legacy flags, both)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def prepare_model(
    model: torch.nn.Module, *, channels_last: bool = False, fused_norm: str | None = None
) -> torch.nn.Module:
    """Put a model in channels_last and (for a refdiff TorchUNet) choose its GroupNorm path; in place."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if fused_norm is not None:
        if not hasattr(model, "set_fast_paths"):
            fail(
                "fused_norm",
                fused_norm,
                f"only a refdiff TorchUNet has fast paths, not a "
                f"{type(model).__name__}; pass fused_norm=None",
            )
        model.set_fast_paths(fused_norm=fused_norm)
    return model


def _check_compile_mode(compile_mode):
    if compile_mode not in COMPILE_MODES:
        fail("compile_mode", compile_mode, f"expected one of {COMPILE_MODES}")


def _compile(model, compile_mode, backend):
    if compile_mode is None:
        return model
    if backend == "inductor":
        return torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    return torch.compile(model, backend=backend)  # modes are inductor options


def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _default_forward(model, x, t):
    return model(x, t)


# ============================================================================================
# Training step
# ============================================================================================


class TrainStep:
    """One L_simple training step (Ho et al. 2020, Algorithm 1 and Eq. 14), optionally CUDA-graphed.

    Build it with :func:`make_train_step`. Calling ``step(x0)`` (timesteps drawn uniformly on the
    device) or ``step(x0, t)`` runs: ε ~ N(0, I) from torch's default generator, x_t = √ᾱ_t x0 +
    √(1−ᾱ_t) ε (Eq. 4), ε_θ(x_t, t) under the chosen precision and layout, the mean squared error
    over all elements, backward, optional gradient-norm clipping, the optimizer step and the EMA
    update ``ema ← d·ema + (1 − d)·θ``. It returns the loss as a 0-d device tensor (no host sync).

    With ``cuda_graphs`` the first call warms the step up on a side stream (compilation, cuDNN
    autotuning and the optimizer's state are created there), restores the weights, optimizer
    state and EMA to what they were, captures the step as one CUDA graph and replays it; later
    calls copy x0 (and t) into the graph's static buffers and replay. Whether t is given is fixed
    by the first call. The noise and dropout draws come from torch's default CUDA generator,
    which CUDA graphs advance on every replay.

    Attributes
    ----------
    model : nn.Module
        The network (not compiled); its parameters are trained in place.
    optimizer : torch.optim.Optimizer
    ema : list of Tensor
        EMA copies of the trainable parameters, in ``model.parameters()`` order.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        forward: Callable | None = None,
        schedule=None,
        bf16: bool = False,
        channels_last: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        cuda_graphs: bool = False,
        lr: float = 2e-4,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        fused_optimizer=None,
        ema_decay: float = 0.9999,
        ema_params: Sequence[torch.Tensor] | None = None,
        grad_clip: float | None = None,
        track_grad_norm: bool = False,
        warmup_steps: int = 3,
    ):
        import array_api_compat.torch as xp

        from refdiff import schedules as _schedules

        if not isinstance(model, torch.nn.Module):
            fail("model", model, "expected a torch.nn.Module")
        _check_compile_mode(compile_mode)
        check_choice("optimizer", optimizer, ("adam", "adamw"), "optimizer")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            fail("model", type(model).__name__, "has no trainable parameters")
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        cuda = self.device.type == "cuda"
        if cuda_graphs and not cuda:
            fail(
                "cuda_graphs",
                cuda_graphs,
                f"CUDA graphs need a model on a CUDA device (it is on {self.device})",
            )
        if cuda_graphs and compile_mode == "reduce-overhead":
            fail(
                "compile_mode",
                compile_mode,
                "'reduce-overhead' already uses CUDA graphs; with "
                "cuda_graphs=True use compile_mode='default' (or None)",
            )
        self.model, self.bf16, self.channels_last = model, bool(bf16), bool(channels_last)
        self.compile_mode, self.cuda_graphs = compile_mode, bool(cuda_graphs)
        self.grad_clip = (
            None if grad_clip is None else check_real("grad_clip", grad_clip, lo=0.0, lo_open=True)
        )
        self.ema_decay = check_real("ema_decay", ema_decay, lo=0.0, hi=1.0)
        self.track_grad_norm = bool(track_grad_norm)
        #: the gradient norm of the last step (0-d device tensor; with grad_clip or track_grad_norm)
        self.grad_norm: torch.Tensor | None = None
        #: the last step's per-sample losses ‖ε − ε̂‖²/D (shape (B,), on the device)
        self.per_sample_loss: torch.Tensor | None = None
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=1)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self._forward = forward or _default_forward
        self._net = _compile(model, compile_mode, compile_backend)
        sched = schedule if schedule is not None else _schedules.linear(1000)
        self.num_timesteps = sched.num_timesteps
        self._schedule = sched.to(xp, device=self.device, dtype=self.dtype)
        fused = cuda if fused_optimizer is None else bool(fused_optimizer)
        kw: dict[str, Any] = dict(betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        kw["lr"] = torch.tensor(float(lr), device=self.device) if cuda_graphs else float(lr)
        kw["fused" if fused else "foreach"] = True
        if cuda_graphs:
            kw["capturable"] = True
        cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
        self.optimizer = cls(self.params, **kw)
        if ema_params is None:
            self.ema = [p.detach().clone() for p in self.params]
        else:
            self.ema = list(ema_params)
            if len(self.ema) != len(self.params) or any(
                e.shape != p.shape for e, p in zip(self.ema, self.params)
            ):
                fail(
                    "ema_params",
                    f"{len(self.ema)} tensors",
                    "expected one tensor per trainable parameter, with its shape",
                )
        self._graph = None
        self._static: dict[str, Any] = {}
        self.steps = 0

    # -------------------------------------------------------------------------------- pieces
    def set_lr(self, lr: float) -> None:
        """Change the learning rate (in place for a captured step, so replays see it)."""
        for g in self.optimizer.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(float(lr))
            else:
                g["lr"] = float(lr)

    def _body(
        self, x0: torch.Tensor, t: torch.Tensor | None, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        from refdiff._xp import trusted_timesteps
        from refdiff.diffusion import q_sample
        from refdiff.losses import l_simple

        noise = torch.randn_like(x0)
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        # t comes from randint or the driver's sampler, both in [0, T): no read-back, which a
        # CUDA-graph capture would forbid.
        t = trusted_timesteps(t, self.num_timesteps)
        x_t = q_sample(self._schedule, x0, t, noise=noise)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with _autocast(self.device, self.bf16):
            out = self._forward(self._net, x_t, t)
        per_sample = l_simple(out.to(noise.dtype), noise)
        self.per_sample_loss = per_sample.detach()
        if weights is None:
            loss = torch.mean(per_sample)
        else:  # per-sample weights (importance sampling of t)
            loss = torch.mean(per_sample * weights)
        loss.backward()
        if self.grad_clip is not None:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(
                self.params, self.grad_clip, foreach=True
            )
        elif self.track_grad_norm:
            self.grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params], foreach=True
            )
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.ema_decay)
        return loss.detach()

    def _snapshot(self):
        with torch.no_grad():
            params = [p.detach().clone() for p in self.params]
            ema = [e.clone() for e in self.ema]
            state = {
                id(p): {
                    k: v.clone()
                    for k, v in self.optimizer.state[p].items()
                    if isinstance(v, torch.Tensor)
                }
                for p in self.params
                if p in self.optimizer.state
            }
        return params, ema, state

    def _restore(self, snap) -> None:
        params, ema, state = snap
        with torch.no_grad():
            for p, v in zip(self.params, params):
                p.copy_(v)
            for e, v in zip(self.ema, ema):
                e.copy_(v)
            for p in self.params:
                st = self.optimizer.state.get(p, {})
                old = state.get(id(p))
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        if old is not None and k in old:
                            v.copy_(old[k])
                        else:
                            v.zero_()  # Adam's fresh state: step 0, zero moments

    def _capture(
        self, x0: torch.Tensor, t: torch.Tensor | None, weights: torch.Tensor | None
    ) -> None:
        st = self._static
        st["x0"] = x0.detach().clone()
        st["t"] = None if t is None else t.detach().clone()
        st["w"] = None if weights is None else weights.detach().clone()
        snap = self._snapshot()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(st["x0"], st["t"], st["w"])
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(snap)
        del snap
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            st["loss"] = self._body(st["x0"], st["t"], st["w"])
        st["grad_norm"], st["per_sample"] = self.grad_norm, self.per_sample_loss
        self._graph = graph

    # -------------------------------------------------------------------------------- call
    def __call__(
        self, x0: torch.Tensor, t: torch.Tensor | None = None, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One optimizer step on the batch x0; returns the loss (a 0-d device tensor).

        ``t``: timesteps (int64, shape (B,)), or None to draw them uniformly on the device;
        ``weights``: per-sample loss weights (shape (B,)), or None for the plain mean.
        """
        if x0.ndim != 4 or x0.device != self.device:
            fail(
                "x0",
                f"a tensor of shape {tuple(x0.shape)} on {x0.device}",
                f"expected a 4-D batch on {self.device}",
            )
        self.model.train()
        if not self.cuda_graphs:
            self.optimizer.zero_grad(set_to_none=True)
            if self.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            loss = self._body(x0, t, weights)
        else:
            if self._graph is None:
                self._capture(x0, t, weights)
            st = self._static
            for name, v in (("t", t), ("weights", weights)):
                if (v is None) != (st["t" if name == "t" else "w"] is None):
                    fail(
                        name,
                        None if v is None else "a tensor",
                        "a captured step keeps the choice "
                        f"of its first call: pass {name} on every call or on none",
                    )
            if tuple(x0.shape) != tuple(st["x0"].shape):
                fail(
                    "x0.shape",
                    str(tuple(x0.shape)),
                    f"a captured step has the fixed batch shape {tuple(st['x0'].shape)}",
                )
            if x0.data_ptr() != st["x0"].data_ptr():
                st["x0"].copy_(x0)
            if t is not None:
                st["t"].copy_(t)
            if weights is not None:
                st["w"].copy_(weights)
            self._graph.replay()
            loss = st["loss"].clone()
            self.per_sample_loss = st["per_sample"].clone()
            if st["grad_norm"] is not None:
                self.grad_norm = st["grad_norm"].clone()
        self.steps += 1
        return loss

    def static_input(self) -> torch.Tensor | None:
        """The captured step's input buffer (write a batch into it to skip the copy), or None."""
        return self._static.get("x0")


def make_train_step(
    model: torch.nn.Module,
    *,
    bf16: bool = False,
    channels_last: bool = False,
    compile_mode: str | None = None,
    cuda_graphs: bool = False,
    **options,
) -> TrainStep:
    """A :class:`TrainStep` for ``model`` (a refdiff TorchUNet, or any network via ``forward=``).

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place; float32 weights for ``bf16`` (autocast keeps float32 master weights).
    bf16 : bool
        bfloat16 autocast around the network (loss, optimizer and EMA stay in float32).
    channels_last : bool
        Convert the model and every x_t to channels_last (NHWC) memory.
    compile_mode : None or str
        ``torch.compile`` the network with this mode ("default", "reduce-overhead", ...).
    cuda_graphs : bool
        Capture the whole step as one CUDA graph (CUDA only; not with "reduce-overhead").
    **options
        ``forward`` (``forward(net, x, t) -> ε̂``, default ``net(x, t)``), ``schedule`` (a
        refdiff Schedule; default linear, T = 1000), ``lr``, ``betas``, ``eps``,
        ``weight_decay``, ``optimizer`` ("adam" | "adamw"), ``fused_optimizer`` (default: on
        CUDA), ``ema_decay``, ``ema_params``, ``grad_clip``, ``track_grad_norm``,
        ``compile_backend``, ``warmup_steps``; see :class:`TrainStep`.

    Scope: L_simple with an ε target (``mean_type="eps"``, fixed variances), one process. The
    other losses and parameterisations and DDP stay with ``refdiff.backends.torch.train``.
    """
    return TrainStep(
        model,
        bf16=bf16,
        channels_last=channels_last,
        compile_mode=compile_mode,
        cuda_graphs=cuda_graphs,
        **options,
    )


# ============================================================================================
# Inference
# ============================================================================================


def make_inference_fn(
    model: torch.nn.Module,
    *,
    forward: Callable | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    cuda_graphs: bool = False,
    warmup: int = 2,
) -> Callable:
    """``fn(x, t) -> output`` for samplers: eval mode, no grad, optional bf16/channels_last/compile/graphs.

    The output has x's dtype and shape. With ``cuda_graphs`` the network is captured once per
    (x shape, t shape, t dtype) and replayed on static buffers; every call returns a fresh tensor.
    """
    _check_compile_mode(compile_mode)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if cuda_graphs and device.type != "cuda":
        fail(
            "cuda_graphs",
            cuda_graphs,
            f"CUDA graphs need a model on a CUDA device (it is on {device})",
        )
    if cuda_graphs and compile_mode == "reduce-overhead":
        fail(
            "compile_mode",
            compile_mode,
            "'reduce-overhead' already uses CUDA graphs; with "
            "cuda_graphs=True use compile_mode='default' (or None)",
        )
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = _compile(model, compile_mode, compile_backend)
    fwd = forward or _default_forward
    warmup = check_int("warmup", warmup, minimum=1)

    def run(x, t):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), _autocast(device, bf16):
            return fwd(net, x, t)

    if not cuda_graphs:

        def fn(x, t):
            if compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            return run(x, t).to(x.dtype).contiguous()

        return fn

    graphs: dict[tuple, tuple] = {}

    def fn_graphed(x, t):
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype)
        if key not in graphs:
            sx, st_ = x.detach().clone(), t.detach().clone()
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    run(sx, st_)
            torch.cuda.current_stream(device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = run(sx, st_).to(x.dtype)
            graphs[key] = (g, sx, st_, out)
        g, sx, st_, out = graphs[key]
        sx.copy_(x)
        st_.copy_(t)
        g.replay()
        return out.contiguous() if not out.is_contiguous() else out.clone()

    return fn_graphed
