"""Checks of guidance (``refdiff.guidance``): classifier guidance, classifier-free guidance (both
weight conventions, rescale), ILVR, EGSDE and Langevin dynamics, steps and loops."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from . import models
from . import strategies as rs
from .case_core import setting
from .cases import Case, register_case
from .strategies import Bind, NoiseSource, Raw, call

__all__: list[str] = []

_G = "refdiff.guidance:"
SCALES = (0.0, 1.0, 3.5, -0.5)
CONVENTIONS = ("guidance_scale", "ho_salimans")


def _register(name, inputs, **kw):
    register_case(
        Case(f"guidance.{name}", kw.pop("target", _G + name), inputs=lambda d: inputs(), **kw)
    )


@st.composite
def _condition_mean(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    var = np.exp(np.clip(draw(rs.data(shape, bound=3.0), label="log variance"), -10, 1))
    return call(
        draw(rs.data(shape), label="mean"),
        var,
        draw(rs.data(shape), label="grad"),
        scale=draw(st.sampled_from(SCALES), label="scale"),
    )


@st.composite
def _condition_eps(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    sigma = np.abs(draw(rs.data(shape, bound=1.0), label="sigma"))
    return call(
        draw(rs.data(shape), label="pred_eps"),
        draw(rs.data(shape), label="grad"),
        sigma,
        scale=draw(st.sampled_from(SCALES), label="scale"),
    )


@st.composite
def _condition_score(draw):
    from refdiff.diffusion import PMeanVar

    s, shape, t = draw(setting(variants=("plain", "respaced")), label="setting")
    arrays = [
        draw(rs.data(shape), label=n)
        for n in ("mean", "variance", "log_variance", "pred_x0", "pred_eps")
    ]
    return call(
        s,
        PMeanVar(*arrays),
        draw(rs.data(shape), label="x_t"),
        t,
        draw(rs.data(shape), label="grad"),
        scale=draw(st.sampled_from(SCALES), label="scale"),
    )


@st.composite
def _cfg_combine(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    return call(
        draw(rs.data(shape), label="uncond"),
        draw(rs.data(shape), label="cond"),
        draw(st.sampled_from(SCALES), label="scale"),
        convention=Raw(draw(st.sampled_from(CONVENTIONS), label="convention")),
    )


@st.composite
def _rescale_cfg(draw):
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    guided = draw(rs.seeded_normal(shape), label="guided") + 0.1
    return call(
        guided,
        draw(rs.seeded_normal(shape, scale=0.5), label="cond"),
        phi=draw(st.sampled_from((0.0, 0.7, 1.0)), label="phi"),
    )


def _per_sample(oracle_call, ref):
    """n = elements per sample (the std of rescale_cfg reduces over them)."""
    a = next(v for v in oracle_call[0] if isinstance(v, np.ndarray) and v.ndim)
    return max(1, int(a.size // a.shape[0])), 1


def _cfg_model_apply(model, x, t, **kw):
    from refdiff.guidance import cfg_model

    return cfg_model(model, **kw)(x, t)


_cfg_model_apply.__name__ = "cfg_model"


@st.composite
def _cfg_model(draw):
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    model = Bind(
        models.conditional_model,
        {"w": 0.5, "bias": draw(rs.seeded_normal(shape[1:]), label="bias"), "tscale": 1e-3},
    )
    t = np.asarray([draw(st.integers(0, 999)) for _ in range(shape[0])], dtype=np.int64)
    return call(
        model,
        draw(rs.data(shape), label="x"),
        t,
        cond=draw(rs.seeded_normal(shape), label="cond"),
        uncond=draw(rs.seeded_normal(shape, scale=0.1), label="uncond"),
        scale=draw(st.sampled_from(SCALES), label="scale"),
        convention=Raw(draw(st.sampled_from(CONVENTIONS), label="convention")),
        rescale=draw(st.sampled_from((0.0, 0.7)), label="rescale"),
    )


@st.composite
def _image_shape(draw, factor: int):
    b = draw(st.integers(1, 2), label="batch")
    c = draw(st.integers(1, 2), label="channels")
    k = draw(st.integers(1, 2), label="blocks")
    return (b, c, k * factor, k * factor)


@st.composite
def _low_pass(draw):
    factor = draw(st.sampled_from((1, 2)), label="factor")
    return call(draw(rs.data(draw(_image_shape(factor))), label="x"), factor)


@st.composite
def _ilvr_refine(draw):
    factor = draw(st.sampled_from((1, 2)), label="factor")
    shape = draw(_image_shape(factor))
    return call(
        draw(rs.data(shape), label="x_prev"), draw(rs.data(shape), label="y_prev"), factor=factor
    )


def _model(draw, shape):
    return Bind(
        models.eps_model,
        {
            "w": draw(st.sampled_from((0.0, 0.5)), label="w"),
            "bias": draw(rs.seeded_normal(shape[1:], scale=0.1)),
            "tscale": 1e-3,
        },
    )


@st.composite
def _ilvr_sample(draw):
    factor = draw(st.sampled_from((1, 2)), label="factor")
    shape = draw(_image_shape(factor))
    s = draw(rs.schedules(max_T=10, variants=("plain", "respaced")), label="schedule")
    seed = draw(st.integers(0, 2**31), label="noise seed")
    return call(
        _model(draw, shape),
        draw(rs.noise(shape), label="x_T"),
        schedule=s,
        reference=draw(rs.data(shape, bound=1.0), label="reference"),
        noise=NoiseSource(seed, shape),
        reference_noise=NoiseSource(seed + 1, shape),
        factor=factor,
    )


@st.composite
def _egsde_step(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    noise = draw(st.one_of(st.none(), rs.noise(shape)), label="noise")
    return call(
        draw(rs.data(shape), label="x"),
        draw(rs.data(shape), label="score"),
        draw(rs.data(shape), label="energy_grad"),
        beta=draw(st.sampled_from((1e-4, 0.02, 0.5)), label="beta"),
        noise=noise,
    )


@st.composite
def _egsde_score(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    return call(draw(rs.data(shape), label="score"), draw(rs.data(shape), label="energy_grad"))


@st.composite
def _egsde_sample(draw):
    shape = draw(rs.batch_shapes(min_dims=2, max_batch=2, max_side=3), label="shape")
    s = draw(rs.schedules(max_T=10, variants=("plain",)), label="schedule")
    t_start = draw(st.integers(0, s.num_timesteps - 1), label="t_start")
    grad = Bind(
        models.score_model, {"w": 0.3, "bias": draw(rs.seeded_normal(shape[1:], scale=0.1))}
    )
    return call(
        _model(draw, shape),
        draw(rs.data(shape, bound=1.0), label="y0"),
        schedule=s,
        energy_grad=grad,
        t_start=t_start,
        noise=NoiseSource(draw(st.integers(0, 2**31), label="seed"), shape),
        start_noise=draw(rs.noise(shape), label="start_noise"),
        mean_type=Raw(draw(st.sampled_from(("eps", "x0", "v", "score")), label="mean_type")),
    )


@st.composite
def _langevin_step(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    return call(
        draw(rs.data(shape), label="x"),
        draw(rs.data(shape), label="score"),
        step_size=draw(st.sampled_from((1e-4, 0.01, 0.5)), label="step_size"),
        noise=draw(rs.noise(shape), label="noise"),
    )


@st.composite
def _langevin_dynamics(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    score = Bind(
        models.static_score,
        {
            "w": draw(st.sampled_from((0.5, 2.0)), label="w"),
            "bias": draw(rs.seeded_normal(shape[1:]), label="bias"),
        },
    )
    return call(
        score,
        draw(rs.data(shape), label="x"),
        step_size=draw(st.sampled_from((1e-3, 0.1)), label="step_size"),
        n_steps=draw(st.sampled_from((1, 5)), label="n_steps"),
        noise=NoiseSource(draw(st.integers(0, 2**31), label="seed"), shape),
    )


def _low_pass_scale(oracle_call, ref, inputs):
    """φ is an average with positive weights: its terms' magnitude is φ(|x|)."""
    from refdiff.guidance import low_pass

    args, kw = oracle_call
    return low_pass(np.abs(args[0]), args[1])


