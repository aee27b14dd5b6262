"""Checks of the reference core: diffusion (Gaussian algebra), parameterizations, KL/likelihood, losses.

Each public array function of ``refdiff.diffusion``, ``refdiff.parameterizations``,
``refdiff.kl`` and ``refdiff.losses`` has a case here, with inputs drawn over every registered
schedule (plain, zero terminal SNR, respaced), every timestep convention the function takes, and
each of its named conventions (mean/variance types, t=0 conventions, CDFs, reductions).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from refdiff import schedules as S

from . import models
from . import strategies as rs
from .cases import Case, register_case
from .strategies import Bind, Build, Raw, call

__all__: list[str] = []

MEAN_TYPES = ("eps", "x0", "v", "mu")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
T0S = ("clipped", "clamped")
SHORT = dict(max_T=10)  # schedules for loops over every t


# --------------------------------------------------------------------------------------------
# Shared draws
# --------------------------------------------------------------------------------------------


@st.composite
def setting(
    draw, *, min_dims: int = 1, max_dims: int = 4, scalar_t: bool = True, variants=rs.VARIANTS
):
    """(schedule, shape, t): a schedule, a data shape and timesteps (an array, or sometimes an int)."""
    s = draw(rs.schedules(variants=variants), label="schedule")
    shape = draw(rs.batch_shapes(min_dims=min_dims, max_dims=max_dims), label="shape")
    T = s.num_timesteps
    ts = rs.timesteps(T, shape[0])
    if scalar_t:
        ts = st.one_of(ts, st.integers(0, T - 1))
    return s, shape, draw(ts, label="t")


def _param_case(name: str, order: str):
    """A parameterization map f(schedule, a, t, b) with data-shaped a and b."""

    @st.composite
    def inputs(draw):
        s, shape, t = draw(setting(), label="setting")
        a, b = draw(rs.data(shape), label="a"), draw(rs.data(shape), label="b")
        return call(s, a, t, b) if order == "s,a,t,b" else call(s, t, b)

    register_case(
        Case(
            f"parameterizations.{name}",
            f"refdiff.parameterizations:{name}",
            inputs=lambda dtype: inputs(),
        )
    )


for _n in (
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "v_from_x0",
    "mu_from_x0",
    "x0_from_mu",
):
    _param_case(_n, "s,a,t,b")
for _n in ("score_from_eps", "eps_from_score"):
    _param_case(_n, "s,t,b")


def _output_case(name: str):
    """x0/ε implied by a network output of each type: f(schedule, x_t, t, out, mean_type)."""

    @st.composite
    def inputs(draw):
        s, shape, t = draw(setting(), label="setting")
        return call(
            s,
            draw(rs.data(shape), label="x_t"),
            t,
            draw(rs.data(shape), label="out"),
            Raw(draw(st.sampled_from(MEAN_TYPES), label="mean_type")),
        )

    register_case(
        Case(
            f"parameterizations.{name}",
            f"refdiff.parameterizations:{name}",
            inputs=lambda dtype: inputs(),
        )
    )


for _n in ("x0_from_output", "eps_from_output"):
    _output_case(_n)


@st.composite
def _prediction(draw):
    """f(out, x, α, σ, prediction) at x = α·x0 + σ·ε, with α² + σ² = 1 or σ from a VE-like scale."""
    shape = draw(rs.batch_shapes(), label="shape")
    alpha = draw(st.sampled_from((1.0, 0.999, 0.8, 0.3, 1e-3)), label="alpha")
    sigma = draw(st.sampled_from(("vp", 0.05, 2.0, 80.0)), label="sigma")
    sigma = float(np.sqrt(1.0 - alpha * alpha)) if sigma == "vp" else float(sigma)
    if sigma == 0.0:
        sigma = 1e-3
    return call(
        draw(rs.data(shape), label="out"),
        draw(rs.data(shape), label="x"),
        alpha,
        sigma,
        Raw(draw(st.sampled_from(("eps", "x0", "v", "score", "flow")), label="type")),
    )


for _n in ("x0_from_prediction", "eps_from_prediction"):
    register_case(
        Case(
            f"parameterizations.{_n}",
            f"refdiff.parameterizations:{_n}",
            inputs=lambda dtype: _prediction(),
        )
    )


def _level(schedule, t):
    """The host-float coefficients of one timestep, read from the side's own tables."""
    from refdiff.parameterizations import level_coefficients

    return level_coefficients(schedule, t)


