"""Checkpoints: safetensors layout, atomic writes, clear errors, and torch-trained weights in the NumPy reference."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("safetensors")

from refdiff.train.checkpoint import (
    CheckpointError,
    check_params,
    load_checkpoint,
    load_params,
    read_metadata,
    save_checkpoint,
)
from refdiff.unet.config import get_preset
from refdiff.unet.params import init_params, param_shapes


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a.weight": rng.standard_normal((3, 2)),
        "a.bias": rng.standard_normal(3).astype(np.float32),
    }


def test_round_trip_every_section(tmp_path):
    p = tmp_path / "ck.safetensors"
    params, ema = _arrays(0), _arrays(1)
    optim = {"exp_avg/a.weight": np.ones((3, 2)), "step/a.weight": np.array(3.0, np.float32)}
    rng = {"noise": np.arange(16, dtype=np.uint8), "torch_cpu/0": np.arange(5, dtype=np.uint8)}
    cfg = {"train": {"lr": 1e-4}, "note": "ü"}
    state = {"data_stream": {"position": 12}, "host_rng": {"state": {"state": 2**100 + 7}}}
    save_checkpoint(
        p, params=params, ema=ema, optimizer=optim, rng=rng, step=17, config=cfg, state=state
    )
    ck = load_checkpoint(p)
    assert ck.step == 17 and ck.config == cfg and ck.state == state and ck.path == p
    for want, got in ((params, ck.params), (ema, ck.ema), (optim, ck.optimizer), (rng, ck.rng)):
        assert want.keys() == got.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype
            np.testing.assert_array_equal(got[k], want[k])
    assert ck.weights() is ck.ema and ck.weights(ema=False) is ck.params
    meta = read_metadata(p)
    assert meta["step"] == 17 and meta["state"]["host_rng"]["state"]["state"] == 2**100 + 7
    # the bare names are the model weights: a plain safetensors reader sees them directly
    import safetensors.numpy as stn

    raw = stn.load_file(str(p))
    assert {k for k in raw if "/" not in k} == set(params)


def test_write_is_atomic(tmp_path, monkeypatch):
    import safetensors.numpy as stn

    p = tmp_path / "ck.safetensors"
    save_checkpoint(p, params=_arrays(0), step=1, config={})
    before = p.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(stn, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(p, params=_arrays(1), step=2, config={})
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["ck.safetensors"]  # no temporary left behind
    assert load_checkpoint(p).step == 1


def test_bad_files_give_clear_errors(tmp_path):
    missing = tmp_path / "none.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint='{missing}': no such file")):
        load_checkpoint(missing)
    with pytest.raises(CheckpointError, match="is a folder; pass the .safetensors file"):
        load_checkpoint(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(
        CheckpointError, match=re.escape(f"checkpoint='{junk}' is not a readable safetensors file")
    ):
        load_checkpoint(junk)
    import safetensors.numpy as stn

    other = tmp_path / "other.safetensors"
    stn.save_file({"w": np.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError,
        match="is a safetensors file but not a refdiff checkpoint "
        r"\(metadata 'format' is 'pt'",
    ):
        load_checkpoint(other)
    stn.save_file(
        {"w": np.zeros(2)},
        str(other),
        metadata={
            "format": "refdiff-checkpoint",
            "format_version": "99",
            "step": "0",
            "config": "{}",
        },
    )
    with pytest.raises(
        CheckpointError, match="has format_version '99'; this refdiff reads version 1"
    ):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="contains '/'"):
        save_checkpoint(
            tmp_path / "x.safetensors", params={"ema/w": np.zeros(1)}, step=0, config={}
        )


def test_params_must_match_the_unet_config(tmp_path):
    cfg = get_preset("tiny")
    params = init_params(cfg, 0)
    p = tmp_path / "ck.safetensors"
    bad = dict(params)
    del bad["conv_out.bias"]
    bad["conv_in.weight"] = bad["conv_in.weight"][:, :2]
    save_checkpoint(p, params=bad, step=0, config={"unet": cfg.to_dict()})
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"checkpoint='{p}' does not match its UNet config: "
            "missing 1 (conv_out.bias), wrong shapes (conv_in.weight: "
            "(32, 2, 3, 3) != (32, 3, 3, 3))"
        ),
    ):
        load_checkpoint(p)
    check_params(params, cfg)  # the right dict passes


# ------------------------------------------------------------------ written by the torch trainer
@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    pytest.importorskip("torch")
    from refdiff.train.driver import TrainConfig, train

    out = tmp_path_factory.mktemp("torch_run")
    cfg = TrainConfig(
        preset="tiny",
        steps=2,
        batch=4,
        T=20,
        dtype="float64",
        ema=1.0,
        ema_warmup=False,
        n_samples=0,
        log_every=1,
    )
    train(cfg, out, progress=False)
    return out / "checkpoint.safetensors"


def test_torch_checkpoint_holds_everything_to_resume(torch_run):
    ck = load_checkpoint(torch_run)
    shapes = param_shapes(get_preset("tiny"))
    assert sorted(ck.params) == sorted(shapes) and ck.step == 2
    for name in shapes:
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            assert f"{slot}/{name}" in ck.optimizer
    assert ck.optimizer["exp_avg/conv_in.weight"].dtype == np.float64
    assert (
        ck.optimizer["step/conv_in.weight"].shape == ()
        and float(ck.optimizer["step/conv_in.weight"]) == 2.0
    )
    assert {"noise", "torch_cpu/0"} <= set(ck.rng)
    assert ck.state["data_stream"]["position"] == 8 and "host_rng" in ck.state
    assert ck.config["train"]["preset"] == "tiny" and ck.config["unet"]["image_size"] == 8
    # with a constant EMA decay 1 (no warm-up) the EMA weights stay the initial weights exactly
    init = init_params(get_preset("tiny"), 0)
    for k, v in init.items():
        np.testing.assert_array_equal(ck.ema[k], v)
    assert any(not np.array_equal(ck.params[k], init[k]) for k in init)
    assert json.loads((torch_run.parent / "config.json").read_text())["train"]["steps"] == 2


def test_torch_checkpoint_runs_in_the_numpy_reference(torch_run):
    import torch

    from refdiff.backends.torch.unet import TorchUNet
    from refdiff.unet.config import UNetConfig
    from refdiff.unet.model import unet_apply

    params, config = load_params(torch_run, ema=False)
    cfg = UNetConfig.from_dict(config["unet"])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, cfg.in_channels, cfg.image_size, cfg.image_size))
    t = np.array([0, 7, 19])
    ref = unet_apply(params, cfg, x, t)
    model = TorchUNet(cfg).double().load_params(params).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.abs(ref).max() > 1e-6  # trained: conv_out is no longer zero
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
