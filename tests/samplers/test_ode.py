"""Probability-flow ODE samplers (Euler, Heun, RK45) against the closed-form flow of Gaussian data.

For x0 ~ N(μ, Σ) and x_t = α_t x0 + σ_t z the probability-flow ODE is linear and its solution is
x(t) = α_t μ + √(C_t C_s⁻¹)(x(s) - α_s μ), C_t = α_t²Σ + σ_t²I (all matrices commute). The first
test checks that closed form against SciPy's DOP853 at rtol 1e-13 on the ODE written out here,
so the later tests rest on an independently verified reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate

from refdiff import analytic as A
from refdiff.samplers import get_sampler
from refdiff.samplers import ode as O
from refdiff.sde import SubVPSDE, VESDE, VPSDE

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
X = np.array([[1.0, 2.0], [-3.0, 0.5]])
SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)]


def ac(sde, t):
    return float(sde.marginal_alpha(t)), float(sde.marginal_std(t))


def exact_flow(sde, x, s, t):
    a0, s0 = ac(sde, s)
    a1, s1 = ac(sde, t)
    w, U = np.linalg.eigh(COV)
    M = U @ np.diag(np.sqrt((a1 * a1 * w + s1 * s1) / (a0 * a0 * w + s0 * s0))) @ U.T
    return a1 * MU + (x - a0 * MU) @ M.T


def score(sde):
    return lambda x, t: DATA.score(x, sde.marginal_alpha(t), sde.marginal_std(t))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_closed_form_flow_matches_scipy(sde):
    """The reference itself: DOP853 at rtol 1e-13 on dx/dt = f(t)x + ½g(t)² C_t⁻¹(x - α_t μ)."""

    def rhs(t, y):
        a, s = ac(sde, t)
        C = a * a * COV + s * s * np.eye(2)
        f, g = sde.sde(y.reshape(1, 2), np.array([t]))
        lin = f.reshape(2)
        return lin + 0.5 * float(g[0]) ** 2 * np.linalg.solve(C, y - a * MU)

    for x in X:
        sol = scipy.integrate.solve_ivp(
            rhs, (1.0, 1e-3), x, method="DOP853", rtol=1e-13, atol=1e-13
        )
        np.testing.assert_allclose(
            sol.y[:, -1], exact_flow(sde, x, 1.0, 1e-3), rtol=1e-10, atol=1e-11
        )


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_rk45_reaches_the_exact_flow(sde):
    """score_sde's ODE sampler (solve_ivp RK45) at tight tolerances hits the closed form; at its
    defaults (rtol = atol = 1e-5) the error is of that order."""
    out, nfe = O.sample_ode_rk45(score(sde), X, sde=sde, rtol=1e-10, atol=1e-10, return_nfe=True)
    np.testing.assert_allclose(out, exact_flow(sde, X, 1.0, 1e-3), rtol=1e-7, atol=1e-8)
    assert nfe > 10
    out = O.sample_ode_rk45(score(sde), X, sde=sde)
    assert 1e-9 < np.abs(out - exact_flow(sde, X, 1.0, 1e-3)).max() < 1e-2


def test_euler_and_heun_steps():
    """Euler x + F dt and Heun x + ½(F + F(x + F dt)) dt with F the probability-flow drift f - ½g²s."""
    sde = VPSDE()
    t, dt = 0.7, -0.05

    def F(x, tt):
        beta = 0.1 + tt * 19.9
        return -0.5 * beta * x - 0.5 * beta * score(sde)(x, np.full(x.shape[0], tt))

    np.testing.assert_allclose(
        O.ode_euler_step(sde, score(sde), X, t, dt), X + F(X, t) * dt, rtol=1e-14
    )
    xe = X + F(X, t) * dt
    np.testing.assert_allclose(
        O.ode_heun_step(sde, score(sde), X, t, dt),
        X + 0.5 * (F(X, t) + F(xe, t + dt)) * dt,
        rtol=1e-14,
    )


@pytest.mark.parametrize("name,order", [("ode_euler", 1.0), ("ode_heun", 2.0)])
@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_fixed_step_orders(name, order, sde):
    fn = get_sampler(name).fn
    steps = [40, 80, 160]
    errs = [
        np.abs(fn(score(sde), X, sde=sde, steps=n, eps=0.3) - exact_flow(sde, X, 1.0, 0.3)).max()
        for n in steps
    ]
    assert abs(-np.polyfit(np.log(steps), np.log(errs), 1)[0] - order) < 0.15, errs


def test_denoise_step_is_the_noise_free_reverse_diffusion():
    """score_sde's ODE ``denoise``: x - f_i + G_i² s of the DDPM chain at eps."""
    sde = VPSDE()
    eps = 1e-3
    out = O.sample_ode_euler(score(sde), X, sde=sde, steps=5, eps=eps, denoise=True)
    before = O.sample_ode_euler(score(sde), X, sde=sde, steps=5, eps=eps)
    i = round(eps * 999)
    beta = (0.1 + i * 19.9 / 999) / 1000
    s = score(sde)(before, np.full(2, eps))
    np.testing.assert_allclose(out, (2 - np.sqrt(1 - beta)) * before + beta * s, rtol=1e-13)


def test_rk45_is_numpy_only():
    xs = pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError, match="oracle-side: expected a NumPy array"):
        O.sample_ode_rk45(score(VPSDE()), xs.asarray(X), sde=VPSDE())


def test_euler_heun_run_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    sde = VPSDE()

    def sc(x, t):
        tt = float(t[0])
        return DATA.score(x, float(sde.marginal_alpha(tt)), float(sde.marginal_std(tt)))

    for name in ["ode_euler", "ode_heun"]:
        fn = get_sampler(name).fn
        np.testing.assert_allclose(
            np.asarray(fn(sc, xs.asarray(X), sde=sde, steps=7)),
            fn(sc, X, sde=sde, steps=7),
            rtol=1e-15,
            atol=1e-15,
        )


@pytest.mark.parametrize("name", ["ode_euler", "ode_heun"])
def test_callback_reports_grid_times(name):
    """callback(info) before each step with t_i = linspace(T, eps, N + 1)[i] and the state there (x_T first)."""
    sde = VPSDE()
    x = np.array([[1.0, 2.0], [-3.0, 0.5]])
    infos, prog = [], []
    get_sampler(name).fn(
        lambda xx, t: -xx,
        x,
        sde=sde,
        steps=4,
        callback=infos.append,
        progress=lambda i, n: prog.append((i, n)),
    )
    assert [f.t for f in infos] == O.ode_time_grid(sde, 4)[:-1]
    assert [f.i for f in infos] == [0, 1, 2, 3] and prog == [(i, 4) for i in range(1, 5)]
    assert infos[0].x is x and infos[0].denoised is None


def test_rk45_callback_reports_accepted_steps_and_keeps_the_result():
    """RK45 with a callback runs solve_ivp's own step loop: the same result, t decreasing from T."""
    sde = VPSDE()
    x = np.array([[1.0, 2.0], [-3.0, 0.5]])
    score = lambda xx, t: -xx
    ref = O.sample_ode_rk45(score, x, sde=sde)
    infos = []
    got = O.sample_ode_rk45(score, x, sde=sde, callback=infos.append)
    np.testing.assert_array_equal(got, ref)
    ts = [f.t for f in infos]
    assert ts[0] == 1.0 and all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] > 1e-3
    assert [f.i for f in infos] == list(range(len(infos)))
