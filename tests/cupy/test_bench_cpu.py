"""Smoke run of benchmarks/bench_cupy_train.py on the CPU (NumPy in place of CuPy, tiny preset)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cupy_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_cupy_train", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_runs_on_cpu_and_reports_the_ratio(tmp_path, capsys):
    bench = _load()
    out = bench.main(
        [
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--batch",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--precision",
            "fp32",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    printed = capsys.readouterr().out
    by = {r["backend"]: r for r in out["results"]}
    assert set(by) == {"cupy", "torch"}
    for r in by.values():
        assert r["img_per_s"] > 0 and r["ms_per_step"] > 0 and r["loss"] > 0
    assert (
        by["cupy"]["describe"]["kernels"] == "numpy"
        and by["cupy"]["describe"]["precision"] == "fp32"
    )
    assert by["cupy"]["peak_bytes"] > 0 and by["torch"]["peak_bytes"] is None
    assert out["ratio_cupy_over_torch"] == pytest.approx(
        by["cupy"]["img_per_s"] / by["torch"]["img_per_s"]
    )
    assert "ratio cupy/torch (img/s):" in printed and "tiny, batch 2, fp32, device cpu" in printed
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["ratio_cupy_over_torch"] == pytest.approx(out["ratio_cupy_over_torch"])


def test_benchmark_rejects_an_unknown_backend():
    bench = _load()
    with pytest.raises(SystemExit, match="unknown backend 'jax'"):
        bench.main(
            [
                "--device",
                "cpu",
                "--preset",
                "tiny",
                "--batch",
                "2",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--backends",
                "jax",
            ]
        )
