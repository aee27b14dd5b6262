"""Checks of every registered sampler (``refdiff.samplers.list_samplers()``), by family.

The hook: :func:`_sampler_cases` is a case *family* — it reads the sampler registry when the suite
is collected, so a sampler registered with ``@register_sampler(name, family=...)`` is checked
here with no new test code, as long as its family is one of ``FAMILY_INPUTS`` (discrete, karras,
vp, sde, flow). A new family needs one input builder below (its calling convention), nothing else.

Every sampler runs its whole loop on both sides from the same start, the same model (a small
array-API function of x and t, see :mod:`.models`) and the same noise — a callable whose draw i is
generated on the host from (seed, i) — and its output is held to the "trajectory" tolerance,
which grows linearly with the number of steps. A backend's ``overrides["samplers.<name>"]``
replaces the loop (e.g. a fused sampler) and is checked against the generic one.
"""

from __future__ import annotations

from hypothesis import strategies as st

from . import models
from . import strategies as rs
from .case_sde import _sde_build
from .cases import Case, register_family
from .strategies import Bind, Build, HostArray, NoiseSource, call

__all__ = ["FAMILY_INPUTS", "EXCLUDED", "FIXED_STEP_OPTIONS"]

#: Registered samplers the suite does not run on backends, with the reason.
EXCLUDED = {
    "ode_rk45": "adaptive RK45 runs through scipy.integrate.solve_ivp on the host (oracle-side by "
    "design); its step-size control makes trajectories of different precisions "
    "incomparable",
}

#: Options the suite passes to adaptive samplers: their step-size control reads the error back
#: and makes discrete accept/reject decisions, so trajectories of different precisions can take
#: different steps. The suite runs their fixed-step mode (the same embedded solver on the given
#: grid, which is also how an adaptive run is replayed); the controller itself is checked on each
#: backend in tests/samplers/test_karras_dpm.py and test_dpm_solver_sde.py.
FIXED_STEP_OPTIONS = {
    "karras_dpm_adaptive": {"adaptive": False},
    "dpm_solver_adaptive": {"adaptive": False},
}


def _shape(draw):
    return draw(rs.batch_shapes(min_dims=2, max_batch=2, max_side=3), label="shape")


def _noise(draw, shape) -> NoiseSource:
    return NoiseSource(draw(st.integers(0, 2**32 - 1), label="noise seed"), tuple(shape))


def _eps_model(draw, shape, tscale: float) -> Bind:
    return Bind(
        models.eps_model,
        {
            "w": draw(st.sampled_from((0.0, 0.5)), label="model w"),
            "bias": draw(rs.seeded_normal(shape[1:], scale=0.1)),
            "tscale": tscale,
        },
    )


@st.composite
def discrete_inputs(draw, name: str):
    """fn(model, x_T, *, schedule, noise): short schedules (every variant), an ε-model."""
    s = draw(rs.schedules(max_T=10), label="schedule")
    shape = _shape(draw)
    return call(
        _eps_model(draw, shape, 1.0 / 1000),
        draw(rs.noise(shape), label="x_T"),
        schedule=s,
        noise=_noise(draw, shape),
    )


@st.composite
def karras_inputs(draw, name: str):
    """fn(denoiser, x, *, sigmas, noise): a Karras σ grid (host floats) and a denoiser."""
    from refdiff.edm import karras_sigmas

    n = draw(st.sampled_from((2, 4, 8)), label="levels")
    sigmas = karras_sigmas(n, 0.002, draw(st.sampled_from((80.0, 10.0)), label="sigma_max"))
    shape = _shape(draw)
    den = Bind(
        models.denoiser,
        {
            "w": draw(st.sampled_from((0.5, 1.0)), label="w"),
            "bias": draw(rs.seeded_normal(shape[1:], scale=0.1)),
        },
    )
    x = draw(rs.noise(shape), label="x") * float(sigmas[0])
    return call(
        den,
        x,
        sigmas=HostArray(sigmas),
        noise=_noise(draw, shape),
        **FIXED_STEP_OPTIONS.get(name, {}),
    )


