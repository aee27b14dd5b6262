"""The reference UNet as a whole: layout and parameter count, config validation, whole-network
gradients against finite differences, dropout masks, the loss helper and the optimiser functions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refdiff._errors import RefdiffShapeError, RefdiffValueError, UnknownNameError
from refdiff.unet import (
    PRESETS,
    UNetConfig,
    adam_step,
    adamw_step,
    clip_grad_norm,
    count_params,
    dropout_masks,
    dropout_shapes,
    ema_update,
    get_preset,
    init_adam_state,
    init_params,
    loss_and_grad,
    param_shapes,
    random_params,
    unet_apply,
    unet_backward,
    unet_forward,
    unet_vjp,
    warmup_lr,
)

from . import central_difference, single_thread_blas


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with single_thread_blas():
        yield


# ----------------------------------------------------------------------------- parameter count
def ho_param_count(image_size, in_ch, ch, out_ch, mult, nrb, attn_res):
    """Ho et al.'s diffusion_tf UNet counted by hand, block by block (no refdiff code involved)."""
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    dense = lambda cin, cout: cin * cout + cout  # noqa: E731
    norm = lambda c: 2 * c  # noqa: E731
    temb = 4 * ch

    def resnet(cin, cout):
        n = norm(cin) + conv(cin, cout, 3) + dense(temb, cout) + norm(cout) + conv(cout, cout, 3)
        return n + (dense(cin, cout) if cin != cout else 0)  # nin_shortcut

    def attn(c):
        return norm(c) + 4 * dense(c, c)  # q, k, v, proj_out

    total = dense(ch, temb) + dense(temb, temb) + conv(in_ch, ch, 3)
    hs, cur, res = [ch], ch, image_size
    for lvl, m in enumerate(mult):
        for _ in range(nrb):
            total += resnet(cur, ch * m) + (attn(ch * m) if res in attn_res else 0)
            cur = ch * m
            hs.append(cur)
        if lvl != len(mult) - 1:
            total += conv(cur, cur, 3)
            hs.append(cur)
            res //= 2
    total += resnet(cur, cur) + attn(cur) + resnet(cur, cur)
    for lvl in reversed(range(len(mult))):
        for _ in range(nrb + 1):
            total += resnet(cur + hs.pop(), ch * mult[lvl])
            cur = ch * mult[lvl]
            total += attn(cur) if res in attn_res else 0
        if lvl != 0:
            total += conv(cur, cur, 3)
            res *= 2
    assert not hs
    return total + norm(cur) + conv(cur, out_ch, 3)


def test_ddpm_cifar10_has_ho_et_al_parameter_count():
    cfg = get_preset("ddpm-cifar10")
    n = count_params(cfg)
    assert n == ho_param_count(32, 3, 128, 3, (1, 2, 2, 2), 2, (16,)) == 35_746_307
    assert round(n / 1e6, 1) == 35.7  # Ho et al. 2020, Table / App. B: "35.7M"


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_preset_counts_match_hand_count(name):
    c = PRESETS[name]
    assert count_params(c) == ho_param_count(
        c.image_size,
        c.in_channels,
        c.model_channels,
        c.output_channels,
        c.channel_mult,
        c.num_res_blocks,
        c.attention_resolutions,
    )


def test_param_names_and_shapes_of_cifar_network():
    s = param_shapes(get_preset("ddpm-cifar10"))
    assert list(s)[:4] == [
        "time_embed.0.weight",
        "time_embed.0.bias",
        "time_embed.1.weight",
        "time_embed.1.bias",
    ]
    assert s["time_embed.0.weight"] == (512, 128)
    assert s["conv_in.weight"] == (128, 3, 3, 3)
    assert s["down.0.downsample.op.weight"] == (128, 128, 3, 3)
    assert "down.3.downsample.op.weight" not in s  # no downsample at the bottom
    assert s["down.1.res.0.skip.weight"] == (256, 128, 1, 1)
    assert "down.1.res.1.skip.weight" not in s
    assert s["down.1.attn.1.qkv.weight"] == (768, 256)
    assert "down.0.attn.0.qkv.weight" not in s and "down.2.attn.0.qkv.weight" not in s
    assert s["mid.attn.0.proj.weight"] == (256, 256)
    assert s["up.0.res.0.conv1.weight"] == (128, 384, 3, 3)  # 256 + 128 concatenated
    assert s["up.0.res.2.norm1.weight"] == (256,)  # 128 + conv_in's 128
    assert s["up.3.upsample.op.weight"] == (256, 256, 3, 3)
    assert "up.0.upsample.op.weight" not in s
    assert sum(k.endswith(".qkv.weight") for k in s) == 2 + 3 + 1  # 16×16 down, up; mid
    assert list(s)[-2:] == ["conv_out.weight", "conv_out.bias"]


