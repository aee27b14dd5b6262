"""Peer rows of docs/PEERS.md, DPM-Solver section: diffusers' DPMSolver*Scheduler, DPM-Solver's
``DPM_Solver.sample`` and k-diffusion's DPM-Solver++ loops, each reproduced by ONE refdiff call.

* diffusers (live, CPU torch): the scheduler's ``set_timesteps`` / ``step`` loop with an exact
  ε-network of Gaussian data on 1×3×8×8, and the refdiff call on diffusers' own integer timesteps
  (``time_unit="index"``, the network sees the same integers with ``model_time="index"``). The
  refdiff schedule is built from diffusers' float32 ᾱ table, so the comparison measures the
  sampler; diffusers steps in float32 (it upcasts the sample and keeps σ in float32), so the
  agreement is at float32 level (relative max difference ≤ 4e-6; measured figures in
  docs/PEERS.md).
* DPM-Solver (Lu et al., ``dpm_solver_pytorch.py``) is not on the package registry: its
  ``NoiseScheduleVP('linear')``, ``get_time_steps``, the single-step orders and inner grids of
  ``sample`` and the update formulas are re-derived below from the published code's formulas, in
  its order of operations, in float64.
* k-diffusion is not a dependency of the test extra: ``sample_dpmpp_2m`` (Karras σ grid, t = -log σ)
  and ``DPMSolver.dpm_solver_fast`` (ε form, λ-uniform grid) are re-derived below likewise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff.edm import karras_sigmas
from refdiff.samplers import dpm_solver as D
from refdiff.sde import VESDE

SHAPE = (1, 3, 8, 8)
_rng = np.random.default_rng(20220601)
MU = 0.5 * _rng.standard_normal(SHAPE[1:])
S2 = 0.25  # data x0 ~ N(MU, S2 I), per pixel
XT = _rng.standard_normal(SHAPE)


def eps_exact(x, alpha, sigma):
    """E[ε | x_t] for x0 ~ N(μ, s² I): σ (x - α μ)/(α² s² + σ²) (closed form, elementwise)."""
    return sigma * (x - alpha * MU) / (alpha * alpha * S2 + sigma * sigma)


def x0_exact(x, alpha, sigma):
    """E[x0 | x_t] = μ + α s² (x - α μ)/(α² s² + σ²)."""
    return MU + alpha * S2 * (x - alpha * MU) / (alpha * alpha * S2 + sigma * sigma)


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------------------------
# diffusers (live)
# --------------------------------------------------------------------------------------------


def _diffusers(name: str, **config):
    diffusers = pytest.importorskip(
        "diffusers", reason="diffusers (test extra) checks the live peer"
    )
    return getattr(diffusers, name)(num_train_timesteps=1000, beta_schedule="linear", **config)


def _run(sched, n: int, net):
    """diffusers' loop in float32; ``net(x, t_int)`` is the float64 network; returns (sample, ᾱ table)."""
    import torch

    sched.set_timesteps(n)
    x = torch.from_numpy(XT.astype(np.float32))
    for t in sched.timesteps:
        out = net(x.double().numpy(), int(t))
        x = sched.step(torch.from_numpy(out.astype(np.float32)), t, x).prev_sample
    return x.double().numpy()


def _index_eps(ac):
    """The ε-network of a discrete schedule: model(x, t) with integer t (asserted) -> exact ε at ᾱ_t."""

    def net(x, t):
        n = float(np.asarray(t).reshape(-1)[0])
        assert n == round(n), n
        ab = ac[int(n)]
        return eps_exact(x, math.sqrt(ab), math.sqrt(1.0 - ab))

    return net


def _x0_net(x, t):
    """A time-independent data prediction (for the Karras rows, where diffusers rounds the network's t)."""
    return MU + 0.05 * x


