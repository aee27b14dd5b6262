"""DPM-Solver's adaptive solver and SDE-DPM-Solver++ (refdiff.samplers.dpm_solver_sde) against exact answers on Gaussian data.

Oracles, independent of the code under test: the exact probability-flow map and the exact
marginal N(α_t μ, α_t²Σ + σ_t²I) of the linear VP schedule for x0 ~ N(μ, Σ) (closed forms with
NumPy eigh), and point-mass data (Σ = 0), on which a first-order data-prediction SDE step is exact
in law.
"""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff._errors import RefdiffValueError, UnknownNameError
from refdiff.samplers import get_sampler
from refdiff.samplers.dpm_solver import NoiseScheduleVP

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
POINT = A.GaussianData(MU, np.zeros((2, 2)))
NS = NoiseScheduleVP.linear()
T_END = 1e-3


def marginal(data, t):
    return data.marginal(float(NS.marginal_alpha(t)), float(NS.marginal_std(t)))


def law(name, n, data=DATA, **options):
    fn = get_sampler(name).fn
    return A.linear_sampler_law(
        lambda xT, nz: fn(
            A.vp_model(data, NS, "eps"),
            xT,
            noise_schedule=NS,
            steps=n,
            noise=nz,
            t_end=T_END,
            **options,
        ),
        *marginal(data, 1.0),
        dim=2,
        n_noise=n,
    )


def law_error(name, n, **options):
    lw = law(name, n, skip_type="logSNR", **options)
    m, C = marginal(DATA, T_END)
    return float(max(np.abs(lw.mean - m).max(), np.abs(lw.cov - C).max()))


#: Stated tolerances of the exact output law at N = 200 logSNR steps from t = 1 to 1e-3
#: (max |mean - m*|, |cov - C*|); measured 4.6e-2, 7.6e-4, 1.6e-3.
@pytest.mark.parametrize(
    "name,options,tol,weak",
    [
        ("sde_dpmpp_1", {}, 6e-2, (0.8, 1.2)),
        ("sde_dpmpp_2m", {}, 2e-3, (1.7, 2.3)),
        ("sde_dpmpp_2m", {"solver_type": "heun"}, 3e-3, (1.7, 2.3)),
    ],
)
def test_output_law_converges_to_the_true_marginal(name, options, tol, weak):
    ladder = [50, 100, 200]
    errs = [law_error(name, n, **options) for n in ladder]
    assert errs[-1] < tol, errs
    order = float(-np.polyfit(np.log(ladder), np.log(errs), 1)[0])
    assert weak[0] < order < weak[1], (order, errs)


@pytest.mark.parametrize("name", ["sde_dpmpp_1", "sde_dpmpp_2m"])
@pytest.mark.parametrize("steps", [1, 3, 7])
def test_exact_in_law_on_a_point_mass(name, steps):
    """x̂0 ≡ μ: the step is the exact transition of the reverse SDE, so x_t ~ N(α_t μ, σ_t² I) at any N."""
    lw = law(name, steps, data=POINT)
    m, C = marginal(POINT, T_END)
    np.testing.assert_allclose(lw.mean, m, atol=1e-12)
    np.testing.assert_allclose(lw.cov, C, atol=1e-12)


@pytest.mark.parametrize("name", ["sde_dpmpp_1", "sde_dpmpp_2m"])
def test_every_step_reads_its_draw(name):
    seen = []

    def noise(i):
        seen.append(i)
        return np.zeros((1, 2))

    infos = []
    get_sampler(name).fn(
        A.vp_model(DATA, NS, "eps"),
        np.zeros((1, 2)),
        noise_schedule=NS,
        steps=6,
        noise=noise,
        callback=infos.append,
    )
    assert seen == list(range(6))
    assert [i.i for i in infos] == list(range(6)) and infos[0].t == 1.0


