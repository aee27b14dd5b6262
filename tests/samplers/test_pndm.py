"""PNDM / PLMS (refdiff.samplers.pndm): the transfer part against 50-digit mpmath and DDIM, the
Adams–Bashforth weights re-derived, exactness on point-mass data, evaluation counts, prediction
types, unequal index gaps, and bad input.

Convergence order (2, on equal index gaps): tests/samplers/test_convergence_order.py.
Live diffusers (PNDMScheduler with and without PRK): tests/peers/test_new_samplers.py.
"""

from __future__ import annotations

from fractions import Fraction

import mpmath as mp
import numpy as np
import pytest

from refdiff import analytic as A
from refdiff import schedules
from refdiff._errors import RefdiffValueError, UnknownNameError
from refdiff.samplers import pndm as P

mp.mp.dps = 50
BASE = schedules.linear(1000)
MU = np.array([0.5, -0.2])
DATA = A.GaussianData(MU, [[1.0, 0.3], [0.3, 0.5]])
POINT = A.GaussianData(MU, np.zeros((2, 2)))


@pytest.mark.parametrize("i, j", [(1, 0), (500, 499), (999, 998), (999, 0), (600, 100)])
def test_transfer_is_ddim_against_mpmath(i, j):
    """c_x = √(ᾱ'/ᾱ), c_ε = √(ᾱ'/ᾱ)·√(1−ᾱ) − √(1−ᾱ') (DDIM, η = 0, with x̂0 = (x − √(1−ᾱ)ε)/√ᾱ),
    evaluated at 50 digits: the PNDM form is cancellation-free, so it holds to a few ulp even
    between adjacent levels (ᾱ' ≈ ᾱ)."""
    ab = mp.mpf(float(BASE.alphas_cumprod[i]))
    abp = mp.mpf(float(BASE.alphas_cumprod[j]))
    c_x, c_e = P.transfer_coefficients(
        float(ab),
        float(abp),
        one_minus_ab_t=float(BASE.one_minus_alphas_cumprod[i]),
        one_minus_ab_prev=float(BASE.one_minus_alphas_cumprod[j]),
        log_ab_t=float(BASE.log_alphas_cumprod[i]),
        log_ab_prev=float(BASE.log_alphas_cumprod[j]),
    )
    assert c_x == pytest.approx(float(mp.sqrt(abp / ab)), rel=1e-15)
    ref = mp.sqrt(abp / ab) * mp.sqrt(1 - ab) - mp.sqrt(1 - abp)
    assert c_e == pytest.approx(float(ref), rel=1e-13)


def test_plms_weights_are_adams_bashforth():
    """∫_0^1 L_j(s) ds for the Lagrange basis on the nodes 0, −1, …, −(k−1), in exact fractions."""
    for k, w in P.PLMS_WEIGHTS.items():
        nodes = [-i for i in range(k)]
        for j in range(k):
            coef = [Fraction(1)]  # polynomial, increasing powers
            denom = Fraction(1)
            for i in range(k):
                if i != j:
                    coef = [Fraction(0)] + coef
                    for q in range(len(coef) - 1):
                        coef[q] -= nodes[i] * coef[q + 1]
                    denom *= nodes[j] - nodes[i]
            integral = sum(c / (q + 1) for q, c in enumerate(coef)) / denom
            assert w[j] == pytest.approx(float(integral), rel=1e-15)


@pytest.mark.parametrize("name", ["pndm", "plms"])
@pytest.mark.parametrize("steps, spacing", [(10, "leading"), (7, "trailing"), (25, "linspace")])
def test_point_mass_is_exact(name, steps, spacing):
    """Point-mass data: ε along the DDIM trajectory x_t = √ᾱ_t μ + √(1−ᾱ_t) z is constant (z), so
    every transfer and every ε combination lands on it exactly."""
    z = np.random.default_rng(0).standard_normal((4, 2))
    fn = getattr(P, f"sample_{name}")
    idx = schedules.spaced_timesteps(1000, steps, spacing)
    top = int(idx.max())
    ab = np.asarray(BASE.alphas_cumprod)
    x_T = np.sqrt(ab[top]) * MU + np.sqrt(1 - ab[top]) * z
    out = fn(
        A.discrete_model(POINT, BASE, "eps"),
        x_T,
        schedule=BASE,
        steps=steps,
        spacing=spacing,
        final_alpha_bar="alpha_bar_0",
    )
    assert np.allclose(out, np.sqrt(ab[0]) * MU + np.sqrt(1 - ab[0]) * z, rtol=1e-12, atol=1e-13)


def test_model_evaluations():
    """PNDM: 4 evaluations in each of the 3 PRK steps, 1 per PLMS step (n + 9); PLMS: n + 1."""
    for skip, extra in ((False, 9), (True, 1)):
        calls = []
        model = A.discrete_model(DATA, BASE, "eps")
        P.sample_pndm(
            lambda x, t: calls.append(int(t[0])) or model(x, t),
            np.zeros((1, 2)),
            schedule=BASE,
            steps=10,
            spacing="leading",
            skip_prk_steps=skip,
        )
        assert len(calls) == 10 + extra
        if not skip:
            assert calls[:4] == [900, 850, 850, 800]  # PRK: t, the midpoint twice, t − δ
    calls = []
    P.sample_pndm(lambda x, t: calls.append(1) or x, np.zeros((1, 2)), schedule=schedules.linear(3))
    assert len(calls) == 2 * 4 + 1  # n = 3: two PRK steps, one PLMS