def test_adm_options_change_the_layout():
    base = get_preset("tiny")
    s = param_shapes(
        base.replace(
            use_scale_shift_norm=True,
            resblock_updown=True,
            num_classes=7,
            learn_sigma=True,
            attention_resolutions=(8, 4),
        )
    )
    assert s["down.0.res.0.temb.weight"] == (64, 128)  # 2·C for (scale, shift)
    assert s["label_embed.weight"] == (8, 128)  # + null label
    assert "down.0.downsample.res.conv1.weight" in s
    assert "up.1.upsample.res.conv2.weight" in s
    assert "down.0.attn.0.qkv.weight" in s
    assert s["conv_out.weight"] == (6, 32, 3, 3)
    pooled = param_shapes(base.replace(conv_resample=False))
    assert not any("sample" in k for k in pooled)  # avg-pool / plain nearest


# ----------------------------------------------------------------------------- config
def test_config_json_round_trip_and_presets():
    for cfg in list(PRESETS.values()) + [get_preset("tiny", num_classes=3, learn_sigma=True)]:
        d = json.loads(json.dumps(cfg.to_dict()))
        assert UNetConfig.from_dict(d) == cfg
    assert get_preset("ddpm-cifar10") == UNetConfig()
    c = get_preset("ddpm-cifar10")
    assert (
        c.model_channels,
        c.channel_mult,
        c.num_res_blocks,
        c.attention_resolutions,
        c.num_groups,
        c.dropout,
    ) == (128, (1, 2, 2, 2), 2, (16,), 32, 0.1)
    assert get_preset("tiny", learn_sigma=True).output_channels == 6
    assert get_preset("tiny", out_channels=2).output_channels == 2


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            dict(image_size=30),
            RefdiffValueError,
            r"image_size=30 is invalid: must be divisible by .* = 8",
        ),
        (
            dict(attention_resolutions=(12,)),
            RefdiffValueError,
            r"attention_resolutions=.* each entry must be a feature-map resolution .*\[32, 16, 8, 4\]",
        ),
        (
            dict(num_groups=48),
            RefdiffValueError,
            r"num_groups=48 is invalid: must divide every channel",
        ),
        (
            dict(num_heads=3),
            RefdiffValueError,
            r"num_heads=3 is invalid: must divide the 256 channels",
        ),
        (dict(num_head_channels=0), RefdiffValueError, r"num_head_channels=0 is invalid"),
        (
            dict(dropout=1.0),
            RefdiffValueError,
            r"dropout=1.0 is invalid: expected a value in \[0.0, 1.0\)",
        ),
        (
            dict(channel_mult=()),
            RefdiffValueError,
            r"channel_mult=\(\) is invalid: expected a non-empty",
        ),
        (dict(num_classes=0), RefdiffValueError, r"num_classes=0 is invalid"),
        (
            dict(model_channels=2, num_groups=1),
            RefdiffValueError,
            r"model_channels=2 is invalid: expected at least 4",
        ),
        (
            dict(learn_sigma="yes"),
            RefdiffValueError,
            r"learn_sigma='yes' is invalid: expected True or False",
        ),
    ],
)
def test_config_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        UNetConfig(**kwargs)


def test_unknown_preset_and_fields():
    with pytest.raises(
        UnknownNameError, match=r"name='huge' is not a known UNet preset; allowed: 'ddpm-cifar10'"
    ):
        get_preset("huge")
    with pytest.raises(
        RefdiffValueError, match=r"overrides \['chanels'\] are not UNetConfig fields"
    ):
        get_preset("tiny", chanels=3)
    with pytest.raises(RefdiffValueError, match=r"unknown UNetConfig field\(s\) \['foo'\]"):
        UNetConfig.from_dict({"foo": 1})


