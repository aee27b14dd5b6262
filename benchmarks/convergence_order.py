"""Measure the convergence order of every registered continuous-time sampler on analytic Gaussian data.

    python benchmarks/convergence_order.py            # markdown table (pasted into docs/SAMPLERS.md)
    python benchmarks/convergence_order.py --json out.json

Problem: x0 ~ N(μ, Σ) in 2-D with μ = (0.5, -0.2), Σ = [[1, 0.3], [0.3, 0.5]]. With the exact
model every sampler here is affine in (x_T, noise); ``refdiff.analytic.linear_sampler_law`` reads
off that affine map by running the sampler on basis vectors.

* Deterministic samplers: the error is ‖M - M*‖_F + ‖c - c*‖ between the sampler's map
  x_T -> M x_T + c and the exact probability-flow map (closed form: √(C_end C_start⁻¹) with
  C = α²Σ + σ²I, checked against SciPy DOP853 at rtol 1e-13 in tests/samplers/test_ode.py), on
  * karras: σ from 10 to 0.05 on Karras' ρ = 7 grid (no final 0),
  * vp (DPM-Solver): linear VP (β 0.1→20), t from 1 to 0.5 on the logSNR grid ("[0.5, 1]"),
    and from 1 to 1e-3 ("[1e-3, 1]") where several solvers are still pre-asymptotic,
  * sde ODE solvers: the same VP-SDE, t from 1 to 0.5 (uniform in t) and to 1e-3.
  "steps" is the sampler's ``steps``/number of σ intervals (NFE for DPM-Solver).
* discrete (DDIM, η = 0): linear β schedule with T = 1000, from index 999 down to ᾱ_0 in
  ``steps`` trailing-spaced steps (the exact map between two (α, σ) levels is path-independent).
* Stochastic samplers: the error is max(|mean - m*|, |cov - C*|) between the exact output law and
  the true marginal at the final time (weak convergence in law).

The order is the least-squares slope of log(error) against log(steps) over the last three
points of the ladder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from refdiff import analytic as A
from refdiff import schedules
from refdiff.edm import karras_sigmas
from refdiff.samplers import get_sampler, list_samplers
from refdiff.samplers.dpm_solver import NoiseScheduleVP
from refdiff.samplers.flow import FlowSchedule
from refdiff.sde import SubVPSDE, VESDE, VPSDE

MU = np.array([0.5, -0.2])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
DATA = A.GaussianData(MU, COV)
LADDER = [24, 48, 96, 192, 384]
LAW_LADDER = [25, 50, 100, 200]
DISCRETE_LADDER = [12, 24, 48, 96, 192]
BASE = schedules.linear(1000)
#: PNDM's pseudo linear multistep extrapolates ε over equal index gaps: measured on 999, 999 − δ,
#: …, 39 + δ onto ᾱ_39 with δ = 960/steps (trailing spacing has unequal gaps).
EQUAL_GAPS = ("pndm", "plms")


def flow_map(a0, s0, a1, s1):
    """Exact probability-flow map from (α0, σ0) to (α1, σ1): x -> M x + c."""
    w, U = np.linalg.eigh(COV)
    M = U @ np.diag(np.sqrt((a1 * a1 * w + s1 * s1) / (a0 * a0 * w + s0 * s0))) @ U.T
    return M, a1 * MU - M @ (a0 * MU)


def map_error(run, exact):
    law = A.linear_sampler_law(run, np.zeros(2), np.eye(2), dim=2, n_noise=0)
    return float(np.linalg.norm(law.M - exact[0]) + np.linalg.norm(law.c - exact[1]))


def fit(steps, errs):
    return float(-np.polyfit(np.log(steps[-3:]), np.log(errs[-3:]), 1)[0])


def deterministic_case(name, family, t_end=None, **options):
    """(label, steps, errors) for one deterministic sampler."""
    fn = get_sampler(name).fn
    fs = options.pop("noise_schedule", FlowSchedule()) if family == "flow" else None
    errs = []
    for n in DISCRETE_LADDER if family == "discrete" else LADDER:
        if family == "discrete" and name in EQUAL_GAPS:
            d = 960 // n
            ab = np.asarray(BASE.alphas_cumprod)
            run = lambda xT, nz: fn(
                A.discrete_model(DATA, BASE, "eps"),
                xT,
                schedule=BASE,
                timesteps=np.arange(39 + d, 1000, d),
                final_alpha_bar=float(ab[39]),
                **options,
            )
            exact = flow_map(
                np.sqrt(ab[999]), np.sqrt(1 - ab[999]), np.sqrt(ab[39]), np.sqrt(1 - ab[39])
            )
        elif family == "discrete":
            run = lambda xT, nz: fn(
                A.discrete_model(DATA, BASE, "eps"),
                xT,
                schedule=BASE,
                steps=n,
                final_alpha_bar="alpha_bar_0",
                base_schedule=BASE,
                **options,
            )
            ab = np.asarray(BASE.alphas_cumprod)
            exact = flow_map(
                np.sqrt(ab[999]), np.sqrt(1 - ab[999]), np.sqrt(ab[0]), np.sqrt(1 - ab[0])
            )
        elif family == "karras":
            sig = karras_sigmas(n + 1, 0.05, 10.0, append_zero=False)
            run = lambda xT, nz: fn(A.karras_denoiser(DATA), xT, sigmas=sig, **options)
            exact = flow_map(1.0, 10.0, 1.0, 0.05)
        elif family == "vp":
            ns = NoiseScheduleVP.linear()
            run = lambda xT, nz: fn(
                A.vp_model(DATA, ns, "eps"),
                xT,
                noise_schedule=ns,
                steps=n,
                skip_type="logSNR",
                t_end=t_end,
                **options,
            )
            exact = flow_map(
                ns.marginal_alpha(1.0),
                ns.marginal_std(1.0),
                ns.marginal_alpha(t_end),
                ns.marginal_std(t_end),
            )
        elif family == "flow":
            velocity = lambda x, t: (
                DATA.eps(x, fs.marginal_alpha(t), fs.marginal_std(t))
                - DATA.x0(x, fs.marginal_alpha(t), fs.marginal_std(t))
            )
            run = lambda xT, nz: fn(velocity, xT, noise_schedule=fs, steps=n, **options)
            exact = flow_map(0.0, 1.0, 1.0, 0.0)
        else:
            sde = VPSDE()
            score = lambda x, t: DATA.score(x, sde.marginal_alpha(t), sde.marginal_std(t))
            run = lambda xT, nz: fn(score, xT, sde=sde, steps=n, eps=t_end, **options)
            exact = flow_map(
                float(sde.marginal_alpha(1.0)),
                float(sde.marginal_std(1.0)),
                float(sde.marginal_alpha(t_end)),
                float(sde.marginal_std(t_end)),
            )
        errs.append(map_error(run, exact))
    return errs


def law_case(name, family, sde=None, eps=1e-3, **options):
    """Errors of the exact output law against the true marginal, on LAW_LADDER."""
    fn = get_sampler(name).fn
    errs = []
    for n in LAW_LADDER:
        if family == "karras":
            sig = karras_sigmas(n + 1, 0.05, 10.0, append_zero=False)
            run = lambda xT, nz: fn(A.karras_denoiser(DATA), xT, sigmas=sig, noise=nz, **options)
            start, end = DATA.marginal(1.0, 10.0), DATA.marginal(1.0, 0.05)
        elif family == "vp":
            ns = NoiseScheduleVP.linear()
            run = lambda xT, nz: fn(
                A.vp_model(DATA, ns, "eps"),
                xT,
                noise_schedule=ns,
                steps=n,
                noise=nz,
                t_end=eps,
                skip_type="logSNR",
                **options,
            )
            start = DATA.marginal(ns.marginal_alpha(1.0), ns.marginal_std(1.0))
            end = DATA.marginal(ns.marginal_alpha(eps), ns.marginal_std(eps))
        else:
            sde = VPSDE() if sde is None else sde
            score = lambda x, t: DATA.score(x, sde.marginal_alpha(t), sde.marginal_std(t))
            run = lambda xT, nz: fn(
                score, xT, sde=sde, steps=n, noise=nz, eps=eps, denoise=False, **options
            )
            start = DATA.marginal(float(sde.marginal_alpha(1.0)), float(sde.marginal_std(1.0)))
            end = DATA.marginal(float(sde.marginal_alpha(eps)), float(sde.marginal_std(eps)))
        law = A.linear_sampler_law(
            run, *start, dim=2, n_noise=2 * n if name == "karras_dpmpp_sde" else n
        )
        errs.append(float(max(np.abs(law.mean - end[0]).max(), np.abs(law.cov - end[1]).max())))
    return errs


def rows():
    out = []
    for name in list_samplers():
        spec = get_sampler(name)
        if spec.stochastic or spec.order is None:
            continue
        if spec.family == "discrete":
            errs = deterministic_case(name, "discrete")
            out.append(
                dict(
                    sampler=name,
                    family=spec.family,
                    options="",
                    registered=spec.order,
                    setting=("ᾱ_999→ᾱ_39, equal gaps" if name in EQUAL_GAPS else "ᾱ_999→ᾱ_0"),
                    steps=DISCRETE_LADDER,
                    errors=errs,
                    order=fit(DISCRETE_LADDER, errs),
                )
            )
            continue
        if spec.family == "flow":
            errs = deterministic_case(name, "flow")
            out.append(
                dict(
                    sampler=name,
                    family=spec.family,
                    options="",
                    registered=spec.order,
                    setting="t 1→0",
                    steps=LADDER,
                    errors=errs,
                    order=fit(LADDER, errs),
                )
            )
            continue
        if spec.family == "karras":
            errs = deterministic_case(name, "karras")
            out.append(
                dict(
                    sampler=name,
                    family=spec.family,
                    options="",
                    registered=spec.order,
                    setting="σ 10→0.05",
                    steps=LADDER,
                    errors=errs,
                    order=fit(LADDER, errs),
                )
            )
            continue
        for t_end, label in ((0.5, "[0.5, 1]"), (1e-3, "[1e-3, 1]")):
            errs = deterministic_case(name, spec.family, t_end=t_end)
            out.append(
                dict(
                    sampler=name,
                    family=spec.family,
                    options="",
                    registered=spec.order,
                    setting=label,
                    steps=LADDER,
                    errors=errs,
                    order=fit(LADDER, errs),
                )
            )
    # conventions of the multistep third-order solver
    for name in ("dpm_solver_3m", "dpmpp_3m"):
        for opts in ({"d2_scale": "dpm_solver"}, {"warmup": "singlestep"}):
            errs = deterministic_case(name, "vp", t_end=0.5, **opts)
            out.append(
                dict(
                    sampler=name,
                    family="vp",
                    options=", ".join(f"{k}={v!r}" for k, v in opts.items()),
                    registered=get_sampler(name).order,
                    setting="[0.5, 1]",
                    steps=LADDER,
                    errors=errs,
                    order=fit(LADDER, errs),
                )
            )
    # UniPC / DEIS / flow-matching conventions
    newer = [
        ("unipc_bh2", "vp", {"lower_order_final": "never"}),
        ("unipc_bh1", "vp", {"lower_order_final": "never"}),
        ("unipc_bh2", "vp", {"lower_order_final": "never", "use_corrector": False}),
        ("unipc_bh2", "vp", {"lower_order_final": "never", "order": 3}),
        ("unipc_bh2", "vp", {"lower_order_final": "never", "algorithm_type": "noise_prediction"}),
        ("unipc_bh2", "vp", {"order": 1}),
        ("deis", "vp", {"order": 3}),
        ("deis", "vp", {"solver_type": "rhoab"}),
        ("deis", "vp", {"order": 3, "solver_type": "rhoab"}),
        ("flow_euler", "flow", {"noise_schedule": FlowSchedule(shift=3.0)}),
        ("flow_heun", "flow", {"noise_schedule": FlowSchedule(shift=3.0)}),
    ]
    for name, family, opts in newer:
        label = ", ".join(
            f"{k}={'FlowSchedule(shift=3.0)' if k == 'noise_schedule' else repr(v)}"
            for k, v in opts.items()
        )
        errs = deterministic_case(name, family, t_end=0.5 if family == "vp" else None, **opts)
        out.append(
            dict(
                sampler=name,
                family=family,
                options=label,
                registered=get_sampler(name).order,
                setting="[0.5, 1]" if family == "vp" else "t 1→0",
                steps=LADDER,
                errors=errs,
                order=fit(LADDER, errs),
            )
        )
    # k-diffusion's σ-grid samplers with no single registered order, and the η = 0 (ODE) modes
    # of its stochastic ones
    kdiff = [
        ("karras_lms", {}),
        ("karras_lms", {"order": 2}),
        ("karras_lms", {"order": 3}),
        ("karras_dpm_2_ancestral", {"eta": 0.0}),
        ("karras_dpmpp_2s_ancestral", {"eta": 0.0}),
        ("karras_dpmpp_sde", {"eta": 0.0}),
        ("karras_dpmpp_2m_sde", {"eta": 0.0}),
        ("karras_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
        ("karras_dpmpp_3m_sde", {"eta": 0.0}),
        ("karras_dpmpp_3m_sde", {"eta": 0.0, "d2_scale": "dpm_solver"}),
    ]
    for name, opts in kdiff:
        errs = deterministic_case(name, "karras", **opts)
        out.append(
            dict(
                sampler=name,
                family="karras",
                options=", ".join(f"{k}={v!r}" for k, v in opts.items()),
                registered=get_sampler(name).order,
                setting="σ 10→0.05",
                steps=LADDER,
                errors=errs,
                order=fit(LADDER, errs),
            )
        )
    # stochastic samplers: convergence in law
    stoch = [
        ("karras_dpm_2_ancestral", "karras", {}),
        ("karras_dpmpp_2s_ancestral", "karras", {}),
        ("karras_dpmpp_sde", "karras", {}),
        ("karras_dpmpp_sde", "karras", {"noise_coupling": "independent"}),
        ("karras_dpmpp_2m_sde", "karras", {}),
        ("karras_dpmpp_2m_sde", "karras", {"solver_type": "heun"}),
        ("karras_dpmpp_3m_sde", "karras", {}),
        ("karras_dpmpp_3m_sde", "karras", {"d2_scale": "dpm_solver"}),
        ("karras_dpm_2", "karras", {"S_churn": 5.0}),
        ("sde_dpmpp_1", "vp", {}),
        ("sde_dpmpp_2m", "vp", {}),
        ("sde_dpmpp_2m", "vp", {"solver_type": "heun"}),
        ("karras_euler_ancestral", "karras", {}),
        ("karras_euler_churn", "karras", {"S_churn": 5.0}),
        ("karras_heun_churn", "karras", {"S_churn": 5.0}),
        ("sde_euler_maruyama", "sde", {"time_grid": "uniform"}),
        ("sde_euler_maruyama", "sde", {"sde": SubVPSDE(), "time_grid": "uniform"}),
        ("sde_euler_maruyama", "sde", {"sde": VESDE(), "eps": 1e-5, "time_grid": "uniform"}),
        ("sde_reverse_diffusion", "sde", {}),
        ("sde_ancestral", "sde", {}),
        ("sde_ancestral", "sde", {"sde": VESDE(), "eps": 1e-5}),
    ]
    for name, family, opts in stoch:
        label = ", ".join(
            f"{k}={type(v).__name__ if k == 'sde' else repr(v)}" for k, v in opts.items()
        )
        errs = law_case(name, family, **opts)
        out.append(
            dict(
                sampler=name,
                family=family,
                options=label,
                registered=None,
                setting="law",
                steps=LAW_LADDER,
                errors=errs,
                order=fit(LAW_LADDER, errs),
            )
        )
    return out


def table(rs) -> str:
    lines = [
        "| sampler | family | options | interval | registered order | measured order | "
        "error at first / last step count |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rs:
        reg = "—" if r["registered"] is None else f"{r['registered']:g}"
        lines.append(
            f"| `{r['sampler']}` | {r['family']} | {r['options'] or '—'} | {r['setting']} | "
            f"{reg} | **{r['order']:.2f}** | {r['errors'][0]:.1e} ({r['steps'][0]}) / "
            f"{r['errors'][-1]:.1e} ({r['steps'][-1]}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the rows as JSON to this path")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rs = rows()
    print(table(rs))
    print(
        f"\n(ladders: deterministic {LADDER}, DDIM {DISCRETE_LADDER}, in law {LAW_LADDER}; "
        f"order = LSQ slope over the last three; {time.perf_counter() - t0:.1f} s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