@st.composite
def vp_inputs(draw, name: str):
    """fn(model, x, *, noise_schedule, steps): the linear VP schedule, an ε-model of continuous t."""
    from refdiff.samplers.dpm_solver import NoiseScheduleVP

    ns = Build(
        NoiseScheduleVP.linear,
        (),
        {
            "beta_min": draw(st.sampled_from((0.1, 0.05)), label="beta_min"),
            "beta_max": draw(st.sampled_from((20.0, 10.0)), label="beta_max"),
        },
    )
    shape = _shape(draw)
    return call(
        _eps_model(draw, shape, 1.0),
        draw(rs.noise(shape), label="x_T"),
        noise_schedule=ns,
        steps=draw(st.sampled_from((3, 6)), label="steps"),
        noise=_noise(draw, shape),
        **FIXED_STEP_OPTIONS.get(name, {}),
    )


@st.composite
def sde_inputs(draw, name: str):
    """fn(score_fn, x_T, *, sde, steps, noise): VP / sub-VP / VE SDEs, a linear score."""
    family = draw(st.sampled_from(("VPSDE", "SubVPSDE", "VESDE")), label="sde")
    shape = _shape(draw)
    score = Bind(
        models.score_model,
        {
            "w": draw(st.sampled_from((0.5, 1.0)), label="w"),
            "bias": draw(rs.seeded_normal(shape[1:], scale=0.1)),
        },
    )
    kw = {"n_steps_each": 2} if name == "ncsn_annealed_langevin" else {}
    # The ancestral and reverse-diffusion predictors (alone or inside PC) step on the DDPM chain of
    # `steps` levels, which needs β_max/steps < 1 (β_max = 20 here); the others take any number.
    chain = ("sde_ancestral", "sde_reverse_diffusion", "sde_pc")
    steps = (25,) if name in chain else (2, 5)
    return call(
        score,
        draw(rs.noise(shape), label="x_T"),
        sde=_sde_build(draw, family, N_menu=(1000, 25)),
        steps=draw(st.sampled_from(steps), label="steps"),
        noise=_noise(draw, shape),
        **kw,
    )


@st.composite
def flow_inputs(draw, name: str):
    """fn(model, x, *, noise_schedule, steps): the rectified-flow path (shift 1 or 3), a velocity model of t."""
    from refdiff.samplers.flow import FlowSchedule

    fs = Build(FlowSchedule, (), {"shift": draw(st.sampled_from((1.0, 3.0)), label="shift")})
    shape = _shape(draw)
    return call(
        _eps_model(draw, shape, 1.0),
        draw(rs.noise(shape), label="x_T"),
        noise_schedule=fs,
        steps=draw(st.sampled_from((3, 6)), label="steps"),
        noise=_noise(draw, shape),
    )


#: family -> input builder (its calling convention; see refdiff.samplers).
FAMILY_INPUTS = {
    "discrete": discrete_inputs,
    "karras": karras_inputs,
    "vp": vp_inputs,
    "sde": sde_inputs,
    "flow": flow_inputs,
}


def _steps(oracle_call, ref) -> tuple[int, int]:
    """(1, number of model evaluations between start and output) for the trajectory class."""
    args, kw = oracle_call
    if "schedule" in kw:
        k = kw["schedule"].num_timesteps
    elif "sigmas" in kw:
        k = 2 * (len(kw["sigmas"]) - 1)
    else:
        k = int(kw.get("steps", 1)) * int(kw.get("n_steps_each", 1)) * 3
    return 1, max(1, k)


def _case(spec) -> Case:
    build = FAMILY_INPUTS[spec.family]
    step = getattr(spec.step, "__module__", "").rpartition(".")[2]
    covers = (f"samplers.{step}.{spec.step.__name__}",) if spec.step is not None else ()
    return Case(
        f"samplers.{spec.name}",
        spec.fn,
        inputs=lambda dtype, n=spec.name, b=build: b(n),
        tol="trajectory",
        sizes_fn=_steps,
        budget=0.5,
        covers=covers + (f"samplers.{spec.fn.__module__.rpartition('.')[2]}.{spec.fn.__name__}",),
        doc=f"{spec.family} sampler {spec.name!r}: {spec.doc}",
    )


@register_family
def _sampler_cases():
    """One trajectory check per registered sampler of a known family."""
    try:
        from refdiff.samplers import get_sampler, list_samplers
    except ImportError:  # the samplers package is optional for third-party trees
        return []
    out = []
    for name in list_samplers():
        spec = get_sampler(name)
        if name not in EXCLUDED and spec.family in FAMILY_INPUTS:
            out.append(_case(spec))
    return out
