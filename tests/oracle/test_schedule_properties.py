"""Properties of random valid schedules, respacing and the spacing conventions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as npst

from refdiff import schedules as S

betas_st = st.integers(1, 80).flatmap(
    lambda T: npst.arrays(np.float64, T, elements=st.floats(1e-7, 0.9))
)


@settings(max_examples=80, deadline=None)
@given(betas_st)
def test_identities_of_random_schedules(betas):
    s = S.from_betas(betas)
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    np.testing.assert_allclose(
        s.alphas_cumprod + s.one_minus_alphas_cumprod, 1.0, rtol=0, atol=2.3e-16
    )
    np.testing.assert_allclose(s.sqrt_alphas_cumprod**2, s.alphas_cumprod, rtol=5e-16)
    np.testing.assert_allclose(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, 1.0, rtol=4e-16)
    assert np.all(s.posterior_variance <= s.betas * (1 + 1e-15))  # β̃_t ≤ β_t
    assert np.all(np.diff(s.log_snr) < 0)
    np.testing.assert_allclose(s.lambdas * 2, s.log_snr, rtol=0, atol=0)
    # coef1 + coef2 √ᾱ_t... the posterior mean of x_t = √ᾱ_t x0 (noise-free) is √ᾱ_{t-1} x0
    np.testing.assert_allclose(
        s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.sqrt_alphas_cumprod,
        np.sqrt(s.alphas_cumprod_prev),
        rtol=1e-14,
    )
    np.testing.assert_array_equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])


@settings(max_examples=40, deadline=None)
@given(betas_st)
def test_respacing_with_every_step_kept_reproduces_the_schedule(betas):
    s = S.from_betas(betas)
    r = S.respace(s, np.arange(s.T))
    for name, table in s.tables().items():
        np.testing.assert_allclose(getattr(r, name), table, rtol=4.5e-16, atol=0, err_msg=name)
    np.testing.assert_array_equal(r.timestep_map, np.arange(s.T))


def test_respace_maps_back_and_recomputes_betas():
    s = S.cosine(1000)
    r = S.respace(s, 10, spacing="trailing")
    np.testing.assert_array_equal(r.timestep_map, [99, 199, 299, 399, 499, 599, 699, 799, 899, 999])
    np.testing.assert_array_equal(r.alphas_cumprod, s.alphas_cumprod[r.timestep_map])
    np.testing.assert_allclose(np.cumprod(r.alphas), r.alphas_cumprod, rtol=1e-14)
    rr = S.respace(r, [0, 5, 9])  # respacing composes the maps
    np.testing.assert_array_equal(rr.timestep_map, [99, 599, 999])


def test_spacings_match_the_published_conventions():
    # Lin et al. 2023, Table 2 (T = 1000, 10 steps)
    np.testing.assert_array_equal(S.spaced_timesteps(1000, 10, "leading"), np.arange(0, 1000, 100))
    np.testing.assert_array_equal(
        S.spaced_timesteps(1000, 10, "leading", steps_offset=1), np.arange(1, 1001, 100)
    )
    np.testing.assert_array_equal(
        S.spaced_timesteps(1000, 10, "linspace"), [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    )
    np.testing.assert_array_equal(
        S.spaced_timesteps(1000, 10, "trailing"), np.arange(99, 1000, 100)
    )
    # improved-diffusion: "ddim2" of 1000 calls the model at 0 and 500 (issue #44)
    np.testing.assert_array_equal(S.space_timesteps(1000, "ddim2"), [0, 500])
    np.testing.assert_array_equal(
        S.space_timesteps(300, "10"), np.round(np.arange(10) * 299 / 9).astype(int)
    )
    # sections: 3 sections of 100; 10 steps each, fractional strides 99/9 = 11
    np.testing.assert_array_equal(S.space_timesteps(300, [10, 10, 10])[:10], np.arange(0, 100, 11))
    assert len(S.space_timesteps(4000, "250")) == 250


def test_to_casts_once_from_float64():
    s = S.linear(1000)
    f32 = s.to(np, dtype=np.float32)
    assert f32.alphas_cumprod.dtype == np.float32
    np.testing.assert_array_equal(f32.alphas_cumprod, s.alphas_cumprod.astype(np.float32))
    assert f32.timestep_map.dtype == np.int64


def test_cosine_clip_and_published_values():
    s = S.cosine(1000)
    assert np.sum(s.betas == 0.999) == 1 and s.betas[-1] == 0.999
    assert s.alphas_cumprod[-1] == pytest.approx(2.4288e-09, rel=1e-4)
    np.testing.assert_allclose(s.lambdas[-5:], [-5.078, -5.365, -5.771, -6.464, -9.918], atol=1e-3)
    lin = S.linear(1000)
    assert lin.alphas_cumprod[-1] == pytest.approx(4.035829765e-05, rel=1e-9)
    assert lin.lambdas[-1] == pytest.approx(-5.0588, abs=1e-4)
    assert lin.alphas_cumprod[0] == 0.9999


def test_zero_terminal_snr_keeps_the_first_step():
    s = S.linear(1000)
    z = S.zero_terminal_snr(s)
    assert z.alphas_cumprod[-1] == 0.0 and z.betas[-1] == 1.0 and z.log_snr[-1] == -np.inf
    assert z.alphas_cumprod[0] == pytest.approx(s.alphas_cumprod[0], rel=1e-15)
    # Lin et al. Alg. 1 is affine in √ᾱ: check the shift and scale directly
    a = np.sqrt(s.alphas_cumprod)
    np.testing.assert_allclose(
        np.sqrt(z.alphas_cumprod), (a - a[-1]) * a[0] / (a[0] - a[-1]), rtol=1e-13, atol=1e-18
    )
