"""Bad input to refdiff.sde and refdiff.edm: one test per class, with the message pinned."""

from __future__ import annotations

import re

import numpy as np
import pytest

from refdiff._errors import RefdiffShapeError, RefdiffValueError, UnknownNameError
from refdiff.edm import (
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
    vp_sigmas,
)
from refdiff.sde import ReverseSDE, SubVPSDE, VESDE, VPSDE

X = np.ones((2, 3))


def raises(exc, message):
    """pytest.raises matching the literal message text."""
    return pytest.raises(exc, match=re.escape(message))


# -- negative (or zero where a log needs σ > 0) noise levels ------------------------------------


@pytest.mark.parametrize("fn", [c_skip, c_out, c_in, alpha_bar_from_sigma])
def test_negative_sigma(fn):
    with raises(RefdiffValueError, "sigma=-1.0 is invalid: expected a noise level >= 0"):
        fn(-1.0)


def test_negative_sigma_in_an_array_names_the_range():
    with raises(
        RefdiffValueError,
        "sigma=array of shape (2,) [0.5, -2.0] is invalid: expected "
        "noise levels >= 0 and finite; got values from -2.0 to 0.5",
    ):
        c_in(np.array([0.5, -2.0]))


@pytest.mark.parametrize(
    "fn,why",
    [
        (c_noise, "c_noise = ¼ ln σ is -inf at σ = 0"),
        (edm_loss_weight, "λ(σ) = 1/c_out(σ)² is +inf at σ = 0"),
        (lambda s: preconditioning(s, "ve"), "the VE c_noise = ln(σ/2) is -inf at σ = 0"),
    ],
)
def test_zero_sigma_where_a_log_or_a_division_needs_positive(fn, why):
    with raises(
        RefdiffValueError, f"sigma=0.0 is invalid: expected a noise level > 0 and finite ({why})"
    ):
        fn(0.0)


def test_denoiser_at_sigma_zero():
    D = denoiser_from_raw(lambda x, cn: x)
    with raises(RefdiffValueError, "D is never evaluated at σ = 0"):
        D(X, np.array([0.0, 1.0]))


def test_nan_sigma():
    with raises(RefdiffValueError, "sigma=nan is invalid"):
        c_skip(float("nan"))


def test_bad_sigma_data():
    with raises(RefdiffValueError, "sigma_data=0.0 is invalid: expected a value in (0.0, inf]"):
        c_out(1.0, sigma_data=0.0)


# -- sigma_min >= sigma_max ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: VESDE(sigma_min=50.0, sigma_max=50.0),
        lambda: karras_sigmas(10, 50.0, 50.0),
        lambda: exponential_sigmas(10, 50.0, 50.0),
    ],
)
def test_sigma_min_not_below_sigma_max(build):
    with raises(
        RefdiffValueError, "sigma_max=50.0 is invalid: expected sigma_max > sigma_min = 50.0"
    ):
        build()


def test_sigma_min_not_positive():
    with raises(RefdiffValueError, "sigma_min=0.0 is invalid: expected a value in (0.0, inf]"):
        VESDE(sigma_min=0.0)


# -- N < 1 and bad β ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE, VESDE])
def test_N_below_one(cls):
    with raises(RefdiffValueError, "N=0 is invalid: expected an integer >= 1"):
        cls(N=0)


def test_N_not_an_integer():
    with raises(RefdiffValueError, "N=10.0 is invalid: expected an integer >= 1"):
        VPSDE(N=10.0)


def test_N_too_small_for_the_ddpm_chain():
    with raises(RefdiffValueError, "N=10 is invalid: the DDPM discretization needs β_i = β/N < 1"):
        VPSDE(N=10).discretize(X, np.array([0.5, 0.5]))


def test_negative_beta():
    with raises(RefdiffValueError, "beta_min=-0.1 is invalid: expected a value in [0.0, inf]"):
        VPSDE(beta_min=-0.1)


def test_both_betas_zero():
    with raises(RefdiffValueError, "beta_min and beta_max cannot both be 0"):
        SubVPSDE(beta_min=0.0, beta_max=0.0)


