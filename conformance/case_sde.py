"""Checks of the continuous families (``refdiff.sde``) and of Karras/EDM (``refdiff.edm``).

Every array method of VPSDE, SubVPSDE and VESDE — drift/diffusion, marginals, log-SNR and its
inverse, prior sampling and density, the Euler and DDPM/SMLD discretizations, the reverse SDE and
the probability-flow ODE — is checked for each family with drawn parameters and conventions; the
SDE objects are built per side from the same (quantised) parameters. The EDM σ grids are host
tables (checked exact after the one cast, like schedule tables); the preconditioning and the σ↔ᾱ
maps are elementwise.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from . import models
from . import strategies as rs
from .cases import Case, register_case
from .strategies import DEVICE, DTYPE, XP, Bind, Build, HostArray, Raw, call

__all__: list[str] = []

_FAMILIES = ("VPSDE", "SubVPSDE", "VESDE")


def _sde_build(draw, family: str, *, N_menu=(1000, 25, 1)) -> Build:
    """An SDE of ``family`` with drawn parameters and conventions, built per side.

    N = 25 > β_max keeps the DDPM chain valid (β_i = β/N < 1); N = 1 checks the degenerate case.
    """
    from refdiff import sde

    N = draw(st.sampled_from(N_menu), label="N")
    rounding = Raw(draw(st.sampled_from(("round", "floor")), label="index_rounding"))
    if family == "VESDE":
        kw = {
            "sigma_min": draw(st.sampled_from((0.01, 0.002)), label="sigma_min"),
            "sigma_max": draw(st.sampled_from((50.0, 80.0)), label="sigma_max"),
            "N": N,
            "marginal": Raw(draw(st.sampled_from(("score_sde", "exact")), label="marginal")),
            "index_rounding": rounding,
        }
    else:
        kw = {
            "beta_min": draw(st.sampled_from((0.1, 0.05)), label="beta_min"),
            "beta_max": draw(st.sampled_from((20.0, 10.0)), label="beta_max"),
            "N": N,
            "index_rounding": rounding,
        }
    return Build(getattr(sde, family), (), kw)


def _host_sde(b: Build):
    """The float64 host SDE of a Build (for deriving inputs such as λ from t)."""
    from .check import OracleSide, convert

    return convert(b, OracleSide("float64"))


#: The smallest positive time drawn (besides 0): below it the SDE coefficients underflow in float32
#: (∫β ~ 0.05 t is subnormal near t = 1e-37), which tests the float format, not the SDE.
T_MIN = 1e-6


@st.composite
def _times(draw, batch: int, *, lo: float = 0.0):
    """Times in {lo} ∪ [max(lo, T_MIN), 1] of shape (batch,), the ends drawn often; sometimes 0-d."""
    lo_pos = max(lo, T_MIN)
    one = st.one_of(st.just(lo), st.just(1.0), st.floats(lo_pos, 1.0), rs.log_uniform(lo_pos, 1.0))
    if draw(st.booleans(), label="0-d t"):
        return np.asarray(draw(one, label="t"))
    return np.asarray([draw(one, label="t") for _ in range(batch)])


def _score_fn(draw, shape) -> Bind:
    return Bind(
        models.score_model,
        {
            "w": draw(st.sampled_from((0.5, 1.0, 2.0)), label="w"),
            "bias": draw(rs.seeded_normal(shape[1:], scale=0.1)),
        },
    )


def _method(cls: str, meth: str):
    def apply(sde, *args, **kwargs):
        return getattr(sde, meth)(*args, **kwargs)

    apply.__name__ = apply.__qualname__ = f"{cls}.{meth}"
    return apply


def _x_t_inputs(family: str, *, with_dt: bool = False):
    @st.composite
    def inputs(draw):
        b = _sde_build(draw, family)
        shape = draw(rs.batch_shapes(), label="shape")
        t = draw(_times(shape[0]), label="t")
        kw = {}
        if with_dt and draw(st.booleans(), label="explicit dt"):
            kw["dt"] = draw(st.sampled_from((1e-3, 0.01, 0.1)), label="dt")
        return call(b, draw(rs.data(shape), label="x"), t, **kw)

    return inputs


def _t_inputs(family: str):
    @st.composite
    def inputs(draw):
        return call(_sde_build(draw, family), draw(_times(draw(st.integers(1, 4))), label="t"))

    return inputs


def _lambda_inputs(family: str):
    @st.composite
    def inputs(draw):
        b = _sde_build(draw, family)
        t = 0.999 * draw(_times(draw(st.integers(1, 4)), lo=1e-3), label="t")
        with np.errstate(all="ignore"):
            lam = np.asarray(_host_sde(b).lambda_(np.asarray(t, dtype=np.float64)))
        return call(b, lam)

    return inputs


def _prior_inputs(family: str, meth: str):
    @st.composite
    def inputs(draw):
        b = _sde_build(draw, family)
        shape = draw(rs.batch_shapes(), label="shape")
        z = draw(rs.noise(shape), label="noise")
        if meth == "prior_sampling":
            return call(b, Raw(shape), noise=z)
        return call(b, z * (50.0 if family == "VESDE" else 1.0))

    return inputs


def _reverse(meth: str):
    def apply(sde, score_fn, x, t, *, probability_flow: bool):
        return getattr(sde.reverse(score_fn, probability_flow=probability_flow), meth)(x, t)

    apply.__name__ = f"ReverseSDE.{meth}"
    return apply


def _reverse_inputs(family: str, meth: str):
    @st.composite
    def inputs(draw):
        b = _sde_build(draw, family)
        shape = draw(rs.batch_shapes(), label="shape")
        t = draw(_times(shape[0]), label="t")
        return call(
            b,
            _score_fn(draw, shape),
            draw(rs.data(shape), label="x"),
            t,
            probability_flow=draw(st.booleans(), label="probability_flow"),
        )

    return inputs


def _pf_inputs(family: str):
    @st.composite
    def inputs(draw):
        b = _sde_build(draw, family)
        shape = draw(rs.batch_shapes(), label="shape")
        return call(
            b,
            _score_fn(draw, shape),
            draw(rs.data(shape), label="x"),
            draw(_times(shape[0]), label="t"),
        )

    return inputs


def _z_size(oracle_call, ref):
    """n = elements per sample summed by prior_logp."""
    z = oracle_call[0][1]
    return max(1, int(np.size(z) // max(np.size(ref), 1))), 1


_T_METHODS = (
    "marginal_log_mean_coeff",
    "marginal_alpha",
    "marginal_std",
    "log_snr",
    "lambda_",
    "marginal_lambda",
)

for _fam in _FAMILIES:
    for _m in ("sde", "marginal_prob", "discretize"):
        register_case(
            Case(
                f"sde.{_fam}.{_m}",
                _method(_fam, _m),
                inputs=lambda d, f=_fam: _x_t_inputs(f)(),
                covers=("sde.SDE", f"sde.{_fam}"),
            )
        )
    register_case(
        Case(
            f"sde.{_fam}.euler_discretize",
            _method(_fam, "euler_discretize"),
            inputs=lambda d, f=_fam: _x_t_inputs(f, with_dt=True)(),
        )
    )
    for _m in _T_METHODS + (("sigma",) if _fam == "VESDE" else ("beta",)):
        register_case(
            Case(f"sde.{_fam}.{_m}", _method(_fam, _m), inputs=lambda d, f=_fam: _t_inputs(f)())
        )
    register_case(
        Case(
            f"sde.{_fam}.t_from_lambda",
            _method(_fam, "t_from_lambda"),
            inputs=lambda d, f=_fam: _lambda_inputs(f)(),
            tol="cancellation",
            boundary_rejects=True,
        )
    )
    register_case(
        Case(
            f"sde.{_fam}.prior_sampling",
            _method(_fam, "prior_sampling"),
            inputs=lambda d, f=_fam: _prior_inputs(f, "prior_sampling")(),
        )
    )
    register_case(
        Case(
            f"sde.{_fam}.prior_logp",
            _method(_fam, "prior_logp"),
            inputs=lambda d, f=_fam: _prior_inputs(f, "prior_logp")(),
            tol="reduction",
            sizes_fn=_z_size,
        )
    )
    for _m in ("sde", "discretize"):
        # f − g²·s cancels between the drift and the score term (e.g. the Gaussian score of the
        # tests makes them nearly equal): the cancellation class.
        register_case(
            Case(
                f"sde.ReverseSDE.{_m}[{_fam}]",
                _reverse(_m),
                inputs=lambda d, f=_fam, m=_m: _reverse_inputs(f, m)(),
                tol="cancellation",
                covers=("sde.ReverseSDE", "sde.SDE.reverse"),
            )
        )
    register_case(
        Case(
            f"sde.probability_flow_drift[{_fam}]",
            "refdiff.sde:probability_flow_drift",
            inputs=lambda d, f=_fam: _pf_inputs(f)(),
            tol="cancellation",
        )
    )


# --------------------------------------------------------------------------------------------
# edm
# --------------------------------------------------------------------------------------------

_E = "refdiff.edm:"


@st.composite
def _grid(draw, which: str):
    n = draw(st.sampled_from((1, 2, 5, 18, 40)), label="n")
    append_zero = draw(st.booleans(), label="append_zero")
    if which == "vp_sigmas":
        args = (
            n,
            draw(st.sampled_from((19.9, 10.0)), label="beta_d"),
            draw(st.sampled_from((0.1, 0.05)), label="beta_min"),
            draw(st.sampled_from((1e-3, 1e-2)), label="eps_s"),
        )
    else:
        args = (
            n,
            draw(st.sampled_from((0.002, 0.03)), label="sigma_min"),
            draw(st.sampled_from((80.0, 14.6)), label="sigma_max"),
        )
        if which in ("karras_sigmas", "polyexponential_sigmas"):
            args += (draw(st.sampled_from((7.0, 1.0, 3.0)), label="rho"),)
    return call(*args, append_zero=append_zero, xp=XP, device=DEVICE, dtype=DTYPE)


@st.composite
def _interpolated_grid(draw):
    from refdiff.schedules import linear, scaled_linear

    T = draw(st.sampled_from((10, 50)), label="T")
    ab = (linear if draw(st.booleans(), label="linear") else scaled_linear)(T).alphas_cumprod
    n = draw(st.sampled_from((1, 3, 7)), label="n")
    spacing = draw(st.sampled_from(("linspace", "leading", "trailing")), label="timestep_spacing")
    # a host table in (built on the host like every σ grid), a backend array out
    return call(
        HostArray(np.asarray(ab)),
        n,
        timestep_spacing=spacing,
        steps_offset=draw(st.sampled_from((0, 1)), label="steps_offset")
        if spacing == "leading"
        else 0,
        append_zero=draw(st.booleans(), label="append_zero"),
        xp=XP,
        device=DEVICE,
        dtype=DTYPE,
    )


register_case(
    Case(
        "edm.interpolated_sigmas",
        _E + "interpolated_sigmas",
        inputs=lambda d: _interpolated_grid(),
        tol="exact",
        quantise_ref=True,
        covers=("edm.TIMESTEP_SPACINGS",),
        doc="diffusers' interpolated σ grid of edm.interpolated_sigmas moved with xp=, "
        "device=, dtype=: the float64 table cast once",
    )
)

for _g in ("karras_sigmas", "exponential_sigmas", "polyexponential_sigmas", "vp_sigmas"):
    register_case(
        Case(
            f"edm.{_g}",
            _E + _g,
            inputs=lambda d, g=_g: _grid(g),
            tol="exact",
            quantise_ref=True,
            doc=f"the host σ grid of edm.{_g} moved with xp=, device=, dtype=: the "
            "float64 table cast once",
        )
    )


@st.composite
def _sigmas(draw, *, zero: bool = True, inf: bool = False, lo: float = 1e-3, hi: float = 1e2):
    """Noise levels of shape (B,) or 0-d: log-uniform in [lo, hi], with 0 (and ∞) when allowed."""
    edges = [lo, hi] + ([0.0] if zero else []) + ([float("inf")] if inf else [])
    one = st.one_of(st.sampled_from(edges), rs.log_uniform(lo, hi))
    if draw(st.booleans(), label="0-d sigma"):
        return np.asarray(draw(one, label="sigma"))
    return np.asarray([draw(one, label="sigma") for _ in range(draw(st.integers(1, 4)))])


def _sigma_case(name: str, *, zero=True, inf=False, extra=None, tol="elementwise"):
    @st.composite
    def inputs(draw):
        kw = {k: draw(st.sampled_from(v), label=k) for k, v in (extra or {}).items()}
        return call(draw(_sigmas(zero=zero, inf=inf), label="sigma"), **kw)

    register_case(Case(f"edm.{name}", _E + name, inputs=lambda d: inputs(), tol=tol))


for _n in ("c_skip", "c_out", "c_in", "edm_loss_weight"):
    _sigma_case(_n, zero=_n != "edm_loss_weight", extra={"sigma_data": (0.5, 1.0)})
_sigma_case("c_noise", zero=False)
_sigma_case("vp_sigma_inv", extra={"beta_d": (19.9,), "beta_min": (0.1, 0.05)}, tol="cancellation")
_sigma_case("alpha_bar_from_sigma", inf=True)


@st.composite
def _unit_times(draw):
    t = draw(_times(draw(st.integers(1, 4))), label="t")
    return call(
        t,
        beta_d=draw(st.sampled_from((19.9, 10.0)), label="beta_d"),
        beta_min=draw(st.sampled_from((0.1, 0.05)), label="beta_min"),
    )


register_case(Case("edm.vp_sigma", _E + "vp_sigma", inputs=lambda d: _unit_times()))


@st.composite
def _preconditioning(draw):
    kind = draw(st.sampled_from(("edm", "vp", "ve")), label="kind")
    return call(
        draw(_sigmas(zero=kind == "vp"), label="sigma"),
        Raw(kind),
        sigma_data=draw(st.sampled_from((0.5, 1.0)), label="sigma_data"),
    )


register_case(
    Case(
        "edm.preconditioning",
        _E + "preconditioning",
        inputs=lambda d: _preconditioning(),
        covers=("edm.PRECONDITIONINGS",),
    )
)


def _denoise(factory):
    def apply(raw_fn, x, sigma, *, sigma_data, kind):
        return factory(raw_fn, sigma_data=sigma_data, kind=kind)(x, sigma)

    apply.__name__ = getattr(factory, "__name__", "denoiser")
    return apply


@st.composite
def _denoiser_inputs(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    kind = draw(st.sampled_from(("edm", "vp", "ve")), label="kind")
    sig = draw(_sigmas(zero=False), label="sigma")
    if sig.ndim:
        sig = np.resize(sig, (shape[0],))
    raw = Bind(
        models.raw_network,
        {
            "w": draw(st.sampled_from((0.5, 1.0)), label="w"),
            "bias": draw(rs.seeded_normal(shape[1:], scale=0.1)),
        },
    )
    return call(
        raw,
        draw(rs.data(shape), label="x"),
        sig,
        sigma_data=draw(st.sampled_from((0.5, 1.0)), label="sigma_data"),
        kind=Raw(kind),
    )


def _edm_denoiser(raw_fn, **kw):
    from refdiff.edm import EDMDenoiser

    return EDMDenoiser(raw_fn, **kw)


_edm_denoiser.__name__ = "EDMDenoiser"


def _from_raw(raw_fn, **kw):
    from refdiff.edm import denoiser_from_raw

    return denoiser_from_raw(raw_fn, **kw)


register_case(Case("edm.EDMDenoiser", _denoise(_edm_denoiser), inputs=lambda d: _denoiser_inputs()))
register_case(
    Case("edm.denoiser_from_raw", _denoise(_from_raw), inputs=lambda d: _denoiser_inputs())
)


@st.composite
def _sigma_from_normal(draw):
    z = draw(rs.noise(draw(rs.batch_shapes(max_dims=1), label="shape")), label="z")
    return call(
        z,
        P_mean=draw(st.sampled_from((-1.2, 0.0)), label="P_mean"),
        P_std=draw(st.sampled_from((1.2, 0.5)), label="P_std"),
    )


register_case(
    Case(
        "edm.edm_sigma_from_normal",
        _E + "edm_sigma_from_normal",
        inputs=lambda d: _sigma_from_normal(),
    )
)


@st.composite
def _alpha_bars(draw, log: bool):
    shape = (draw(st.integers(1, 5), label="n"),)
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    la = -np.exp(np.random.default_rng(seed).uniform(np.log(1e-6), np.log(30.0), shape))
    if draw(st.booleans(), label="include the ends"):
        la[0] = 0.0 if draw(st.booleans()) else -np.inf
    return call(la if log else np.exp(la))


register_case(
    Case(
        "edm.sigma_from_alpha_bar",
        _E + "sigma_from_alpha_bar",
        inputs=lambda d: _alpha_bars(False),
        tol="cancellation",
    )
)
register_case(
    Case(
        "edm.sigma_from_log_alpha_bar",
        _E + "sigma_from_log_alpha_bar",
        inputs=lambda d: _alpha_bars(True),
    )
)


@st.composite
def _scale_input(draw):
    shape = draw(rs.batch_shapes(), label="shape")
    sig = draw(_sigmas(inf=True), label="sigma")
    if sig.ndim:
        sig = np.resize(sig, (shape[0],))
    return call(draw(rs.data(shape), label="x"), sig)


register_case(
    Case("edm.scale_model_input", _E + "scale_model_input", inputs=lambda d: _scale_input())
)
