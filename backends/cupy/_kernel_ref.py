"""NumPy reference of every primitive behind the CuPy UNet kernels (``backends/cupy/unet.py``).

:class:`NumpyDevice` is a drop-in for :class:`~refdiff.backends.cupy.unet.CupyDevice` on the CPU:
the same orchestration (shifted-GEMM convolution, fused GroupNorm + SiLU, fused Adam + EMA) runs
on it with

* :func:`cublas_gemm` — column-major cuBLAS ``gemmEx`` emulated on flat buffers and element
  offsets, with cuBLAS's leading-dimension rules and an explicit bounds check, so every argument
  the orchestration passes to cuBLAS is exercised;
* :func:`round_operand` — the input rounding of the tensor-core compute types (TF32: 10 mantissa
  bits, bf16: 7, fp16: 10 with fp16 range), so the accuracy of each precision can be measured on
  the CPU (the float32 accumulation is NumPy's, not the tensor cores');
* vectorised NumPy versions of the kernels' semantics (``pack``, ``unpack``, ``gn_forward``,
  ``gn_backward``, ``adam_ema``, ``sumsq``): float64 statistics and the same per-element
  arithmetic in the data type. ``backends/cupy/_emu.py`` checks the generated CUDA sources
  against these.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import as_strided

from refdiff._errors import fail

from .unet import CUBLAS, PRECISIONS, check_gemm

__all__ = ["NumpyDevice", "cublas_gemm", "round_operand", "ROUNDING_BITS"]

#: Mantissa bits kept by each GEMM precision's input rounding (None: no rounding).
ROUNDING_BITS = {"fp32": None, "tf32": 10, "bf16": 7, "fp16": 10}


def round_operand(a: np.ndarray, precision: str) -> np.ndarray:
    """Round float32 GEMM inputs as a tensor-core compute type would (nearest, ties to even).

    ``"tf32"`` and ``"bf16"`` keep 10 and 7 mantissa bits with the float32 exponent range;
    ``"fp16"`` converts to IEEE half (10 bits, overflow to ±inf). float64 input is returned as is.
    """
    if precision not in ROUNDING_BITS:
        fail("precision", precision, f"expected one of {', '.join(ROUNDING_BITS)}")
    if a.dtype != np.float32 or ROUNDING_BITS[precision] is None:
        return a
    if precision == "fp16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16).astype(np.float32)
    drop = 23 - ROUNDING_BITS[precision]
    bits = np.ascontiguousarray(a).view(np.uint32).astype(np.uint64)
    half = np.uint64(1 << (drop - 1))
    lsb = (bits >> np.uint64(drop)) & np.uint64(1)
    rounded = ((bits + half - np.uint64(1) + lsb) >> np.uint64(drop)) << np.uint64(drop)
    out = rounded.astype(np.uint32).view(np.float32).reshape(a.shape)
    return np.where(np.isfinite(a), out, a)


def _colmajor(buf: np.ndarray, off: int, rows: int, cols: int, ld: int, *, writeable=False):
    flat = buf.reshape(-1)
    isz = flat.itemsize
    return as_strided(flat[off:], shape=(rows, cols), strides=(isz, ld * isz), writeable=writeable)


def cublas_gemm(
    transa: int,
    transb: int,
    m: int,
    n: int,
    k: int,
    alpha: float,
    A: np.ndarray,
    a_off: int,
    lda: int,
    B: np.ndarray,
    b_off: int,
    ldb: int,
    beta: float,
    C: np.ndarray,
    c_off: int,
    ldc: int,
    *,
    precision: str = "fp32",
) -> None:
    """Column-major ``C[m×n] = α·op(A)·op(B) + β·C`` on flat buffers, as ``cublasGemmEx`` computes it.

    Operand X starts at element ``x_off`` of its (C-contiguous) buffer; element (i, j) of the
    stored matrix is at ``x_off + i + j·ldx``. Leading dimensions and extents are checked first
    (:func:`~refdiff.backends.cupy.unet.check_gemm`). With β = 0, C is not read (NaN in C does
    not propagate), as in BLAS.
    """
    for name, a in (("A", A), ("B", B), ("C", C)):
        if not a.flags.c_contiguous:
            fail(name, a.shape, "GEMM buffers must be C-contiguous")
    check_gemm(transa, transb, m, n, k, A.size, a_off, lda, B.size, b_off, ldb, C.size, c_off, ldc)
    if m == 0 or n == 0:
        return
    N = CUBLAS["OP_N"]
    opa = _colmajor(A, a_off, m, k, lda) if transa == N else _colmajor(A, a_off, k, m, lda).T
    opb = _colmajor(B, b_off, k, n, ldb) if transb == N else _colmajor(B, b_off, n, k, ldb).T
    if C.dtype == np.float32:
        opa, opb = round_operand(np.array(opa), precision), round_operand(np.array(opb), precision)
    prod = np.matmul(opa, opb) if k else np.zeros((m, n), dtype=C.dtype)
    cm = _colmajor(C, c_off, m, n, ldc, writeable=True)
    if alpha != 1.0:
        prod = prod * C.dtype.type(alpha)
    if beta == 0.0:
        cm[...] = prod
    else:
        cm[...] = prod + C.dtype.type(beta) * cm if beta != 1.0 else cm + prod


class NumpyDevice:
    """The CuPy UNet device primitives in NumPy (see the module docstring)."""

    name = "numpy"
    xp = np

    def __init__(self, precision: str = "fp32"):
        if precision not in PRECISIONS:
            fail("precision", precision, f"expected one of {', '.join(PRECISIONS)}")
        self.precision = precision

    # ---- GEMM
    def gemm(
        self, transa, transb, m, n, k, A, a_off, lda, B, b_off, ldb, beta, C, c_off, ldc
    ) -> None:
        """:func:`cublas_gemm` with α = 1 at this device's precision."""
        cublas_gemm(
            transa,
            transb,
            m,
            n,
            k,
            1.0,
            A,
            a_off,
            lda,
            B,
            b_off,
            ldb,
            beta,
            C,
            c_off,
            ldc,
            precision=self.precision,
        )

    # ---- layout kernels
    def pack(self, src, dst, B, C, Hs, Ws, dil, pt, pl, s, Hq, Wq) -> None:
        """Semantics of ``pack_kernel``: phase-split, dilated, zero-padded NHWC rows."""
        out = dst.reshape(-1)[: s * s * B * Hq * Wq * C].reshape(s, s, B, Hq, Wq, C)

        def axis(nq, ns, pad):
            v = np.arange(nq)[None, :] * s + np.arange(s)[:, None] - pad  # (s, nq)
            ok = (v >= 0) & (v % dil == 0) & (v // dil < ns)
            return np.where(ok, v // dil, 0), ok

        ys, oky = axis(Hq, Hs, pt)
        xs, okx = axis(Wq, Ws, pl)
        vals = src[:, :, ys[:, :, None, None], xs[None, None, :, :]]  # (B, C, s, Hq, s, Wq)
        mask = oky[:, :, None, None] & okx[None, None, :, :]
        vals = np.where(mask, vals, src.dtype.type(0))
        out[...] = np.transpose(vals, (2, 4, 0, 3, 5, 1))

    def unpack(self, yw, bias, out, B, O, Ho, Wo, Hq, Wq) -> None:
        """Semantics of ``unpack_kernel``: crop the wide rows to NCHW and add the bias."""
        rows = (np.arange(B)[:, None, None] * Hq + np.arange(Ho)[None, :, None]) * Wq + np.arange(
            Wo
        )[None, None, :]
        v = np.transpose(yw[rows], (0, 3, 1, 2))
        out[...] = v if bias is None else v + bias.reshape(1, O, 1, 1)

    # ---- GroupNorm (+ SiLU)
    @staticmethod
    def _stats(x, groups, eps):
        bsz = x.shape[0]
        xg = x.reshape(bsz, groups, -1)
        x64 = xg.astype(np.float64)
        mean = x64.mean(axis=2)
        var = ((x64 - mean[..., None]) ** 2).mean(axis=2)
        t = x.dtype.type
        return xg, mean.astype(t)[..., None], (1.0 / np.sqrt(var + eps)).astype(t)[..., None]

    @staticmethod
    def _sigmoid(v):
        e = np.exp(-np.abs(v))
        one = v.dtype.type(1)
        return np.where(v >= 0, one / (one + e), e / (one + e))

    def gn_forward(self, x, gamma, beta, y, groups, hw, eps, silu) -> None:
        """Semantics of ``gn_forward_kernel``."""
        bsz, c = x.shape[0], x.shape[1]
        xg, mu, rstd = self._stats(x, groups, eps)
        xh = ((xg - mu) * rstd).reshape(bsz, c, hw)
        v = xh * gamma.reshape(1, c, 1) + beta.reshape(1, c, 1)
        if silu:
            v = v * self._sigmoid(v)
        y[...] = v.reshape(y.shape)

    def gn_backward(self, g, x, gamma, beta, gx, dgamma_p, dbeta_p, groups, hw, eps, silu) -> None:
        """Semantics of ``gn_backward_kernel`` (partial sums per (sample, channel) in float64)."""
        bsz, c = x.shape[0], x.shape[1]
        t = x.dtype.type
        xg, mu, rstd = self._stats(x, groups, eps)
        xh = ((xg - mu) * rstd).reshape(bsz, c, hw)
        gam = gamma.reshape(1, c, 1)
        gn = g.reshape(bsz, c, hw)
        if silu:
            v = xh * gam + beta.reshape(1, c, 1)
            sv = self._sigmoid(v)
            gn = gn * sv * (t(1) + v * (t(1) - sv))
        sg = gn.astype(np.float64).sum(axis=2)  # (B, C)
        sgx = (gn.astype(np.float64) * xh.astype(np.float64)).sum(axis=2)
        dbeta_p[...] = sg.astype(t)
        dgamma_p[...] = sgx.astype(t)
        n = (c // groups) * hw
        g64 = gamma.astype(np.float64)[None, :]
        m1 = ((g64 * sg).reshape(bsz, groups, -1).sum(axis=2) / n).astype(t)
        m2 = ((g64 * sgx).reshape(bsz, groups, -1).sum(axis=2) / n).astype(t)
        cpg = c // groups
        m1c = np.repeat(m1, cpg, axis=1)[:, :, None]
        m2c = np.repeat(m2, cpg, axis=1)[:, :, None]
        rstdc = np.repeat(rstd[:, :, 0], cpg, axis=1)[:, :, None]
        gx[...] = (rstdc * (gn * gam - m1c - xh * m2c)).reshape(gx.shape)

    # ---- optimizer
    def adam_ema(self, p, g, m, v, ema, coef, scalars: Mapping[str, Any]) -> None:
        """Semantics of ``adam_ema_kernel``, in place (scalars from ``adam_ema_scalars``)."""
        s = scalars
        gi = g * coef.reshape(())[()]
        pi = p.copy()
        if s["decoupled"]:
            pi = pi * s["wd_mul"]
        elif s["wd"] != 0:
            gi = gi + s["wd"] * pi
        m[...] = s["b1"] * m + s["omb1"] * gi
        v[...] = s["b2"] * v + s["omb2"] * (gi * gi)
        denom = np.sqrt(v) / s["bc2_sqrt"] + s["eps"]
        p[...] = pi - s["step_size"] * (m / denom)
        if s["use_ema"] and ema is not None:
            ema[...] = s["decay"] * ema + s["omdecay"] * p

    def sumsq(self, a):
        """Σ a² in float64 (0-d array)."""
        a64 = a.reshape(-1).astype(np.float64)
        return np.asarray(np.dot(a64, a64))