# ----------------------------------------------------------------------------- init
def test_init_is_deterministic_and_zero_inits_residual_branches():
    cfg = get_preset("tiny")
    a, b, c = init_params(cfg, 0), init_params(cfg, 0), init_params(cfg, 1)
    assert list(a) == list(param_shapes(cfg))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv_in.weight"], c["conv_in.weight"])
    assert not np.any(a["conv_out.weight"]) and not np.any(a["mid.attn.0.proj.weight"])
    assert not np.any(a["down.0.res.0.conv2.weight"])
    assert np.all(a["down.0.res.0.norm1.weight"] == 1.0)
    w = a["down.1.res.0.conv1.weight"]  # (64, 32, 3, 3): fan_avg = 432
    assert np.max(np.abs(w)) <= math.sqrt(3 / 432) and np.std(w) == pytest.approx(
        math.sqrt(1 / 432), rel=0.05
    )
    # zero-initialised residual branches: the whole network starts with output conv_out.bias = 0
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    assert not np.any(unet_apply(a, cfg, x, np.array([1, 2])))


def test_init_moves_to_another_namespace():
    xps = pytest.importorskip("array_api_strict")
    cfg = get_preset("tiny")
    p = init_params(cfg, 3, xp=xps, dtype=xps.float32)
    assert all(v.dtype == xps.float32 for v in p.values())
    ref = init_params(cfg, 3)
    np.testing.assert_array_equal(
        np.asarray(p["conv_in.weight"]), ref["conv_in.weight"].astype(np.float32)
    )


# ----------------------------------------------------------------------------- whole-network gradients
ADM = dict(
    num_head_channels=8,
    attention_resolutions=(8, 4),
    use_scale_shift_norm=True,
    resblock_updown=True,
    num_classes=5,
    learn_sigma=True,
)

NETWORKS = {
    "tiny": get_preset("tiny"),
    "tiny-adm": get_preset("tiny", **ADM),
    "tiny-pool": get_preset(
        "tiny",
        channel_mult=(1, 2, 2),
        conv_resample=False,
        num_res_blocks=2,
        attention_resolutions=(2,),
    ),
}


def _fd_network(cfg, *, n_params, n_inputs, seed=0):
    """FD check of Σ R·out w.r.t. one random entry of (up to) n_params tensors and n_inputs of x."""
    rng = np.random.default_rng(seed)
    params = random_params(cfg, seed)
    bsz = 2
    x = rng.standard_normal((bsz, cfg.in_channels, cfg.image_size, cfg.image_size))
    t = np.array([7, 813])
    y = np.array([2, cfg.num_classes]) if cfg.num_classes is not None else None
    masks = dropout_masks(cfg, bsz, rng)
    r = rng.standard_normal((bsz, cfg.output_channels, cfg.image_size, cfg.image_size))

    def loss():
        out, _ = unet_forward(params, cfg, x, t, y=y, dropout_masks=masks, train=True)
        return float(np.sum(r * out))

    out, cache = unet_forward(params, cfg, x, t, y=y, dropout_masks=masks, train=True)
    grads, gx = unet_vjp(params, cfg, cache, r)
    assert list(grads) == list(params)
    names = list(params)
    if n_params < len(names):
        names = [names[i] for i in sorted(rng.choice(len(names), n_params, replace=False))]
    worst = (0.0, None)
    for k in names:
        a = params[k]
        idx = tuple(int(rng.integers(0, s)) for s in a.shape)
        h = 1e-4 * max(1.0, abs(a[idx]))
        fd = central_difference(loss, a, idx, h)
        an = grads[k][idx]
        # relative to the entry, floored at 1e-2 of the tensor's RMS gradient: FD rounding noise
        # (~1e-10 here) must not count at entries whose gradient is 0 (e.g. the key bias)
        err = abs(fd - an) / max(abs(an), 1e-2 * float(np.sqrt(np.mean(grads[k] ** 2))), 1e-12)
        worst = max(worst, (err, k), key=lambda e: e[0])
    for _ in range(n_inputs):
        idx = tuple(int(rng.integers(0, s)) for s in x.shape)
        fd = central_difference(loss, x, idx, 1e-4)
        err = abs(fd - gx[idx]) / max(abs(gx[idx]), 1e-2 * float(np.sqrt(np.mean(gx**2))))
        worst = max(worst, (err, "x" + str(idx)), key=lambda e: e[0])
    return worst


@pytest.mark.parametrize("name, n_params", [("tiny", 10_000), ("tiny-adm", 60), ("tiny-pool", 40)])
def test_network_gradients_match_finite_differences(name, n_params):
    err, where = _fd_network(NETWORKS[name], n_params=n_params, n_inputs=6)
    assert err < 1e-6, f"{name}: worst FD relative error {err:.2e} at {where}"