@pytest.mark.parametrize("mean_type", ["x0", "v", "score"])
def test_prediction_types_agree(mean_type):
    x = np.random.default_rng(1).standard_normal((3, 2))
    kw = dict(schedule=BASE, steps=20, final_alpha_bar="alpha_bar_0")
    ref = P.sample_pndm(A.discrete_model(DATA, BASE, "eps"), x, **kw)
    out = P.sample_pndm(A.discrete_model(DATA, BASE, mean_type), x, mean_type=mean_type, **kw)
    assert np.allclose(out, ref, rtol=1e-11, atol=1e-12)


def test_unequal_index_gaps_stall_the_pseudo_multistep():
    """The Adams–Bashforth weights assume equal index gaps; the trailing grid with steps ∤ T has
    gaps of 5 and 6 and a short last gap, and the error stops falling (docs/SAMPLERS.md)."""
    ab = np.asarray(BASE.alphas_cumprod)
    w, U = np.linalg.eigh(np.asarray(DATA.cov))

    def err(n):
        run = lambda xT, nz: P.sample_plms(
            A.discrete_model(DATA, BASE, "eps"),
            xT,
            schedule=BASE,
            steps=n,
            final_alpha_bar="alpha_bar_0",
        )
        law = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=0)
        c0, c1 = ab[999] * w + 1 - ab[999], ab[0] * w + 1 - ab[0]
        M = U @ np.diag(np.sqrt(c1 / c0)) @ U.T
        return np.linalg.norm(law.M - M) + np.linalg.norm(
            law.c - (np.sqrt(ab[0]) * MU - M @ (np.sqrt(ab[999]) * MU))
        )

    assert err(192) > err(96)


def test_callback():
    seen = []
    x = np.random.default_rng(2).standard_normal((2, 2))
    P.sample_pndm(
        A.discrete_model(DATA, BASE, "eps"),
        x,
        schedule=BASE,
        steps=6,
        spacing="leading",
        callback=seen.append,
    )
    assert [s.t for s in seen] == [830, 664, 498, 332, 166, 0] and seen[0].x is x
    a = float(BASE.alphas_cumprod[830])
    assert np.allclose(seen[0].denoised, DATA.x0(x, np.sqrt(a), np.sqrt(1 - a)), rtol=1e-12)


def test_bad_input_messages():
    x = np.zeros((2, 2))
    m = A.discrete_model(DATA, BASE, "eps")
    with pytest.raises(
        RefdiffValueError, match=r"steps=1001 is invalid: expected at most T=1000 steps"
    ):
        P.sample_pndm(m, x, schedule=BASE, steps=1001)
    with pytest.raises(
        RefdiffValueError, match=r"timesteps=.* is invalid: give either steps= or timesteps="
    ):
        P.sample_pndm(m, x, schedule=BASE, steps=10, timesteps=[0, 10])
    with pytest.raises(
        RefdiffValueError,
        match=r"timesteps=.* is invalid: expected distinct indices in \[0, 1000\)",
    ):
        P.sample_pndm(m, x, schedule=BASE, timesteps=[0, 1000])
    with pytest.raises(
        RefdiffValueError, match=r"skip_prk_steps='no' is invalid: expected True or False"
    ):
        P.sample_pndm(m, x, schedule=BASE, steps=5, skip_prk_steps="no")
    with pytest.raises(
        RefdiffValueError, match=r"skip_prk_steps=False is invalid: the sampler 'plms' fixes"
    ):
        P.sample_plms(m, x, schedule=BASE, steps=5, skip_prk_steps=False)
    with pytest.raises(UnknownNameError, match=r"spacing='ddim' is not a known timestep spacing"):
        P.sample_pndm(m, x, schedule=BASE, steps=5, spacing="ddim")
    with pytest.raises(
        UnknownNameError, match=r"final_alpha_bar='zero' is not a known final ᾱ_prev convention"
    ):
        P.sample_pndm(m, x, schedule=BASE, steps=5, final_alpha_bar="zero")
    with pytest.raises(UnknownNameError, match=r"mean_type='mean' is not a known prediction type"):
        P.sample_pndm(m, x, schedule=BASE, steps=5, mean_type="mean")
    with pytest.raises(
        RefdiffValueError, match=r"schedule=.* is invalid: expected a refdiff.schedules.Schedule"
    ):
        P.sample_pndm(m, x, schedule="linear")
    zs = schedules.zero_terminal_snr(schedules.linear(20))
    with pytest.raises(
        RefdiffValueError,
        match=r"ᾱ = 0 at the first sampling level \(timestep 19, zero "
        r"terminal SNR\): the PNDM transfer divides by ᾱ_t",
    ):
        P.sample_pndm(A.discrete_model(DATA, zs, "v"), x, schedule=zs, mean_type="v")
    out = P.sample_pndm(
        A.discrete_model(DATA, zs, "v"), x, schedule=zs, mean_type="v", timesteps=list(range(19))
    )
    assert np.all(np.isfinite(out))