@st.composite
def _output_at(draw, eps_from_x0: bool):
    s = draw(rs.schedules(), label="schedule")
    shape = draw(rs.batch_shapes(), label="shape")
    t = draw(st.integers(0, s.num_timesteps - 1), label="t")
    c = Build(_level, (s, Raw(t)))
    a, b = draw(rs.data(shape), label="a"), draw(rs.data(shape), label="b")
    if eps_from_x0:
        return call(a, b, c)
    # "mean" is the name x0_from_output_at accepts for the posterior-mean output ("mu" elsewhere)
    return call(a, b, c, Raw(draw(st.sampled_from(("eps", "x0", "v", "mean")), label="mean_type")))


register_case(
    Case(
        "parameterizations.x0_from_output_at",
        "refdiff.parameterizations:x0_from_output_at",
        inputs=lambda dtype: _output_at(False),
        covers=("parameterizations.level_coefficients", "parameterizations.LevelCoefficients"),
    )
)
register_case(
    Case(
        "parameterizations.eps_from_x0_at",
        "refdiff.parameterizations:eps_from_x0_at",
        inputs=lambda dtype: _output_at(True),
    )
)


@st.composite
def _coefficient(draw):
    s, shape, t = draw(setting(), label="setting")
    name = draw(st.sampled_from(S.TABLE_NAMES), label="table")
    return call(s, Raw(name), t, draw(rs.data(shape), label="x"))


register_case(
    Case(
        "parameterizations.coefficient",
        "refdiff.parameterizations:coefficient",
        inputs=lambda dtype: _coefficient(),
        tol="exact",
    )
)


# --------------------------------------------------------------------------------------------
# diffusion
# --------------------------------------------------------------------------------------------


@st.composite
def _q_mean_variance(draw):
    s, shape, t = draw(setting(), label="setting")
    return call(s, draw(rs.data(shape), label="x0"), t)


@st.composite
def _q_sample(draw):
    s, shape, t = draw(setting(), label="setting")
    return call(s, draw(rs.data(shape), label="x0"), t, noise=draw(rs.noise(shape), label="noise"))


@st.composite
def _q_posterior(draw):
    s, shape, t = draw(setting(), label="setting")
    return call(
        s,
        draw(rs.data(shape), label="x0"),
        draw(rs.data(shape), label="x_t"),
        t,
        t0=Raw(draw(st.sampled_from(T0S), label="t0")),
    )


@st.composite
def _learned_range(draw):
    s, shape, t = draw(setting(), label="setting")
    v = np.clip(draw(rs.data(shape, bound=1.0), label="v"), -1.0, 1.0)
    return call(s, t, v, t0=Raw(draw(st.sampled_from(T0S), label="t0")))


@st.composite
def _fixed_variance(draw):
    s, shape, t = draw(setting(), label="setting")
    return call(
        s,
        t,
        draw(rs.data(shape), label="x"),
        var_type=Raw(draw(st.sampled_from(("fixed_small", "fixed_large")), label="var")),
        t0=Raw(draw(st.sampled_from(T0S), label="t0")),
    )


@st.composite
def _split(draw):
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    out_shape = (shape[0], 2 * shape[1]) + shape[2:]
    return call(draw(rs.data(out_shape), label="model_output"), draw(rs.data(shape), label="x_t"))


@st.composite
def _dynamic_threshold(draw):
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    ratio = draw(st.sampled_from((0.0, 0.5, 0.9, 0.995, 1.0)), label="ratio")
    max_value = draw(st.sampled_from((None, 1.0, 1.5)), label="max_value")
    return call(draw(rs.data(shape, bound=3.0), label="x0"), ratio=ratio, max_value=max_value)


@st.composite
def _p_mean_variance(draw):
    s, shape, t = draw(setting(min_dims=2), label="setting")
    mean_type = draw(st.sampled_from(MEAN_TYPES), label="mean_type")
    var_type = draw(st.sampled_from(VAR_TYPES), label="var_type")
    channels = 2 if var_type in ("learned", "learned_range") else 1
    out_shape = (shape[0], channels * shape[1]) + shape[2:]
    out = draw(rs.data(out_shape), label="model_output")
    if var_type == "learned_range":
        out[:, shape[1] :] = np.clip(out[:, shape[1] :], -1.0, 1.0)
    elif var_type == "learned":
        out[:, shape[1] :] = np.clip(out[:, shape[1] :], -12.0, 0.0)
    denoise = draw(st.sampled_from((None, "dynamic")), label="denoised_fn")
    from refdiff.diffusion import dynamic_threshold

    return call(
        s,
        out,
        draw(rs.data(shape), label="x_t"),
        t,
        mean_type=Raw(mean_type),
        var_type=Raw(var_type),
        clip_x0=draw(st.booleans(), label="clip_x0"),
        denoised_fn=None if denoise is None else Bind(dynamic_threshold, {"ratio": 0.9}),
        t0=Raw(draw(st.sampled_from(T0S), label="t0")),
    )


