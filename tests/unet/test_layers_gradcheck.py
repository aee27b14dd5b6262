"""Each UNet layer: forward against an independent evaluation, backward against central finite differences.

Finite differences in float64 with h = 1e-6 have truncation error ~h² and rounding error
~1e-16·|L|/h ≈ 1e-9 here, so a correct backward agrees to ~1e-9 normwise; the bar is 1e-6.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.signal import correlate2d
from scipy.special import expit, softmax as sp_softmax

from refdiff._errors import RefdiffShapeError, RefdiffValueError
from refdiff.unet import layers as L

from . import normwise_rel_err, numeric_gradient, single_thread_blas

TOL = 1e-6


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with single_thread_blas():
        yield


def rng():
    return np.random.default_rng(20260)


def gradcheck(forward, backward, inputs: list[np.ndarray], out_shape, *, h=1e-6):
    """Check backward(R, *inputs) against FD of L = Σ R·forward(*inputs), for every input."""
    r = rng().standard_normal(out_shape)
    analytic = backward(r, *inputs)
    for i, a in enumerate(inputs):
        num = numeric_gradient(lambda: float(np.sum(r * forward(*inputs))), a, h)
        err = normwise_rel_err(num, analytic[i])
        assert err < TOL, f"input {i}: FD vs backward relative error {err:.2e}"


# ----------------------------------------------------------------------------- conv2d
def naive_conv(x, w, b, stride, padding):
    """Σ_c scipy correlate2d of each padded channel with its kernel, then subsampled."""
    bsz, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = []
    for n in range(bsz):
        maps = []
        for j in range(o):
            full = sum(correlate2d(xp_[n, ci], w[j, ci], mode="valid") for ci in range(c))
            maps.append(full[::stride, ::stride] + b[j])
        out.append(maps)
    return np.array(out)


CONV_CASES = [  # (B, C, O, H, W, k, stride, padding)
    (2, 3, 4, 5, 5, 3, 1, 1),
    (2, 3, 4, 6, 6, 3, 2, 1),  # the downsample, even size
    (1, 2, 3, 5, 7, 3, 2, 1),  # odd and non-square: exercises the remainder row/column
    (2, 3, 4, 4, 4, 1, 1, 0),  # the 1×1 skip
    (1, 2, 2, 5, 5, 3, 1, 0),  # valid padding
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_scipy_correlate(case):
    bsz, c, o, h, w_, k, s, p = case
    g = rng()
    x, w, b = (g.standard_normal(sh) for sh in [(bsz, c, h, w_), (o, c, k, k), (o,)])
    got = L.conv2d(x, w, b, stride=s, padding=p)
    want = naive_conv(x, w, b, s, p)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_matches_finite_differences(case):
    bsz, c, o, h, w_, k, s, p = case
    g = rng()
    x, w, b = (g.standard_normal(sh) for sh in [(bsz, c, h, w_), (o, c, k, k), (o,)])
    out_shape = L.conv2d(x, w, b, stride=s, padding=p).shape
    gradcheck(
        lambda x, w, b: L.conv2d(x, w, b, stride=s, padding=p),
        lambda r, x, w, b: L.conv2d_backward(r, x, w, stride=s, padding=p),
        [x, w, b],
        out_shape,
    )


def test_conv2d_rejects_channel_mismatch():
    x = np.zeros((1, 3, 4, 4))
    with pytest.raises(RefdiffShapeError, match="w has 2 input channels .* but x has 3"):
        L.conv2d(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(RefdiffValueError, match="padding=2 is invalid: must be at most"):
        L.conv2d(x, np.zeros((4, 3, 1, 1)), padding=2)


# ----------------------------------------------------------------------------- group norm
def naive_group_norm(x, gamma, beta, groups, eps):
    out = np.empty_like(x)
    cg = x.shape[1] // groups
    for n in range(x.shape[0]):
        for gi in range(groups):
            blk = x[n, gi * cg : (gi + 1) * cg]
            out[n, gi * cg : (gi + 1) * cg] = (blk - blk.mean()) / math.sqrt(blk.var() + eps)
    return out * gamma[None, :, None, None] + beta[None, :, None, None]


def test_group_norm_forward_and_backward():
    g = rng()
    x = 3.0 + 2.0 * g.standard_normal((2, 6, 3, 4))
    gamma, beta = 1 + 0.3 * g.standard_normal(6), g.standard_normal(6)
    np.testing.assert_allclose(
        L.group_norm(x, gamma, beta, groups=3),
        naive_group_norm(x, gamma, beta, 3, L.GN_EPS),
        rtol=1e-13,
        atol=1e-13,
    )
    gradcheck(
        lambda x, ga, be: L.group_norm(x, ga, be, groups=3),
        lambda r, x, ga, be: L.group_norm_backward(r, x, ga, groups=3),
        [x, gamma, beta],
        x.shape,
    )


def test_group_norm_rejects_groups_not_dividing_channels():
    with pytest.raises(RefdiffValueError, match="groups=4 is invalid: must divide the 6 channels"):
        L.group_norm(np.zeros((1, 6, 2, 2)), np.ones(6), np.zeros(6), groups=4)


# ----------------------------------------------------------------------------- pointwise layers
def test_silu_matches_scipy_expit_and_has_no_overflow():
    x = np.array([-800.0, -40.0, -1.5, 0.0, 0.3, 40.0, 800.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = L.silu(x)
    np.testing.assert_allclose(got, x * expit(x), rtol=1e-15, atol=0)
    xs = rng().standard_normal((3, 5)) * 3
    gradcheck(L.silu, lambda r, x: (L.silu_backward(r, x),), [xs], xs.shape)


def test_linear_forward_and_backward():
    g = rng()
    x, w, b = g.standard_normal((4, 5)), g.standard_normal((3, 5)), g.standard_normal(3)
    np.testing.assert_allclose(
        L.linear(x, w, b), np.einsum("bi,oi->bo", x, w) + b, rtol=1e-13, atol=1e-14
    )
    gradcheck(L.linear, lambda r, x, w, b: L.linear_backward(r, x, w), [x, w, b], (4, 3))


def test_softmax_forward_and_backward():
    s = rng().standard_normal((2, 3, 5)) * 4
    np.testing.assert_allclose(L.softmax(s), sp_softmax(s, axis=-1), rtol=1e-14)
    np.testing.assert_allclose(L.softmax(s + 1000.0), sp_softmax(s, axis=-1), rtol=1e-12)
    gradcheck(L.softmax, lambda r, s: (L.softmax_backward(r, L.softmax(s)),), [s], s.shape)


# ----------------------------------------------------------------------------- attention
def naive_attention(h, w_qkv, b_qkv, w_proj, b_proj, heads):
    """Per batch element, per head, per query position: an explicit weighted sum."""
    bsz, c, hh, ww = h.shape
    n, d = hh * ww, c // heads
    tok = h.reshape(bsz, c, n)
    out = np.zeros((bsz, c, n))
    for b in range(bsz):
        qkv = w_qkv @ tok[b] + b_qkv[:, None]
        q, k, v = qkv[:c], qkv[c : 2 * c], qkv[2 * c :]
        a = np.zeros((c, n))
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            for i in range(n):
                logits = np.array([q[sl, i] @ k[sl, j] for j in range(n)]) / math.sqrt(d)
                wts = sp_softmax(logits)
                a[sl, i] = sum(wts[j] * v[sl, j] for j in range(n))
        out[b] = w_proj @ a + b_proj[:, None]
    return out.reshape(h.shape)


@pytest.mark.parametrize("heads", [1, 2])
def test_self_attention_forward_and_backward(heads):
    g = rng()
    c = 4
    h = g.standard_normal((2, c, 2, 3))
    w_qkv, b_qkv = g.standard_normal((3 * c, c)) * 0.7, g.standard_normal(3 * c) * 0.3
    w_proj, b_proj = g.standard_normal((c, c)), g.standard_normal(c)
    got = L.self_attention(h, w_qkv, b_qkv, w_proj, b_proj, num_heads=heads)
    np.testing.assert_allclose(
        got, naive_attention(h, w_qkv, b_qkv, w_proj, b_proj, heads), rtol=1e-12, atol=1e-12
    )
    gradcheck(
        lambda *a: L.self_attention(*a, num_heads=heads),
        lambda r, h, wq, bq, wp, bp: L.self_attention_backward(r, h, wq, bq, wp, num_heads=heads),
        [h, w_qkv, b_qkv, w_proj, b_proj],
        h.shape,
    )


def test_attention_heads_differ_from_single_head():
    """Two heads is a different function from one (guards against heads being ignored)."""
    g = rng()
    h, w_qkv, b_qkv = g.standard_normal((1, 4, 2, 2)), g.standard_normal((12, 4)), np.zeros(12)
    w_proj, b_proj = np.eye(4), np.zeros(4)
    one = L.self_attention(h, w_qkv, b_qkv, w_proj, b_proj, num_heads=1)
    two = L.self_attention(h, w_qkv, b_qkv, w_proj, b_proj, num_heads=2)
    assert np.max(np.abs(one - two)) > 1e-3


# ----------------------------------------------------------------------------- resampling
def test_upsample_and_avg_pool():
    x = rng().standard_normal((2, 3, 3, 4))
    np.testing.assert_array_equal(L.upsample_nearest2x(x), np.repeat(np.repeat(x, 2, 2), 2, 3))
    gradcheck(
        L.upsample_nearest2x, lambda r, x: (L.upsample_nearest2x_backward(r),), [x], (2, 3, 6, 8)
    )
    y = rng().standard_normal((2, 3, 4, 6))
    want = np.array(
        [
            [
                [
                    [y[b, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for j in range(3)]
                    for i in range(2)
                ]
                for c in range(3)
            ]
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(L.avg_pool2x(y), want, rtol=1e-14, atol=1e-16)
    gradcheck(L.avg_pool2x, lambda r, x: (L.avg_pool2x_backward(r),), [y], (2, 3, 2, 3))
    with pytest.raises(RefdiffShapeError, match="even height and width"):
        L.avg_pool2x(np.zeros((1, 1, 3, 4)))


# ----------------------------------------------------------------------------- embeddings, dropout
def test_timestep_embedding_closed_form():
    t = np.array([0, 1, 17, 999])
    dim = 9  # odd: last column zero
    emb = L.timestep_embedding(t, dim)
    half = dim // 2
    for b, tv in enumerate(t):
        for k in range(half):
            w = 10000.0 ** (-k / (half - 1))
            assert emb[b, k] == pytest.approx(math.sin(tv * w), abs=1e-12)
            assert emb[b, half + k] == pytest.approx(math.cos(tv * w), abs=1e-12)
        assert emb[b, -1] == 0.0
    assert emb.dtype == np.float64
    np.testing.assert_allclose(L.timestep_embedding(np.array([2.5]), 8)[0, 0], math.sin(2.5))
    with pytest.raises(RefdiffValueError, match="dim=2 is invalid"):
        L.timestep_embedding(t, 2)


def test_dropout_and_embedding():
    g = rng()
    x = g.standard_normal((2, 3, 2, 2))
    mask = (g.random(x.shape) < 0.9) / 0.9
    np.testing.assert_array_equal(L.dropout(x, mask), x * mask)
    gradcheck(
        lambda x: L.dropout(x, mask), lambda r, x: (L.dropout_backward(r, mask),), [x], x.shape
    )
    with pytest.raises(RefdiffShapeError, match="dropout mask has shape"):
        L.dropout(x, mask[:1])
    table = g.standard_normal((5, 3))
    y = np.array([4, 0, 4])
    np.testing.assert_array_equal(L.embedding(y, table), table[[4, 0, 4]])
    gradcheck(
        lambda tb: L.embedding(y, tb),
        lambda r, tb: (L.embedding_backward(r, y, 5),),
        [table],
        (3, 3),
    )


# ----------------------------------------------------------------------------- array API standard
def test_layers_run_on_array_api_strict():
    """Every layer's forward and backward on array_api_strict float64 equals the NumPy result."""
    xps = pytest.importorskip("array_api_strict")
    g = rng()
    x = g.standard_normal((2, 4, 6, 6))
    w3, w1, b = (
        g.standard_normal((4, 4, 3, 3)),
        g.standard_normal((2, 4, 1, 1)),
        g.standard_normal(4),
    )
    gamma, beta = 1 + g.standard_normal(4) * 0.1, g.standard_normal(4)
    wq, bq, wp = g.standard_normal((12, 4)), g.standard_normal(12), g.standard_normal((4, 4))
    lw, lb, feats = g.standard_normal((3, 5)), g.standard_normal(3), g.standard_normal((2, 5))
    table, y = g.standard_normal((5, 3)), np.array([1, 4])
    r6, r3 = g.standard_normal((2, 4, 6, 6)), g.standard_normal((2, 4, 3, 3))
    cases = {
        "conv": lambda a: L.conv2d(a(x), a(w3), a(b)),
        "conv_bwd": lambda a: L.conv2d_backward(a(r6), a(x), a(w3)),
        "conv_s2": lambda a: L.conv2d(a(x), a(w3), a(b), stride=2),
        "conv_s2_bwd": lambda a: L.conv2d_backward(a(r3), a(x), a(w3), stride=2),
        "conv1x1": lambda a: L.conv2d(a(x), a(w1), padding=0),
        "gn": lambda a: L.group_norm(a(x), a(gamma), a(beta), groups=2),
        "gn_bwd": lambda a: L.group_norm_backward(a(r6), a(x), a(gamma), groups=2),
        "silu": lambda a: L.silu(a(x)),
        "silu_bwd": lambda a: L.silu_backward(a(r6), a(x)),
        "linear": lambda a: L.linear(a(feats), a(lw), a(lb)),
        "linear_bwd": lambda a: L.linear_backward(a(feats[:, :3]), a(feats), a(lw)),
        "attn": lambda a: L.self_attention(a(x), a(wq), a(bq), a(wp), a(b), num_heads=2),
        "attn_bwd": lambda a: L.self_attention_backward(
            a(r6), a(x), a(wq), a(bq), a(wp), num_heads=2
        ),
        "up": lambda a: L.upsample_nearest2x(a(x)),
        "up_bwd": lambda a: L.upsample_nearest2x_backward(a(x)),
        "pool": lambda a: L.avg_pool2x(a(x)),
        "pool_bwd": lambda a: L.avg_pool2x_backward(a(r3)),
        "temb": lambda a: L.timestep_embedding(a(np.array([3.0, 500.0])), 16),
        "dropout": lambda a: L.dropout(a(x), a(r6)),
        "embed": lambda a: L.embedding(a(y), a(table)),
        "embed_bwd": lambda a: L.embedding_backward(a(feats[:, :3]), a(y), 5),
    }
    for name, fn in cases.items():
        want = fn(np.asarray)
        got = fn(xps.asarray)
        want = want if isinstance(want, tuple) else (want,)
        got = got if isinstance(got, tuple) else (got,)
        for gw, ww in zip(got, want):
            assert type(gw).__module__.startswith("array_api_strict"), name
            np.testing.assert_allclose(np.asarray(gw), ww, rtol=1e-14, atol=1e-14, err_msg=name)
