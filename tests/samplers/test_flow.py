"""Flow matching / rectified flow (refdiff.samplers.flow).

* the path's marginals α = 1 − t, σ = t, λ and its inverse against 50-digit mpmath;
* the SD3 shift against its definition (fixed points, inverse, the exponential time shift of the
  dynamic variant);
* the "flow" velocity u = ε − x0 against a direct construction, at any (α, σ);
* straight paths: for point-mass data every trajectory is a straight line, so Euler and Heun are
  exact at any step count (Liu et al. 2023, §2.2) — checked against the closed form;
* the α/σ framework: DPM-Solver++(2M), UniPC and DEIS run on ``NoiseScheduleVP.from_sde(
  FlowSchedule())`` with a flow model and converge to the exact flow map at their orders;
* callback, grids and pinned error messages.
(Convergence orders of ``flow_euler`` / ``flow_heun``: tests/samplers/test_convergence_order.py.)
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffValueError, UnknownNameError
from refdiff.parameterizations import eps_from_prediction, x0_from_prediction
from refdiff.samplers import flow as F
from refdiff.samplers.deis import sample_deis
from refdiff.samplers.dpm_solver import NoiseScheduleVP, sample_dpmpp_2m
from refdiff.samplers.unipc import sample_unipc_bh2

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
FS = F.FlowSchedule()
mp.mp.dps = 50


def flow_model(data=DATA, fs=FS):
    """u(x, t) = E[ε − x0 | x_t = x] from the exact ε and x0 of the analytic data."""
    eps, x0 = A.vp_model(data, fs, "eps"), A.vp_model(data, fs, "x0")
    return lambda x, t: eps(x, t) - x0(x, t)


def exact_map(t0: float, t1: float):
    w, U = np.linalg.eigh(COV)
    c0, c1 = (1 - t0) ** 2 * w + t0**2, (1 - t1) ** 2 * w + t1**2
    M = U @ np.diag(np.sqrt(c1 / c0)) @ U.T
    return M, (1 - t1) * MU - M @ ((1 - t0) * MU)


def map_error(run, t0, t1) -> float:
    law = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=0)
    M, c = exact_map(t0, t1)
    return float(np.linalg.norm(law.M - M) + np.linalg.norm(law.c - c))


# -- the schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1e-12, 1e-6, 0.1, 0.5, 0.9, 1 - 1e-9])
def test_marginals_against_mpmath(t):
    tm = mp.mpf(t)
    assert FS.marginal_alpha(t) == pytest.approx(float(1 - tm), rel=1e-15)
    assert FS.marginal_std(t) == t
    assert FS.marginal_log_mean_coeff(t) == pytest.approx(
        float(mp.log(1 - tm)), rel=1e-15, abs=1e-300
    )
    lam = float(mp.log((1 - tm) / tm))
    assert FS.lambda_(t) == pytest.approx(lam, rel=1e-14, abs=1e-15)
    assert FS.t_from_lambda(lam) == pytest.approx(t, rel=1e-13)


def test_lambda_ends_and_large_arguments():
    assert FS.lambda_(0.0) == math.inf and FS.lambda_(1.0) == -math.inf
    assert FS.t_from_lambda(800.0) == pytest.approx(math.exp(-800.0), rel=1e-14)  # no overflow
    assert FS.t_from_lambda(-800.0) == 1.0
    a = FS.marginal_alpha(np.array([0.25, 0.5]))
    assert isinstance(a, np.ndarray) and np.allclose(a, [0.75, 0.5])


def test_flow_schedule_drives_dpm_solver_schedule():
    ns = NoiseScheduleVP.from_sde(FS)
    for t in (0.01, 0.3, 0.77):
        assert ns.marginal_alpha(t) == pytest.approx(1 - t, rel=1e-15)
        assert ns.marginal_std(t) == pytest.approx(t, rel=1e-15)
        assert ns.inverse_lambda(ns.marginal_lambda(t)) == pytest.approx(t, rel=1e-13)


# -- the shift --------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.5, 1.0, 3.0, 7.5])
def test_shift_definition(s):
    t = np.linspace(0, 1, 11)
    out = F.shift_time(t, s)
    assert out[0] == 0.0 and out[-1] == 1.0
    assert np.allclose(out, s * t / (1 + (s - 1) * t), rtol=1e-15)
    assert np.allclose(F.unshift_time(out, s), t, rtol=1e-14, atol=1e-16)
    assert np.all(np.diff(out) > 0)


def test_dynamic_shift_is_the_exponential_time_shift():
    """e^μ/(e^μ + (1/t − 1)) — the dynamic (μ) shift of flux-type pipelines — is shift_time with s = e^μ."""
    for seq_len in (256, 1024, 4096):
        mu = 0.5 + (1.15 - 0.5) * (seq_len - 256) / (4096 - 256)
        s = F.resolution_shift(seq_len)
        assert s == pytest.approx(math.exp(mu), rel=1e-15)
        t = np.array([0.1, 0.5, 0.9])
        assert np.allclose(
            F.shift_time(t, s), math.exp(mu) / (math.exp(mu) + (1 / t - 1)), rtol=1e-14
        )


def test_time_grids():
    g = F.flow_time_steps(F.FlowSchedule(shift=3.0), 4)
    assert np.allclose(g, F.shift_time(np.linspace(1, 0, 5), 3.0))
    d = F.flow_time_steps(F.FlowSchedule(shift=3.0), 4, spacing="diffusers")
    lo = 3 * 1e-3 / (1 + 2 * 1e-3)  # diffusers' σ_min: the shifted 1/N, shifted again below
    assert np.allclose(d[:-1], F.shift_time(np.linspace(1, lo, 4), 3.0)) and d[-1] == 0.0
    dd = F.flow_time_steps(F.FlowSchedule(shift=2.0), 3, spacing="diffusers_dynamic")
    assert np.allclose(dd[:-1], F.shift_time(np.linspace(1, 1e-3, 3), 2.0)) and dd[-1] == 0.0


# -- the velocity parameterisation -----------------------------------------------------------------


@pytest.mark.parametrize("a, s", [(0.7, 0.3), (0.2, 0.8), (0.6, 0.9), (1.0, 0.0)])
def test_flow_prediction_conversions(a, s):
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x, u = a * x0 + s * eps, eps - x0
    assert np.allclose(x0_from_prediction(u, x, a, s, "flow"), x0, atol=1e-14)
    if s > 0:
        assert np.allclose(eps_from_prediction(u, x, a, s, "flow_prediction"), eps, atol=1e-14)
    t = 0.35
    xt = (1 - t) * x0 + t * eps
    for kind, out in (("eps", eps), ("x0", x0), ("v", (1 - t) * eps - t * x0)):
        assert np.allclose(F.velocity_from_prediction(out, xt, t, kind), u, atol=1e-13)


# -- straight paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flow_euler", "flow_heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_point_mass_paths_are_straight(name, shift):
    """Point-mass data x0 = μ: u = ε − μ is constant along each path, so any step count is exact."""
    fs = F.FlowSchedule(shift=shift)
    point = A.GaussianData(MU, np.zeros((2, 2)))
    z = np.random.default_rng(1).standard_normal((5, 2))
    fn = getattr(F, f"sample_{name}")
    for steps, t_end in ((1, 0.0), (3, 0.0), (4, 0.25)):
        out = fn(flow_model(point, fs), z, noise_schedule=fs, steps=steps, t_end=t_end)
        assert np.allclose(out, (1 - t_end) * MU + t_end * z, rtol=1e-13, atol=1e-14)


def test_heun_takes_two_evaluations_except_onto_zero():
    calls = []
    model = flow_model()
    F.sample_flow_heun(
        lambda x, t: calls.append(float(t[0])) or model(x, t), np.zeros((1, 2)), steps=4
    )
    assert len(calls) == 7  # 2 × 4 − 1
    assert calls[0] == 1.0 and 0.0 not in calls


# -- DDIM / DPM-Solver-style solvers on the flow path -----------------------------------------------


@pytest.mark.parametrize(
    "solver, kw, order",
    [
        (sample_dpmpp_2m, {"model_type": "x_start"}, 2),
        (sample_unipc_bh2, {"model_type": "flow", "lower_order_final": "never"}, 3),
        (sample_deis, {"model_type": "flow", "order": 2}, 2),
    ],
)
def test_vp_solvers_on_the_flow_path(solver, kw, order):
    ns = NoiseScheduleVP.from_sde(FS)
    u = flow_model()
    model = (lambda x, t: x - float(t[0]) * u(x, t)) if kw["model_type"] == "x_start" else u
    steps = [48, 96, 192]
    errs = [
        map_error(
            lambda xT, nz: solver(
                model,
                xT,
                noise_schedule=ns,
                steps=n,
                t_start=0.95,
                t_end=0.05,
                skip_type="logSNR",
                **kw,
            ),
            0.95,
            0.05,
        )
        for n in steps
    ]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert errs[-1] < 1e-3 and abs(slope - order) < 0.35, (slope, errs)


# -- hooks and bad input ----------------------------------------------------------------------------


def test_callback_reports_before_each_step():
    seen = []
    z = np.random.default_rng(2).standard_normal((3, 2))
    F.sample_flow_euler(
        flow_model(), z, steps=3, callback=seen.append, progress=lambda i, n: seen.append((i, n))
    )
    infos = [s for s in seen if not isinstance(s, tuple)]
    assert [i.i for i in infos] == [0, 1, 2] and infos[0].x is z and infos[0].t == 1.0
    assert np.allclose(infos[0].denoised, DATA.x0(z, 0.0, 1.0))  # x̂0 = x − t·u at t = 1
    assert (3, 3) in seen and infos[0].sigma == math.inf


def test_model_time_conventions():
    seen = []
    F.sample_flow_euler(
        lambda x, t: seen.append(float(t[0])) or x,
        np.zeros((1, 2)),
        steps=2,
        model_time="diffusers",
    )
    assert seen == [1000.0, 500.0]
    seen.clear()
    F.sample_flow_euler(
        lambda x, t: seen.append(float(t[0])) or x,
        np.zeros((1, 2)),
        steps=2,
        model_time=lambda t: 7 * t,
    )
    assert seen == [7.0, 3.5]


def test_bad_input_messages():
    x = np.zeros((2, 2))
    m = flow_model()
    with pytest.raises(RefdiffValueError, match=r"shift=0.0 is invalid"):
        F.FlowSchedule(shift=0.0)
    with pytest.raises(
        RefdiffValueError, match=r"t=1.5 is invalid: expected path times in \[0, 1\]"
    ):
        FS.marginal_alpha(1.5)
    with pytest.raises(UnknownNameError, match=r"spacing='karras' is not a known flow time grid"):
        F.sample_flow_euler(m, x, steps=3, spacing="karras")
    with pytest.raises(
        RefdiffValueError,
        match=r"prediction_type='eps' is invalid: an ε or score "
        r"model does not determine x0 at t = 1",
    ):
        F.sample_flow_euler(m, x, steps=3, prediction_type="eps")
    with pytest.raises(
        UnknownNameError, match=r"prediction_type='mean' is not a known prediction type"
    ):
        F.sample_flow_heun(m, x, steps=3, prediction_type="mean")
    with pytest.raises(
        RefdiffValueError, match=r"timesteps=.* is invalid: expected steps \+ 1 = 4 times"
    ):
        F.sample_flow_euler(m, x, steps=3, timesteps=[1.0, 0.5, 0.0])
    with pytest.raises(RefdiffValueError, match=r"timesteps must strictly decrease"):
        F.sample_flow_euler(m, x, steps=2, timesteps=[1.0, 0.2, 0.5])
    with pytest.raises(
        RefdiffValueError, match=r"t_end=0.5 is invalid: the 'diffusers' spacing fixes the grid"
    ):
        F.sample_flow_euler(m, x, steps=2, spacing="diffusers", t_end=0.5)
    with pytest.raises(
        RefdiffValueError,
        match=r"noise_schedule=.* is invalid: expected a "
        r"refdiff.samplers.flow.FlowSchedule",
    ):
        F.sample_flow_euler(m, x, steps=2, noise_schedule=NoiseScheduleVP.linear())
    with pytest.raises(RefdiffValueError, match=r"steps=0 is invalid"):
        F.sample_flow_heun(m, x, steps=0)