def test_key_bias_gradient_vanishes():
    """A bias on the keys shifts every logit of a query equally; softmax ignores it, so ∂L/∂b_k = 0."""
    cfg = NETWORKS["tiny-adm"]
    p = random_params(cfg, 4)
    rng = np.random.default_rng(4)
    out, cache = unet_forward(
        p, cfg, rng.standard_normal((2, 3, 8, 8)), np.array([1, 9]), y=np.array([0, 1])
    )
    g = unet_backward(p, cfg, cache, rng.standard_normal(out.shape))
    for k in (k for k in g if k.endswith("qkv.bias")):
        c = g[k].shape[0] // 3
        assert np.max(np.abs(g[k][c : 2 * c])) < 1e-12 * np.max(np.abs(g[k]))
        assert np.max(np.abs(g[k][:c])) > 1e-6 and np.max(np.abs(g[k][2 * c :])) > 1e-6


def test_backward_is_linear_in_grad_out():
    """unet_backward(a·g1 + g2) = a·unet_backward(g1) + unet_backward(g2) (a VJP is linear)."""
    cfg = NETWORKS["tiny-adm"]
    rng = np.random.default_rng(5)
    p = random_params(cfg, 1)
    x = rng.standard_normal((1, 3, 8, 8))
    out, cache = unet_forward(p, cfg, x, np.array([3.5]), y=np.array([1]))
    g1, g2 = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
    a, b, c = (unet_backward(p, cfg, cache, g) for g in (2.0 * g1 + g2, g1, g2))
    for k in p:
        np.testing.assert_allclose(
            a[k], 2.0 * b[k] + c[k], rtol=1e-9, atol=1e-12 * np.max(np.abs(a[k]))
        )


# ----------------------------------------------------------------------------- forward semantics
def test_apply_train_and_dropout_semantics():
    cfg = get_preset("tiny")
    p = random_params(cfg, 2)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((2, 3, 8, 8)), np.array([0, 999])
    ev = unet_apply(p, cfg, x, t)
    assert ev.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(unet_forward(p, cfg, x, t)[0], ev)
    masks = dropout_masks(cfg, 2, 1)
    ones = {k: np.ones_like(v) for k, v in masks.items()}
    np.testing.assert_array_equal(unet_forward(p, cfg, x, t, dropout_masks=ones, train=True)[0], ev)
    tr = unet_forward(p, cfg, x, t, dropout_masks=masks, train=True)[0]
    assert np.max(np.abs(tr - ev)) > 1e-3
    # a single timestep broadcasts; the embedding depends on t
    np.testing.assert_array_equal(unet_apply(p, cfg, x, 5), unet_apply(p, cfg, x, np.array([5, 5])))
    assert np.max(np.abs(unet_apply(p, cfg, x, 5) - unet_apply(p, cfg, x, 6))) > 1e-6


def test_dropout_masks_are_inverted_bernoulli():
    cfg = get_preset("tiny")
    masks = dropout_masks(cfg, 64, np.random.default_rng(0))
    assert (
        set(masks)
        == set(dropout_shapes(cfg, 64))
        == {
            "down.0.res.0",
            "down.1.res.0",
            "mid.res.0",
            "mid.res.1",
            "up.1.res.0",
            "up.1.res.1",
            "up.0.res.0",
            "up.0.res.1",
        }
    )
    allv = np.concatenate([m.ravel() for m in masks.values()])
    assert set(np.unique(allv)) == {0.0, 1 / 0.9}
    n, keep = allv.size, np.mean(allv > 0)
    assert abs(keep - 0.9) < 5 * math.sqrt(0.09 / n)  # 5σ binomial bound
    assert masks["down.1.res.0"].shape == (64, 64, 4, 4)
    assert dropout_masks(get_preset("tiny", dropout=0.0), 2, 0) == {}


def test_class_conditioning_and_learned_sigma():
    cfg = get_preset("tiny", num_classes=4, learn_sigma=True)
    p = random_params(cfg, 0)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
    t = np.array([4, 4])
    o1 = unet_apply(p, cfg, x, t, y=np.array([0, 4]))
    assert o1.shape == (2, 6, 8, 8)
    o2 = unet_apply(p, cfg, x, t, y=np.array([1, 4]))
    assert np.max(np.abs(o1[0] - o2[0])) > 1e-6  # label matters
    np.testing.assert_array_equal(o1[1], o2[1])  # same (null) label, same output
    with pytest.raises(
        RefdiffValueError, match=r"y=None is invalid: class labels are required .* y=4"
    ):
        unet_apply(p, cfg, x, t)
    with pytest.raises(RefdiffValueError, match=r"labels must lie in \[0, 4\]"):
        unet_apply(p, cfg, x, t, y=np.array([0, 5]))


