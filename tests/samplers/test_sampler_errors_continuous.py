"""Bad input to the continuous-time samplers gets a clear error naming the argument, value and what is allowed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffShapeError, RefdiffValueError, UnknownNameError
from refdiff.edm import karras_sigmas
from refdiff.samplers import get_sampler
from refdiff.samplers import dpm_solver as D
from refdiff.samplers import score_sde as S
from refdiff.sde import VESDE, VPSDE

DATA = A.GaussianData([0.5, -0.2], [[1.0, 0.3], [0.3, 0.5]])
X = np.zeros((2, 2))
SIG = karras_sigmas(4, 0.1, 10.0)
NS = D.NoiseScheduleVP.linear()
DEN = A.karras_denoiser(DATA)
EPS_MODEL = A.vp_model(DATA, NS, "eps")
VE = VESDE()
SCORE = A.vp_model(DATA, VE, "score")


def run(name, model, **kw):
    return get_sampler(name).fn(model, X, **kw)


# -- model output whose shape does not match x ---------------------------------------------------


def test_model_output_shape_mismatch():
    bad = lambda x, s: x[:, :1]
    with pytest.raises(
        RefdiffShapeError, match=r"denoiser output has shape \(2, 1\) but x has shape \(2, 2\)"
    ):
        run("karras_heun", bad, sigmas=SIG)
    with pytest.raises(
        RefdiffShapeError, match=r"model output has shape \(2, 1\) but x has shape \(2, 2\)"
    ):
        run("dpmpp_2m", bad, noise_schedule=NS, steps=4)
    with pytest.raises(
        RefdiffShapeError, match=r"score_fn output has shape \(2, 1\) but x has shape"
    ):
        run("ode_heun", bad, sde=VE, steps=4)
    with pytest.raises(RefdiffShapeError, match=r"score_fn output has shape \(2, 1\)"):
        run("sde_pc", bad, sde=VE, steps=4, noise=np.zeros((8, 2, 2)))
    with pytest.raises(RefdiffShapeError, match=r"score_fn output has shape \(2, 1\)"):
        run("sde_euler_maruyama", bad, sde=VE, steps=4, noise=np.zeros((4, 2, 2)))


# -- unknown sampler name ------------------------------------------------------------------------


def test_unknown_sampler_name_lists_the_known_ones():
    with pytest.raises(
        UnknownNameError,
        match=r"sampler='dpm_solver_4' is not a known sampler; allowed: .*'dpmpp_2m'",
    ):
        get_sampler("dpm_solver_4")


# -- steps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -3])
def test_zero_or_negative_steps(steps):
    with pytest.raises(
        RefdiffValueError, match=f"steps={steps} is invalid: expected an integer >= 1"
    ):
        run("dpm_solver_2", EPS_MODEL, noise_schedule=NS, steps=steps)
    with pytest.raises(
        RefdiffValueError, match=f"steps={steps} is invalid: expected an integer >= 1"
    ):
        run("ode_euler", SCORE, sde=VE, steps=steps)
    with pytest.raises(
        RefdiffValueError, match=f"steps={steps} is invalid: expected an integer >= 1"
    ):
        run("sde_pc", SCORE, sde=VE, steps=steps, noise=np.zeros((2, 2, 2)))
    with pytest.raises(RefdiffValueError, match=f"steps={steps} is invalid"):
        run("ncsn_annealed_langevin", SCORE, sde=VE, steps=steps, noise=np.zeros((2, 2, 2)))


def test_steps_below_the_order():
    with pytest.raises(
        RefdiffValueError,
        match="steps=2 is invalid: the multistep solver of order 3 needs steps >= 3",
    ):
        run("dpmpp_3m", EPS_MODEL, noise_schedule=NS, steps=2)
    with pytest.raises(RefdiffValueError, match="steps=2 is invalid: singlestep_fixed of order 3"):
        run("dpm_solver_3", EPS_MODEL, noise_schedule=NS, steps=2)
    with pytest.raises(RefdiffValueError, match="steps=1.5 is invalid: expected an integer"):
        run("dpm_solver_2", EPS_MODEL, noise_schedule=NS, steps=1.5)


# -- σ grids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigmas,msg",
    [
        (
            [10.0, 5.0, 5.0, 0.0],
            r"sigmas must strictly decrease; entry 2 \(5.0\) is not below entry 1 \(5.0\)",
        ),
        (
            [1.0, 2.0],
            r"sigmas must strictly decrease; entry 1 \(2.0\) is not below entry 0 \(1.0\)",
        ),
        ([10.0, 1.0, -0.5], r"noise levels must be >= 0"),
        ([10.0], r"sigmas=.* is invalid: expected a 1-D grid with at least two entries"),
        ([math.inf, 1.0], r"every entry must be finite"),
    ],
)
def test_sigma_grid_that_does_not_decrease(sigmas, msg):
    for name in ("karras_euler", "karras_heun", "karras_euler_ancestral", "karras_heun_churn"):
        with pytest.raises(RefdiffValueError, match=msg):
            run(name, DEN, sigmas=sigmas, noise=np.zeros((5, 2, 2)))


# -- η and churn settings -----------------------------------------------------------------------


def test_negative_eta():
    with pytest.raises(
        RefdiffValueError, match=r"eta=-0.1 is invalid: expected a value in \[0.0, inf\]"
    ):
        run("karras_euler_ancestral", DEN, sigmas=SIG, noise=np.zeros((3, 2, 2)), eta=-0.1)
    with pytest.raises(RefdiffValueError, match="eta=nan is invalid"):
        run("karras_euler_ancestral", DEN, sigmas=SIG, noise=np.zeros((3, 2, 2)), eta=float("nan"))


def test_churn_settings():
    with pytest.raises(RefdiffValueError, match=r"S_churn=-1.0 is invalid"):
        run("karras_euler", DEN, sigmas=SIG, S_churn=-1.0)
    with pytest.raises(
        RefdiffValueError, match=r"S_tmax=0.5 is invalid: expected a value >= S_tmin = 1.0"
    ):
        run("karras_euler", DEN, sigmas=SIG, S_tmin=1.0, S_tmax=0.5)
    with pytest.raises(RefdiffValueError, match=r"S_noise=inf is invalid"):
        run("karras_heun", DEN, sigmas=SIG, S_noise=math.inf)


# -- explicit noise ------------------------------------------------------------------------------


def test_stochastic_samplers_need_noise_of_the_right_shape():
    with pytest.raises(
        RefdiffValueError, match="noise=None is invalid: this sampler is stochastic"
    ):
        run("karras_heun_churn", DEN, sigmas=SIG)
    with pytest.raises(RefdiffValueError, match="this sampler is stochastic"):
        run("sde_euler_maruyama", SCORE, sde=VE, steps=3)
    with pytest.raises(
        RefdiffShapeError, match=r"noise draw 0 has shape \(3, 2\) but x has shape \(2, 2\)"
    ):
        run("karras_euler_ancestral", DEN, sigmas=SIG, noise=np.zeros((3, 3, 2)))


# -- named conventions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option,value,what",
    [
        (
            "lower_order_final",
            "hf",
            "lower_order_final='hf' is not a known rule; allowed: 'dpm_solver', 'diffusers'",
        ),
        (
            "skip_type",
            "karras",
            "skip_type='karras' is not a known step grid; allowed: 'time_uniform', 'logSNR'",
        ),
        (
            "model_type",
            "mean",
            "model_type='mean' is not a known prediction type; allowed: 'eps', 'x0', 'v', 'score'",
        ),
        ("solver_type", "heun", "solver_type='heun' is not a known DPM-Solver solver type"),
        ("d2_scale", "half", "d2_scale='half' is not a known multistep third-order D2 convention"),
        ("warmup", "none", "warmup='none' is not a known multistep warm-up"),
        ("model_time", "step", "model_time='step' is not a known model time convention"),
        (
            "intermediate",
            "midpoint",
            "intermediate='midpoint' is not a known intermediate-point placement",
        ),
        ("final_sigmas_type", "min", "final_sigmas_type='min' is not a known final σ"),
    ],
)
def test_unknown_dpm_solver_conventions(option, value, what):
    with pytest.raises(UnknownNameError, match=what):
        D.dpm_solver_sample(EPS_MODEL, X, noise_schedule=NS, steps=4, order=3, **{option: value})


def test_dpm_solver_inputs():
    with pytest.raises(
        RefdiffValueError,
        match="noise_schedule=.* is invalid: expected a refdiff.samplers.dpm_solver.NoiseScheduleVP",
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=VPSDE(), steps=4)
    with pytest.raises(
        RefdiffValueError, match=r"t_end=0.0 is invalid: expected a value in \(0.0, 1.0\]"
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, steps=4, t_end=0.0)
    with pytest.raises(RefdiffValueError, match="order=4 is invalid: expected 1, 2 or 3"):
        D.dpm_solver_sample(EPS_MODEL, X, noise_schedule=NS, steps=4, order=4)
    with pytest.raises(UnknownNameError, match="clip_lambda='diffusers' is not a known λ clip"):
        D.NoiseScheduleVP.discrete(betas=np.full(10, 0.1), clip_lambda="diffusers")
    with pytest.raises(
        RefdiffValueError, match="give exactly one of schedule=, betas=, alphas_cumprod="
    ):
        D.NoiseScheduleVP.discrete()
    with pytest.raises(
        RefdiffValueError,
        match="the 'dpm_solver' discrete model time needs a discrete noise schedule",
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, steps=4, model_time="dpm_solver")
    with pytest.raises(RefdiffValueError, match=r"t=1.5 is invalid: expected times in \[0, 1.0\]"):
        NS.marginal_lambda(1.5)


def test_dpm_solver_explicit_grids():
    with pytest.raises(
        RefdiffValueError,
        match=r"timesteps=.* is invalid: the grid must run from noise to data \(λ strictly increasing\); entry 2",
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, timesteps=[0.9, 0.5, 0.7])
    with pytest.raises(RefdiffValueError, match=r"steps=5 is invalid: the grid has 2 steps"):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, steps=5, timesteps=[0.9, 0.5, 0.1])
    with pytest.raises(
        RefdiffValueError, match=r"t_start=0.9 is invalid: not with an explicit grid"
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, t_start=0.9, timesteps=[0.9, 0.5, 0.1])
    with pytest.raises(
        RefdiffValueError,
        match=r"final_sigmas_type='zero' is invalid: it completes an explicit grid",
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, steps=4, final_sigmas_type="zero")
    with pytest.raises(RefdiffValueError, match=r"steps=None is invalid: give steps="):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS)
    with pytest.raises(
        RefdiffValueError,
        match=r"time_unit='index' is invalid: integer timesteps need a discrete noise schedule",
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, timesteps=[999, 500], time_unit="index")
    disc = D.NoiseScheduleVP.discrete(betas=np.linspace(1e-4, 0.02, 100))
    with pytest.raises(RefdiffValueError, match=r"expected integer timesteps n in \[0, 99\]"):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=disc, timesteps=[100, 50], time_unit="index")
    with pytest.raises(
        RefdiffValueError, match=r"sigmas=.* is invalid: the largest σ/α of the noise schedule is"
    ):
        run("dpmpp_2m", EPS_MODEL, noise_schedule=NS, sigmas=[500.0, 1.0, 0.0])
    with pytest.raises(
        RefdiffValueError,
        match=r"steps=4 is invalid: singlestep_fixed of order 3 needs a grid of k·3 steps",
    ):
        run("dpm_solver_3", EPS_MODEL, noise_schedule=NS, timesteps=[1.0, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize(
    "option,value,what",
    [
        ("predictor", "heun", "predictor='heun' is not a known predictor"),
        ("corrector", "mala", "corrector='mala' is not a known corrector"),
        (
            "langevin_norm",
            "batch_sum",
            "langevin_norm='batch_sum' is not a known Langevin norm convention; allowed: 'batch_mean', 'per_sample'",
        ),
        (
            "time_grid",
            "linspace",
            "time_grid='linspace' is not a known time grid; allowed: 'score_sde', 'uniform'",
        ),
    ],
)
def test_unknown_sde_conventions(option, value, what):
    with pytest.raises(UnknownNameError, match=what):
        S.sample_pc(SCORE, X, sde=VE, steps=3, noise=np.zeros((6, 2, 2)), **{option: value})


def test_sde_inputs():
    with pytest.raises(RefdiffValueError, match="sde=.* is invalid: expected a refdiff.sde SDE"):
        S.sample_pc(SCORE, X, sde=NS, steps=3, noise=np.zeros((6, 2, 2)))
    with pytest.raises(RefdiffValueError, match=r"snr=-0.1 is invalid"):
        S.sample_pc(SCORE, X, sde=VE, steps=3, noise=np.zeros((6, 2, 2)), snr=-0.1)
    with pytest.raises(
        RefdiffValueError, match=r"eps=1.0 is invalid: expected a value in \[0.0, 1.0\)"
    ):
        S.sample_pc(SCORE, X, sde=VE, steps=3, noise=np.zeros((6, 2, 2)), eps=1.0)
    with pytest.raises(
        RefdiffValueError, match=r"N=10 is invalid: the DDPM chain \(N = steps\) needs"
    ):
        S.sample_reverse_diffusion(
            A.vp_model(DATA, VPSDE(), "score"), X, sde=VPSDE(), steps=10, noise=np.zeros((10, 2, 2))
        )
    with pytest.raises(
        RefdiffValueError, match=r"N=5 is invalid: the DDPM chain \(N = steps\) needs"
    ):
        S.sample_pc(
            A.vp_model(DATA, VPSDE(), "score"),
            X,
            sde=VPSDE(),
            steps=5,
            predictor="euler_maruyama",
            noise=np.zeros((10, 2, 2)),
        )  # the Langevin α_i
    with pytest.raises(
        RefdiffValueError, match="x_T=.* is invalid: expected an array with the batch axis first"
    ):
        S.sample_pc(SCORE, np.zeros(()), sde=VE, steps=3, noise=np.zeros((6,)))
    with pytest.raises(RefdiffValueError, match=r"dt=0.1 is invalid"):
        S.euler_maruyama_step(VE, SCORE, X, 0.5, 0.1, noise=X)


def test_predictor_steps_need_a_draw():
    for step in (S.euler_maruyama_step, S.reverse_diffusion_step, S.ancestral_sampling_step):
        args = (VE, SCORE, X, 0.5) + ((-0.1,) if step is S.euler_maruyama_step else ())
        with pytest.raises(RefdiffValueError, match="noise=None is invalid: this step adds noise"):
            step(*args, noise=None)