_D = "refdiff.diffusion:"
register_case(
    Case(
        "diffusion.q_mean_variance",
        _D + "q_mean_variance",
        inputs=lambda dtype: _q_mean_variance(),
        tol={"0": "elementwise", "1": "exact", "2": "exact"},
    )
)
register_case(Case("diffusion.q_sample", _D + "q_sample", inputs=lambda dtype: _q_sample()))
register_case(
    Case(
        "diffusion.q_posterior_mean_variance",
        _D + "q_posterior_mean_variance",
        inputs=lambda dtype: _q_posterior(),
        tol={"0": "elementwise", "1": "exact", "2": "exact"},
    )
)
register_case(
    Case(
        "diffusion.learned_range_log_variance",
        _D + "learned_range_log_variance",
        inputs=lambda dtype: _learned_range(),
    )
)
register_case(
    Case("diffusion.fixed_variance", _D + "fixed_variance", inputs=lambda dtype: _fixed_variance())
)
register_case(
    Case(
        "diffusion.split_variance_output",
        _D + "split_variance_output",
        inputs=lambda dtype: _split(),
        tol="exact",
    )
)
register_case(
    Case(
        "diffusion.dynamic_threshold",
        _D + "dynamic_threshold",
        inputs=lambda dtype: _dynamic_threshold(),
    )
)
register_case(
    Case(
        "diffusion.p_mean_variance",
        _D + "p_mean_variance",
        inputs=lambda dtype: _p_mean_variance(),
        tol="cancellation",
        covers=("diffusion.PMeanVar",),
    )
)


# --------------------------------------------------------------------------------------------
# kl
# --------------------------------------------------------------------------------------------