def test_loss_and_grad_l_simple():
    """L_simple = mean (ε − ε_θ)² on the ε channels; the variance channels get no gradient."""
    cfg = get_preset("tiny", learn_sigma=True, dropout=0.0)
    p = random_params(cfg, 0)
    rng = np.random.default_rng(2)
    x, eps, t = (
        rng.standard_normal((2, 3, 8, 8)),
        rng.standard_normal((2, 3, 8, 8)),
        np.array([1, 2]),
    )
    loss, g = loss_and_grad(p, cfg, x, t, eps)
    out = unet_apply(p, cfg, x, t)
    assert float(loss) == pytest.approx(np.mean((out[:, :3] - eps) ** 2), rel=1e-14)
    assert not np.any(g["conv_out.bias"][3:]) and np.all(g["conv_out.bias"][:3] != 0)
    fd = central_difference(
        lambda: float(loss_and_grad(p, cfg, x, t, eps)[0]), p["conv_out.bias"], (1,), 1e-6
    )
    assert fd == pytest.approx(g["conv_out.bias"][1], rel=1e-7)
    with pytest.raises(RefdiffShapeError, match=r"eps of shape \(2, 6, 8, 8\) is invalid"):
        loss_and_grad(p, cfg, x, t, np.zeros((2, 6, 8, 8)))


def test_bad_inputs_name_the_argument():
    cfg = get_preset("tiny")
    p = init_params(cfg)
    x = np.zeros((2, 3, 8, 8))
    with pytest.raises(
        RefdiffShapeError,
        match=r"x of shape \(2, 3, 16, 16\) is invalid: expected shape \(batch, 3, 8, 8\)",
    ):
        unet_apply(p, cfg, np.zeros((2, 3, 16, 16)), np.array([0, 1]))
    with pytest.raises(
        RefdiffShapeError, match=r"t of shape \(3,\) is invalid: expected shape \(2,\)"
    ):
        unet_apply(p, cfg, x, np.array([0, 1, 2]))
    with pytest.raises(RefdiffValueError, match=r"y was given but this config is unconditional"):
        unet_apply(p, cfg, x, np.array([0, 1]), y=np.array([0, 0]))
    with pytest.raises(
        RefdiffValueError,
        match=r"dropout_masks=None is invalid: train=True with dropout=0.1 needs explicit masks",
    ):
        unet_forward(p, cfg, x, np.array([0, 1]), train=True)
    masks = dropout_masks(cfg, 2, 0)
    masks["mid.res.0"] = masks["mid.res.0"][:1]
    with pytest.raises(
        RefdiffShapeError, match=r"dropout_masks\['mid.res.0'\] has shape \(1, 64, 4, 4\)"
    ):
        unet_forward(p, cfg, x, np.array([0, 1]), dropout_masks=masks, train=True)
    q = dict(p)
    del q["conv_in.bias"]
    with pytest.raises(
        RefdiffValueError, match=r"params do not match the config: missing \['conv_in.bias'\]"
    ):
        unet_apply(q, cfg, x, np.array([0, 1]))
    q = dict(p, **{"conv_in.bias": np.zeros(5)})
    with pytest.raises(
        RefdiffShapeError,
        match=r"params\['conv_in.bias'\] has shape \(5,\); the config needs \(32,\)",
    ):
        unet_apply(q, cfg, x, np.array([0, 1]))


def test_reference_runs_on_array_api_strict():
    """The whole network forward and backward on array_api_strict equals the NumPy run."""
    xps = pytest.importorskip("array_api_strict")
    cfg = NETWORKS["tiny-adm"]
    p = random_params(cfg, 0)
    rng = np.random.default_rng(0)
    x, t, y = rng.standard_normal((2, 3, 8, 8)), np.array([3, 40]), np.array([0, 5])
    masks = dropout_masks(cfg, 2, rng)
    out, cache = unet_forward(p, cfg, x, t, y=y, dropout_masks=masks, train=True)
    g = unet_backward(p, cfg, cache, out)
    ps = {k: xps.asarray(v) for k, v in p.items()}
    ms = {k: xps.asarray(v) for k, v in masks.items()}
    out_s, cache_s = unet_forward(
        ps, cfg, xps.asarray(x), xps.asarray(t), y=xps.asarray(y), dropout_masks=ms, train=True
    )
    g_s = unet_backward(ps, cfg, cache_s, out_s)
    np.testing.assert_allclose(np.asarray(out_s), out, rtol=1e-13, atol=1e-13)
    for k in p:
        np.testing.assert_allclose(
            np.asarray(g_s[k]), g[k], rtol=1e-12, atol=1e-13 * np.max(np.abs(g[k])), err_msg=k
        )


