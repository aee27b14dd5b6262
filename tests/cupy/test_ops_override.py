"""The UNet's operation-override mechanism (``ops=``, refdiff.unet.layers.resolve_ops), on NumPy."""

from __future__ import annotations


import numpy as np
import pytest

from refdiff._errors import RefdiffValueError, UnknownNameError
from refdiff.unet import get_preset, loss_and_grad, random_params, unet_backward, unet_forward
from refdiff.unet import layers as L
from refdiff.unet.params import param_shapes


CFG = get_preset("tiny", dropout=0.0)


def _inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, CFG.in_channels, CFG.image_size, CFG.image_size))
    return x, np.array([5, 900][:batch]), rng.standard_normal(x.shape)


def _counting(counts, name):
    generic = L.GENERIC_OPS[name]

    def op(*a, **k):
        counts[name] = counts.get(name, 0) + 1
        return generic(*a, **k)

    return op


def test_default_table_is_the_generic_layers():
    ops = L.resolve_ops()
    for name in L.OP_NAMES:
        assert getattr(ops, name) is getattr(L, name)
    assert L.resolve_ops(ops) is ops  # an already resolved table passes through
    assert L.resolve_ops({}).conv2d is L.conv2d


def test_override_replaces_only_the_named_operation():
    def fake(*a, **k):
        raise AssertionError("not called")

    ops = L.resolve_ops({"silu": fake})
    assert ops.silu is fake and ops.conv2d is L.conv2d


def test_bad_tables_raise_clear_errors():
    with pytest.raises(
        UnknownNameError, match=r"ops\['conv3d'\] is not a UNet operation; allowed: conv2d"
    ):
        L.resolve_ops({"conv3d": L.conv2d})
    with pytest.raises(
        RefdiffValueError, match=r"ops\['conv2d'\]=3 is invalid: expected a callable"
    ):
        L.resolve_ops({"conv2d": 3})
    with pytest.raises(RefdiffValueError, match="ops=.list. is invalid: expected a mapping"):
        L.resolve_ops([("conv2d", L.conv2d)])
    x, t, _ = _inputs()
    with pytest.raises(UnknownNameError, match="conv3d"):
        unet_forward(random_params(CFG), CFG, x, t, ops={"conv3d": L.conv2d})


def test_every_layer_call_goes_through_the_table():
    """Each conv layer calls conv2d once forward and conv2d_backward once backward; norms likewise."""
    shapes = param_shapes(CFG)
    n_conv = sum(1 for s in shapes.values() if len(s) == 4)
    n_gn_silu = sum(
        1 for k in shapes if k.endswith((".norm1.weight", ".norm2.weight", "norm_out.weight"))
    )
    n_gn = sum(1 for k in shapes if k.endswith(".norm.weight"))
    counts: dict[str, int] = {}
    ops = {n: _counting(counts, n) for n in L.OP_NAMES}
    x, t, eps = _inputs()
    p = random_params(CFG)
    loss, grads = loss_and_grad(p, CFG, x, t, eps, ops=ops)
    assert counts["conv2d"] == counts["conv2d_backward"] == n_conv
    assert counts["group_norm_silu"] == counts["group_norm_silu_backward"] == n_gn_silu
    assert counts["group_norm"] == counts["group_norm_backward"] == n_gn
    assert counts["self_attention"] == counts["self_attention_backward"] == n_gn
    ref_loss, ref_grads = loss_and_grad(p, CFG, x, t, eps)
    assert float(loss) == float(ref_loss)
    for k in ref_grads:
        np.testing.assert_array_equal(grads[k], ref_grads[k])


def test_backward_defaults_to_the_forward_table_and_can_be_given_another():
    counts: dict[str, int] = {}
    ops = {"conv2d_backward": _counting(counts, "conv2d_backward")}
    x, t, _ = _inputs()
    p = random_params(CFG)
    out, cache = unet_forward(p, CFG, x, t, ops=ops)
    unet_backward(p, CFG, cache, np.ones_like(out))
    n = counts["conv2d_backward"]
    assert n > 0
    unet_backward(p, CFG, cache, np.ones_like(out), ops={})  # explicit: the generic code
    assert counts["conv2d_backward"] == n


def test_a_wrong_override_changes_the_result():
    """The override is really used: a convolution off by 1e-3 moves the loss and the gradients."""

    def conv_off(*a, **k):
        return L.conv2d(*a, **k) * 1.001

    x, t, eps = _inputs()
    p = random_params(CFG)
    l0, g0 = loss_and_grad(p, CFG, x, t, eps)
    l1, g1 = loss_and_grad(p, CFG, x, t, eps, ops={"conv2d": conv_off})
    assert abs(float(l1) - float(l0)) > 1e-6 * abs(float(l0))
    assert max(float(np.max(np.abs(g1[k] - g0[k]))) for k in g0) > 0


def test_group_norm_silu_backward_against_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 3, 2))
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    w = rng.standard_normal(x.shape)

    def f(a=x, ga=gamma, be=beta):
        return float(np.sum(w * L.group_norm_silu(a, ga, be, groups=3)))

    gx, gga, gbe = L.group_norm_silu_backward(w, x, gamma, beta, groups=3)
    h = 1e-6
    for arr, grad in ((x, gx), (gamma, gga), (beta, gbe)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            fp = f()
            arr[i] = old - h
            fm = f()
            arr[i] = old
            num[i] = (fp - fm) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-7, atol=1e-8)
