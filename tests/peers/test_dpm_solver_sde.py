"""SDE-DPM-Solver++ against diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), live,
and DPM-Solver's adaptive solver (its ``dpm_solver_adaptive``, re-derived here from Lu et al. 2022a,
App. C, in the form of its reference code) against refdiff.samplers.dpm_solver_sde.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff import schedules
from refdiff.samplers import get_sampler
from refdiff.samplers.dpm_solver import NoiseScheduleVP

DATA = A.GaussianData([0.5, -0.2, 1.0], [[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.8]])
B, D = 3, 3


# --------------------------------------------------------------------------------------------
# diffusers DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++"
# --------------------------------------------------------------------------------------------


def _diffusers_case(order, solver_type, final_sigmas_type, steps=10):
    pytest.importorskip("diffusers", reason="diffusers is the live peer of this row")
    torch = pytest.importorskip("torch", reason="diffusers schedulers run on torch")
    from diffusers import DPMSolverMultistepScheduler

    N = 1000
    betas = np.linspace(1e-4, 0.02, N)
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=N,
        beta_schedule="linear",
        algorithm_type="sde-dpmsolver++",
        solver_order=order,
        solver_type=solver_type,
        final_sigmas_type=final_sigmas_type,
    )
    sched.set_timesteps(steps)
    ab = np.cumprod(1.0 - betas)

    def eps_at(x, n):
        return DATA.eps(x, math.sqrt(ab[n]), math.sqrt(1.0 - ab[n]))

    rng = np.random.default_rng(5)
    xT = rng.standard_normal((B, D))
    z = rng.standard_normal((steps, B, D))
    x = torch.from_numpy(xT.copy())
    for i, t in enumerate(sched.timesteps):
        out = torch.from_numpy(eps_at(x.double().numpy(), int(t)))
        x = sched.step(out, t, x, variance_noise=torch.from_numpy(z[i])).prev_sample
    peer = x.double().numpy()

    ns = NoiseScheduleVP.discrete(schedules.from_betas(betas), clip_lambda=None)

    def model(x, t):  # continuous t_n = (n + 1)/N of the discrete schedule
        return eps_at(x, int(round(float(t[0]) * N)) - 1)

    grid = [(int(t) + 1) / N for t in sched.timesteps]
    return peer, model, ns, grid, xT, z


@pytest.mark.parametrize("order,solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun")])
def test_diffusers_sde_dpmsolver_pp_sigma_min(order, solver_type):
    """final_sigmas_type="sigma_min": the last step goes to t_0 = 1/N (ᾱ_0), every step draws."""
    peer, model, ns, grid, xT, z = _diffusers_case(order, solver_type, "sigma_min")
    name = "sde_dpmpp_1" if order == 1 else "sde_dpmpp_2m"
    opts = {} if order == 1 else {"solver_type": solver_type, "lower_order_final": "diffusers"}
    got = get_sampler(name).fn(
        model, xT, noise_schedule=ns, time_grid=grid + [1.0 / 1000], noise=z, **opts
    )
    # diffusers steps in float32 (it casts the sample); measured max |Δ| 1.3e-6 to 1.6e-6
    np.testing.assert_allclose(got, peer, rtol=5e-6, atol=5e-6)


@pytest.mark.parametrize("order,solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun")])
def test_diffusers_sde_dpmsolver_pp_zero(order, solver_type):
    """final_sigmas_type="zero" (diffusers' default): its last step (σ → 0) returns x̂0 at the last
    timestep, which is refdiff's ``denoise_to_zero=True`` after the other steps, with the multistep
    orders kept to the end (``lower_order_final="never"``: diffusers lowers only the step to 0)."""
    peer, model, ns, grid, xT, z = _diffusers_case(order, solver_type, "zero")
    name = "sde_dpmpp_1" if order == 1 else "sde_dpmpp_2m"
    opts = {} if order == 1 else {"solver_type": solver_type, "lower_order_final": "never"}
    got = get_sampler(name).fn(
        model, xT, noise_schedule=ns, time_grid=grid, noise=z[:-1], denoise_to_zero=True, **opts
    )
    np.testing.assert_allclose(got, peer, rtol=5e-6, atol=5e-6)  # measured 3e-7 to 9e-7


# --------------------------------------------------------------------------------------------
# DPM-Solver's dpm_solver_adaptive, re-derived (linear VP schedule, data or noise prediction)
# --------------------------------------------------------------------------------------------


class LinearVP:
    """DPM-Solver's NoiseScheduleVP('linear') closed forms."""

    beta_0, beta_1 = 0.1, 20.0

    def marginal_log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def marginal_alpha(self, t):
        return math.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):
        return math.sqrt(1.0 - math.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t):
        log_mean = self.marginal_log_mean_coeff(t)
        return log_mean - 0.5 * math.log(1.0 - math.exp(2.0 * log_mean))

    def inverse_lambda(self, lamb):
        tmp = 2.0 * (self.beta_1 - self.beta_0) * np.logaddexp(-2.0 * lamb, 0.0)
        Delta = self.beta_0**2 + tmp
        return float(tmp / (math.sqrt(Delta) + self.beta_0) / (self.beta_1 - self.beta_0))


