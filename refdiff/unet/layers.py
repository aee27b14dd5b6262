"""The UNet's layers: each forward and its hand-written backward, as small pure array-API functions.

Layout is NCHW. A backward function takes the gradient of a scalar loss with respect to the
layer's output (``g``) and the forward inputs, and returns the gradients with respect to those
inputs, in the order of the forward's arguments. Nothing is cached inside a layer; the model keeps
what each backward needs. Only standard functions of the array API are used (slicing, reshape,
concat, stack, matmul, tensordot, ...), so the same code runs on NumPy, array_api_strict, PyTorch
and CuPy. Convolutions are im2col + one matmul; their input gradient is the convolution of the
(dilated, padded) output gradient with the flipped, transposed kernel.

Operation overrides. The model (:mod:`.model`) calls every layer through a table of operations,
:func:`resolve_ops`, whose defaults are the generic functions of this module (:data:`GENERIC_OPS`).
A backend may replace some of them by name with fast kernels of the same signature and meaning
(``backends/cupy/unet.py``: shifted-GEMM convolutions, fused GroupNorm + SiLU); the generic
functions stay the oracle the replacements are tested against.
"""

from __future__ import annotations

import math
from types import MappingProxyType, SimpleNamespace
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from .._errors import RefdiffShapeError, UnknownNameError, check_int, fail
from .._typing import Array, Namespace
from .._xp import array_namespace, device_of

__all__ = [
    "pad2d",
    "dilate2d",
    "im2col",
    "conv2d",
    "conv2d_backward",
    "group_norm",
    "group_norm_backward",
    "silu",
    "silu_backward",
    "sigmoid",
    "linear",
    "linear_backward",
    "softmax",
    "softmax_backward",
    "self_attention",
    "self_attention_backward",
    "upsample_nearest2x",
    "upsample_nearest2x_backward",
    "avg_pool2x",
    "avg_pool2x_backward",
    "timestep_embedding",
    "dropout",
    "dropout_backward",
    "embedding",
    "embedding_backward",
    "group_norm_silu",
    "group_norm_silu_backward",
    "GN_EPS",
    "shape_fail",
    "OP_NAMES",
    "GENERIC_OPS",
    "resolve_ops",
]

#: GroupNorm epsilon (PyTorch's default, as improved-diffusion's GroupNorm32).
GN_EPS = 1e-5


def shape_fail(
    name: str, shape: tuple[int, ...], allowed: str, cls: type[Exception] = RefdiffShapeError
) -> NoReturn:
    """Raise ``cls`` naming an array argument, its shape and what is allowed."""
    raise cls(f"{name} of shape {tuple(shape)} is invalid: {allowed}")


def _zeros(xp: Namespace, shape: tuple[int, ...], like: Array) -> Array:
    return xp.zeros(shape, dtype=like.dtype, device=device_of(like))


# ----------------------------------------------------------------------------- convolution
def pad2d(x: Array, top: int, bottom: int, left: int, right: int) -> Array:
    """Zero-pad the last two axes of x (built with concat: the standard has no pad)."""
    xp = array_namespace(x)
    lead = tuple(x.shape[:-2])
    h, w = x.shape[-2], x.shape[-1]
    if left or right:
        parts = (
            ([_zeros(xp, lead + (h, left), x)] if left else [])
            + [x]
            + ([_zeros(xp, lead + (h, right), x)] if right else [])
        )
        x = xp.concat(parts, axis=-1)
        w = w + left + right
    if top or bottom:
        parts = (
            ([_zeros(xp, lead + (top, w), x)] if top else [])
            + [x]
            + ([_zeros(xp, lead + (bottom, w), x)] if bottom else [])
        )
        x = xp.concat(parts, axis=-2)
    return x


