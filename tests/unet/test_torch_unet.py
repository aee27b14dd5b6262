"""The PyTorch UNet against the float64 NumPy reference: names, outputs, L_simple and autograd
gradients; the reference optimiser functions against torch.optim and clip_grad_norm_."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from refdiff._errors import RefdiffShapeError, RefdiffValueError  # noqa: E402
from refdiff.backends.torch.unet import TorchUNet, compare_with_reference, from_config  # noqa: E402
from refdiff.unet import (  # noqa: E402
    adam_step,
    adamw_step,
    clip_grad_norm,
    count_params,
    get_preset,
    init_params,
    param_shapes,
    random_params,
    unet_apply,
)

from . import single_thread_blas  # noqa: E402

ADM = dict(
    num_head_channels=8,
    attention_resolutions=(8, 4),
    use_scale_shift_norm=True,
    resblock_updown=True,
    num_classes=5,
    learn_sigma=True,
)
CONFIGS = {
    "tiny": get_preset("tiny"),
    "tiny-adm": get_preset("tiny", **ADM),
    "tiny-pool": get_preset(
        "tiny", channel_mult=(1, 2, 2), conv_resample=False, attention_resolutions=(2,), num_heads=2
    ),
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with single_thread_blas():
        yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", ["tiny", "tiny-adm", "tiny-pool", "ddpm-cifar10"])
def test_state_dict_names_and_shapes_equal_the_reference_dict(name):
    cfg = CONFIGS.get(name) or get_preset(name)
    with torch.device("meta"):
        sd = TorchUNet(cfg).state_dict()
    shapes = param_shapes(cfg)
    assert set(sd) == set(shapes)
    assert all(tuple(sd[k].shape) == s for k, s in shapes.items())
    assert sum(v.numel() for v in sd.values()) == count_params(cfg)


def test_load_export_round_trip_and_from_config():
    cfg = CONFIGS["tiny-adm"]
    p = random_params(cfg, 3)
    m = TorchUNet(cfg).double().load_params(p)
    out = m.export_params()
    assert list(out) == list(p)
    assert all(np.array_equal(out[k], p[k]) for k in p)
    m32 = from_config(cfg, seed=1, dtype=torch.float32)
    ref = init_params(cfg, 1)
    assert all(np.array_equal(v, ref[k].astype(np.float32)) for k, v in m32.export_params().items())
    # tensors load too
    m.load_params({k: torch.as_tensor(v) for k, v in init_params(cfg, 0).items()})
    assert np.array_equal(
        m.export_params()["conv_in.weight"], init_params(cfg, 0)["conv_in.weight"]
    )


def test_load_params_rejects_mismatched_dicts():
    cfg = CONFIGS["tiny"]
    m = TorchUNet(cfg)
    p = init_params(cfg)
    q = dict(p)
    del q["mid.attn.0.qkv.bias"]
    with pytest.raises(RefdiffValueError, match=r"missing \['mid.attn.0.qkv.bias'\]"):
        m.load_params(q)
    q = dict(p, **{"conv_in.weight": np.zeros((32, 1, 3, 3))})
    with pytest.raises(
        RefdiffShapeError, match=r"params\['conv_in.weight'\] has shape \(32, 1, 3, 3\)"
    ):
        m.load_params(q)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float64_matches_reference_to_float64_precision(name):
    r = compare_with_reference(CONFIGS[name], torch.float64, "cpu", 0)
    assert r["max_rel_err_out"] < 1e-12, r
    assert r["max_rel_err_grad"] < 1e-12, r
    assert r["rel_err_loss"] < 1e-13, r


@pytest.mark.parametrize("name", ["tiny", "tiny-adm"])
def test_float32_matches_reference_within_tolerance(name):
    r = compare_with_reference(CONFIGS[name], "float32", "cpu", 1)
    assert r["max_rel_err_out"] < 1e-5, r
    assert r["max_rel_err_grad"] < 1e-5, r
    # and float32 really is float32 (the comparison is not vacuous)
    assert r["max_rel_err_out"] > 1e-9, r


def test_eval_mode_matches_reference_apply_and_train_mode_drops_out():
    cfg = CONFIGS["tiny"]
    p = random_params(cfg, 5)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((2, 3, 8, 8)), np.array([10, 600])
    m = TorchUNet(cfg).double().load_params(p).eval()
    with torch.no_grad():
        ev = m(torch.as_tensor(x), torch.as_tensor(t)).numpy()
    ref = unet_apply(p, cfg, x, t)
    assert np.max(np.abs(ev - ref)) <= 1e-12 * np.max(np.abs(ref))
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        tr = m(torch.as_tensor(x), torch.as_tensor(t)).numpy()  # torch RNG dropout
    assert np.max(np.abs(tr - ev)) > 1e-3


def test_torch_module_rejects_bad_inputs():
    m = TorchUNet(get_preset("tiny", num_classes=3))
    with pytest.raises(RefdiffShapeError, match=r"x of shape \(1, 3, 4, 4\) is invalid"):
        m(torch.zeros(1, 3, 4, 4), torch.zeros(1))
    with pytest.raises(RefdiffValueError, match=r"y=None is invalid: class labels are required"):
        m(torch.zeros(1, 3, 8, 8), torch.zeros(1))


# ----------------------------------------------------------------------------- optimisers vs torch
def _dicts(seed):
    rng = np.random.default_rng(seed)
    shapes = {"a": (3, 4), "b": (5,), "c": (2, 1, 3, 3)}
    return {k: rng.standard_normal(s) for k, s in shapes.items()}


@pytest.mark.parametrize(
    "kind, wd", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.0), ("adamw", 0.05)]
)
def test_adam_matches_torch_optim(kind, wd):
    p0 = _dicts(0)
    tp = {k: torch.nn.Parameter(torch.as_tensor(v.copy())) for k, v in p0.items()}
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    opt = cls(
        list(tp.values()), lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=wd, foreach=False
    )
    step = adam_step if kind == "adam" else adamw_step
    p, st = p0, None
    for i in range(6):
        g = _dicts(100 + i)
        for k in tp:
            tp[k].grad = torch.as_tensor(g[k])
        opt.step()
        p, st = step(p, g, st, lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=wd)
    assert st["step"] == 6
    for k in p:
        np.testing.assert_allclose(p[k], tp[k].detach().numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(st["v"][k], opt.state[tp[k]]["exp_avg_sq"].numpy(), rtol=1e-13)
        assert np.max(np.abs(p[k] - p0[k])) > 1e-3  # it moved


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    g = _dicts(7)
    tp = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64)) for v in g.values()]
    for t_, v in zip(tp, g.values()):
        t_.grad = torch.as_tensor(v.copy())
    tn = torch.nn.utils.clip_grad_norm_(tp, max_norm)
    c, n = clip_grad_norm(g, max_norm)
    assert float(n) == pytest.approx(float(tn), rel=1e-15)
    for t_, k in zip(tp, g):
        np.testing.assert_allclose(c[k], t_.grad.numpy(), rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------- GPU (marked)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_cuda_matches_reference(dtype, tol):
    r = compare_with_reference(CONFIGS["tiny-adm"], dtype, "cuda", 0)
    assert r["max_rel_err_out"] < tol and r["max_rel_err_grad"] < tol, r


@pytest.mark.slow
def test_ddpm_cifar10_float32_matches_reference():
    """The full 35.7 M network (batch 1): torch float32 against the float64 reference."""
    r = compare_with_reference(get_preset("ddpm-cifar10"), torch.float32, "cpu", 0, batch=1)
    assert r["max_rel_err_out"] < 1e-5 and r["max_rel_err_grad"] < 1e-5, r


def test_reference_code_runs_on_torch_tensors():
    """The array-API reference itself, fed torch float64 tensors, equals the NumPy run."""
    cfg = CONFIGS["tiny-adm"]
    p = random_params(cfg, 0)
    rng = np.random.default_rng(0)
    x, t, y = rng.standard_normal((2, 3, 8, 8)), np.array([3, 40]), np.array([0, 5])
    from refdiff.unet import dropout_masks, unet_backward, unet_forward

    m = dropout_masks(cfg, 2, rng)
    out, c = unet_forward(p, cfg, x, t, y=y, dropout_masks=m, train=True)
    g = unet_backward(p, cfg, c, out)
    T = torch.as_tensor
    pt = {k: T(v) for k, v in p.items()}
    out_t, c_t = unet_forward(
        pt, cfg, T(x), T(t), y=T(y), dropout_masks={k: T(v) for k, v in m.items()}, train=True
    )
    g_t = unet_backward(pt, cfg, c_t, out_t)
    assert isinstance(out_t, torch.Tensor)
    assert np.max(np.abs(out_t.numpy() - out)) <= 1e-13 * np.max(np.abs(out))
    for k in g:
        assert np.max(np.abs(g_t[k].numpy() - g[k])) <= 1e-12 * np.max(np.abs(g[k])), k
