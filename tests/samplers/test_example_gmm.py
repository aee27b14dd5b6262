"""examples/gmm_samplers.py runs end to end (small settings) and writes a side-by-side PNG of ≥ 5 samplers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


from refdiff.train.images import read_png

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gmm_samplers.py"


def load_example():
    spec = importlib.util.spec_from_file_location("gmm_samplers_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gmm_example_writes_png(tmp_path, capsys):
    mod = load_example()
    assert mod.main(["--out", str(tmp_path), "--n", "400", "--steps", "8", "--size", "32"]) == 0
    meta = json.loads((tmp_path / "gmm_samplers.json").read_text())
    samplers = meta["panels"][1:]
    assert len(samplers) >= 5
    assert len({meta["stats"][s]["family"] for s in samplers}) == 3  # karras, vp and sde
    img = read_png(tmp_path / "gmm_samplers.png")
    n_panels = len(meta["panels"])
    assert img.shape == (32, n_panels * 32 + (n_panels - 1) * 4, 3)
    # every panel has mass: the samples land inside the plotted square
    for k in range(n_panels):
        panel = img[:, k * 36 : k * 36 + 32]
        assert panel.max() > 100
    # samples are sane: mean within a loose bound of the mixture mean (0, 0)
    for s in samplers:
        assert meta["stats"][s]["mean_error"] < 0.3
    assert "wrote" in capsys.readouterr().out