@st.composite
def _normal_kl(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    m1, m2 = draw(rs.data(shape), label="mean1"), draw(rs.data(shape), label="mean2")
    l1 = np.clip(draw(rs.data(shape, bound=5.0), label="logvar1"), -20.0, 5.0)
    near = draw(st.booleans(), label="logvar2 near logvar1")
    l2 = (
        l1 + 1e-3 * draw(rs.noise(shape))
        if near
        else np.clip(draw(rs.data(shape, bound=5.0), label="logvar2"), -20.0, 5.0)
    )
    return call(m1, l1, m2, l2)


@st.composite
def _cdf_input(draw):
    return call(draw(rs.data(draw(rs.batch_shapes(), label="shape"), bound=6.0), label="x"))


@st.composite
def _dgll(draw):
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    x = draw(rs.grid_data(shape), label="x")
    means = np.clip(x + 0.1 * draw(rs.noise(shape), label="mean offset"), -1.5, 1.5)
    log_scales = draw(st.sampled_from((-6.0, -3.0, -1.0, 0.0)), label="log scale") + 0.2 * draw(
        rs.noise(shape), label="log scale jitter"
    )
    cdf = draw(st.sampled_from(("tanh", "erf")), label="cdf")
    return call(
        x,
        means=means,
        log_scales=log_scales,
        cdf=Raw(cdf),
        log_floor=draw(st.sampled_from((1e-12, 0.0)), label="log_floor"),
    )


def _log_tiny(dtype: str) -> float:
    """log of the smallest normal number of ``dtype``."""
    return float(
        np.log(
            {
                "float64": 2.0**-1022,
                "float32": 2.0**-126,
                "float16": 2.0**-14,
                "bfloat16": 2.0**-126,
            }[dtype]
        )
    )


def _normal_probabilities(oracle_call, output, ref, dtype):
    """Compare log-probabilities above e^40 times the smallest normal number.

    Below that the bin probability approaches the subnormal range, where libraries legitimately
    differ (scipy's erfc underflows to 0 where torch's returns a subnormal, and the log of either
    is -inf or about -720); such values are not a statement about the backend's arithmetic.
    """
    return np.isfinite(ref) & (ref > _log_tiny(dtype) + 40.0)


def _resolvable_probabilities(oracle_call, output, ref, dtype):
    """With the tanh CDF, compare log-probabilities of bins with p > eps: p is a difference of
    CDF values of size ≤ 1, so below eps it is not resolved at all in the dtype (0 or noise)."""
    from .tolerances import eps

    return np.isfinite(ref) & (ref > np.log(eps(dtype)))


def _tanh_cdf_scale(oracle_call, ref, inputs):
    """The tanh CDF forms a probability p as a difference of two CDF values of size ≤ 1, so its
    absolute error is ~eps and log p errs by ~eps/p: the scale is 1/p = exp(−log p)."""
    with np.errstate(over="ignore"):
        return np.maximum(
            np.abs(ref), np.exp(np.minimum(-np.where(np.isfinite(ref), ref, 0.0), 700.0))
        )


def _dgll_case(cdf: str) -> Case:
    @st.composite
    def inputs(draw):
        c = draw(_dgll(), label="inputs")
        c.kwargs["cdf"] = Raw(cdf)
        return c

    return Case(
        f"kl.discretized_gaussian_log_likelihood[{cdf}]",
        "refdiff.kl:discretized_gaussian_log_likelihood",
        inputs=lambda dtype: inputs(),
        tol="cancellation",
        requires=("erf", "erfc") if cdf == "erf" else (),
        domain=_resolvable_probabilities if cdf == "tanh" else _normal_probabilities,
        scale=_tanh_cdf_scale if cdf == "tanh" else None,
    )


@st.composite
def _mean_flat(draw):
    return call(draw(rs.data(draw(rs.batch_shapes(), label="shape")), label="x"))


def _flat_sizes(oracle_call, ref):
    """n = number of elements reduced per output element."""
    arrays = [a for a in oracle_call[0] if isinstance(a, np.ndarray)]
    biggest = max((a.size for a in arrays), default=1)
    return max(1, biggest // max(np.size(ref), 1)), 1


@st.composite
def _prior_bpd(draw):
    s = draw(rs.schedules(), label="schedule")
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    return call(s, draw(rs.data(shape), label="x0"))


def _vb_common(draw, *, short: bool = False):
    s = draw(rs.schedules(**(SHORT if short else {})), label="schedule")
    shape = draw(rs.batch_shapes(min_dims=2, max_batch=2, max_side=3), label="shape")
    mean_type = draw(st.sampled_from(MEAN_TYPES), label="mean_type")
    var_type = draw(st.sampled_from(VAR_TYPES), label="var_type")
    return s, shape, mean_type, var_type


def _t_for(draw, s, batch: int, cdf: str):
    """Timesteps; with the tanh CDF only t >= 1 (the t=0 decoder term is checked by
    ``kl.discretized_gaussian_log_likelihood[tanh]`` with its own cancellation scale)."""
    if cdf == "tanh":
        from hypothesis import assume

        assume(s.num_timesteps >= 2)
        one = st.one_of(
            st.just(1), st.just(s.num_timesteps - 1), st.integers(1, s.num_timesteps - 1)
        )
        return np.asarray([draw(one, label="t") for _ in range(batch)], dtype=np.int64)
    return draw(rs.timesteps(s.num_timesteps, batch), label="t")


@st.composite
def _vb_terms(draw, cdf: str):
    s, shape, mean_type, var_type = _vb_common(draw)
    t = _t_for(draw, s, shape[0], cdf)
    learned = var_type in ("learned", "learned_range")
    out_shape = (shape[0], (2 if learned else 1) * shape[1]) + shape[2:]
    out = draw(rs.data(out_shape, bound=1.0), label="model_output")
    if learned:
        out[:, shape[1] :] = np.clip(out[:, shape[1] :], -1.0, 0.0)
    x0 = draw(rs.grid_data(shape), label="x0")
    x_t = draw(rs.data(shape), label="x_t")
    return call(
        s,
        out,
        x0,
        x_t,
        t,
        mean_type=Raw(mean_type),
        var_type=Raw(var_type),
        clip_x0=draw(st.booleans(), label="clip_x0"),
        t0=Raw(draw(st.sampled_from(T0S), label="t0")),
        cdf=Raw(cdf),
    )


def _model(draw, shape, var_type: str, *, tscale: float):
    """A Bind of the linear test model (learned-variance variant when needed)."""
    bias = draw(rs.seeded_normal(shape[1:], scale=0.1), label="model bias")
    w = draw(st.sampled_from((0.0, 0.5, 1.0)), label="model w")
    if var_type in ("learned", "learned_range"):
        v = np.clip(draw(rs.seeded_normal(shape, scale=0.5), label="model v"), -1.0, 0.0)
        return Bind(models.learned_variance_model, {"w": w, "bias": bias, "tscale": tscale, "v": v})
    return Bind(models.eps_model, {"w": w, "bias": bias, "tscale": tscale})


@st.composite
def _calc_bpd_loop(draw):
    s, shape, mean_type, var_type = _vb_common(draw, short=True)
    T = s.num_timesteps
    return call(
        s,
        _model(draw, shape, var_type, tscale=1.0 / 1000),
        draw(rs.grid_data(shape), label="x0"),
        noise=draw(rs.noise((T,) + shape), label="noise"),
        mean_type=Raw(mean_type),
        var_type=Raw(var_type),
        clip_x0=draw(st.booleans(), label="clip_x0"),
        t0=Raw(draw(st.sampled_from(T0S), label="t0")),
        cdf=Raw("erf"),
    )


_K = "refdiff.kl:"
register_case(
    Case("kl.normal_kl", _K + "normal_kl", inputs=lambda dtype: _normal_kl(), tol="cancellation")
)


def _unit_terms(oracle_call, ref, inputs):
    """0.5·(1 + tanh u): both terms are of size ≤ 1 and cancel in the lower tail, so the result
    carries an absolute error of about eps however small it is: the scale is 1."""
    return np.maximum(np.abs(ref), 1.0)


register_case(
    Case(
        "kl.approx_standard_normal_cdf",
        _K + "approx_standard_normal_cdf",
        inputs=lambda dtype: _cdf_input(),
        scale=_unit_terms,
    )
)
register_case(
    Case(
        "kl.standard_normal_cdf",
        _K + "standard_normal_cdf",
        inputs=lambda dtype: _cdf_input(),
        requires=("erfc",),
    )
)
register_case(_dgll_case("tanh"))
register_case(_dgll_case("erf"))
register_case(
    Case(
        "kl.mean_flat",
        _K + "mean_flat",
        inputs=lambda dtype: _mean_flat(),
        tol="reduction",
        sizes_fn=_flat_sizes,
    )
)
register_case(
    Case("kl.prior_bpd", _K + "prior_bpd", inputs=lambda dtype: _prior_bpd(), tol="cancellation")
)
for _cdf in ("tanh", "erf"):
    register_case(
        Case(
            f"kl.vb_terms_bpd[{_cdf}]",
            _K + "vb_terms_bpd",
            inputs=lambda dtype, c=_cdf: _vb_terms(c),
            tol="cancellation",
            requires=("erf", "erfc") if _cdf == "erf" else (),
        )
    )
register_case(
    Case(
        "kl.calc_bpd_loop",
        _K + "calc_bpd_loop",
        inputs=lambda dtype: _calc_bpd_loop(),
        tol="cancellation",
        budget=0.5,
        requires=("erf", "erfc"),
        doc="the full VLB loop with the exact-CDF decoder (every t, t=0 included)",
    )
)


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


@st.composite
def _l_simple(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    return call(
        draw(rs.data(shape), label="pred"),
        draw(rs.data(shape), label="target"),
        reduction=Raw(draw(st.sampled_from(("mean", "sum")), label="reduction")),
    )


@st.composite
def _training_target(draw):
    s, shape, t = draw(setting(), label="setting")
    return call(
        s,
        draw(rs.data(shape), label="x0"),
        draw(rs.data(shape), label="x_t"),
        t,
        draw(rs.noise(shape), label="noise"),
        mean_type=Raw(draw(st.sampled_from(MEAN_TYPES), label="mean_type")),
    )


@st.composite
def _training_losses(draw, cdf: str):
    s, shape, mean_type, var_type = _vb_common(draw)
    t = _t_for(draw, s, shape[0], cdf)
    loss_type = draw(
        st.sampled_from(("mse", "rescaled_mse", "hybrid", "kl", "rescaled_kl")), label="loss_type"
    )
    return call(
        s,
        _model(draw, shape, var_type, tscale=1.0 / 1000),
        draw(rs.grid_data(shape), label="x0"),
        t,
        noise=draw(rs.noise(shape), label="noise"),
        loss_type=Raw(loss_type),
        mean_type=Raw(mean_type),
        var_type=Raw(var_type),
        reduction=Raw(draw(st.sampled_from(("mean", "sum")), label="reduction")),
        t0=Raw(draw(st.sampled_from(T0S), label="t0")),
        cdf=Raw(cdf),
    )


@st.composite
def _snr_weight(draw, *, weight: bool):
    s, shape, t = draw(setting(), label="setting")
    x = draw(rs.data(shape), label="x")
    if not weight:
        return call(s, t, x)
    return call(
        s,
        t,
        x,
        gamma=draw(st.sampled_from((1.0, 5.0, 20.0)), label="gamma"),
        mean_type=Raw(draw(st.sampled_from(("eps", "x0", "v")), label="mean_type")),
    )


@st.composite
def _t_from_uniform(draw):
    shape = draw(rs.batch_shapes(max_dims=1), label="shape")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    u = np.random.default_rng(seed).random(shape)
    return call(
        u,
        eps=draw(st.sampled_from((1e-5, 1e-3)), label="eps"),
        T=draw(st.sampled_from((1.0, 0.5)), label="T"),
    )


def _vp_sde(draw):
    from refdiff import sde

    kind = draw(st.sampled_from(("VPSDE", "SubVPSDE", "VESDE")), label="sde")
    if kind == "VESDE":
        return Build(sde.VESDE, (), {"sigma_min": 0.01, "sigma_max": 50.0, "N": 1000})
    return Build(getattr(sde, kind), (), {"beta_min": 0.1, "beta_max": 20.0, "N": 1000})


@st.composite
def _dsm_loss(draw):
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    t = np.clip(draw(rs.seeded_normal((shape[0],), scale=0.4), label="t") ** 2, 1e-5, 1.0)
    score = Bind(
        models.score_model,
        {
            "w": draw(st.sampled_from((0.5, 1.0)), label="w"),
            "bias": draw(rs.seeded_normal(shape[1:], scale=0.1)),
        },
    )
    return call(
        _vp_sde(draw),
        score,
        draw(rs.data(shape), label="x0"),
        t,
        noise=draw(rs.noise(shape), label="noise"),
        likelihood_weighting=draw(st.booleans(), label="likelihood_weighting"),
        reduction=Raw(draw(st.sampled_from(("mean", "sum")), label="reduction")),
    )


@st.composite
def _ncsn_loss(draw):
    shape = draw(rs.batch_shapes(min_dims=2), label="shape")
    L = draw(st.integers(1, 10), label="levels")
    sigmas = np.exp(np.linspace(np.log(50.0), np.log(0.01), L))
    labels = np.asarray([draw(st.integers(0, L - 1)) for _ in range(shape[0])], dtype=np.int64)
    score = Bind(
        models.score_model, {"w": 1.0, "bias": draw(rs.seeded_normal(shape[1:], scale=0.1))}
    )
    return call(
        score,
        draw(rs.data(shape), label="x0"),
        sigmas,
        labels,
        noise=draw(rs.noise(shape), label="noise"),
        anneal_power=draw(st.sampled_from((2.0, 1.0)), label="anneal_power"),
    )


_L = "refdiff.losses:"
register_case(
    Case(
        "losses.sum_flat",
        _L + "sum_flat",
        inputs=lambda dtype: _mean_flat(),
        tol="reduction",
        sizes_fn=_flat_sizes,
    )
)
register_case(
    Case(
        "losses.l_simple",
        _L + "l_simple",
        inputs=lambda dtype: _l_simple(),
        tol="reduction",
        sizes_fn=_flat_sizes,
    )
)
register_case(
    Case("losses.training_target", _L + "training_target", inputs=lambda dtype: _training_target())
)
for _cdf in ("tanh", "erf"):
    register_case(
        Case(
            f"losses.training_losses[{_cdf}]",
            _L + "training_losses",
            inputs=lambda dtype, c=_cdf: _training_losses(c),
            tol="cancellation",
            requires=("erf", "erfc") if _cdf == "erf" else (),
        )
    )
register_case(Case("losses.snr", _L + "snr", inputs=lambda dtype: _snr_weight(weight=False)))
register_case(
    Case(
        "losses.min_snr_weight",
        _L + "min_snr_weight",
        inputs=lambda dtype: _snr_weight(weight=True),
    )
)
register_case(
    Case("losses.t_from_uniform", _L + "t_from_uniform", inputs=lambda dtype: _t_from_uniform())
)
register_case(
    Case("losses.dsm_loss", _L + "dsm_loss", inputs=lambda dtype: _dsm_loss(), tol="cancellation")
)
register_case(
    Case(
        "losses.ncsn_loss", _L + "ncsn_loss", inputs=lambda dtype: _ncsn_loss(), tol="cancellation"
    )
)
