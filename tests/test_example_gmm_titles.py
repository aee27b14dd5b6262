"""examples/gmm_samplers.py titles each panel with the sampler, its NFE and its TV distance to the mixture."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from refdiff.train.images import read_png

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gmm_samplers.py"


def _example():
    spec = importlib.util.spec_from_file_location("gmm_titles_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_panels_carry_sampler_nfe_and_tv(tmp_path):
    mod = _example()
    assert mod.main(["--out", str(tmp_path), "--n", "3000", "--steps", "8", "--size", "96"]) == 0
    meta = json.loads((tmp_path / "gmm_samplers.json").read_text())
    st = meta["stats"]
    # Heun evaluates twice per step except the last, to σ = 0 (Karras et al. 2022, Alg. 1): 2N − 1
    assert st["karras_heun"]["nfe"] == 2 * 8 - 1
    assert st["dpmpp_2m"]["nfe"] == 8 and st["karras_euler_ancestral"]["nfe"] == 8
    assert st["sde_euler_maruyama"]["nfe"] == 80
    for name, s in st.items():
        assert 0.0 <= s["tv"] <= 1.0, name
    # the long-run samplers are near the floor that exact draws reach; a coarse one is not
    assert 0.0 < meta["tv_floor"] < 0.2
    assert st["sde_euler_maruyama"]["tv"] < 2 * meta["tv_floor"] + 0.02 < st["dpm_solver_3"]["tv"]
    img = read_png(tmp_path / "gmm_samplers.png")
    for k in range(len(meta["panels"])):
        top = img[:14, k * 100 : k * 100 + 96]
        assert (top == 255).all(axis=-1).sum() > 20, meta["panels"][k]  # white title pixels


def test_font_draws_the_glyph_bits():
    mod = _example()
    img = np.zeros((14, 12, 3), np.uint8)
    mod.draw_text(img, "1", row=2, col=2)
    white = (img == 255).all(axis=-1)
    # "1" at scale 2: rows 010 110 010 010 111 -> the top row lights pixels x = 4..5 only
    assert white[2:4, 4:6].all() and not white[2:4, 2:4].any() and not white[2:4, 6:8].any()
    assert white[10:12, 2:8].all() and white.sum() == 4 * (1 + 2 + 1 + 1 + 3)  # bottom row 111
    assert mod.tv_distance(np.full((10, 2), 10.0), np.full((4, 4), 1 / 16)) == 1.0