class DPMSolverRef:
    """The updates of DPM-Solver's ``DPM_Solver`` class (solver_type="dpmsolver")."""

    def __init__(self, pp: bool):
        self.ns = LinearVP()
        self.pp = pp
        self.nfe = 0

    def model_fn(self, x, t):
        self.nfe += 1
        a, s = self.ns.marginal_alpha(t), self.ns.marginal_std(t)
        return DATA.x0(x, a, s) if self.pp else DATA.eps(x, a, s)

    def _q(self, s, t):
        ns = self.ns
        return (
            ns.marginal_lambda(s),
            ns.marginal_lambda(t),
            ns.marginal_log_mean_coeff(s),
            ns.marginal_log_mean_coeff(t),
            ns.marginal_std(s),
            ns.marginal_std(t),
        )

    def first_update(self, x, s, t, model_s=None):
        lam_s, lam_t, la_s, la_t, sig_s, sig_t = self._q(s, t)
        h = lam_t - lam_s
        if model_s is None:
            model_s = self.model_fn(x, s)
        if self.pp:
            x_t = sig_t / sig_s * x - math.exp(la_t) * math.expm1(-h) * model_s
        else:
            x_t = math.exp(la_t - la_s) * x - sig_t * math.expm1(h) * model_s
        return x_t, {"model_s": model_s}

    def second_update(self, x, s, t, r1=0.5, model_s=None):
        ns = self.ns
        lam_s, lam_t, la_s, la_t, sig_s, sig_t = self._q(s, t)
        h = lam_t - lam_s
        s1 = ns.inverse_lambda(lam_s + r1 * h)
        la_s1, sig_s1 = ns.marginal_log_mean_coeff(s1), ns.marginal_std(s1)
        a_s1, a_t = math.exp(la_s1), math.exp(la_t)
        if model_s is None:
            model_s = self.model_fn(x, s)
        if self.pp:
            phi_11, phi_1 = math.expm1(-r1 * h), math.expm1(-h)
            x_s1 = sig_s1 / sig_s * x - a_s1 * phi_11 * model_s
            model_s1 = self.model_fn(x_s1, s1)
            x_t = (
                sig_t / sig_s * x
                - a_t * phi_1 * model_s
                - 0.5 / r1 * (a_t * phi_1) * (model_s1 - model_s)
            )
        else:
            phi_11, phi_1 = math.expm1(r1 * h), math.expm1(h)
            x_s1 = math.exp(la_s1 - la_s) * x - sig_s1 * phi_11 * model_s
            model_s1 = self.model_fn(x_s1, s1)
            x_t = (
                math.exp(la_t - la_s) * x
                - sig_t * phi_1 * model_s
                - 0.5 / r1 * (sig_t * phi_1) * (model_s1 - model_s)
            )
        return x_t, {"model_s": model_s, "model_s1": model_s1}

    def third_update(self, x, s, t, r1=1 / 3, r2=2 / 3, model_s=None, model_s1=None):
        ns = self.ns
        lam_s, lam_t, la_s, la_t, sig_s, sig_t = self._q(s, t)
        h = lam_t - lam_s
        s1, s2 = ns.inverse_lambda(lam_s + r1 * h), ns.inverse_lambda(lam_s + r2 * h)
        la_s1, la_s2 = ns.marginal_log_mean_coeff(s1), ns.marginal_log_mean_coeff(s2)
        sig_s1, sig_s2 = ns.marginal_std(s1), ns.marginal_std(s2)
        a_s1, a_s2, a_t = math.exp(la_s1), math.exp(la_s2), math.exp(la_t)
        if model_s is None:
            model_s = self.model_fn(x, s)
        if self.pp:
            phi_11, phi_12, phi_1 = math.expm1(-r1 * h), math.expm1(-r2 * h), math.expm1(-h)
            phi_22 = math.expm1(-r2 * h) / (r2 * h) + 1.0
            phi_2 = phi_1 / h + 1.0
            if model_s1 is None:
                x_s1 = sig_s1 / sig_s * x - a_s1 * phi_11 * model_s
                model_s1 = self.model_fn(x_s1, s1)
            x_s2 = (
                sig_s2 / sig_s * x
                - a_s2 * phi_12 * model_s
                + r2 / r1 * (a_s2 * phi_22) * (model_s1 - model_s)
            )
            model_s2 = self.model_fn(x_s2, s2)
            x_t = (
                sig_t / sig_s * x
                - a_t * phi_1 * model_s
                + 1.0 / r2 * (a_t * phi_2) * (model_s2 - model_s)
            )
        else:
            phi_11, phi_12, phi_1 = math.expm1(r1 * h), math.expm1(r2 * h), math.expm1(h)
            phi_22 = math.expm1(r2 * h) / (r2 * h) - 1.0
            phi_2 = phi_1 / h - 1.0
            if model_s1 is None:
                x_s1 = math.exp(la_s1 - la_s) * x - sig_s1 * phi_11 * model_s
                model_s1 = self.model_fn(x_s1, s1)
            x_s2 = (
                math.exp(la_s2 - la_s) * x
                - sig_s2 * phi_12 * model_s
                - r2 / r1 * (sig_s2 * phi_22) * (model_s1 - model_s)
            )
            model_s2 = self.model_fn(x_s2, s2)
            x_t = (
                math.exp(la_t - la_s) * x
                - sig_t * phi_1 * model_s
                - 1.0 / r2 * (sig_t * phi_2) * (model_s2 - model_s)
            )
        return x_t

    def adaptive(
        self, x, order, t_T, t_0, h_init=0.05, atol=0.0078, rtol=0.05, theta=0.9, t_err=1e-5
    ):
        ns = self.ns
        s = t_T
        lambda_s, lambda_0 = ns.marginal_lambda(s), ns.marginal_lambda(t_0)
        h = h_init
        x_prev = x
        accepted = [s]
        if order == 2:
            lower = lambda x, s, t: self.first_update(x, s, t)  # noqa: E731
            higher = lambda x, s, t, **kw: self.second_update(x, s, t, r1=0.5, **kw)[0]  # noqa: E731
        else:
            lower = lambda x, s, t: self.second_update(x, s, t, r1=1 / 3)  # noqa: E731
            higher = lambda x, s, t, **kw: self.third_update(x, s, t, r1=1 / 3, r2=2 / 3, **kw)  # noqa: E731
        while abs(s - t_0) > t_err:
            t = ns.inverse_lambda(lambda_s + h)
            x_lower, kw = lower(x, s, t)
            x_higher = higher(x, s, t, **kw)
            delta = np.maximum(atol, rtol * np.maximum(np.abs(x_lower), np.abs(x_prev)))
            E = np.max(np.sqrt(np.mean(((x_higher - x_lower) / delta) ** 2, axis=1)))
            if E <= 1.0:
                x, s, x_prev = x_higher, t, x_lower
                lambda_s = ns.marginal_lambda(s)
                accepted.append(s)
            h = min(theta * h * float(E) ** (-1.0 / order), lambda_0 - lambda_s)
        return x, accepted


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("rtol", [0.05, 0.005])
def test_dpm_solver_adaptive(order, algorithm_type, rtol):
    xT = np.random.default_rng(7).standard_normal((B, D))
    ref = DPMSolverRef(pp=algorithm_type == "dpmsolver++")
    t_0 = 1e-3
    peer, accepted = ref.adaptive(xT, order, 1.0, t_0, rtol=rtol, atol=rtol / 6)
    ns = NoiseScheduleVP.linear()
    got, info = get_sampler("dpm_solver_adaptive").fn(
        A.vp_model(DATA, ns, "eps" if algorithm_type == "dpmsolver" else "x0"),
        xT,
        noise_schedule=ns,
        steps=None,
        order=order,
        algorithm_type=algorithm_type,
        model_type="eps" if algorithm_type == "dpmsolver" else "x0",
        t_end=t_0,
        rtol=rtol,
        atol=rtol / 6,
        return_info=True,
    )
    assert len(info["t"]) == len(accepted)
    assert info["nfe"] == ref.nfe
    # DPM-Solver lands on inverse_lambda(λ(t_0)) ≈ t_0; refdiff snaps the last step to t_0
    np.testing.assert_allclose(info["t"], accepted, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got, peer, rtol=1e-11, atol=1e-12)  # measured ≤ 3.3e-14
