"""Bad input to the discrete samplers, DDIM inversion and the labml-style object: pinned messages."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffShapeError, RefdiffValueError, UnknownNameError
from refdiff.ddpm import DenoiseDiffusion
from refdiff.samplers import get_sampler, sample
from refdiff.samplers.discrete import (
    ddim_coefficients,
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddpm_sample,
    p_sample,
)
from refdiff.schedules import linear, respace

S = linear(10)
X = np.zeros((2, 3))
NOISE = np.zeros((10, 2, 3))
GOOD = A.discrete_model(A.GaussianData(np.zeros(3), 1.0), S)


def _wrong_shape(x, t):
    return np.zeros((2, 4))


@pytest.mark.parametrize(
    "fn,kw", [(ddpm_sample, {"noise": NOISE}), (ddim_sample, {}), (ddim_invert, {})]
)
def test_model_output_shape_mismatch(fn, kw):
    with pytest.raises(
        RefdiffShapeError,
        match=r"model output has shape \(2, 4\) but x has shape \(2, 3\); they must match",
    ):
        fn(_wrong_shape, X, schedule=S, **kw)


def test_learned_variance_output_without_extra_channels():
    with pytest.raises(
        RefdiffShapeError,
        match=r"model_output has shape \(2, 3\) but a learned variance needs the extra channels: expected \(2, 6\)",
    ):
        ddpm_sample(GOOD, X, schedule=S, noise=NOISE, var_type="learned")


@pytest.mark.parametrize("steps", [0, -3])
@pytest.mark.parametrize(
    "fn,kw", [(ddpm_sample, {"noise": NOISE}), (ddim_sample, {}), (ddim_invert, {})]
)
def test_zero_or_negative_steps(fn, kw, steps):
    with pytest.raises(
        RefdiffValueError, match=rf"steps={steps} is invalid: expected an integer >= 1"
    ):
        fn(GOOD, X, schedule=S, steps=steps, **kw)


def test_steps_not_an_integer_or_too_many():
    with pytest.raises(RefdiffValueError, match=r"steps=2.5 is invalid: expected an integer >= 1"):
        ddim_sample(GOOD, X, schedule=S, steps=2.5)
    with pytest.raises(
        RefdiffValueError, match=r"steps=11 is invalid: expected at most T=10 steps"
    ):
        ddim_sample(GOOD, X, schedule=S, steps=11)
    with pytest.raises(
        UnknownNameError,
        match=r"spacing='uniform' is not a known timestep spacing; allowed: 'trailing', 'leading', 'linspace', 'ddim'",
    ):
        ddim_sample(GOOD, X, schedule=S, steps=5, spacing="uniform")


@pytest.mark.parametrize("eta", [-0.1, -1.0, float("nan"), float("inf")])
def test_negative_or_non_finite_eta(eta):
    with pytest.raises(
        RefdiffValueError,
        match=r"eta=.* is invalid: expected (a value in|a finite real number in) \[0.0, inf\]",
    ):
        ddim_sample(GOOD, X, schedule=S, eta=eta, noise=NOISE)
    with pytest.raises(RefdiffValueError, match=r"eta=.* is invalid"):
        ddim_step(X, X, X, 0.5, 0.7, eta=eta, noise=X)


def test_eta_too_large_for_a_step():
    with pytest.raises(
        RefdiffValueError, match=r"eta=3.0 is invalid: η this large makes σ² exceed 1 − ᾱ_prev"
    ):
        ddim_coefficients(0.5, 0.6, eta=3.0)


def test_unknown_sampler_name():
    with pytest.raises(
        UnknownNameError, match=r"sampler='ddpm2' is not a known sampler; allowed: .*'ddim'.*'ddpm'"
    ):
        get_sampler("ddpm2")
    with pytest.raises(UnknownNameError, match=r"sampler='ddim_plms' is not a known sampler"):
        sample("ddim_plms", GOOD, X, schedule=S)


def test_unknown_conventions():
    with pytest.raises(
        UnknownNameError,
        match=r"final_noise='sometimes' is not a known final-step noise convention; allowed: 'none', 'always'",
    ):
        ddpm_sample(GOOD, X, schedule=S, noise=NOISE, final_noise="sometimes")
    with pytest.raises(
        UnknownNameError,
        match=r"final_alpha_bar='zero' is not a known final ᾱ_prev convention; allowed: 'one', 'alpha_bar_0'",
    ):
        ddim_sample(GOOD, X, schedule=S, final_alpha_bar="zero")
    with pytest.raises(
        RefdiffValueError, match=r"final_alpha_bar=0.0 is invalid: expected a value in \(0.0, 1.0\]"
    ):
        ddim_sample(GOOD, X, schedule=S, final_alpha_bar=0.0)
    with pytest.raises(
        UnknownNameError, match=r"model_time='later' is not a known inversion model-time convention"
    ):
        ddim_invert(GOOD, X, schedule=S, model_time="later")
    with pytest.raises(UnknownNameError, match=r"t0='floor' is not a known t=0 convention"):
        ddpm_sample(GOOD, X, schedule=S, noise=NOISE, t0="floor")
    with pytest.raises(
        UnknownNameError, match=r"cond_mode='both' is not a known classifier-guidance mode"
    ):
        ddpm_sample(GOOD, X, schedule=S, noise=NOISE, cond_mode="both")
    with pytest.raises(UnknownNameError, match=r"mean_type='flow' is not a known prediction type"):
        ddim_sample(GOOD, X, schedule=S, mean_type="flow")


def test_noise_missing_or_misshaped():
    with pytest.raises(
        RefdiffValueError, match=r"noise=None is invalid: this sampler is stochastic"
    ):
        ddpm_sample(GOOD, X, schedule=S)
    with pytest.raises(
        RefdiffValueError, match=r"noise=None is invalid: this sampler is stochastic"
    ):
        ddim_sample(GOOD, X, schedule=S, eta=0.5)
    with pytest.raises(
        RefdiffShapeError,
        match=r"noise draw 0 has shape \(2, 2\) but x has shape \(2, 3\); they must match",
    ):
        ddpm_sample(GOOD, X, schedule=S, noise=np.zeros((10, 2, 2)))
    with pytest.raises(RefdiffValueError, match=r"noise=None is invalid: p_sample adds noise"):
        p_sample(X, X, 3, schedule=S)


def test_start_stop_and_schedule_arguments():
    with pytest.raises(
        RefdiffValueError,
        match=r"start=10 is invalid: expected n-1 >= start > stop >= -1 with n=10",
    ):
        ddim_sample(GOOD, X, schedule=S, start=10)
    with pytest.raises(
        RefdiffValueError,
        match=r"start=3 is invalid: expected n-1 >= start > stop >= -1 with n=10 \(stop=3\)",
    ):
        ddim_sample(GOOD, X, schedule=S, start=3, stop=3)
    with pytest.raises(
        RefdiffValueError, match=r"stop=10 is invalid: expected -1 <= start < stop <= n-1"
    ):
        ddim_invert(GOOD, X, schedule=S, stop=10)
    with pytest.raises(
        RefdiffValueError, match=r"schedule=.* is invalid: expected a refdiff.schedules.Schedule"
    ):
        ddim_sample(GOOD, X, schedule=np.linspace(0.9, 0.1, 10))
    S2 = respace(linear(100), 5, spacing="leading", steps_offset=1)
    with pytest.raises(
        RefdiffValueError,
        match=r"base_schedule=None is invalid: final_alpha_bar='alpha_bar_0' on a respaced schedule that skips index 0",
    ):
        ddim_sample(GOOD, X, schedule=S2, final_alpha_bar="alpha_bar_0")


def test_tables_in_another_namespace():
    torch = pytest.importorskip("torch")
    with pytest.raises(
        RefdiffValueError, match=r"move them once with schedule.to\(xp, device=..., dtype=...\)"
    ):
        ddpm_sample(
            lambda x, t: x,
            torch.zeros((2, 3), dtype=torch.float64),
            schedule=S,
            noise=torch.zeros((10, 2, 3), dtype=torch.float64),
        )


def test_denoise_diffusion_bad_input():
    with pytest.raises(RefdiffValueError, match=r"eps_model=3 is invalid: expected a callable"):
        DenoiseDiffusion(3)
    with pytest.raises(UnknownNameError, match=r"var_type='learned' is not a known variance type"):
        DenoiseDiffusion(GOOD, var_type="learned")
    with pytest.raises(RefdiffValueError, match=r"n_steps=0 is invalid: expected an integer >= 1"):
        DenoiseDiffusion(GOOD, n_steps=0)
    dd = DenoiseDiffusion(GOOD, n_steps=10)
    with pytest.raises(
        RefdiffValueError, match=r"t=10 is invalid: timesteps must lie in \[0, 10\)"
    ):
        dd.p_sample(X, 10, noise=X)
    with pytest.raises(
        RefdiffShapeError, match=r"eps_model output has shape \(2, 4\) but x_t has shape \(2, 3\)"
    ):
        DenoiseDiffusion(_wrong_shape, n_steps=10).loss(X, t=np.array([1, 2]), noise=X)


def test_prev_timestep_steps_offset_and_ddim_step_at_arguments():
    from refdiff.samplers.discrete import ddim_step_at

    with pytest.raises(
        UnknownNameError,
        match=r"prev_timestep='next' is not a known previous-timestep rule; allowed: 'listed', 'stride'",
    ):
        ddim_sample(GOOD, X, schedule=S, prev_timestep="next")
    with pytest.raises(
        RefdiffValueError,
        match=r"base_schedule=None is invalid: prev_timestep='stride' on a respaced schedule needs the training schedule",
    ):
        ddim_sample(GOOD, X, schedule=respace(S, 5, spacing="trailing"), prev_timestep="stride")
    with pytest.raises(RefdiffValueError, match=r"steps_offset=1 is invalid: needs steps="):
        ddim_sample(GOOD, X, schedule=S, steps_offset=1)
    with pytest.raises(
        RefdiffValueError,
        match=r"steps_offset=1 is invalid: only the 'leading' spacing takes an offset, not 'trailing'",
    ):
        ddpm_sample(
            GOOD, X, schedule=linear(100), steps=5, steps_offset=1, noise=np.zeros((5,) + X.shape)
        )
    with pytest.raises(
        RefdiffValueError,
        match=r"alpha_bar=None is invalid: ddim_step needs alpha_bar and alpha_bar_prev",
    ):
        ddim_step(X, X, X)
    B = linear(100)
    with pytest.raises(
        RefdiffValueError, match=r"t=100 is invalid: expected a training timestep in \[0, 100\)"
    ):
        ddim_step_at(X, 100, 90, X, schedule=B)
    with pytest.raises(
        RefdiffValueError, match=r"t_prev=50 is invalid: expected a timestep below t=50"
    ):
        ddim_step_at(X, 50, 50, X, schedule=B)
    with pytest.raises(
        UnknownNameError, match=r"prediction_type='mean' is not a known prediction type"
    ):
        ddim_step_at(X, 50, 40, X, schedule=B, prediction_type="mean")
    with pytest.raises(RefdiffShapeError, match=r"model output has shape \(3,\) but x has shape"):
        ddim_step_at(np.zeros(3), 50, 40, X, schedule=B)


def test_explicit_timesteps_arguments():
    B = linear(100)
    with pytest.raises(
        RefdiffValueError,
        match=r"timesteps=.*\[50, 10\] is invalid: give either timesteps= \(the grid\) or steps=",
    ):
        ddim_sample(GOOD, X, schedule=B, timesteps=[50, 10], steps=2)
    with pytest.raises(
        RefdiffValueError,
        match=r"timesteps='50' is invalid: expected a sequence of distinct integer training timesteps",
    ):
        ddim_sample(GOOD, X, schedule=B, timesteps="50")
    with pytest.raises(RefdiffValueError, match=r"indices must be distinct"):
        ddim_sample(GOOD, X, schedule=B, timesteps=[50, 50, 10])
    with pytest.raises(RefdiffValueError, match=r"indices must lie in \[0, 100\)"):
        ddim_sample(GOOD, X, schedule=B, timesteps=[100, 10])