# -- t outside [0, T], bad t dtype or shape -----------------------------------------------------


def test_t_above_T():
    with raises(
        RefdiffValueError,
        "t=array of shape (2,) [0.5, 1.5] is invalid: expected values in "
        "[0.0, 1.0]; got values from 0.5 to 1.5",
    ):
        VPSDE().marginal_prob(np.ones((2, 1)), np.array([0.5, 1.5]))


def test_t_below_zero():
    with raises(RefdiffValueError, "t=-0.1 is invalid: expected a value in [0.0, 1.0]"):
        SubVPSDE().marginal_std(-0.1)


def test_t_nan():
    with raises(
        RefdiffValueError, "t=array of shape (1,) [nan] is invalid: expected values in [0.0, 1.0]"
    ):
        VESDE().sde(np.ones((1, 1)), np.array([np.nan]))


def test_t_integer_array():
    with raises(RefdiffValueError, "expected a real floating-point array, got dtype int64"):
        VPSDE().sde(np.ones((1, 1)), np.array([1]))


def test_t_shape_does_not_fit_x():
    with raises(
        RefdiffShapeError,
        "t has shape (3,), which does not match the leading axes of x with shape (2, 3)",
    ):
        VPSDE().sde(X, np.array([0.1, 0.2, 0.3]))


def test_sigma_shape_does_not_fit_x():
    with raises(RefdiffShapeError, "sigma has shape (3,), which does not match the leading axes"):
        scale_model_input(X, np.array([1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    "sde,lam,message",
    [
        (VPSDE(), -6.0, "lam=-6.0 is invalid: expected a value in [λ(T) = -5.0249784"),
        (VESDE(), 10.0, "lam=10.0 is invalid: expected a value in [λ(T) = -3.91202300542814"),
    ],
)
def test_lambda_outside_the_range_of_lambda_t(sde, lam, message):
    with raises(RefdiffValueError, message):
        sde.t_from_lambda(lam)


# -- rho <= 0, n < 1, other schedule arguments --------------------------------------------------


@pytest.mark.parametrize("rho", [0.0, -7.0])
def test_rho_not_positive(rho):
    with raises(RefdiffValueError, f"rho={rho!r} is invalid: expected a value in (0.0, inf]"):
        karras_sigmas(10, 0.002, 80.0, rho=rho)


@pytest.mark.parametrize(
    "build",
    [
        lambda: karras_sigmas(0, 0.002, 80.0),
        lambda: exponential_sigmas(0, 0.002, 80.0),
        lambda: vp_sigmas(0),
    ],
)
def test_n_below_one(build):
    with raises(RefdiffValueError, "n=0 is invalid: expected an integer >= 1"):
        build()


def test_eps_s_outside_unit_interval():
    with raises(RefdiffValueError, "eps_s=0.0 is invalid: expected a value in (0.0, 1.0]"):
        vp_sigmas(5, eps_s=0.0)


def test_device_without_namespace():
    with raises(
        RefdiffValueError, "device='cpu' is invalid: a device needs a namespace: pass xp= as well"
    ):
        karras_sigmas(3, 0.1, 1.0, device="cpu")


def test_negative_lognormal_std():
    with raises(RefdiffValueError, "P_std=-1.0 is invalid: expected a value in [0.0, inf]"):
        edm_sigma_from_normal(np.zeros(2), P_std=-1.0)


# -- ᾱ outside [0, 1] ---------------------------------------------------------------------------


def test_alpha_bar_above_one():
    with raises(RefdiffValueError, "alpha_bar=1.5 is invalid: expected values in [0, 1]"):
        sigma_from_alpha_bar(1.5)


def test_positive_log_alpha_bar():
    with raises(
        RefdiffValueError,
        "log_alpha_bar=array of shape (1,) [0.1] is invalid: expected values <= 0",
    ):
        sigma_from_log_alpha_bar(np.array([0.1]))


# -- unknown convention names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,message",
    [
        (
            lambda: VESDE(marginal="exactly"),
            "marginal='exactly' is not a known VE marginal convention; allowed: 'score_sde', 'exact'",
        ),
        (
            lambda: VPSDE(index_rounding="ceil"),
            "index_rounding='ceil' is not a known index rounding; allowed: 'round', 'floor'",
        ),
        (
            lambda: preconditioning(1.0, "iddpm"),
            "kind='iddpm' is not a known preconditioning; allowed: 'edm', 'vp', 've'",
        ),
        (
            lambda: denoiser_from_raw(lambda x, c: x, kind="v"),
            "kind='v' is not a known preconditioning",
        ),
    ],
)
def test_unknown_names(build, message):
    with raises(UnknownNameError, message):
        build()


# -- shapes of noise, score and raw network outputs; discretize's dt ----------------------------


def test_noise_shape_mismatch():
    with raises(RefdiffShapeError, "noise has shape (2, 2) but shape=(2, 3) was requested"):
        VPSDE().prior_sampling((2, 3), noise=np.ones((2, 2)))


def test_score_shape_mismatch():
    rev = VPSDE().reverse(lambda x, t: x[:, :1])
    with raises(RefdiffShapeError, "score_fn returned shape (2, 1) for x of shape (2, 3)"):
        rev.sde(X, np.array([0.5, 0.5]))


def test_raw_network_shape_mismatch():
    D = denoiser_from_raw(lambda x, c: x[:, :1])
    with raises(RefdiffShapeError, "raw_fn returned shape (2, 1) for x of shape (2, 3)"):
        D(X, np.array([1.0, 2.0]))


def test_prior_logp_needs_a_batch_axis():
    with raises(RefdiffValueError, "expected an array with a batch axis first (ndim >= 1)"):
        VPSDE().prior_logp(np.asarray(1.0))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()])
