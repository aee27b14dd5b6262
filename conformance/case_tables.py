"""Checks of schedule tables moved to a backend, and of elementwise operations computed from them.

Every registered schedule constructor (``refdiff.schedules.list_schedules()``), plus
``from_betas``, ``from_alphas_cumprod``, ``zero_terminal_snr`` and ``respace``, gets a check that
the backend's tables — moved once with ``Schedule.to(xp, device=..., dtype=...)`` or the backend's
``"schedules.Schedule.to"`` override — equal the float64 host tables cast once to the dtype under
test, bit for bit (tolerance class "exact"). The ``tables.*`` checks then compute simple
elementwise functions of gathered tables on the backend (exp, sqrt, log1p, expm1, the sigmoid of
the log-SNR, the forward-marginal combination), which exercise the backend's transcendental
functions on every schedule's range of values.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from refdiff import schedules as S
from refdiff._xp import array_namespace, gather

from . import strategies as rs
from .cases import Case, register_case, register_family

__all__ = [
    "moved",
    "gathered_tables",
    "exp_log_alphas_cumprod",
    "sqrt_alphas_cumprod",
    "sigmoid_log_snr",
    "one_minus_alphas_cumprod_expm1",
    "log_one_minus_alphas_cumprod_log1p",
    "forward_combination",
    "snr_from_log",
]


def moved(schedule):
    """The schedule as the side sees it (identity: the move happens in the harness, or its override)."""
    return schedule


# --------------------------------------------------------------------------------------------
# Table moves: one check per constructor
# --------------------------------------------------------------------------------------------


def _ctor_case(name: str) -> Case:
    return Case(
        f"schedules.{name}",
        moved,
        inputs=lambda dtype, n=name: rs.schedules((n,)).map(rs.call),
        tol="exact",
        covers=("schedules.Schedule", "schedules.get_schedule"),
        doc=f"tables of schedules.{name} (plain, zero-SNR, respaced) moved with Schedule.to",
    )


@register_family
def _schedule_constructor_cases():
    """One exact table check per registered schedule constructor (new registrations included)."""
    return [_ctor_case(n) for n in S.list_schedules()]


@st.composite
def _random_betas(draw):
    T = draw(st.integers(1, rs.MAX_T), label="T")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    lo = draw(st.sampled_from((1e-6, 1e-4, 1e-2)), label="beta floor")
    betas = np.exp(np.random.default_rng(seed).uniform(np.log(lo), np.log(0.5), T))
    return betas


def _from_betas(b):
    return rs.Sched(
        S.from_betas(b), f"from_betas(<{b.size} betas from {b.min():.3g} to {b.max():.3g}>)"
    )


def _from_alphas_cumprod(b):
    ab = np.cumprod(1.0 - b)
    return rs.Sched(
        S.from_alphas_cumprod(ab), f"from_alphas_cumprod(<{ab.size} values down to {ab[-1]:.3g}>)"
    )


register_case(
    Case(
        "schedules.from_betas",
        moved,
        inputs=lambda dtype: _random_betas().map(_from_betas).map(rs.call),
        tol="exact",
        doc="tables of a schedule built from random betas (log-uniform in [1e-6, 0.5])",
    )
)

register_case(
    Case(
        "schedules.from_alphas_cumprod",
        moved,
        inputs=lambda dtype: _random_betas().map(_from_alphas_cumprod).map(rs.call),
        tol="exact",
        doc="tables of a schedule built from a decreasing alphas_cumprod",
    )
)

register_case(
    Case(
        "schedules.zero_terminal_snr",
        moved,
        inputs=lambda dtype: rs.schedules(variants=("zero_snr",)).map(rs.call),
        tol="exact",
        doc="tables after Lin et al.'s zero-terminal-SNR rescaling (infinite entries included)",
    )
)

register_case(
    Case(
        "schedules.respace",
        moved,
        inputs=lambda dtype: rs.schedules(variants=("respaced",)).map(rs.call),
        tol="exact",
        doc="tables of respaced schedules (leading, trailing, linspace)",
    )
)


# --------------------------------------------------------------------------------------------
# Elementwise operations on gathered tables
# --------------------------------------------------------------------------------------------


def gathered_tables(schedule, t, x):
    """Every table gathered at t and shaped against x (refdiff._xp.gather): exact."""
    return {n: gather(getattr(schedule, n), t, x.ndim) for n in S.TABLE_NAMES}


def exp_log_alphas_cumprod(schedule, t, x):
    """exp(log ᾱ_t): the backend's exp on every schedule's range."""
    xp = array_namespace(x)
    return xp.exp(gather(schedule.log_alphas_cumprod, t, x.ndim))


def sqrt_alphas_cumprod(schedule, t, x):
    """√ᾱ_t from ᾱ_t."""
    xp = array_namespace(x)
    return xp.sqrt(gather(schedule.alphas_cumprod, t, x.ndim))


def sigmoid_log_snr(schedule, t, x):
    """ᾱ_t = 1/(1 + exp(−log SNR_t))."""
    xp = array_namespace(x)
    return 1.0 / (1.0 + xp.exp(-gather(schedule.log_snr, t, x.ndim)))


def snr_from_log(schedule, t, x):
    """SNR_t = exp(2λ_t) from the half log-SNR table."""
    xp = array_namespace(x)
    return xp.exp(2.0 * gather(schedule.lambdas, t, x.ndim))


def one_minus_alphas_cumprod_expm1(schedule, t, x):
    """1 − ᾱ_t = −expm1(log ᾱ_t)."""
    xp = array_namespace(x)
    return -xp.expm1(gather(schedule.log_alphas_cumprod, t, x.ndim))


def log_one_minus_alphas_cumprod_log1p(schedule, t, x):
    """log(1 − ᾱ_t) = log1p(−ᾱ_t)."""
    xp = array_namespace(x)
    return xp.log1p(-gather(schedule.alphas_cumprod, t, x.ndim))


def forward_combination(schedule, t, x, noise):
    """√ᾱ_t·x + √(1 − ᾱ_t)·ε written out from the tables (Ho et al. 2020, Eq. 4)."""
    return (
        gather(schedule.sqrt_alphas_cumprod, t, x.ndim) * x
        + gather(schedule.sqrt_one_minus_alphas_cumprod, t, x.ndim) * noise
    )


@st.composite
def _schedule_t_x(draw, with_noise: bool = False):
    s = draw(rs.schedules(), label="schedule")
    shape = draw(rs.batch_shapes(), label="shape")
    t = draw(rs.timesteps(s.num_timesteps, shape[0]), label="t")
    x = draw(rs.data(shape), label="x")
    if with_noise:
        return rs.call(s, t, x, draw(rs.noise(shape), label="noise"))
    return rs.call(s, t, x)


def _relative(oracle_call, ref, inputs):
    """Pure relative error: the result's own magnitude (no cancellation in these ops)."""
    return np.where(np.isfinite(ref), np.abs(ref), 0.0)


