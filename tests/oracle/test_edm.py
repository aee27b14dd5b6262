"""refdiff.edm against independent references: 50-digit mpmath formulas (Karras et al. 2022,
Eq. 5 and Table 1), mpmath root finding, the variance identities that define the EDM
preconditioning, the exact Gaussian-data posterior mean, scipy's log-normal, and the discrete
schedule tables of refdiff.schedules (built separately in double-double)."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import scipy.stats

from refdiff import schedules
from refdiff.edm import (
    EDMDenoiser,
    alpha_bar_from_sigma,
    c_in,
    c_noise,
    c_out,
    c_skip,
    denoiser_from_raw,
    edm_loss_weight,
    edm_sigma_from_normal,
    exponential_sigmas,
    karras_sigmas,
    preconditioning,
    scale_model_input,
    sigma_from_alpha_bar,
    sigma_from_log_alpha_bar,
    vp_sigma,
    vp_sigma_inv,
    vp_sigmas,
)

from .ulp import ulp_error

EPS = float(np.finfo(np.float64).eps)
DPS = 50
SIGMAS = np.array([1e-3, 0.002, 0.05, 0.3, 0.5, 1.0, 2.5, 14.6, 80.0, 500.0])


def mpf(v):
    return mp.mpf(float(v))


def worst_ulp(values, exact):
    return max(ulp_error(float(v), e) for v, e in zip(values, exact))


# --------------------------------------------------------------------------------------------
# σ schedules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,smin,smax,rho",
    [(50, 0.002, 80.0, 7.0), (18, 0.01, 50.0, 3.0), (2, 0.1, 10.0, 7.0), (7, 0.002, 80.0, 1.0)],
)
@mp.workdps(DPS)
def test_karras_sigmas_vs_mpmath(n, smin, smax, rho):
    s = karras_sigmas(n, smin, smax, rho)
    assert s.dtype == np.float64 and s.shape == (n + 1,)
    a, b = mpf(smax) ** (1 / mpf(rho)), mpf(smin) ** (1 / mpf(rho))
    exact = [(a + mp.mpf(i) / (n - 1) * (b - a)) ** mpf(rho) for i in range(n)]
    assert worst_ulp(s[:n], exact) <= 1
    assert s[0] == smax and s[n - 1] == smin and s[n] == 0.0
    assert np.all(np.diff(s) < 0)
    np.testing.assert_array_equal(karras_sigmas(n, smin, smax, rho, append_zero=False), s[:n])


def test_karras_sigmas_rho_one_is_uniform_and_n_one_is_sigma_max():
    np.testing.assert_allclose(
        karras_sigmas(5, 1.0, 5.0, 1.0, append_zero=False), [5.0, 4.0, 3.0, 2.0, 1.0], rtol=EPS
    )
    np.testing.assert_array_equal(karras_sigmas(1, 0.002, 80.0), [80.0, 0.0])


@mp.workdps(DPS)
def test_exponential_sigmas_vs_mpmath():
    n, smin, smax = 40, 0.002, 80.0
    s = exponential_sigmas(n, smin, smax)
    lo, hi = mp.log(mpf(smin)), mp.log(mpf(smax))
    exact = [mp.exp(hi + mp.mpf(i) / (n - 1) * (lo - hi)) for i in range(n)]
    assert worst_ulp(s[:n], exact) <= 1
    assert s[0] == smax and s[n - 1] == smin and s[-1] == 0.0
    # log-uniform: constant ratio between neighbours
    np.testing.assert_allclose(
        s[1:n] / s[: n - 1], float(mp.exp((lo - hi) / (n - 1))), rtol=4 * EPS
    )


@mp.workdps(DPS)
def test_vp_sigmas_vs_mpmath_and_table1():
    n = 30
    s = vp_sigmas(n)
    bd, bm, eps_s = mpf(19.9), mpf(0.1), mpf(1e-3)
    ts = [1 + mp.mpf(i) / (n - 1) * (eps_s - 1) for i in range(n)]
    exact = [mp.sqrt(mp.exp(bd * t * t / 2 + bm * t) - 1) for t in ts]
    assert worst_ulp(s[:n], exact) <= 1
    assert s[-1] == 0.0 and np.all(np.diff(s) < 0)
    # the array-API σ(t) of Table 1 agrees (few ulp: it rounds t and the exponent in float64)
    tf = np.array([float(t) for t in ts])
    got = vp_sigma(tf)
    check = [mp.sqrt(mp.expm1(bd * mpf(t) ** 2 / 2 + bm * mpf(t))) for t in tf]
    assert worst_ulp(got, check) <= 4


@mp.workdps(DPS)
def test_vp_sigma_inverse_vs_findroot():
    bd, bm = mpf(19.9), mpf(0.1)
    t = vp_sigma_inv(SIGMAS)
    for s, ti in zip(SIGMAS, t):
        exact = mp.findroot(lambda u: mp.sqrt(mp.expm1(bd * u * u / 2 + bm * u)) - mpf(s), mpf(ti))
        assert ulp_error(float(ti), exact) <= 4
    np.testing.assert_allclose(vp_sigma(vp_sigma_inv(SIGMAS[:8])), SIGMAS[:8], rtol=1e-14)
    assert float(vp_sigma_inv(0.0)) == 0.0


def test_sigma_builders_move_to_another_namespace():
    xps = pytest.importorskip("array_api_strict")
    s = karras_sigmas(10, 0.002, 80.0, xp=xps, dtype=xps.float32)
    assert s.dtype == xps.float32 and s.shape == (11,)
    np.testing.assert_array_equal(np.asarray(s), karras_sigmas(10, 0.002, 80.0).astype(np.float32))
    e = exponential_sigmas(10, 0.002, 80.0, xp=xps)
    assert e.dtype == xps.float64


# --------------------------------------------------------------------------------------------
# Preconditioning
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sd", [0.5, 1.0, 0.2])
@mp.workdps(DPS)
def test_edm_preconditioning_identities(sd):
    """Karras et al. 2022, App. B.6: for y ~ (0, σ_d²), n ~ N(0, σ² I)
    (1) the network input c_in (y + σ n) has unit variance: c_in² (σ² + σ_d²) = 1;
    (2) the effective training target (y - c_skip (y + σ n)) / c_out has unit variance:
        ((1 - c_skip)² σ_d² + c_skip² σ²) / c_out² = 1;
    (3) c_skip minimises that variance (hence |c_out|): d/dc [(1-c)² σ_d² + c² σ²] = 0 at c_skip;
    (4) λ(σ) = 1/c_out² equalises the loss weight of the unit-variance target."""
    cs, co, ci, cn = preconditioning(SIGMAS, "edm", sigma_data=sd)
    for s, a, b, c, d in zip(SIGMAS, cs, co, ci, cn):
        s, a, b, c, d, sdm = mpf(s), mpf(a), mpf(b), mpf(c), mpf(d), mpf(sd)
        assert abs(c * c * (s * s + sdm * sdm) - 1) <= 4 * EPS
        assert abs(((1 - a) ** 2 * sdm**2 + a * a * s * s) / (b * b) - 1) <= 8 * EPS
        assert abs(-2 * (1 - a) * sdm**2 + 2 * a * s * s) <= 4 * EPS * (sdm**2 + s * s)
        assert abs(d - mp.log(s) / 4) <= 2 * EPS * abs(mp.log(s) / 4)
    np.testing.assert_allclose(edm_loss_weight(SIGMAS, sd), 1.0 / co**2, rtol=4 * EPS)


@mp.workdps(DPS)
def test_edm_preconditioning_vs_mpmath_table1():
    sd = mpf(0.5)
    exact = {
        "c_skip": lambda s: sd**2 / (s * s + sd**2),
        "c_out": lambda s: s * sd / mp.sqrt(s * s + sd**2),
        "c_in": lambda s: 1 / mp.sqrt(s * s + sd**2),
        "c_noise": lambda s: mp.log(s) / 4,
    }
    got = {
        "c_skip": c_skip(SIGMAS),
        "c_out": c_out(SIGMAS),
        "c_in": c_in(SIGMAS),
        "c_noise": c_noise(SIGMAS),
    }
    for k, fn in exact.items():
        assert worst_ulp(got[k], [fn(mpf(s)) for s in SIGMAS]) <= 3, k
    assert (
        worst_ulp(
            edm_loss_weight(SIGMAS), [(mpf(s) ** 2 + sd**2) / (mpf(s) * sd) ** 2 for s in SIGMAS]
        )
        <= 4
    )


@mp.workdps(DPS)
def test_vp_and_ve_columns_of_table1():
    cs, co, ci, cn = preconditioning(SIGMAS, "vp")
    np.testing.assert_array_equal(cs, 1.0)
    np.testing.assert_array_equal(co, -SIGMAS)
    bd, bm = mpf(19.9), mpf(0.1)
    for s, c_i, c_n in zip(SIGMAS, ci, cn):
        assert ulp_error(float(c_i), 1 / mp.sqrt(mpf(s) ** 2 + 1)) <= 2
        # σ(t)² = expm1(β_d t²/2 + β_min t): Newton on the (convex) exponent from t = 1
        t = mp.findroot(lambda u: bd * u * u / 2 + bm * u - mp.log1p(mpf(s) ** 2), mp.mpf(1))
        assert ulp_error(float(c_n), 999 * t) <= 4
    cs, co, ci, cn = preconditioning(SIGMAS, "ve")
    np.testing.assert_array_equal(cs, 1.0)
    np.testing.assert_array_equal(co, SIGMAS)
    np.testing.assert_array_equal(ci, 1.0)
    assert worst_ulp(cn, [mp.log(mpf(s) / 2) for s in SIGMAS]) <= 2


# --------------------------------------------------------------------------------------------
# The preconditioned denoiser with an exact raw network
# --------------------------------------------------------------------------------------------


def test_edm_denoiser_with_zero_raw_network_is_the_exact_posterior_mean():
    """For data N(0, σ_d²): E[y | y + σ n = x] = σ_d²/(σ²+σ_d²) x = c_skip x, so F ≡ 0 is ideal."""
    sd = 0.5
    D = denoiser_from_raw(lambda x_in, cn: x_in * 0.0, sigma_data=sd)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(SIGMAS), 4))
    np.testing.assert_allclose(
        D(x, SIGMAS), sd**2 / (SIGMAS[:, None] ** 2 + sd**2) * x, rtol=4 * EPS
    )


def _sigma_from_c_noise(kind, cn):
    """Recover σ from c_noise with independent float64 formulas of Table 1."""
    if kind == "edm":
        return np.exp(4.0 * cn)
    if kind == "ve":
        return 2.0 * np.exp(cn)
    t = cn / 999.0
    return np.sqrt(np.expm1(19.9 * t * t / 2 + 0.1 * t))


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
@mp.workdps(DPS)
def test_denoiser_from_raw_recovers_the_gaussian_posterior_mean(kind):
    """Data N(0, s²) with s ≠ σ_data: the ideal raw network is F = (E[y|x] - c_skip x)/c_out,
    written here from Table 1 by hand; D must then be s²/(σ²+s²) x (to float64 rounding)."""
    s2, sd = 1.3**2, 0.5
    tab = {  # Table 1 columns as (c_skip, c_out, c_in) of σ, written independently
        "edm": lambda g: (
            sd**2 / (g * g + sd**2),
            g * sd / np.sqrt(g * g + sd**2),
            1 / np.sqrt(g * g + sd**2),
        ),
        "vp": lambda g: (np.ones_like(g), -g, 1 / np.sqrt(g * g + 1)),
        "ve": lambda g: (np.ones_like(g), g, np.ones_like(g)),
    }[kind]

    def raw(x_in, cn):
        g = _sigma_from_c_noise(kind, cn)
        cs, co, ci = (v[:, None] for v in tab(g))
        x = x_in / ci
        return (s2 / (g[:, None] ** 2 + s2) * x - cs * x) / co

    D = denoiser_from_raw(raw, sigma_data=sd, kind=kind)
    assert isinstance(D, EDMDenoiser)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((len(SIGMAS), 3))
    got = D(x, SIGMAS)
    for i, g in enumerate(SIGMAS):
        for j in range(3):
            exact = mpf(s2) / (mpf(g) ** 2 + mpf(s2)) * mpf(x[i, j])
            # the round trip through c_noise and back costs a few ulp of σ (×c_out/c_skip scale)
            scale = abs(mpf(x[i, j])) * (1 + mpf(g) ** 2)
            assert abs(mpf(got[i, j]) - exact) <= 1e-12 * scale


def test_edm_sigma_from_normal_is_the_lognormal():
    q = np.array([0.001, 0.1, 0.5, 0.9, 0.999])
    z = scipy.stats.norm.ppf(q)
    got = edm_sigma_from_normal(z, P_mean=-1.2, P_std=1.2)
    np.testing.assert_allclose(
        got, scipy.stats.lognorm.ppf(q, s=1.2, scale=math.exp(-1.2)), rtol=1e-13
    )


# --------------------------------------------------------------------------------------------
# σ ↔ ᾱ conversions
# --------------------------------------------------------------------------------------------


@mp.workdps(DPS)
def test_sigma_alpha_bar_conversions_vs_mpmath():
    ab = np.array([1.0, 0.9999, 0.5, 0.1, 4.0358e-05, 1e-300])
    got = sigma_from_alpha_bar(ab)
    assert worst_ulp(got, [mp.sqrt((1 - mpf(a)) / mpf(a)) for a in ab]) <= 2
    la = np.array([-1e-12, -1e-4, -0.7, -10.0, -600.0])
    got = sigma_from_log_alpha_bar(la)
    assert worst_ulp(got, [mp.sqrt(mp.expm1(-mpf(v))) for v in la]) <= 2
    back = alpha_bar_from_sigma(SIGMAS)
    assert worst_ulp(back, [1 / (1 + mpf(s) ** 2) for s in SIGMAS]) <= 2
    with np.errstate(all="raise"):
        assert float(sigma_from_alpha_bar(0.0)) == math.inf
        assert float(sigma_from_log_alpha_bar(-math.inf)) == math.inf
        assert float(alpha_bar_from_sigma(math.inf)) == 0.0
        assert float(sigma_from_alpha_bar(1.0)) == 0.0


@pytest.mark.parametrize("build", [lambda: schedules.linear(1000), lambda: schedules.cosine(1000)])
def test_sigma_from_log_alpha_bar_matches_the_schedule_tables(build):
    """Cross-check with refdiff.schedules' σ table (computed in double-double from β): the only
    error left is the conditioning of σ in log ᾱ, |log ᾱ|/2 ulp."""
    s = build()
    got = sigma_from_log_alpha_bar(s.log_alphas_cumprod)
    ulps = np.abs(got - s.sigmas) / np.spacing(s.sigmas)
    assert np.all(ulps <= 2 + np.abs(s.log_alphas_cumprod) / 2), ulps.max()


def test_scale_model_input_is_sqrt_alpha_bar_times_x():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((len(SIGMAS), 2, 2))
    got = scale_model_input(x, SIGMAS)
    ab = 1 / (1 + SIGMAS**2)
    np.testing.assert_allclose(got, np.sqrt(ab)[:, None, None] * x, rtol=4 * EPS)
    np.testing.assert_array_equal(scale_model_input(x[:1], np.array([math.inf])), 0.0 * x[:1])


# --------------------------------------------------------------------------------------------
# Array API
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["numpy", "array_api_strict"])
def test_same_results_on_array_api_strict(namespace):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((len(SIGMAS), 3))
    la = -np.linspace(1e-6, 12.0, len(SIGMAS))
    ab = np.exp(la)

    def run(conv):
        D = denoiser_from_raw(lambda y, cn: y * 0.1 + 0.0 * cn[:, None])
        Dvp = denoiser_from_raw(lambda y, cn: y * 0.1 + 0.0 * cn[:, None], kind="vp")
        out = [
            c_skip(conv(SIGMAS)),
            c_out(conv(SIGMAS)),
            c_in(conv(SIGMAS)),
            c_noise(conv(SIGMAS)),
            *preconditioning(conv(SIGMAS), "vp"),
            *preconditioning(conv(SIGMAS), "ve"),
            D(conv(x), conv(SIGMAS)),
            Dvp(conv(x), conv(SIGMAS)),
            edm_loss_weight(conv(SIGMAS)),
            edm_sigma_from_normal(conv(la)),
            sigma_from_alpha_bar(conv(ab)),
            sigma_from_log_alpha_bar(conv(la)),
            alpha_bar_from_sigma(conv(SIGMAS)),
            scale_model_input(conv(x), conv(SIGMAS)),
            vp_sigma(conv(np.linspace(0, 1, 5))),
            vp_sigma_inv(conv(SIGMAS)),
        ]
        return [np.asarray(o) for o in out]

    ref = run(lambda a: a)
    if namespace == "numpy":
        got = ref
    else:
        xps = pytest.importorskip("array_api_strict")
        got = run(xps.asarray)
    for i, (g, r) in enumerate(zip(got, ref)):
        np.testing.assert_allclose(g, r, rtol=2 * EPS, atol=0, err_msg=str(i))
