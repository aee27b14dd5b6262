"""``refdiff train`` / ``sample`` / ``bpd`` end to end through the argparse subcommands."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from refdiff.train.cli import build_parser, main, register
from refdiff.train.images import read_png
from refdiff.train.metrics import read_metrics


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The smoke command: refdiff train --backend torch --preset tiny --steps 20 --out DIR (defaults otherwise)."""
    out = tmp_path_factory.mktemp("cli_default")
    rc = main(
        [
            "train",
            "--backend",
            "torch",
            "--preset",
            "tiny",
            "--steps",
            "20",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A float64 run with T=10, resumed once through the CLI."""
    out = tmp_path_factory.mktemp("cli_short")
    common = ["--out", str(out), "--no-progress"]
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--T",
                "10",
                "--batch",
                "4",
                "--dtype",
                "float64",
                "--n-samples",
                "0",
                "--log-every",
                "1",
                "--ema",
                "0.5",
                *common,
            ]
        )
        == 0
    )
    assert main(["train", "--steps", "3", "--resume", *common]) == 0
    return out


def test_train_leaves_checkpoint_metrics_and_grid(default_run, capsys):
    assert (default_run / "checkpoint.safetensors").is_file()
    recs = read_metrics(default_run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [10, 20]
    for r in recs:
        assert {"loss", "grad_norm", "lr", "img_per_s"} <= set(r)
        assert (
            np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["lr"] == 2e-4 and r["img_per_s"] > 0
        )
    grid = read_png(default_run / "samples" / "step_0000020.png")
    assert grid.shape == (4 * 9 + 1, 4 * 9 + 1, 3)  # 16 tiles of 8x8, 1 px padding
    cfg = json.loads((default_run / "config.json").read_text())
    assert cfg["train"]["batch"] == 64 and cfg["schedule"] == {"name": "linear", "T": 1000}


def test_resume_through_the_cli(short_run):
    assert [r["step"] for r in read_metrics(short_run / "metrics.jsonl")] == [1, 2, 3]


def test_sample_grid_and_backends_agree(default_run, tmp_path, capsys):
    ck = str(default_run / "checkpoint.safetensors")
    png = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                "--ckpt",
                ck,
                "--sampler",
                "ddpm",
                "--steps",
                "4",
                "--n",
                "6",
                "--nrow",
                "3",
                "--out",
                str(png),
                "--npy",
                str(tmp_path / "t.npy"),
                "--dtype",
                "float64",
            ]
        )
        == 0
    )
    assert read_png(png).shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    assert "wrote 6 samples (ddpm, 4 steps, checkpoint step 20)" in capsys.readouterr().out
    # the float64 NumPy reference UNet, given the same checkpoint and seed, draws the same images
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(default_run),
                "--sampler",
                "ddpm",
                "--steps",
                "4",
                "--n",
                "6",
                "--out",
                str(tmp_path / "g2.png"),
                "--npy",
                str(tmp_path / "n.npy"),
                "--backend",
                "numpy",
            ]
        )
        == 0
    )
    a, b = np.load(tmp_path / "t.npy"), np.load(tmp_path / "n.npy")
    assert a.shape == (6, 3, 8, 8)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_bpd_matches_the_reference_loop(short_run, tmp_path):
    from refdiff.kl import calc_bpd_loop
    from refdiff.train.checkpoint import load_params
    from refdiff.train.data import load_data
    from refdiff.train.driver import build_schedule
    from refdiff.unet.config import UNetConfig
    from refdiff.unet.model import unet_apply

    js = tmp_path / "bpd.json"
    assert (
        main(
            [
                "bpd",
                "--ckpt",
                str(short_run),
                "--n",
                "3",
                "--batch",
                "2",
                "--seed",
                "5",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    got = json.loads(js.read_text())
    assert got["n"] == 3 and got["T"] == 10 and got["step"] == 3 and got["data"] == "digits-test"
    # independent recomputation: NumPy reference UNet (EMA weights), the same data and noise convention
    params, config = load_params(short_run / "checkpoint.safetensors", ema=True)
    cfg = UNetConfig.from_dict(config["unet"])
    ds = load_data("digits", split="test", image_size=8, channels=3, seed=0)
    totals = []
    for i, idx in enumerate((np.arange(0, 2), np.arange(2, 3))):
        x0, _ = ds.batch(idx, dtype=np.float64)
        res = calc_bpd_loop(
            build_schedule("linear", 10),
            lambda x, t: unet_apply(params, cfg, x, t),
            x0,
            noise=lambda t, s=5 + i, sh=x0.shape: np.random.default_rng(
                [s, int(t)]
            ).standard_normal(sh),
        )
        totals.append(res["total_bpd"])
    want = np.concatenate(totals)
    assert got["bpd"] == pytest.approx(float(want.mean()), rel=1e-9)
    assert got["bpd"] > 0 and len(got["vb_per_t"]) == 10


def test_errors_are_clear(tmp_path, capsys):
    rc = main(
        [
            "train",
            "--backend",
            "cupy",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 1
        and "refdiff train: error: backend='cupy' is not available here" in err
        and "issue" not in err
    )
    missing = tmp_path / "nope"
    rc = main(
        [
            "train",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--data",
            str(missing),
            "--out",
            str(tmp_path / "d"),
        ]
    )
    assert (
        rc == 1
        and f"data='{missing}' is invalid: no such file or directory" in capsys.readouterr().err
    )
    rc = main(["sample", "--ckpt", str(missing), "--out", str(tmp_path / "g.png")])
    assert (
        rc == 1
        and f"refdiff sample: error: checkpoint='{missing}': no such file"
        in capsys.readouterr().err
    )
    rc = main(["bpd", "--ckpt", str(missing)])
    assert rc == 1 and "refdiff bpd: error: checkpoint=" in capsys.readouterr().err
    rc = main(["train", "--preset", "tiny", "--unet", "[1]", "--out", str(tmp_path / "e")])
    assert rc == 1 and "--unet='[1]' is not a JSON object" in capsys.readouterr().err
    rc = main(["train", "--preset", "huge", "--out", str(tmp_path / "f")])
    assert rc == 1 and re.search(r"name='huge' is not a known UNet preset", capsys.readouterr().err)


def test_register_adds_the_subcommands_to_any_parser():
    parser = argparse.ArgumentParser(prog="refdiff")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["train", "--out", "x", "--lr", "1e-3", "--bf16"])
    given = vars(args)
    assert (
        given["lr"] == 1e-3 and given["bf16"] is True and "batch" not in given
    )  # unset flags stay unset
    assert callable(args.func) and args.func.__name__ == "run_train"
    assert parser.parse_args(["sample", "--ckpt", "c"]).func.__name__ == "run_sample"
    assert parser.parse_args(["bpd", "--ckpt", "c"]).n == 64
    assert set(build_parser()._subparsers._group_actions[0].choices) == {"train", "sample", "bpd"}


def test_every_wired_sampler_runs_and_ddim_is_deterministic(default_run, tmp_path):
    ck = str(default_run / "checkpoint.safetensors")
    for name in ("ddim", "ddpm", "dpmpp_2m"):
        assert (
            main(
                [
                    "sample",
                    "--ckpt",
                    ck,
                    "--sampler",
                    name,
                    "--steps",
                    "5",
                    "--n",
                    "2",
                    "--seed",
                    "3",
                    "--out",
                    str(tmp_path / f"{name}.png"),
                    "--npy",
                    str(tmp_path / f"{name}.npy"),
                ]
            )
            == 0
        )
    a = np.load(tmp_path / "ddim.npy")
    assert a.shape == (2, 3, 8, 8) and np.all(np.isfinite(a))
    assert (
        main(
            [
                "sample",
                "--ckpt",
                ck,
                "--sampler",
                "ddim",
                "--steps",
                "5",
                "--n",
                "2",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "again.png"),
                "--npy",
                str(tmp_path / "again.npy"),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), a)
    assert not np.array_equal(np.load(tmp_path / "ddpm.npy"), a)


def test_every_family_samples_through_the_cli_and_the_backends_agree(default_run, tmp_path):
    # Karras and SDE samplers reach the discrete network through refdiff.samplers.adapters; the
    # torch network (float64) and the float64 NumPy reference UNet give the same images
    ck = str(default_run / "checkpoint.safetensors")
    from refdiff.train.sampling import available_samplers

    names = available_samplers()
    assert {
        "karras_heun",
        "karras_euler_ancestral",
        "sde_euler_maruyama",
        "ode_heun",
        "plms",
        "unipc_bh2",
        "dpmpp_2m",
    } <= set(names) and "ncsn_annealed_langevin" not in names
    for name in ("karras_heun", "karras_euler_ancestral", "sde_euler_maruyama"):
        out = {}
        for backend in ("torch", "numpy"):
            npy = tmp_path / f"{name}-{backend}.npy"
            assert (
                main(
                    [
                        "sample",
                        "--ckpt",
                        ck,
                        "--sampler",
                        name,
                        "--steps",
                        "4",
                        "--n",
                        "2",
                        "--backend",
                        backend,
                        "--dtype",
                        "float64",
                        "--out",
                        str(tmp_path / f"{name}-{backend}.png"),
                        "--npy",
                        str(npy),
                    ]
                )
                == 0
            )
            out[backend] = np.load(npy)
        assert out["torch"].shape == (2, 3, 8, 8) and np.all(np.isfinite(out["torch"]))
        np.testing.assert_allclose(out["torch"], out["numpy"], rtol=1e-9, atol=1e-9)


def test_vp_solvers_see_training_indices():
    # DPM-Solver's discrete times t_n = (n+1)/N must reach the network as the indices n
    import array_api_compat.numpy as xp

    from refdiff.train.driver import build_schedule
    from refdiff.samplers.discrete import sampling_schedule
    from refdiff.train.sampling import run_sampler

    sched = build_schedule("linear", 20)
    seen = []

    def model(x, t):
        seen.append(np.asarray(t, dtype=np.float64).copy())
        return xp.zeros_like(x)

    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 1, 4, 4)))
    run_sampler("dpm_solver_1", model, sched, x, steps=19, noise_sampler=None, clip_x0=False)
    np.testing.assert_allclose([s[0] for s in seen], np.arange(19, 0, -1), atol=1e-9)
    assert all(s[0] == s[1] for s in seen)
    seen.clear()
    run_sampler("ddim", model, sched, x, steps=4, noise_sampler=None, spacing="sections")
    assert [int(s[0]) for s in seen] == [19, 13, 6, 0]
    assert list(sampling_schedule(sched, 4, "trailing").timestep_map) == [4, 9, 14, 19]


def test_hybrid_loss_class_labels_bf16_and_channels_last(tmp_path, capsys):
    from refdiff.train.checkpoint import load_checkpoint

    common = [
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch",
        "4",
        "--T",
        "10",
        "--log-every",
        "1",
        "--n-samples",
        "2",
        "--sample-steps",
        "2",
        "--no-progress",
    ]
    # L_hybrid: a learned-range variance doubles the output channels; the metrics carry both parts
    assert (
        main(
            [
                "train",
                *common,
                "--loss",
                "hybrid",
                "--sampler",
                "ddpm",
                "--out",
                str(tmp_path / "h"),
            ]
        )
        == 0
    )
    ck = load_checkpoint(tmp_path / "h" / "checkpoint.safetensors")
    assert (
        ck.params["conv_out.weight"].shape[0] == 6
        and ck.config["train"]["var_type"] == "learned_range"
    )
    rec = read_metrics(tmp_path / "h" / "metrics.jsonl")[-1]
    assert (
        rec["loss"] == pytest.approx(rec["loss_mse"] + rec["loss_vb"], rel=1e-6)
        and rec["loss_vb"] > 0
    )
    # class-conditional on the digits' labels (10 classes + the null label)
    assert main(["train", *common, "--class-cond", "--out", str(tmp_path / "c")]) == 0
    ck = load_checkpoint(tmp_path / "c" / "checkpoint.safetensors")
    assert ck.config["unet"]["num_classes"] == 10 and ck.params["label_embed.weight"].shape[0] == 11
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(tmp_path / "c"),
                "--steps",
                "2",
                "--n",
                "3",
                "--label",
                "7",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 0
    )
    # bf16 autocast and channels_last: weights stay float32 and C-ordered in the checkpoint
    assert main(["train", *common, "--bf16", "--channels-last", "--out", str(tmp_path / "b")]) == 0
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    w = ck.params["conv_in.weight"]
    assert w.dtype == np.float32 and w.flags.c_contiguous
    assert np.isfinite(read_metrics(tmp_path / "b" / "metrics.jsonl")[-1]["loss"])
