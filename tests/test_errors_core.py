"""One test per bad-input class of the reference core, pinning the message."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import diffusion as D
from refdiff import kl as K
from refdiff import losses as L
from refdiff import schedules as S
from refdiff._errors import RefdiffShapeError, RefdiffValueError, UnknownNameError

s = S.linear(1000)
x = np.zeros((2, 3, 4, 4))


@pytest.mark.parametrize(
    "betas, what",
    [
        ([0.1, 0.0], "index 1 is 0.0"),
        ([0.1, 1.5], "index 1 is 1.5"),
        ([np.nan, 0.1], "index 0 is nan"),
        ([0.1, np.inf], "index 1 is inf"),
        ([1.0, 0.5], "index 0 is 1.0"),
    ],
)
def test_beta_outside_open_unit_interval(betas, what):
    with pytest.raises(RefdiffValueError, match=rf"betas=.*finite and lie in \(0, 1\); {what}"):
        S.from_betas(betas)


def test_last_beta_one_is_zero_terminal_snr():
    z = S.from_betas([0.1, 0.2, 1.0])
    assert z.zero_terminal_snr and z.alphas_cumprod[-1] == 0.0


def test_alphas_cumprod_not_decreasing():
    with pytest.raises(
        RefdiffValueError,
        match=r"alphas_cumprod=.*strictly decreasing; index 2 \(0\.8\) is not below index 1 \(0\.8\)",
    ):
        S.from_alphas_cumprod([0.9, 0.8, 0.8])
    with pytest.raises(RefdiffValueError, match=r"alphas_cumprod=.*lie in \(0, 1\)"):
        S.from_alphas_cumprod([1.0, 0.5])


@pytest.mark.parametrize("T", [0, -3])
def test_T_below_one(T):
    with pytest.raises(RefdiffValueError, match=rf"T={T} is invalid: expected an integer >= 1"):
        S.linear(T)


def test_T_not_integer():
    with pytest.raises(RefdiffValueError, match=r"T=10.5 is invalid: expected an integer"):
        S.cosine(10.5)


def test_beta_range_arguments():
    with pytest.raises(
        RefdiffValueError, match=r"beta_end=1.5 is invalid: expected a value in \(0.0, 1.0\)"
    ):
        S.linear(10, beta_end=1.5)
    with pytest.raises(RefdiffValueError, match=r"betas=.*index 5 is 1.11555"):
        S.linear(10, scale_by_T=True)  # improved-diffusion's 1000/T scaling gives β = 2 at T = 10


def test_t_out_of_range():
    with pytest.raises(
        RefdiffValueError,
        match=r"t=array of shape \(2,\) \[0, 1000\] is invalid: timesteps must lie in \[0, 1000\); got values from 0 to 1000",
    ):
        D.q_sample(s, x, np.array([0, 1000]), noise=x)
    with pytest.raises(RefdiffValueError, match=r"t=-1 is invalid"):
        D.q_sample(s, x, -1, noise=x)


def test_t_not_integer():
    with pytest.raises(
        RefdiffValueError,
        match=r"expected an integer dtype for timesteps in \[0, 1000\), got float64",
    ):
        D.q_sample(s, x, np.array([1.0, 2.0]), noise=x)
    with pytest.raises(RefdiffValueError, match=r"t=0.5 is invalid: expected integer timesteps"):
        D.q_mean_variance(s, x, 0.5)


def test_shapes_that_do_not_match():
    with pytest.raises(
        RefdiffShapeError,
        match=r"x0 has shape \(2, 3, 4, 4\) but noise has shape \(2, 3, 4\); they must match",
    ):
        D.q_sample(s, x, np.array([1, 2]), noise=x[..., 0])
    with pytest.raises(
        RefdiffShapeError, match=r"shapes do not broadcast: mean1 \(2, 3\), logvar1 \(4,\)"
    ):
        K.normal_kl(np.zeros((2, 3)), np.zeros(4), np.zeros(3), np.zeros(3))


def test_unknown_spacing_and_schedule_names():
    with pytest.raises(
        UnknownNameError,
        match=r"spacing='middle' is not a known timestep spacing; allowed: 'leading', 'trailing', 'linspace'",
    ):
        S.respace(s, 10, spacing="middle")
    with pytest.raises(
        RefdiffValueError, match=r"section_counts='fast' is invalid: expected 'ddimN'"
    ):
        S.respace(s, "fast")
    with pytest.raises(
        RefdiffValueError,
        match=r"section_counts='ddim999' is invalid: no integer stride gives exactly 999 steps out of T=1000",
    ):
        S.respace(s, "ddim999")
    with pytest.raises(
        UnknownNameError,
        match=r"schedule='cosin' is not a known schedule; allowed: 'cosine', 'linear'",
    ):
        S.get_schedule("cosin", 10)
    with pytest.raises(
        UnknownNameError,
        match=r"mean_type='eps_pred' is not a known prediction type; allowed: 'eps', 'x0', 'v', 'score', 'mean' \(or an upstream alias: 'noise', 'epsilon'",
    ):
        D.p_mean_variance(s, x, x, np.array([1, 2]), mean_type="eps_pred")
    with pytest.raises(UnknownNameError, match=r"loss_type='l1' is not a known loss type"):
        L.training_losses(s, lambda a, b: a, x, np.array([1, 2]), noise=x, loss_type="l1")


def test_variance_output_without_extra_channels():
    with pytest.raises(
        RefdiffShapeError,
        match=r"model_output has shape \(2, 3, 4, 4\) but a learned variance needs the extra channels: expected \(2, 6, 4, 4\)",
    ):
        D.p_mean_variance(s, x, x, np.array([1, 2]), var_type="learned_range")


def test_model_output_shape_mismatch():
    with pytest.raises(
        RefdiffShapeError,
        match=r"model_output has shape \(2, 6, 4, 4\) but x_t has shape \(2, 3, 4, 4\)",
    ):
        D.p_mean_variance(s, np.zeros((2, 6, 4, 4)), x, np.array([1, 2]))


def test_zero_snr_eps_to_x0_is_refused_explicitly():
    z = S.zero_terminal_snr(S.linear(100))
    with pytest.raises(RefdiffValueError, match=r"t=99 has zero SNR .*x0 from eps is undefined"):
        D.p_mean_variance(z, x, x, np.array([99, 3]), mean_type="eps")
    out = D.p_mean_variance(z, x, x, np.array([99, 3]), mean_type="v")
    assert np.all(np.isfinite(out.mean))


def test_schedule_tables_are_immutable():
    with pytest.raises(ValueError):
        s.betas[0] = 0.5
    with pytest.raises(AttributeError):
        s.betas = None


def test_moved_schedule_cannot_be_respaced():
    moved = s.to(np, dtype=np.float32)
    with pytest.raises(RefdiffValueError, match="needs the host float64 schedule"):
        S.respace(moved, "ddim10")
