"""An independent 50-digit mpmath implementation of the schedule tables (shares no code with refdiff)."""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 50


def betas_linear(T, b0=1e-4, b1=0.02):
    b0, b1 = mp.mpf(b0), mp.mpf(b1)
    if T == 1:
        return [b0]
    return [b0 + i * (b1 - b0) / (T - 1) for i in range(T)]


def betas_cosine(T, s=0.008, max_beta=0.999):
    s = mp.mpf(s)

    def f(t):
        return mp.cos((t + s) / (1 + s) * mp.pi / 2) ** 2

    return [min(1 - f(mp.mpf(i + 1) / T) / f(mp.mpf(i) / T), mp.mpf(max_beta)) for i in range(T)]


def betas_sigmoid(T, b0=1e-4, b1=0.02, start=-6.0, end=6.0):
    b0, b1, a, b = map(mp.mpf, (b0, b1, start, end))
    xs = [a] if T == 1 else [a + i * (b - a) / (T - 1) for i in range(T)]
    return [1 / (1 + mp.exp(-x)) * (b1 - b0) + b0 for x in xs]


def alphas_cumprod(betas):
    out, p = [], mp.mpf(1)
    for b in betas:
        p *= 1 - b
        out.append(p)
    return out


def zero_snr(ab):
    s = [mp.sqrt(a) for a in ab]
    s0, sT = s[0], s[-1]
    return [((x - sT) * s0 / (s0 - sT)) ** 2 for x in s]


def tables(ab, betas=None):
    """Every table of refdiff.schedules.Schedule from exact ᾱ (and β, derived from ᾱ if None)."""
    T = len(ab)
    prev = [mp.mpf(1)] + ab[:-1]
    if betas is None:
        betas = [1 - a / p for a, p in zip(ab, prev)]
    nxt = ab[1:] + [mp.mpf(0)]
    inf = mp.inf

    def log(x):
        return -inf if x == 0 else mp.log(x)

    pv = [b * (1 - p) / (1 - a) for b, p, a in zip(betas, prev, ab)]
    log_pv = [log(v) for v in pv]
    clipped = [log_pv[1] if T > 1 else mp.log(betas[0])] + log_pv[1:]
    clamped = [mp.log(max(v, mp.mpf(1e-20))) for v in pv]
    log_snr = [log(a) - mp.log(1 - a) for a in ab]
    return {
        "betas": betas,
        "alphas": [1 - b for b in betas],
        "alphas_cumprod": ab,
        "alphas_cumprod_prev": prev,
        "alphas_cumprod_next": nxt,
        "one_minus_alphas_cumprod": [1 - a for a in ab],
        "sqrt_alphas_cumprod": [mp.sqrt(a) for a in ab],
        "sqrt_one_minus_alphas_cumprod": [mp.sqrt(1 - a) for a in ab],
        "log_alphas_cumprod": [log(a) for a in ab],
        "log_one_minus_alphas_cumprod": [mp.log(1 - a) for a in ab],
        "sqrt_recip_alphas_cumprod": [inf if a == 0 else 1 / mp.sqrt(a) for a in ab],
        "sqrt_recipm1_alphas_cumprod": [inf if a == 0 else mp.sqrt(1 / a - 1) for a in ab],
        "posterior_variance": pv,
        "posterior_log_variance_clipped": clipped,
        "posterior_log_variance_clamped": clamped,
        "posterior_mean_coef1": [b * mp.sqrt(p) / (1 - a) for b, p, a in zip(betas, prev, ab)],
        "posterior_mean_coef2": [
            (1 - p) * mp.sqrt(1 - b) / (1 - a) for b, p, a in zip(betas, prev, ab)
        ],
        "log_snr": log_snr,
        "lambdas": [x / 2 for x in log_snr],
    }