@st.composite
def _schedule_whole_or_t_x(draw):
    """Half the examples gather every t of the schedule (each table value, the ends included),
    the others a few drawn t."""
    if draw(st.booleans(), label="whole table"):
        s = draw(rs.schedules(), label="schedule")
        T = s.num_timesteps
        return rs.call(s, np.arange(T, dtype=np.int64), np.zeros((T, 1)))
    return draw(_schedule_t_x(), label="gathered")


def _tables_case(fn, tol="elementwise", scale=_relative, with_noise=False, doc=""):
    inputs = (
        (lambda dtype: _schedule_t_x(True))
        if with_noise
        else (lambda dtype: _schedule_whole_or_t_x())
    )
    return Case(
        f"tables.{fn.__name__}", fn, inputs=inputs, tol=tol, scale=scale, doc=doc or fn.__doc__
    )


for _fn in (
    exp_log_alphas_cumprod,
    sqrt_alphas_cumprod,
    sigmoid_log_snr,
    snr_from_log,
    one_minus_alphas_cumprod_expm1,
    log_one_minus_alphas_cumprod_log1p,
):
    register_case(_tables_case(_fn))
register_case(
    Case(
        "tables.gathered_tables",
        gathered_tables,
        inputs=lambda dtype: _schedule_t_x(),
        tol="exact",
        covers=("xp.gather", "xp.append_dims"),
        doc=gathered_tables.__doc__,
    )
)
register_case(_tables_case(forward_combination, scale=None, with_noise=True))
del _fn