def test_prediction_types_give_the_same_sample():
    x = np.array([[0.3, -1.1], [2.0, 0.4]])
    z = np.random.default_rng(0).standard_normal((5, 2, 2))
    out = {
        k: get_sampler("sde_dpmpp_2m").fn(
            A.vp_model(DATA, NS, k), x, noise_schedule=NS, steps=5, noise=z, model_type=k
        )
        for k in ("eps", "x0", "v", "score")
    }
    for k in ("x0", "v", "score"):
        np.testing.assert_allclose(out[k], out["eps"], rtol=1e-12, atol=1e-12)


def test_lower_order_final_and_time_grid():
    x = np.array([[0.3, -1.1]])
    z = np.random.default_rng(1).standard_normal((5, 1, 2))
    fn = get_sampler("sde_dpmpp_2m").fn
    model = A.vp_model(DATA, NS, "eps")
    ts = [1.0, 0.6, 0.3, 0.1, 0.03, 0.01]
    a = fn(model, x, noise_schedule=NS, noise=z, time_grid=ts, lower_order_final="never")
    b = fn(model, x, noise_schedule=NS, noise=z, time_grid=ts)  # diffusers: last step first order
    assert not np.allclose(a, b)
    c = fn(model, x, noise_schedule=NS, noise=z, steps=5, skip_type="time_uniform", t_end=0.2)
    d = fn(model, x, noise_schedule=NS, noise=z, time_grid=np.linspace(1.0, 0.2, 6))
    np.testing.assert_allclose(c, d, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Adaptive DPM-Solver-12 / 23
# ---------------------------------------------------------------------------------------------


def flow_map(t0, t1):
    a0, s0, a1, s1 = (
        float(NS.marginal_alpha(t0)),
        float(NS.marginal_std(t0)),
        float(NS.marginal_alpha(t1)),
        float(NS.marginal_std(t1)),
    )
    w, U = np.linalg.eigh(COV)
    M = U @ np.diag(np.sqrt((a1 * a1 * w + s1 * s1) / (a0 * a0 * w + s0 * s0))) @ U.T
    return M, a1 * MU - M @ (a0 * MU)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver"])
def test_adaptive_error_follows_the_tolerance(order, algorithm_type):
    M, c = flow_map(1.0, T_END)
    errs, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        infos = []

        def run(xT, nz, rtol=rtol):
            y, info = get_sampler("dpm_solver_adaptive").fn(
                A.vp_model(DATA, NS, "eps"),
                xT,
                noise_schedule=NS,
                steps=None,
                t_end=T_END,
                order=order,
                algorithm_type=algorithm_type,
                rtol=rtol,
                atol=rtol / 10,
                return_info=True,
            )
            infos.append(info)
            return y

        lw = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=0)
        errs.append(float(np.linalg.norm(lw.M - M) + np.linalg.norm(lw.c - c)))
        nfes.append(infos[0]["nfe"])
        assert infos[0]["t"][0] == 1.0 and infos[0]["t"][-1] == T_END
        assert infos[0]["nfe"] == order * infos[0]["steps"]
    assert errs[0] > errs[1] > errs[2]
    assert nfes[0] < nfes[1] < nfes[2]
    assert errs[2] < 2e-3


def test_adaptive_replay_is_bit_identical():
    x = np.array([[0.7, -0.3], [0.1, 1.2]])
    fn = get_sampler("dpm_solver_adaptive").fn
    model = A.vp_model(DATA, NS, "eps")
    y, info = fn(model, x, noise_schedule=NS, steps=None, rtol=1e-3, atol=1e-4, return_info=True)
    assert info["n_reject"] > 0
    z = fn(model, x, noise_schedule=NS, steps=None, adaptive=False, time_grid=info["t"])
    np.testing.assert_array_equal(z, y)


