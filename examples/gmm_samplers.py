"""Sample a 2-D Gaussian mixture with six samplers driven by the exact (analytic) model; save a PNG.

    python examples/gmm_samplers.py --out gmm_out            # writes gmm_out/gmm_samplers.png
    python examples/gmm_samplers.py --out /tmp/g --n 1000 --steps 12

The data law is a five-component mixture in 2-D; ``refdiff.analytic.GaussianMixtureData`` gives
its exact denoiser / ε / score at every noise level, so any difference between the panels is the
sampler's own discretization error, not a network's. Panels, left to right:

  exact density | karras_heun | karras_euler_ancestral | dpmpp_2m | dpm_solver_3 |
  sde_euler_maruyama | ode_rk45

Each panel is a 2-D histogram of the samples on [-3, 3]² (brighter = denser), titled with the
sampler, its number of model evaluations (NFE) and its total-variation distance to the exact
mixture on a 24 × 24 grid of that square (TV). The first panel's TV is that of n exact draws
from the mixture: the level sampling noise alone reaches, so a sampler near it (one draw may
land a little below) is as good as n samples can show. The script also
prints, per sampler, the TV and the error of the sample mean and covariance against the
mixture's exact moments, and writes them with the panel order to ``gmm_samplers.json``. No
plotting library is needed: the PNG and its 3 × 5 pixel title font are refdiff's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from refdiff import analytic as A
from refdiff.edm import karras_sigmas
from refdiff.samplers import get_sampler
from refdiff.samplers import sample as _sample
from refdiff.samplers.dpm_solver import NoiseScheduleVP
from refdiff.sde import VPSDE
from refdiff.train.images import write_png

EXTENT = 3.0


def mixture() -> A.GaussianMixtureData:
    """Four components on a ring plus a wider one in the centre."""
    ring = 1.8 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    means = np.concatenate([ring, [[0.0, 0.0]]])
    covs = [0.04 * np.eye(2)] * 4 + [np.array([[0.15, 0.08], [0.08, 0.1]])]
    return A.GaussianMixtureData([0.2, 0.2, 0.2, 0.2, 0.2], means, covs)


class Counted:
    """A model that counts its evaluations (the NFE of the sampler that calls it)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def run_samplers(
    data, n: int, steps: int, seed: int, nfe: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Run each sampler from its own prior with seeded, explicit noise (NFE per sampler into ``nfe``)."""
    rng = np.random.default_rng(seed)
    out = {}
    nfe = {} if nfe is None else nfe
    sigma_max = 40.0
    sig = karras_sigmas(steps, 0.002, sigma_max)  # steps levels + final 0
    counted = []

    def count(fn):
        counted.append(Counted(fn))
        return counted[-1]

    def sample(name, model, *args, **kwargs):
        m = count(model)
        x = _sample(name, m, *args, **kwargs)
        nfe[name] = m.calls
        return x

    denoiser = A.karras_denoiser(data)
    out["karras_heun"] = sample(
        "karras_heun", denoiser, sigma_max * rng.standard_normal((n, 2)), sigmas=sig
    )
    out["karras_euler_ancestral"] = sample(
        "karras_euler_ancestral",
        denoiser,
        sigma_max * rng.standard_normal((n, 2)),
        sigmas=sig,
        noise=rng.standard_normal((steps, n, 2)),
    )
    ns = NoiseScheduleVP.linear()
    eps_model = A.vp_model(data, ns, "eps")
    for name in ("dpmpp_2m", "dpm_solver_3"):
        out[name] = sample(
            name,
            eps_model,
            rng.standard_normal((n, 2)),
            noise_schedule=ns,
            steps=steps,
            skip_type="logSNR",
        )  # DPM-Solver's advice for small data
    sde = VPSDE()
    score = A.vp_model(data, sde, "score")
    em_steps = 10 * steps
    out["sde_euler_maruyama"] = sample(
        "sde_euler_maruyama",
        score,
        rng.standard_normal((n, 2)),
        sde=sde,
        steps=em_steps,
        noise=rng.standard_normal((em_steps, n, 2)),
    )
    out["ode_rk45"] = sample(
        "ode_rk45", score, rng.standard_normal((n, 2)), sde=sde, rtol=1e-6, atol=1e-6
    )
    return out


TV_BINS = 24


def exact_draws(data, n: int, seed: int) -> np.ndarray:
    """n draws from the mixture itself (the reference for the TV floor)."""
    rng = np.random.default_rng([seed, 1])
    return np.asarray(data.sample(rng.standard_normal((n, 2)), rng.random(n)))


def bin_probabilities(data, bins: int = TV_BINS) -> np.ndarray:
    """The mixture's probability of each cell of a bins × bins grid on [-EXTENT, EXTENT]² (midpoint rule, 8² points a cell)."""
    k = 8 * bins
    c = (np.arange(k) + 0.5) / k * 2 * EXTENT - EXTENT
    gx, gy = np.meshgrid(c, c[::-1])
    dens = np.exp(data.logpdf(np.stack([gx.ravel(), gy.ravel()], axis=1), 1.0, 0.0)).reshape(k, k)
    cell = (2 * EXTENT / k) ** 2
    return dens.reshape(bins, 8, bins, 8).sum(axis=(1, 3)) * cell


def tv_distance(points: np.ndarray, probs: np.ndarray) -> float:
    """Total variation between the samples' cell frequencies and the mixture's cell probabilities (mass outside the square as one more cell)."""
    freq = histogram(points, probs.shape[0]) / len(points)
    outside = abs((1.0 - freq.sum()) - max(1.0 - probs.sum(), 0.0))
    return 0.5 * float(np.abs(freq - probs).sum() + outside)


# A 3 × 5 pixel font: each glyph is five rows of three bits.
_FONT = {
    "A": "010 101 111 101 101",
    "B": "110 101 110 101 110",
    "C": "011 100 100 100 011",
    "D": "110 101 101 101 110",
    "E": "111 100 110 100 111",
    "F": "111 100 110 100 100",
    "G": "011 100 101 101 011",
    "H": "101 101 111 101 101",
    "I": "111 010 010 010 111",
    "J": "001 001 001 101 010",
    "K": "101 101 110 101 101",
    "L": "100 100 100 100 111",
    "M": "101 111 111 101 101",
    "N": "110 101 101 101 101",
    "O": "010 101 101 101 010",
    "P": "110 101 110 100 100",
    "Q": "010 101 101 111 011",
    "R": "110 101 110 101 101",
    "S": "011 100 010 001 110",
    "T": "111 010 010 010 010",
    "U": "101 101 101 101 111",
    "V": "101 101 101 101 010",
    "W": "101 101 111 111 101",
    "X": "101 101 010 101 101",
    "Y": "101 101 010 010 010",
    "Z": "111 001 010 100 111",
    "0": "111 101 101 101 111",
    "1": "010 110 010 010 111",
    "2": "110 001 010 100 111",
    "3": "110 001 010 001 110",
    "4": "101 101 111 001 001",
    "5": "111 100 110 001 110",
    "6": "011 100 111 101 111",
    "7": "111 001 010 010 010",
    "8": "111 101 111 101 111",
    "9": "111 101 111 001 110",
    "_": "000 000 000 000 111",
    ".": "000 000 000 000 010",
    "=": "000 111 000 111 000",
    "-": "000 000 111 000 000",
    " ": "000 000 000 000 000",
    ":": "000 010 000 010 000",
}


def draw_text(img: np.ndarray, text: str, row: int, col: int = 2) -> None:
    """Write ``text`` (upper-cased) into ``img`` in white with a dark outline, as large as fits."""
    text = text.upper()
    width = img.shape[1] - col
    scale = 2 if 8 * len(text) <= width else 1
    text = text[: max(width // (4 * scale), 1)]
    for i, ch in enumerate(text):
        rows = _FONT.get(ch, _FONT[" "]).split()
        for r, bits in enumerate(rows):
            for c, bit in enumerate(bits):
                if bit == "1":
                    y, x = row + r * scale, col + (4 * i + c) * scale
                    img[max(y - 1, 0) : y + scale + 1, max(x - 1, 0) : x + scale + 1] = np.minimum(
                        img[max(y - 1, 0) : y + scale + 1, max(x - 1, 0) : x + scale + 1], 40
                    )
    for i, ch in enumerate(text):
        rows = _FONT.get(ch, _FONT[" "]).split()
        for r, bits in enumerate(rows):
            for c, bit in enumerate(bits):
                if bit == "1":
                    y, x = row + r * scale, col + (4 * i + c) * scale
                    img[y : y + scale, x : x + scale] = 255


def titled(panel: np.ndarray, lines: list[str]) -> np.ndarray:
    """The panel with ``lines`` written over its top-left corner."""
    out = panel.copy()
    y = 2
    for line in lines:
        scale = 2 if 8 * len(line) <= out.shape[1] - 2 else 1
        if y + 5 * scale > out.shape[0]:
            break
        draw_text(out, line, y)
        y += 6 * scale + 1
    return out


def histogram(points: np.ndarray, size: int) -> np.ndarray:
    h, _, _ = np.histogram2d(
        points[:, 1], points[:, 0], bins=size, range=[[-EXTENT, EXTENT], [-EXTENT, EXTENT]]
    )
    return h[::-1]  # y up


def density_panel(data, size: int) -> np.ndarray:
    c = (np.arange(size) + 0.5) / size * 2 * EXTENT - EXTENT
    gx, gy = np.meshgrid(c, c[::-1])
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return np.exp(data.logpdf(grid, 1.0, 1e-3)).reshape(size, size)


def colorize(a: np.ndarray) -> np.ndarray:
    """Map a non-negative image to RGB (black -> blue -> orange -> white), scaled by its 99.5th percentile."""
    top = np.quantile(a[a > 0], 0.995) if np.any(a > 0) else 1.0
    v = np.clip(a / top, 0.0, 1.0) ** 0.5
    anchors = np.array(
        [[0, 0, 0], [30, 60, 160], [240, 140, 30], [255, 255, 255]], dtype=np.float64
    )
    pos = v * (len(anchors) - 1)
    i = np.minimum(pos.astype(int), len(anchors) - 2)
    f = (pos - i)[..., None]
    return np.rint(anchors[i] * (1 - f) + anchors[i + 1] * f).astype(np.uint8)


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    h = panels[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for p in panels:
        parts += [p, sep]
    return np.concatenate(parts[:-1], axis=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gmm_out", help="output folder")
    p.add_argument("--n", type=int, default=20000, help="samples per sampler")
    p.add_argument("--steps", type=int, default=30, help="steps (NFE for DPM-Solver; EM uses 10x)")
    p.add_argument("--size", type=int, default=160, help="panel size in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    data = mixture()
    nfe: dict[str, int] = {}
    samples = run_samplers(data, args.n, args.steps, args.seed, nfe)
    m_true, c_true = data.marginal(1.0, 0.0)
    probs = bin_probabilities(data)
    floor = tv_distance(exact_draws(data, args.n, args.seed), probs)
    stats = {}
    print(
        f"{'sampler':<24} {'family':<7} {'NFE':>5} {'TV':>7} {'|mean err|':>10} {'|cov err|':>10}"
    )
    print(f"{'(exact draws)':<24} {'':<7} {'':>5} {floor:7.4f}")
    for name, x in samples.items():
        me = float(np.abs(x.mean(axis=0) - m_true).max())
        ce = float(np.abs(np.cov(x.T) - c_true).max())
        tv = tv_distance(x, probs)
        stats[name] = {
            "family": get_sampler(name).family,
            "nfe": nfe[name],
            "tv": tv,
            "mean_error": me,
            "cov_error": ce,
        }
        print(
            f"{name:<24} {stats[name]['family']:<7} {nfe[name]:5d} {tv:7.4f} {me:10.4f} {ce:10.4f}"
        )
    panels = [
        titled(colorize(density_panel(data, args.size)), ["exact density", f"tv floor {floor:.3f}"])
    ]
    panels += [
        titled(
            colorize(histogram(x, args.size)), [name, f"nfe {nfe[name]} tv {stats[name]['tv']:.3f}"]
        )
        for name, x in samples.items()
    ]
    out = Path(args.out)
    png = write_png(out / "gmm_samplers.png", side_by_side(panels))
    meta = {
        "panels": ["exact density"] + list(samples),
        "n": args.n,
        "steps": args.steps,
        "seed": args.seed,
        "tv_floor": floor,
        "tv_bins": TV_BINS,
        "stats": stats,
    }
    (out / "gmm_samplers.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {png} (panels: {', '.join(meta['panels'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