def test_dt_for_a_fixed_chain(sde):
    with raises(RefdiffValueError, "discretize is the"):
        sde.discretize(X, np.array([0.5, 0.5]), dt=0.1)


def test_negative_dt():
    with raises(RefdiffValueError, "dt=-0.1 is invalid: expected a value in (0.0, inf]"):
        SubVPSDE().discretize(X, np.array([0.5, 0.5]), dt=-0.1)


def test_reverse_of_something_that_is_not_an_sde():
    with raises(
        RefdiffValueError, "forward_sde=3 is invalid: expected an instance of refdiff.sde.SDE"
    ):
        ReverseSDE(3, lambda x, t: x)


def test_interpolated_and_polyexponential_grid_errors():
    from refdiff import schedules
    from refdiff.edm import interpolated_sigmas, polyexponential_sigmas

    s = schedules.linear(10)
    with raises(
        UnknownNameError,
        "timestep_spacing='karras' is not a known timestep spacing; "
        "allowed: 'linspace', 'leading', 'trailing'",
    ):
        interpolated_sigmas(s, 4, timestep_spacing="karras")
    with raises(RefdiffValueError, "n=11 is invalid: expected at most T = 10 noise levels"):
        interpolated_sigmas(s, 11)
    with raises(
        RefdiffValueError, "steps_offset=5 is invalid: the leading timesteps reach 10, past T-1 = 9"
    ):
        interpolated_sigmas(s, 2, timestep_spacing="leading", steps_offset=5)
    with raises(
        RefdiffValueError, "is invalid: expected the full training schedule, not a respaced one"
    ):
        interpolated_sigmas(schedules.respace(s, [0, 5, 9]), 2)
    with raises(
        RefdiffValueError, "is invalid: expected a Schedule or a 1-D table of ᾱ_t in (0, 1]"
    ):
        interpolated_sigmas([0.9, 0.0], 2)
    with raises(RefdiffValueError, "rho=0.0 is invalid"):
        polyexponential_sigmas(4, 0.1, 10.0, rho=0.0)
    with raises(RefdiffValueError, "sigma_max=0.05 is invalid: expected sigma_max > sigma_min"):
        polyexponential_sigmas(4, 0.1, 0.05)