def test_adaptive_fixed_steps_is_the_single_step_solver():
    """adaptive=False, order 2, on the logSNR grid is single-step DPM-Solver++(2S) (r1 = 1/2) on that grid."""
    x = np.array([[0.7, -0.3]])
    model = A.vp_model(DATA, NS, "eps")
    a = get_sampler("dpm_solver_adaptive").fn(
        model, x, noise_schedule=NS, steps=4, adaptive=False, order=2, skip_type="logSNR"
    )
    b = get_sampler("dpmpp_2s").fn(model, x, noise_schedule=NS, steps=8, skip_type="logSNR")
    np.testing.assert_allclose(a, b, rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

X = np.zeros((1, 2))
MODEL = A.vp_model(DATA, NS, "eps")


@pytest.mark.parametrize(
    "name,options,exc,msg",
    [
        (
            "sde_dpmpp_2m",
            {"solver_type": "bh2"},
            UnknownNameError,
            r"solver_type='bh2' is not a known SDE-DPM-Solver\+\+ solver type; allowed: 'midpoint', 'heun'",
        ),
        (
            "sde_dpmpp_2m",
            {"lower_order_final": "sometimes"},
            UnknownNameError,
            r"lower_order_final='sometimes' is not a known rule",
        ),
        (
            "sde_dpmpp_1",
            {"model_type": "flow"},
            UnknownNameError,
            r"model_type='flow' is not a known prediction type",
        ),
        (
            "sde_dpmpp_1",
            {"t_start": 0.5, "t_end": 0.7},
            RefdiffValueError,
            r"t_end=0.7 is invalid: must be below t_start = 0.5",
        ),
        (
            "sde_dpmpp_1",
            {"time_grid": [1.0, 0.5, 0.6]},
            RefdiffValueError,
            r"time_grid=.* is invalid: expected at least two strictly decreasing times",
        ),
        (
            "sde_dpmpp_1",
            {"steps": 0},
            RefdiffValueError,
            r"steps=0 is invalid: expected an integer >= 1",
        ),
        (
            "sde_dpmpp_1",
            {"denoise_to_zero": 1},
            RefdiffValueError,
            r"denoise_to_zero=1 is invalid: expected True or False",
        ),
        (
            "dpm_solver_adaptive",
            {"order": 1},
            RefdiffValueError,
            r"order=1 is invalid: expected an integer >= 2",
        ),
        (
            "dpm_solver_adaptive",
            {"algorithm_type": "sde"},
            UnknownNameError,
            r"algorithm_type='sde' is not a known",
        ),
        ("dpm_solver_adaptive", {"atol": 0.0}, RefdiffValueError, r"atol=0.0 is invalid"),
        ("dpm_solver_adaptive", {"theta": 0.0}, RefdiffValueError, r"theta=0.0 is invalid"),
        (
            "dpm_solver_adaptive",
            {"adaptive": False, "steps": None},
            RefdiffValueError,
            r"steps=None is invalid: expected an integer >= 1",
        ),
        (
            "dpm_solver_adaptive",
            {"rtol": 1e-12, "atol": 1e-12, "max_steps": 4},
            RefdiffValueError,
            r"max_steps=4 is invalid: the adaptive solver made 4 attempts",
        ),
    ],
)
def test_bad_options_are_refused(name, options, exc, msg):
    kw = {"steps": 4, **options}
    with pytest.raises(exc, match=msg):
        get_sampler(name).fn(MODEL, X, noise_schedule=NS, noise=np.zeros((10, 1, 2)), **kw)


@pytest.mark.parametrize("name", ["sde_dpmpp_1", "sde_dpmpp_2m", "dpm_solver_adaptive"])
def test_bad_schedule_and_model_are_refused(name):
    fn = get_sampler(name).fn
    with pytest.raises(
        RefdiffValueError, match=r"noise_schedule=.* is invalid: expected a refdiff"
    ):
        fn(MODEL, X, noise_schedule="linear", steps=3, noise=np.zeros((3, 1, 2)))
    with pytest.raises(
        Exception, match=r"model output has shape \(1, 3\) but x has shape \(1, 2\)"
    ):
        fn(lambda x, t: np.zeros((1, 3)), X, noise_schedule=NS, steps=3, noise=np.zeros((3, 1, 2)))


def test_missing_noise_is_refused():
    with pytest.raises(
        RefdiffValueError, match=r"noise=None is invalid: this sampler is stochastic"
    ):
        get_sampler("sde_dpmpp_2m").fn(MODEL, X, noise_schedule=NS, steps=3)