def dilate2d(x: Array, stride: int) -> Array:
    """Insert ``stride - 1`` zeros between neighbouring entries of the last two axes (size (n-1)·s+1)."""
    if stride == 1:
        return x
    xp = array_namespace(x)
    lead = tuple(x.shape[:-2])
    h, w = x.shape[-2], x.shape[-1]
    z = _zeros(xp, lead + (h, w, stride - 1), x)
    x = xp.reshape(xp.concat([xp.reshape(x, lead + (h, w, 1)), z], axis=-1), lead + (h, w * stride))
    x = x[..., : (w - 1) * stride + 1]
    w2 = x.shape[-1]
    z = _zeros(xp, lead + (h, stride - 1, w2), x)
    x = xp.reshape(
        xp.concat([xp.reshape(x, lead + (h, 1, w2)), z], axis=-2), lead + (h * stride, w2)
    )
    return x[..., : (h - 1) * stride + 1, :]


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def im2col(x: Array, k: int, *, stride: int = 1, padding: int = 0) -> Array:
    """Patches of x (B, C, H, W) as columns (B, C·k·k, Ho·Wo), ordered (c, i, j) to match OIHW weights."""
    xp = array_namespace(x)
    b, c, h, w = x.shape
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    if k == 1 and stride == 1 and padding == 0:
        return xp.reshape(x, (b, c, h * w))
    xpad = pad2d(x, padding, padding, padding, padding)
    taps = [
        xpad[:, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(k)
        for j in range(k)
    ]
    return xp.reshape(xp.stack(taps, axis=2), (b, c * k * k, ho * wo))


def _check_conv(
    x: Array, w: Array, b: Array | None, stride: int, padding: int | None
) -> tuple[int, int]:
    if x.ndim != 4:
        shape_fail(
            "x", x.shape, "conv2d expects an NCHW array with 4 dimensions", RefdiffShapeError
        )
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        shape_fail(
            "w", w.shape, "conv2d expects an OIHW weight with a square kernel", RefdiffShapeError
        )
    if w.shape[1] != x.shape[1]:
        raise RefdiffShapeError(
            f"w has {w.shape[1]} input channels (shape {tuple(w.shape)}) but x "
            f"has {x.shape[1]} (shape {tuple(x.shape)}); they must match"
        )
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise RefdiffShapeError(f"b has shape {tuple(b.shape)}; expected ({w.shape[0]},)")
    stride = check_int("stride", stride, minimum=1)
    k = w.shape[2]
    padding = k // 2 if padding is None else check_int("padding", padding, minimum=0)
    if padding > k - 1:
        fail("padding", padding, f"must be at most kernel size - 1 = {k - 1}")
    return stride, padding


def conv2d(
    x: Array, w: Array, b: Array | None = None, *, stride: int = 1, padding: int | None = None
) -> Array:
    """2-D cross-correlation y = W ⋆ x + b (NCHW, OIHW); ``padding`` defaults to k//2 ("same" at stride 1)."""
    xp = array_namespace(x, w)
    stride, padding = _check_conv(x, w, b, stride, padding)
    o, c, k, _ = w.shape
    bsz, _, h, wd = x.shape
    ho, wo = _out_size(h, k, stride, padding), _out_size(wd, k, stride, padding)
    cols = im2col(x, k, stride=stride, padding=padding)
    y = xp.reshape(xp.matmul(xp.reshape(w, (o, c * k * k)), cols), (bsz, o, ho, wo))
    if b is not None:
        y = y + xp.reshape(b, (1, o, 1, 1))
    return y


def conv2d_backward(
    g: Array, x: Array, w: Array, *, stride: int = 1, padding: int | None = None
) -> tuple[Array, Array, Array]:
    """Gradients (gx, gw, gb) of :func:`conv2d` given g = ∂L/∂y."""
    xp = array_namespace(g, x, w)
    stride, padding = _check_conv(x, w, None, stride, padding)
    o, c, k, _ = w.shape
    bsz, _, h, wd = x.shape
    ho, wo = g.shape[2], g.shape[3]
    g3 = xp.reshape(g, (bsz, o, ho * wo))
    cols = im2col(x, k, stride=stride, padding=padding)
    gw = xp.reshape(xp.tensordot(g3, cols, axes=([0, 2], [0, 2])), (o, c, k, k))
    gb = xp.sum(g, axis=(0, 2, 3))
    # input gradient: full correlation of the dilated gradient with the flipped, transposed kernel
    q = k - 1 - padding
    rh, rw = (h + 2 * padding - k) % stride, (wd + 2 * padding - k) % stride
    gd = pad2d(dilate2d(g, stride), q, q + rh, q, q + rw)
    wt = xp.permute_dims(xp.flip(w, axis=(2, 3)), (1, 0, 2, 3))
    gcols = im2col(gd, k)
    gx = xp.reshape(xp.matmul(xp.reshape(wt, (c, o * k * k)), gcols), (bsz, c, h, wd))
    return gx, gw, gb


# ----------------------------------------------------------------------------- normalisation
def _group_stats(x: Array, groups: int, eps: float) -> tuple[Array, Array]:
    xp = array_namespace(x)
    bsz, c = x.shape[0], x.shape[1]
    if c % groups:
        fail("groups", groups, f"must divide the {c} channels of x")
    xg = xp.reshape(x, (bsz, groups, -1))
    mu = xp.mean(xg, axis=2, keepdims=True)
    xc = xg - mu
    var = xp.mean(xc * xc, axis=2, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    return xc * rstd, rstd


def _channel(v: Array, ndim: int) -> Array:
    xp = array_namespace(v)
    return xp.reshape(v, (1, v.shape[0]) + (1,) * (ndim - 2))


def group_norm(x: Array, gamma: Array, beta: Array, *, groups: int, eps: float = GN_EPS) -> Array:
    """GroupNorm: (x − μ_g)/√(σ²_g + ε)·γ + β over each group of channels (Wu & He 2018, Eq. 1)."""
    xp = array_namespace(x, gamma, beta)
    if tuple(gamma.shape) != (x.shape[1],) or tuple(beta.shape) != (x.shape[1],):
        raise RefdiffShapeError(
            f"gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)} must "
            f"have shape ({x.shape[1]},) for x of shape {tuple(x.shape)}"
        )
    xhat, _ = _group_stats(x, groups, eps)
    xhat = xp.reshape(xhat, x.shape)
    return xhat * _channel(gamma, x.ndim) + _channel(beta, x.ndim)


def group_norm_backward(
    g: Array, x: Array, gamma: Array, *, groups: int, eps: float = GN_EPS
) -> tuple[Array, Array, Array]:
    """Gradients (gx, gγ, gβ) of :func:`group_norm` (statistics recomputed from x)."""
    xp = array_namespace(g, x, gamma)
    xhat, rstd = _group_stats(x, groups, eps)
    axes = (0,) + tuple(range(2, x.ndim))
    g_gamma = xp.sum(g * xp.reshape(xhat, x.shape), axis=axes)
    g_beta = xp.sum(g, axis=axes)
    gxhat = xp.reshape(g * _channel(gamma, x.ndim), xhat.shape)
    gx = rstd * (
        gxhat
        - xp.mean(gxhat, axis=2, keepdims=True)
        - xhat * xp.mean(gxhat * xhat, axis=2, keepdims=True)
    )
    return xp.reshape(gx, x.shape), g_gamma, g_beta


def group_norm_silu(
    x: Array, gamma: Array, beta: Array, *, groups: int, eps: float = GN_EPS
) -> Array:
    """SiLU(GroupNorm(x)), the pre-activation of every residual block (Ho et al. 2020, App. B; one op so a backend can fuse it)."""
    return silu(group_norm(x, gamma, beta, groups=groups, eps=eps))


def group_norm_silu_backward(
    g: Array, x: Array, gamma: Array, beta: Array, *, groups: int, eps: float = GN_EPS
) -> tuple[Array, Array, Array]:
    """Gradients (gx, gγ, gβ) of :func:`group_norm_silu` given g = ∂L/∂out (the normalised x recomputed)."""
    n = group_norm(x, gamma, beta, groups=groups, eps=eps)
    return group_norm_backward(silu_backward(g, n), x, gamma, groups=groups, eps=eps)


# ----------------------------------------------------------------------------- activations
def sigmoid(x: Array) -> Array:
    """σ(x) = 1/(1 + e^(−x)), evaluated without overflow for either sign."""
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(x: Array) -> Array:
    """SiLU / swish: x·σ(x) (Elfwing et al. 2018; Ramachandran et al. 2017)."""
    return x * sigmoid(x)


def silu_backward(g: Array, x: Array) -> Array:
    """∂L/∂x of SiLU: g·σ(x)·(1 + x·(1 − σ(x)))."""
    s = sigmoid(x)
    return g * s * (1.0 + x * (1.0 - s))


def linear(x: Array, w: Array, b: Array | None = None) -> Array:
    """Dense layer y = x Wᵀ + b on the last axis (W is (out, in))."""
    xp = array_namespace(x, w)
    if x.shape[-1] != w.shape[1]:
        raise RefdiffShapeError(
            f"x has {x.shape[-1]} features (shape {tuple(x.shape)}) but w "
            f"expects {w.shape[1]} (shape {tuple(w.shape)})"
        )
    y = xp.matmul(x, xp.permute_dims(w, (1, 0)))
    return y if b is None else y + b


def linear_backward(g: Array, x: Array, w: Array) -> tuple[Array, Array, Array]:
    """Gradients (gx, gW, gb) of :func:`linear` for 2-D x (batch, in)."""
    xp = array_namespace(g, x, w)
    return xp.matmul(g, w), xp.matmul(xp.permute_dims(g, (1, 0)), x), xp.sum(g, axis=0)


def softmax(s: Array, axis: int = -1) -> Array:
    """softmax(s)_j = exp(s_j − max s)/Σ_k exp(s_k − max s) along ``axis``."""
    xp = array_namespace(s)
    e = xp.exp(s - xp.max(s, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(g: Array, p: Array, axis: int = -1) -> Array:
    """∂L/∂s of softmax given its output p: p·(g − Σ g·p)."""
    xp = array_namespace(g, p)
    return p * (g - xp.sum(g * p, axis=axis, keepdims=True))


# ----------------------------------------------------------------------------- attention
def _heads(a: Array, nh: int) -> Array:
    xp = array_namespace(a)
    b, c, n = a.shape
    return xp.reshape(a, (b, nh, c // nh, n))


def _attention_core(
    h: Array, w_qkv: Array, b_qkv: Array, num_heads: int
) -> tuple[Array, Array, Array, Array, Array, Array, float]:
    xp = array_namespace(h, w_qkv, b_qkv)
    bsz, c = h.shape[0], h.shape[1]
    if c % num_heads:
        fail("num_heads", num_heads, f"must divide the {c} channels of the attention input")
    if tuple(w_qkv.shape) != (3 * c, c):
        raise RefdiffShapeError(f"w_qkv has shape {tuple(w_qkv.shape)}; expected ({3 * c}, {c})")
    hf = xp.reshape(h, (bsz, c, -1))
    qkv = xp.matmul(w_qkv, hf) + xp.reshape(b_qkv, (1, 3 * c, 1))
    q, k, v = (_heads(qkv[:, i * c : (i + 1) * c, :], num_heads) for i in range(3))
    scale = 1.0 / math.sqrt(c // num_heads)
    p = softmax(xp.matmul(xp.permute_dims(q, (0, 1, 3, 2)), k) * scale)  # (B, nh, N_q, N_k)
    a = xp.matmul(v, xp.permute_dims(p, (0, 1, 3, 2)))  # (B, nh, d, N_q)
    return hf, q, k, v, p, xp.reshape(a, (bsz, c, -1)), scale


def self_attention(
    h: Array, w_qkv: Array, b_qkv: Array, w_proj: Array, b_proj: Array, *, num_heads: int
) -> Array:
    """Multi-head self-attention over the H·W positions, softmax(QᵀK/√d)V then a projection (Vaswani et al. 2017, Eq. 1).

    ``h`` is the normalised input (B, C, H, W); returns the projected attention output of the same
    shape, without the residual connection.
    """
    xp = array_namespace(h, w_proj)
    *_, a, _ = _attention_core(h, w_qkv, b_qkv, num_heads)
    out = xp.matmul(w_proj, a) + xp.reshape(b_proj, (1, -1, 1))
    return xp.reshape(out, h.shape)


def self_attention_backward(
    g: Array, h: Array, w_qkv: Array, b_qkv: Array, w_proj: Array, *, num_heads: int
) -> tuple[Array, Array, Array, Array, Array]:
    """Gradients (gh, gW_qkv, gb_qkv, gW_proj, gb_proj) of :func:`self_attention` (attention recomputed)."""
    xp = array_namespace(g, h, w_qkv, w_proj)
    bsz, c = h.shape[0], h.shape[1]
    hf, q, k, v, p, a, scale = _attention_core(h, w_qkv, b_qkv, num_heads)
    go = xp.reshape(g, (bsz, c, -1))
    g_wproj = xp.tensordot(go, a, axes=([0, 2], [0, 2]))
    g_bproj = xp.sum(go, axis=(0, 2))
    ga = _heads(xp.matmul(xp.permute_dims(w_proj, (1, 0)), go), num_heads)  # (B, nh, d, N)
    gv = xp.matmul(ga, p)
    gp = xp.matmul(xp.permute_dims(ga, (0, 1, 3, 2)), v)
    gs = softmax_backward(gp, p) * scale
    gq = xp.matmul(k, xp.permute_dims(gs, (0, 1, 3, 2)))
    gk = xp.matmul(q, gs)
    gqkv = xp.concat([xp.reshape(t, (bsz, c, -1)) for t in (gq, gk, gv)], axis=1)
    g_wqkv = xp.tensordot(gqkv, hf, axes=([0, 2], [0, 2]))
    g_bqkv = xp.sum(gqkv, axis=(0, 2))
    gh = xp.matmul(xp.permute_dims(w_qkv, (1, 0)), gqkv)
    return xp.reshape(gh, h.shape), g_wqkv, g_bqkv, g_wproj, g_bproj


# ----------------------------------------------------------------------------- resampling
def upsample_nearest2x(x: Array) -> Array:
    """Nearest-neighbour ×2 upsampling of the last two axes."""
    xp = array_namespace(x)
    b, c, h, w = x.shape
    y = xp.broadcast_to(x[:, :, :, None, :, None], (b, c, h, 2, w, 2))
    return xp.reshape(y, (b, c, 2 * h, 2 * w))


def upsample_nearest2x_backward(g: Array) -> Array:
    """∂L/∂x of nearest ×2 upsampling: the sum over each 2×2 block."""
    xp = array_namespace(g)
    b, c, h2, w2 = g.shape
    return xp.sum(xp.reshape(g, (b, c, h2 // 2, 2, w2 // 2, 2)), axis=(3, 5))


def avg_pool2x(x: Array) -> Array:
    """2×2 average pooling with stride 2 (BigGAN / ADM down-sampling without a conv)."""
    xp = array_namespace(x)
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        shape_fail("x", x.shape, "avg_pool2x needs an even height and width", RefdiffShapeError)
    return xp.mean(xp.reshape(x, (b, c, h // 2, 2, w // 2, 2)), axis=(3, 5))


def avg_pool2x_backward(g: Array) -> Array:
    """∂L/∂x of 2×2 average pooling: g/4 spread over each block."""
    return upsample_nearest2x(g) * 0.25


# ----------------------------------------------------------------------------- embeddings, dropout
def timestep_embedding(t: Array, dim: int, *, max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding [sin(t·ω_k), cos(t·ω_k)], ω_k = P^(−k/(d/2−1)) (Vaswani et al. 2017, §3.5; Ho et al. 2020's get_timestep_embedding).

    ``t`` has shape (B,), in any real or integer dtype; the result is (B, dim) in float64 (zero
    last column when dim is odd). Cast it to the working dtype after: angles up to 1000 rad in
    float32 would lose 4 digits.
    """
    xp = array_namespace(t)
    dim = check_int("dim", dim, minimum=4)
    if t.ndim != 1:
        shape_fail("t", t.shape, "expected a 1-D array of timesteps (batch,)", RefdiffShapeError)
    half = dim // 2
    k = xp.arange(half, dtype=xp.float64, device=device_of(t))
    freqs = xp.exp(k * (-math.log(max_period) / (half - 1)))
    ang = xp.astype(t, xp.float64)[:, None] * freqs[None, :]
    parts = [xp.sin(ang), xp.cos(ang)]
    if dim % 2:
        parts.append(xp.zeros((t.shape[0], 1), dtype=xp.float64, device=device_of(t)))
    return xp.concat(parts, axis=1)


def dropout(x: Array, mask: Array) -> Array:
    """Inverted dropout with an explicit mask: x·m, m ∈ {0, 1/(1−p)} (Srivastava et al. 2014)."""
    if tuple(mask.shape) != tuple(x.shape):
        raise RefdiffShapeError(
            f"dropout mask has shape {tuple(mask.shape)} but the activation "
            f"has shape {tuple(x.shape)}"
        )
    return x * mask


def dropout_backward(g: Array, mask: Array) -> Array:
    """∂L/∂x of :func:`dropout`: g·m."""
    return g * mask


def embedding(y: Array, table: Array) -> Array:
    """Rows of ``table`` selected by the integer labels y (a learned class embedding)."""
    xp = array_namespace(y, table)
    return xp.take(table, y, axis=0)


def embedding_backward(g: Array, y: Array, num_rows: int) -> Array:
    """∂L/∂table of :func:`embedding`: Σ over the batch of g scattered to rows y (via a one-hot matmul)."""
    xp = array_namespace(g, y)
    rows = xp.arange(num_rows, dtype=y.dtype, device=device_of(y))
    onehot = xp.astype(y[:, None] == rows[None, :], g.dtype)
    return xp.matmul(xp.permute_dims(onehot, (1, 0)), g)


# ----------------------------------------------------------------------------- operation table
#: Names of the operations the model calls through :func:`resolve_ops` (each a function above).
OP_NAMES = (
    "conv2d",
    "conv2d_backward",
    "group_norm",
    "group_norm_backward",
    "group_norm_silu",
    "group_norm_silu_backward",
    "silu",
    "silu_backward",
    "linear",
    "linear_backward",
    "self_attention",
    "self_attention_backward",
    "upsample_nearest2x",
    "upsample_nearest2x_backward",
    "avg_pool2x",
    "avg_pool2x_backward",
    "dropout",
    "dropout_backward",
)

#: The generic array-API implementation of every operation in :data:`OP_NAMES` (the oracle).
GENERIC_OPS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {name: globals()[name] for name in OP_NAMES}
)


def resolve_ops(
    ops: Mapping[str, Callable[..., Any]] | SimpleNamespace | None = None,
) -> SimpleNamespace:
    """The operation table the model calls: :data:`GENERIC_OPS` with the entries of ``ops`` replacing theirs.

    Parameters
    ----------
    ops : mapping of str to callable, or None
        Replacements keyed by names in :data:`OP_NAMES`, each with the signature and meaning of the
        generic function of that name (e.g. ``{"conv2d": fast_conv, "conv2d_backward":
        fast_conv_backward}``). None (or an empty mapping) gives the generic functions. A table
        returned by this function is passed through unchanged.

    Returns
    -------
    types.SimpleNamespace
        One attribute per name in :data:`OP_NAMES`.

    Raises
    ------
    UnknownNameError
        For a key that is not an operation name.
    RefdiffValueError
        For a value that is not callable, or ``ops`` that is not a mapping.
    """
    if isinstance(ops, SimpleNamespace) and getattr(ops, "_refdiff_ops", False):
        return ops
    table = dict(GENERIC_OPS)
    if ops is not None:
        if not isinstance(ops, Mapping):
            fail(
                "ops",
                type(ops).__name__,
                "expected a mapping of operation names to functions "
                "(see OP_NAMES), or None for the generic array-API code",
            )
        for name, fn in ops.items():
            if name not in GENERIC_OPS:
                raise UnknownNameError(
                    f"ops[{name!r}] is not a UNet operation; allowed: {', '.join(OP_NAMES)}"
                )
            if not callable(fn):
                fail(
                    f"ops[{name!r}]",
                    fn,
                    f"expected a callable with the signature of refdiff.unet.layers.{name}",
                )
            table[name] = fn
    return SimpleNamespace(_refdiff_ops=True, **table)
