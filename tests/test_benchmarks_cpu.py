"""The benchmark scripts run on CPU at a tiny size (so CI proves they work), and their helpers are right.

benchmarks/bench_train.py and benchmarks/bench_sample.py are scripts, not package modules: they
are loaded from their files. The diffusers rows run when diffusers is installed and are
reported as skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from refdiff.unet import count_params, get_preset  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(
            f"_refdiff_bench_{name}", BENCH / f"{name}.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def bc():
    return _load("_bench_common")


def _has_diffusers() -> bool:
    try:
        import diffusers  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def test_bench_train_runs_on_cpu(tmp_path, capsys):
    bt = _load("bench_train")
    out = tmp_path / "train.json"
    rc = bt.main(
        [
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--batch",
            "2",
            "--steps",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--configs",
            "fp32,bf16-cl,bf16-cl-graph",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "| configuration | diffusers img/s |" in text and "refdiff img/s" in text
    d = json.loads(out.read_text())
    rows = {(r["model"], r["config"]): r for r in d["rows"]}
    for cfg in ("fp32", "bf16-cl"):
        r = rows[("refdiff", cfg)]
        assert r["status"] == "ok", r
        assert (
            r["img_per_s"] > 0
            and len(r["ms_runs"]) == 2
            and r["params"] == count_params(get_preset("tiny"))
        )
        assert r["loss"] > 0
    assert rows[("refdiff", "bf16-cl-graph")]["status"].startswith("skipped: CUDA graphs need")
    dif = rows[("diffusers", "fp32")]
    if _has_diffusers():
        assert dif["status"] == "ok" and dif["params"] == count_params(get_preset("tiny")), dif
        assert "speedup" in d["summary"]
    else:
        assert dif["status"] == "skipped: diffusers not installed"
    # the table of earlier outputs
    rc = bt.main(["--table-from", str(out)])
    summary = "best refdiff: " if _has_diffusers() else "summary: needs an ok row of each model"
    assert rc == 0 and summary in capsys.readouterr().out


def test_bench_train_records_a_failing_row_and_goes_on(tmp_path, monkeypatch, capsys):
    bt = _load("bench_train")

    def broken(*a, **k):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(bt, "build_model", broken)
    out = tmp_path / "t.json"
    assert (
        bt.main(
            [
                "--device",
                "cpu",
                "--preset",
                "tiny",
                "--batch",
                "2",
                "--steps",
                "1",
                "--repeats",
                "1",
                "--warmup",
                "1",
                "--configs",
                "fp32,tf32",
                "--models",
                "refdiff",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["status"] for r in rows] == ["error: RuntimeError: planted failure"] * 2
    assert "summary: needs an ok row of each model" in capsys.readouterr().out


def test_bench_train_rejects_unknown_names():
    bt = _load("bench_train")
    with pytest.raises(SystemExit):
        bt.main(["--device", "cpu", "--configs", "fp64"])


def test_bench_sample_runs_on_cpu(tmp_path, capsys):
    bs = _load("bench_sample")
    out = tmp_path / "sample.json"
    rc = bs.main(
        [
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--batch",
            "2",
            "--scale-steps",
            "0.04",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert "outside (direct)" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    loops = {"refdiff", "diffusers"} if _has_diffusers() else {"refdiff"}
    assert {(r["sampler"], r["model"], r["loop"]) for r in rows} == {
        (s, m, lp) for s in ("ddim50", "dpmpp20") for m in loops for lp in loops
    }
    for r in rows:
        assert r["status"] == "ok", r
        assert r["calls"] == r["steps"] == 2
        assert r["img_per_s"] > 0 and r["net_ms_per_call"] > 0
        assert -1.0 < r["share_outside"] < 1.0


def test_forward_macs_matches_torch_flop_counter(bc):
    """Analytic count = torch's FlopCounterMode (convolutions and linear maps) + the attention matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    from refdiff.backends.torch.unet import from_config
    from refdiff.unet import layout

    for name in ("tiny", "small"):
        cfg = get_preset(name)
        m = from_config(cfg).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(torch.randn(1, 3, cfg.image_size, cfg.image_size), torch.tensor([3]))
        counted = fc.get_total_flops() // 2
        sdpa = fc.get_flop_counts().get("Global", {})
        attn = sum(2 * (b.res * b.res) ** 2 * b.cin for b in layout(cfg) if b.kind == "attn")
        if not any("scaled_dot_product" in str(k) for k in sdpa):
            counted += attn  # the CPU SDPA kernel is not counted
        assert bc.forward_macs(cfg) == counted, name