MULTISTEP_ROWS = [
    # (diffusers config, n, the refdiff sampler, its options)
    (
        "pp2_zero",
        dict(algorithm_type="dpmsolver++", solver_order=2),
        10,
        "dpmpp_2m",
        dict(final_sigmas_type="zero", lower_order_final="diffusers"),
    ),
    (
        "pp2_zero_20",
        dict(algorithm_type="dpmsolver++", solver_order=2),
        20,
        "dpmpp_2m",
        dict(final_sigmas_type="zero", lower_order_final="diffusers"),
    ),
    (
        "pp3_zero",
        dict(algorithm_type="dpmsolver++", solver_order=3),
        10,
        "dpmpp_3m",
        dict(final_sigmas_type="zero", lower_order_final="diffusers", d2_scale="dpm_solver"),
    ),
    (
        "pp3_zero_20",
        dict(algorithm_type="dpmsolver++", solver_order=3),
        20,
        "dpmpp_3m",
        dict(final_sigmas_type="zero", lower_order_final="diffusers", d2_scale="dpm_solver"),
    ),
    (
        "pp2_sigma_min",
        dict(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="sigma_min"),
        20,
        "dpmpp_2m",
        dict(final_sigmas_type="sigma_min", lower_order_final="diffusers"),
    ),
    (
        "pp2_heun",
        dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="heun"),
        10,
        "dpmpp_2m",
        dict(final_sigmas_type="zero", lower_order_final="diffusers", solver_type="taylor"),
    ),
    (
        "pp3_no_lower_final",
        dict(
            algorithm_type="dpmsolver++",
            solver_order=3,
            lower_order_final=False,
            final_sigmas_type="sigma_min",
        ),
        10,
        "dpmpp_3m",
        dict(final_sigmas_type="sigma_min", lower_order_final="never", d2_scale="dpm_solver"),
    ),
    (
        "pp3_euler_at_final",
        dict(
            algorithm_type="dpmsolver++",
            solver_order=3,
            lower_order_final=False,
            euler_at_final=True,
            final_sigmas_type="sigma_min",
        ),
        10,
        "dpmpp_3m",
        dict(
            final_sigmas_type="sigma_min", lower_order_final="euler_at_final", d2_scale="dpm_solver"
        ),
    ),
    (
        "pp2_euler_at_final_20",
        dict(
            algorithm_type="dpmsolver++",
            solver_order=2,
            euler_at_final=True,
            final_sigmas_type="sigma_min",
        ),
        20,
        "dpmpp_2m",
        dict(final_sigmas_type="sigma_min", lower_order_final="euler_at_final"),
    ),
    (
        "eps2_sigma_min",
        dict(algorithm_type="dpmsolver", solver_order=2, final_sigmas_type="sigma_min"),
        20,
        "dpm_solver_2m",
        dict(final_sigmas_type="sigma_min", lower_order_final="diffusers"),
    ),
    (
        "eps3_sigma_min",
        dict(algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min"),
        10,
        "dpm_solver_3m",
        dict(final_sigmas_type="sigma_min", lower_order_final="diffusers", d2_scale="dpm_solver"),
    ),
    (
        "pp2_trailing",
        dict(algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"),
        10,
        "dpmpp_2m",
        dict(final_sigmas_type="zero", lower_order_final="diffusers"),
    ),
    (
        "pp2_leading",
        dict(
            algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="leading", steps_offset=1
        ),
        10,
        "dpmpp_2m",
        dict(final_sigmas_type="zero", lower_order_final="diffusers"),
    ),
]


@pytest.mark.parametrize(
    "row,config,n,name,options", MULTISTEP_ROWS, ids=[r[0] for r in MULTISTEP_ROWS]
)
def test_diffusers_multistep(row, config, n, name, options):
    """DPMSolverMultistepScheduler(config) on its integer timesteps = one refdiff call."""
    from refdiff.samplers import get_sampler

    sched = _diffusers("DPMSolverMultistepScheduler", **config)
    ac = sched.alphas_cumprod.double().numpy()
    ref = _run(sched, n, _index_eps(ac))
    ns = D.NoiseScheduleVP.discrete(alphas_cumprod=ac, clip_lambda=None)
    got = get_sampler(name).fn(
        _index_eps(ac),
        XT,
        noise_schedule=ns,
        timesteps=sched.timesteps.numpy(),
        time_unit="index",
        model_time="index",
        **options,
    )
    assert _rel(got, ref) <= 4e-6, _rel(got, ref)


@pytest.mark.parametrize("order", [2, 3])
def test_diffusers_multistep_karras_sigmas(order):
    """use_karras_sigmas=True: refdiff steps on diffusers' σ grid (sigmas=, λ = -log σ) to σ = 0."""
    from refdiff.samplers import get_sampler

    sched = _diffusers(
        "DPMSolverMultistepScheduler",
        algorithm_type="dpmsolver++",
        solver_order=order,
        use_karras_sigmas=True,
        prediction_type="sample",
    )
    ref = _run(sched, 15, _x0_net)
    ns = D.NoiseScheduleVP.discrete(
        alphas_cumprod=sched.alphas_cumprod.double().numpy(), clip_lambda=None
    )
    got = get_sampler(f"dpmpp_{order}m").fn(
        _x0_net,
        XT,
        noise_schedule=ns,
        sigmas=sched.sigmas.numpy()[:-1],
        final_sigmas_type="zero",
        model_type="x0",
        lower_order_final="diffusers",
        d2_scale="dpm_solver",
    )
    assert _rel(got, ref) <= 4e-6, _rel(got, ref)


@pytest.mark.parametrize("order", [2, 3])
def test_diffusers_multistep_karras_sigmas_with_a_time_dependent_network(order):
    """use_karras_sigmas=True feeds the network round(t(σ)), t(σ) linear in log σ over the index:
    model_time="nearest_index" gives the network the same integer timesteps (the ε-network here
    asserts an integer t and returns the exact ε at ᾱ_t, so a wrong t changes the result)."""
    from refdiff.samplers import get_sampler

    sched = _diffusers(
        "DPMSolverMultistepScheduler",
        algorithm_type="dpmsolver++",
        solver_order=order,
        use_karras_sigmas=True,
    )
    ac = sched.alphas_cumprod.double().numpy()
    ref = _run(sched, 15, _index_eps(ac))
    ns = D.NoiseScheduleVP.discrete(alphas_cumprod=ac, clip_lambda=None)
    seen = []

    def net(x, t):
        seen.append(float(np.asarray(t).reshape(-1)[0]))
        return _index_eps(ac)(x, t)

    got = get_sampler(f"dpmpp_{order}m").fn(
        net,
        XT,
        noise_schedule=ns,
        sigmas=sched.sigmas.numpy()[:-1],
        final_sigmas_type="zero",
        model_time="nearest_index",
        lower_order_final="diffusers",
        d2_scale="dpm_solver",
    )
    assert seen == [float(t) for t in sched.timesteps]
    assert _rel(got, ref) <= 4e-6, _rel(got, ref)


def test_diffusers_rejects_what_refdiff_takes_as_a_limit():
    """diffusers refuses final_sigmas_type='zero' for the noise form; refdiff's step into σ = 0
    takes the exact limit x = (α_t/α_s)(x_s - σ_s ε̂_s) = x̂0 (α_t = 1): the output is the data
    prediction reported at the last step, in both forms."""
    with pytest.raises(ValueError):
        _diffusers(
            "DPMSolverMultistepScheduler", algorithm_type="dpmsolver", final_sigmas_type="zero"
        )
    sched = _diffusers("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2)
    sched.set_timesteps(10)
    ac = sched.alphas_cumprod.double().numpy()
    ns = D.NoiseScheduleVP.discrete(alphas_cumprod=ac, clip_lambda=None)
    for alg in ("dpmsolver", "dpmsolver++"):
        infos = []
        out = D.sample_dpm_solver(
            _index_eps(ac),
            XT,
            noise_schedule=ns,
            algorithm_type=alg,
            timesteps=sched.timesteps.numpy(),
            time_unit="index",
            model_time="index",
            final_sigmas_type="zero",
            order=2,
            callback=infos.append,
        )
        np.testing.assert_allclose(out, infos[-1].denoised, rtol=1e-14, atol=1e-14)


SINGLESTEP_ROWS = [
    ("o2_midpoint", 2, 9, "midpoint", dict(solver_type="dpmsolver")),
    ("o2_heun", 2, 9, "heun", dict(solver_type="taylor")),
    (
        "o3_midpoint",
        3,
        10,
        "midpoint",
        dict(solver_type="dpmsolver", second_intermediate="diffusers"),
    ),
    ("o3_heun", 3, 10, "heun", dict(solver_type="taylor")),
    ("o3_heun_11", 3, 11, "heun", dict(solver_type="taylor")),
]


@pytest.mark.parametrize(
    "row,order,n,solver_type,options", SINGLESTEP_ROWS, ids=[r[0] for r in SINGLESTEP_ROWS]
)
def test_diffusers_singlestep(row, order, n, solver_type, options):
    """DPMSolverSinglestepScheduler: intermediate points on its grid (intermediate="grid"), final σ = 0."""
    sched = _diffusers(
        "DPMSolverSinglestepScheduler",
        algorithm_type="dpmsolver++",
        solver_order=order,
        solver_type=solver_type,
    )
    ac = sched.alphas_cumprod.double().numpy()
    ref = _run(sched, n, _index_eps(ac))
    ns = D.NoiseScheduleVP.discrete(alphas_cumprod=ac, clip_lambda=None)
    got = D.sample_dpm_solver(
        _index_eps(ac),
        XT,
        noise_schedule=ns,
        method="singlestep",
        order=order,
        algorithm_type="dpmsolver++",
        timesteps=sched.timesteps.numpy(),
        time_unit="index",
        model_time="index",
        final_sigmas_type="zero",
        intermediate="grid",
        **options,
    )
    assert _rel(got, ref) <= 4e-6, _rel(got, ref)


@pytest.mark.parametrize("n", [10, 9])
def test_diffusers_singlestep_order_list_with_a_final_sigma_min(n):
    """diffusers' single-step order list (lower_order_final=True) ends an even number of order-2
    evaluations with two first-order steps; lower_order_final="diffusers" reproduces it, and on
    even n DPM-Solver-fast's [2, …, 2] does not (odd n: the lists agree)."""
    sched = _diffusers(
        "DPMSolverSinglestepScheduler",
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="sigma_min",
        lower_order_final=True,
    )
    ac = sched.alphas_cumprod.double().numpy()
    ref = _run(sched, n, _index_eps(ac))
    ns = D.NoiseScheduleVP.discrete(alphas_cumprod=ac, clip_lambda=None)

    def run(rule):
        return D.sample_dpm_solver(
            _index_eps(ac),
            XT,
            noise_schedule=ns,
            method="singlestep",
            order=2,
            algorithm_type="dpmsolver++",
            timesteps=sched.timesteps.numpy(),
            time_unit="index",
            model_time="index",
            final_sigmas_type="sigma_min",
            intermediate="grid",
            lower_order_final=rule,
        )

    assert _rel(run("diffusers"), ref) <= 4e-6, _rel(run("diffusers"), ref)
    if n % 2 == 0:
        assert _rel(run("dpm_solver"), ref) > 1e-4
    else:
        np.testing.assert_array_equal(run("dpm_solver"), run("diffusers"))


def test_diffusers_singlestep_order3_midpoint_is_not_dpm_solver_3():
    """diffusers' order-3 'midpoint' u2 is the midpoint second-order step, not DPM-Solver-3's φ2 form:
    without second_intermediate="diffusers" the results differ far beyond float32 rounding."""
    sched = _diffusers("DPMSolverSinglestepScheduler", algorithm_type="dpmsolver++", solver_order=3)
    ac = sched.alphas_cumprod.double().numpy()
    ref = _run(sched, 10, _index_eps(ac))
    ns = D.NoiseScheduleVP.discrete(alphas_cumprod=ac, clip_lambda=None)
    got = D.sample_dpm_solver(
        _index_eps(ac),
        XT,
        noise_schedule=ns,
        method="singlestep",
        order=3,
        timesteps=sched.timesteps.numpy(),
        time_unit="index",
        model_time="index",
        final_sigmas_type="zero",
        intermediate="grid",
    )
    assert _rel(got, ref) > 1e-4


# --------------------------------------------------------------------------------------------
# DPM-Solver's DPM_Solver.sample, re-derived (float64)
# --------------------------------------------------------------------------------------------

B0, B1 = 0.1, 20.0


def _lmc(t):
    return -0.25 * t**2 * (B1 - B0) - 0.5 * t * B0


def _std(t):
    return np.sqrt(1.0 - np.exp(2.0 * _lmc(t)))


def _lam(t):
    return _lmc(t) - 0.5 * np.log(1.0 - np.exp(2.0 * _lmc(t)))


def _inv_lam(lam):
    tmp = 2.0 * (B1 - B0) * np.logaddexp(-2.0 * lam, 0.0)
    delta = B0**2 + tmp
    return tmp / (np.sqrt(delta) + B0) / (B1 - B0)


def _grid(skip, t_T, t_0, n):
    if skip == "logSNR":
        return _inv_lam(np.linspace(_lam(t_T), _lam(t_0), n + 1))
    if skip == "time_uniform":
        return np.linspace(t_T, t_0, n + 1)
    return np.linspace(t_T**0.5, t_0**0.5, n + 1) ** 2


def _noise(x, t):
    return eps_exact(x, math.exp(_lmc(t)), float(_std(t)))


def _data(x, t):
    return (x - _std(t) * _noise(x, t)) / math.exp(_lmc(t))


def _official_multistep_update(x, ms, ts, t, order, pp):
    """DPM-Solver's multistep_dpm_solver_{first,second,third}_update, solver_type 'dpmsolver'."""
    lt, l0 = _lam(t), _lam(ts[-1])
    h = lt - l0
    at, st = math.exp(_lmc(t)), _std(t)
    if pp:
        phi_1 = np.expm1(-h)
        x_t = (st / _std(ts[-1])) * x - (at * phi_1) * ms[-1]
    else:
        phi_1 = np.expm1(h)
        x_t = np.exp(_lmc(t) - _lmc(ts[-1])) * x - (st * phi_1) * ms[-1]
    if order == 1:
        return x_t
    h_0 = l0 - _lam(ts[-2])
    r0 = h_0 / h
    D1_0 = (1.0 / r0) * (ms[-1] - ms[-2])
    c = at if pp else st
    if order == 2:
        return x_t - 0.5 * (c * phi_1) * D1_0
    h_1 = _lam(ts[-2]) - _lam(ts[-3])
    r1 = h_1 / h
    D1_1 = (1.0 / r1) * (ms[-2] - ms[-3])
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
    D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
    if pp:
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        return x_t + (at * phi_2) * D1 - (at * phi_3) * D2
    phi_2 = phi_1 / h - 1.0
    phi_3 = phi_2 / h - 0.5
    return x_t - (st * phi_2) * D1 - (st * phi_3) * D2


def _official_singlestep_update(x, s, t, order, r1, r2, pp):
    """DPM-Solver's singlestep_dpm_solver_{first,second,third}_update, solver_type 'dpmsolver'."""
    fn = _data if pp else _noise
    ls, lt = _lam(s), _lam(t)
    h = lt - ls

    def first(x, m, s, u, hh):
        if pp:
            return (_std(u) / _std(s)) * x - (math.exp(_lmc(u)) * np.expm1(-hh)) * m
        return np.exp(_lmc(u) - _lmc(s)) * x - (_std(u) * np.expm1(hh)) * m

    m_s = fn(x, s)
    if order == 1:
        return first(x, m_s, s, t, h)
    c_t = math.exp(_lmc(t)) if pp else _std(t)
    sg = -1.0 if pp else 1.0
    if order == 2:
        r1 = 0.5 if r1 is None else r1
        s1 = _inv_lam(ls + r1 * h)
        m_s1 = fn(first(x, m_s, s, s1, r1 * h), s1)
        return first(x, m_s, s, t, h) - (0.5 / r1) * (c_t * np.expm1(sg * h)) * (m_s1 - m_s)
    r1 = 1.0 / 3.0 if r1 is None else r1
    r2 = 2.0 / 3.0 if r2 is None else r2
    s1, s2 = _inv_lam(ls + r1 * h), _inv_lam(ls + r2 * h)
    m_s1 = fn(first(x, m_s, s, s1, r1 * h), s1)
    c_s2 = math.exp(_lmc(s2)) if pp else _std(s2)
    if pp:
        phi_22 = np.expm1(-r2 * h) / (r2 * h) + 1.0
        phi_2 = np.expm1(-h) / h + 1.0
        x_s2 = first(x, m_s, s, s2, r2 * h) + (r2 / r1) * (c_s2 * phi_22) * (m_s1 - m_s)
        m_s2 = fn(x_s2, s2)
        return first(x, m_s, s, t, h) + (1.0 / r2) * (c_t * phi_2) * (m_s2 - m_s)
    phi_22 = np.expm1(r2 * h) / (r2 * h) - 1.0
    phi_2 = np.expm1(h) / h - 1.0
    x_s2 = first(x, m_s, s, s2, r2 * h) - (r2 / r1) * (c_s2 * phi_22) * (m_s1 - m_s)
    m_s2 = fn(x_s2, s2)
    return first(x, m_s, s, t, h) - (1.0 / r2) * (c_t * phi_2) * (m_s2 - m_s)


def _official_sample(x, steps, order, skip, method, pp):
    """DPM_Solver.sample(x, steps, t_start=None, t_end=None, order, skip_type, method, lower_order_final=True)."""
    t_T, t_0 = 1.0, 1.0 / 1000
    fn = _data if pp else _noise
    if method == "multistep":
        ts = _grid(skip, t_T, t_0, steps)
        t_prev, m_prev = [ts[0]], [fn(x, ts[0])]
        for step in range(1, order):
            x = _official_multistep_update(x, m_prev, t_prev, ts[step], step, pp)
            t_prev.append(ts[step])
            m_prev.append(fn(x, ts[step]))
        for step in range(order, steps + 1):
            o = min(order, steps + 1 - step) if steps < 10 else order
            x = _official_multistep_update(x, m_prev, t_prev, ts[step], o, pp)
            t_prev = (t_prev + [ts[step]])[1:]
            if step < steps:
                m_prev = (m_prev + [fn(x, ts[step])])[1:]
        return x
    if method == "singlestep":
        if order == 3:
            K = steps // 3 + 1
            orders = (
                [3] * (K - 2) + [2, 1]
                if steps % 3 == 0
                else [3] * (K - 1) + [1]
                if steps % 3 == 1
                else [3] * (K - 1) + [2]
            )
        else:
            orders = [2] * (steps // 2) + ([1] if steps % 2 else [])
        if skip == "logSNR":
            outer = _grid(skip, t_T, t_0, len(orders))
        else:
            outer = _grid(skip, t_T, t_0, steps)[np.cumsum([0] + orders)]
    else:
        orders = [order] * (steps // order)
        outer = _grid(skip, t_T, t_0, len(orders))
    for j, o in enumerate(orders):
        s, t = outer[j], outer[j + 1]
        inner = _grid(skip, s, t, o)
        lam_inner = _lam(inner)
        h = lam_inner[-1] - lam_inner[0]
        r1 = None if o <= 1 else (lam_inner[1] - lam_inner[0]) / h
        r2 = None if o <= 2 else (lam_inner[2] - lam_inner[0]) / h
        x = _official_singlestep_update(x, s, t, o, r1, r2, pp)
    return x


OFFICIAL_ROWS = [
    # (method, order, skip_type, algorithm, steps, refdiff sampler, options)
    ("multistep", 2, "time_uniform", "dpmsolver++", 10, "dpmpp_2m", {}),
    ("multistep", 2, "logSNR", "dpmsolver++", 7, "dpmpp_2m", {}),
    ("multistep", 3, "logSNR", "dpmsolver++", 8, "dpmpp_3m", dict(d2_scale="dpm_solver")),
    ("multistep", 3, "time_uniform", "dpmsolver", 12, "dpm_solver_3m", dict(d2_scale="dpm_solver")),
    ("multistep", 2, "time_quadratic", "dpmsolver", 10, "dpm_solver_2m", {}),
    (
        "singlestep",
        3,
        "time_uniform",
        "dpmsolver",
        10,
        "dpm_solver_fast",
        dict(intermediate="grid"),
    ),
    ("singlestep", 3, "logSNR", "dpmsolver", 12, "dpm_solver_fast", {}),
    (
        "singlestep_fixed",
        2,
        "time_uniform",
        "dpmsolver++",
        10,
        "dpmpp_2s",
        dict(intermediate="grid"),
    ),
    (
        "singlestep_fixed",
        3,
        "time_quadratic",
        "dpmsolver",
        9,
        "dpm_solver_3",
        dict(intermediate="grid"),
    ),
    ("singlestep_fixed", 3, "logSNR", "dpmsolver++", 9, "dpmpp_3s", {}),
]


@pytest.mark.parametrize(
    "method,order,skip,alg,steps,name,options",
    OFFICIAL_ROWS,
    ids=[f"{r[0]}-{r[1]}-{r[2]}-{r[3]}" for r in OFFICIAL_ROWS],
)
def test_official_dpm_solver_sample(method, order, skip, alg, steps, name, options):
    """DPM_Solver(model_fn, NoiseScheduleVP('linear'), algorithm_type).sample(x, steps, order, skip_type, method)."""
    from refdiff.samplers import get_sampler

    ref = _official_sample(XT, steps, order, skip, method, alg == "dpmsolver++")
    ns = D.NoiseScheduleVP.linear()

    def model(x, t):
        tt = float(t[0])
        return eps_exact(x, math.exp(_lmc(tt)), float(_std(tt)))

    got = get_sampler(name).fn(model, XT, noise_schedule=ns, steps=steps, skip_type=skip, **options)
    assert _rel(got, ref) <= 1e-12, _rel(got, ref)


def test_official_singlestep_time_uniform_needs_grid_placement():
    """On the time_uniform grid DPM-Solver's code puts the intermediate points on the grid, not at the λ midpoint."""
    ref = _official_sample(XT, 10, 2, "time_uniform", "singlestep_fixed", True)
    ns = D.NoiseScheduleVP.linear()

    def model(x, t):
        tt = float(t[0])
        return eps_exact(x, math.exp(_lmc(tt)), float(_std(tt)))

    from refdiff.samplers import sample_dpmpp_2s

    got = sample_dpmpp_2s(model, XT, noise_schedule=ns, steps=10)  # intermediate="lambda"
    assert _rel(got, ref) > 1e-6


# --------------------------------------------------------------------------------------------
# k-diffusion, re-derived (float64)
# --------------------------------------------------------------------------------------------


def _denoiser(x, sigma):
    """The exact VE denoiser D(x, σ) = E[x0 | x0 + σ z = x] of the Gaussian data."""
    return x0_exact(x, 1.0, sigma)


def _kdiff_dpmpp_2m(x, sigmas):
    """k-diffusion sample_dpmpp_2m: t = -log σ, first order at the first step and into σ = 0."""
    old = None
    h_last = None
    for i in range(len(sigmas) - 1):
        denoised = _denoiser(x, sigmas[i])
        t, t_next = (
            -math.log(sigmas[i]),
            (math.inf if sigmas[i + 1] == 0 else -math.log(sigmas[i + 1])),
        )
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * d
        old, h_last = denoised, h
    return x


def _kdiff_dpm_fast(x, sigma_min, sigma_max, nfe):
    """k-diffusion DPMSolver.dpm_solver_fast (eta = 0): ε form on a λ-uniform grid of t = -log σ."""
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    m = nfe // 3 + 1
    ts = np.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]

    def sig(t):
        return math.exp(-t)

    def eps(x, t):
        return (x - _denoiser(x, sig(t))) / sig(t)

    for i, o in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        h = t_next - t
        e = eps(x, t)
        if o == 1:
            x = x - sig(t_next) * math.expm1(h) * e
        elif o == 2:
            r1 = 0.5
            s1 = t + r1 * h
            u1 = x - sig(s1) * math.expm1(r1 * h) * e
            e1 = eps(u1, s1)
            x = (
                x
                - sig(t_next) * math.expm1(h) * e
                - sig(t_next) / (2 * r1) * math.expm1(h) * (e1 - e)
            )
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = t + r1 * h, t + r2 * h
            u1 = x - sig(s1) * math.expm1(r1 * h) * e
            e1 = eps(u1, s1)
            u2 = (
                x
                - sig(s2) * math.expm1(r2 * h) * e
                - sig(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - e)
            )
            e2 = eps(u2, s2)
            x = (
                x
                - sig(t_next) * math.expm1(h) * e
                - sig(t_next) / r2 * (math.expm1(h) / h - 1) * (e2 - e)
            )
    return x


@pytest.mark.parametrize("n", [5, 10, 25])
def test_kdiffusion_dpmpp_2m_on_karras_sigmas(n):
    """sample_dpmpp_2m(model, σ_max z, get_sigmas_karras(n, 0.002, 80)) = sample_dpmpp_2m on a VE schedule with sigmas=."""
    from refdiff.samplers import sample_dpmpp_2m

    sigmas = karras_sigmas(n, 0.002, 80.0)
    x = XT * 80.0
    ref = _kdiff_dpmpp_2m(x, [float(s) for s in sigmas])
    ns = D.NoiseScheduleVP.from_sde(VESDE(sigma_min=0.002, sigma_max=80.0))
    got = sample_dpmpp_2m(
        lambda xx, s: _denoiser(xx, float(s[0])),
        x,
        noise_schedule=ns,
        sigmas=sigmas,
        model_type="x0",
        model_time="sigma",
        lower_order_final="never",
    )
    assert _rel(got, ref) <= 1e-13, _rel(got, ref)


@pytest.mark.parametrize("nfe", [9, 10, 11])
def test_kdiffusion_dpm_solver_fast(nfe):
    """DPMSolver.dpm_solver_fast(x, -log σ_max, -log σ_min, nfe) = sample_dpm_solver_fast on a VE schedule, logSNR grid."""
    from refdiff.samplers import sample_dpm_solver_fast

    smin, smax = 0.01, 50.0
    x = XT * smax
    ref = _kdiff_dpm_fast(x, smin, smax, nfe)
    ns = D.NoiseScheduleVP.from_sde(VESDE(sigma_min=0.002, sigma_max=smax))
    got = sample_dpm_solver_fast(
        lambda xx, s: _denoiser(xx, float(s[0])),
        x,
        noise_schedule=ns,
        steps=nfe,
        skip_type="logSNR",
        model_type="x0",
        model_time="sigma",
        t_end=float(ns.inverse_lambda(-math.log(smin))),
    )
    assert _rel(got, ref) <= 1e-12, _rel(got, ref)