def _ilvr_refine_scale(oracle_call, ref, inputs):
    """The magnitude of the terms of φ(y) + x − φ(x): φ(|y|) + |x| + φ(|x|)."""
    from refdiff.guidance import low_pass

    (x, y), kw = oracle_call
    f = kw.get("factor", 4)
    return low_pass(np.abs(y), f) + np.abs(x) + low_pass(np.abs(x), f)


def _ilvr_sample_scale(oracle_call, ref, inputs):
    """Each step replaces the sample x' by φ(y) + (x' − φ(x')): the x' terms cancel in exact
    arithmetic (so the oracle's sensitivity does not see them) but not in the dtype, so the error
    is relative to the magnitude of the samples. Those are not bounded by the inputs (x0 = (x −
    √(1−ᾱ)·ε)/√ᾱ is 30 × |ε| at ᾱ = 1e-3), so the oracle is run again to record every step's
    state and x0 prediction; φ of their magnitudes adds the block neighbours that φ mixes in."""
    from refdiff.guidance import ilvr_sample, low_pass

    from .check import default_scale

    args, kw = oracle_call
    mags = [default_scale(inputs, ref, None)]

    def keep(info):
        mags.extend(np.abs(np.asarray(a)) for a in (info.x, info.denoised) if a is not None)

    ilvr_sample(*args, **kw, callback=keep)
    m = np.maximum.reduce(np.broadcast_arrays(*mags))
    return np.maximum(m, low_pass(m, kw.get("factor", 4)))


def _steps(oracle_call, ref):
    kw = oracle_call[1]
    if "schedule" in kw:
        return 1, 2 * kw["schedule"].num_timesteps
    return 1, int(kw.get("n_steps", 1))


_register("condition_mean", _condition_mean)
_register("condition_eps", _condition_eps)
_register("condition_score", _condition_score, tol="cancellation")
_register("cfg_combine", _cfg_combine)
_register("rescale_cfg", _rescale_cfg, tol="reduction", sizes_fn=_per_sample)
_register("cfg_model", _cfg_model, target=_cfg_model_apply, tol="reduction", sizes_fn=_per_sample)
_register(
    "low_pass", _low_pass, tol="reduction", sizes_fn=lambda c, r: (4, 1), scale=_low_pass_scale
)
_register(
    "ilvr_refine",
    _ilvr_refine,
    tol="reduction",
    sizes_fn=lambda c, r: (4, 1),
    scale=_ilvr_refine_scale,
)
_register(
    "ilvr_sample",
    _ilvr_sample,
    tol="trajectory",
    sizes_fn=_steps,
    budget=0.5,
    scale=_ilvr_sample_scale,
)
_register("egsde_score", _egsde_score)
_register("egsde_step", _egsde_step)
_register("egsde_sample", _egsde_sample, tol="trajectory", sizes_fn=_steps, budget=0.5)
_register("langevin_step", _langevin_step)
_register("langevin_dynamics", _langevin_dynamics, tol="trajectory", sizes_fn=_steps)