def test_forward_macs_of_the_ddpm_network(bc):
    # research/perf.md: 6.222 GMAC forward (5.462 conv3x3 + 0.589 conv1x1 + 0.168 attention + 0.003 dense)
    macs = bc.forward_macs(get_preset("ddpm-cifar10"))
    assert abs(macs / 6.222e9 - 1) < 2e-4
    assert abs(bc.train_flops_per_image(get_preset("ddpm-cifar10")) / 37.33e9 - 1) < 1e-3


@pytest.mark.skipif(not _has_diffusers(), reason="diffusers is not installed")
@pytest.mark.parametrize("name", ["tiny", "small", "ddpm-cifar10"])
def test_diffusers_twin_has_the_same_architecture(bc, name):
    cfg = get_preset(name)
    kw = bc.diffusers_kwargs(cfg)
    with torch.device("meta"):
        m = bc.diffusers_unet(cfg)
    assert sum(p.numel() for p in m.parameters()) == count_params(cfg)
    if name == "ddpm-cifar10":
        assert kw["block_out_channels"] == (128, 256, 256, 256) and kw["layers_per_block"] == 2
        assert kw["down_block_types"] == (
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
        )
        assert kw["up_block_types"] == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
        assert kw["dropout"] == 0.1 and kw["attention_head_dim"] is None


def test_diffusers_twin_refuses_adm_options(bc):
    with pytest.raises(ValueError, match="DDPM options only"):
        bc.diffusers_kwargs(get_preset("tiny", use_scale_shift_norm=True))


def test_scripts_skip_diffusers_cleanly_when_it_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    bt = _load("bench_train")
    out = tmp_path / "t.json"
    assert (
        bt.main(
            [
                "--device",
                "cpu",
                "--preset",
                "tiny",
                "--batch",
                "2",
                "--steps",
                "1",
                "--repeats",
                "1",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--configs",
                "fp32",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["refdiff"]["status"] == "ok"
    assert rows["diffusers"]["status"] == "skipped: diffusers not installed"
    assert "diffusers is not installed" in capsys.readouterr().err
    bs = _load("bench_sample")
    out = tmp_path / "s.json"
    assert (
        bs.main(
            [
                "--device",
                "cpu",
                "--preset",
                "tiny",
                "--batch",
                "2",
                "--scale-steps",
                "0.04",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--samplers",
                "dpmpp20",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["loop"], r["status"]) for r in rows] == [("refdiff", "refdiff", "ok")]


def test_bench_cpu_samplers_runs_and_records_every_column(tmp_path, capsys):
    bcs = _load("bench_cpu_samplers")
    out = tmp_path / "cpu.json"
    res = bcs.main(
        ["--steps", "3", "--repeats", "1", "--batches", "1", "--malloc", "default"]
        + ["--json", str(out)]
    )
    text = capsys.readouterr().out
    assert "malloc default" in text and "f64 vs floor f64" in text
    rows = json.loads(out.read_text())["rows"]
    assert rows == res["rows"] and [r["loop"] for r in rows] == list(bcs.LOOPS)
    cols = ["refdiff f64", "refdiff f32", "floor f64", "floor f32"]
    if _has_diffusers():
        cols += ["diffusers f32", "diffusers f64"]
    for r in rows:
        assert r["shape"] == "1×3×32×32"
        assert all(r[c] > 0 for c in cols), r
    with pytest.raises(SystemExit):
        bcs.main(["--loops", "ddim,heun"])