# ----------------------------------------------------------------------------- optimiser (closed forms)
def test_adam_first_step_is_lr_times_sign():
    """After one step m̂ = g and v̂ = g², so Δθ = −lr·g/(|g| + ε) (Kingma & Ba 2015, Alg. 1)."""
    p = {"a": np.array([1.0, -2.0, 3.0]), "b": np.array([[0.5]])}
    g = {"a": np.array([0.3, -4.0, 1e-3]), "b": np.array([[-2.0]])}
    new, st = adam_step(p, g, None, lr=0.1, eps=1e-8)
    assert st["step"] == 1
    for k in p:
        np.testing.assert_allclose(new[k], p[k] - 0.1 * g[k] / (np.abs(g[k]) + 1e-8), rtol=1e-12)
    assert np.array_equal(p["a"], [1.0, -2.0, 3.0])  # inputs untouched


def test_adam_constant_gradient_and_weight_decay_forms():
    p = {"w": np.array([2.0, -1.0])}
    g = {"w": np.array([0.5, -0.25])}
    st = init_adam_state(p)
    q = p
    for _ in range(5):  # constant g: every step ≈ lr·sign(g)
        q, st = adam_step(q, g, st, lr=0.01, eps=0.0)
    np.testing.assert_allclose(q["w"], p["w"] - 5 * 0.01 * np.sign(g["w"]), rtol=1e-12)
    # AdamW with zero gradient: pure decay θ(1 − lr·λ)ⁿ; Adam's L2 form instead moves by lr·sign(θ)
    z = {"w": np.zeros(2)}
    q, st = adamw_step(p, z, None, lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(q["w"], p["w"] * 0.95, rtol=1e-14)
    q, st = adam_step(p, z, None, lr=0.1, weight_decay=0.5, eps=0.0)
    np.testing.assert_allclose(q["w"], p["w"] - 0.1 * np.sign(p["w"]), rtol=1e-14)
    with pytest.raises(RefdiffValueError, match=r"betas\[1\]=1.0 is invalid"):
        adam_step(p, g, None, lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(RefdiffValueError, match=r"grads do not match params: missing \['w'\]"):
        adam_step(p, {"v": g["w"]}, None, lr=0.1)


def test_ema_closed_form():
    """With fixed θ, n updates give θ̄ₙ = θ + decayⁿ(θ̄₀ − θ)."""
    ema, p = {"a": np.array([1.0, 5.0])}, {"a": np.array([3.0, -1.0])}
    e = ema
    for _ in range(10):
        e = ema_update(e, p, 0.9)
    np.testing.assert_allclose(e["a"], p["a"] + 0.9**10 * (ema["a"] - p["a"]), rtol=1e-13)
    np.testing.assert_array_equal(ema_update(ema, p, 1.0)["a"], ema["a"])
    with pytest.raises(RefdiffValueError, match=r"decay=1.5 is invalid"):
        ema_update(ema, p, 1.5)


def test_clip_grad_norm_closed_form():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}  # global norm 5
    c, n = clip_grad_norm(g, 1.0)
    assert float(n) == 5.0
    np.testing.assert_allclose(c["a"], [3.0 / (5 + 1e-6), 0.0], rtol=1e-15)
    np.testing.assert_allclose(c["b"], [[4.0 / (5 + 1e-6)]], rtol=1e-15)
    c, n = clip_grad_norm(g, 10.0)  # below the bound: unchanged
    assert all(np.array_equal(c[k], g[k]) for k in g)
    with pytest.raises(RefdiffValueError, match=r"max_norm=0.0 is invalid"):
        clip_grad_norm(g, 0.0)


def test_warmup_lr():
    assert [warmup_lr(s, 2e-4, 4) for s in (0, 1, 2, 4, 5, 10_000)] == [
        0.0,
        5e-5,
        1e-4,
        2e-4,
        2e-4,
        2e-4,
    ]
    assert warmup_lr(0, 1e-3, 0) == 1e-3
    with pytest.raises(RefdiffValueError, match=r"warmup_steps=-1 is invalid"):
        warmup_lr(1, 1e-3, -1)
