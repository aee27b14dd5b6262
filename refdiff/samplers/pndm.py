"""PNDM: pseudo numerical methods on the discrete schedule — the pseudo Runge–Kutta warm-up (PRK) and the pseudo linear multistep method (PLMS).

Liu, Ren, Lin & Zhao (2022), "Pseudo Numerical Methods for Diffusion Models on Manifolds"
(arXiv:2202.09778, ICLR 2022). Every step moves x_t to x_{t−δ} with the *transfer part*

    φ(x_t, ε, t, t−δ) = √(ᾱ_{t−δ}/ᾱ_t)·x_t − (ᾱ_{t−δ} − ᾱ_t)·ε / (ᾱ_t·√(1−ᾱ_{t−δ}) + √(ᾱ_t(1−ᾱ_t)ᾱ_{t−δ}))

(Eq. 9, the DDIM update written without cancellation), and the *gradient part* chooses ε:
PRK evaluates the model at t, twice at the midpoint t − δ/2 and at t − δ and uses
ε' = (e1 + 2e2 + 2e3 + e4)/6; PLMS uses the Adams–Bashforth combination
ε' = (55e_t − 59e_{t+δ} + 37e_{t+2δ} − 9e_{t+3δ})/24 of the last four model values. PNDM runs
PRK for the first three steps and PLMS after (§3; the paper shows the pseudo methods converge
with order 2, as DDIM with order 1); with
``skip_prk_steps`` the first step is the pseudo improved Euler step ε' = (e_t + e_{t−δ})/2 and
the next ones Adams–Bashforth of orders 2 and 3 (diffusers' ``skip_prk_steps=True``, the PLMS
sampler of latent diffusion). All coefficients are host floats computed once per call from the
schedule's float64 tables.

Family ``"discrete"``: ``fn(model, x_T, *, schedule, steps=None, noise=None, **options)`` with
``model(x, t)`` taking the training-schedule timesteps ``schedule.timestep_map[i]`` (int64,
shape (B,)). The sampling levels are indices of ``schedule``: all of them (``steps=None``),
``steps`` of them chosen by ``spacing`` (diffusers' ``leading`` / ``trailing`` / ``linspace``,
with ``steps_offset``), or ``timesteps=`` explicitly. The PRK midpoint of the step from level i
to the next lower level j is the schedule index i − ⌊(i − j)/2⌋ (``prk_midpoint="consistent"``);
diffusers moves x1 there but calls the model and places x2 at j + ⌊(i − j)/2⌋, one index lower
when i − j is odd (``prk_midpoint="diffusers"``). PRK takes the first min(3, n − 1) steps: the step onto the level
below the lowest (no model time there) is always a PLMS step. The level below the lowest is
``final_alpha_bar`` ("one", or "alpha_bar_0": ᾱ_0 of ``base_schedule`` or of ``schedule``), as
for DDIM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .._errors import RefdiffValueError, check_choice, check_int, check_real, fail
from .._typing import Array, Noise
from .._xp import array_namespace, device_of
from ..parameterizations import PREDICTION_TYPES, eps_from_prediction, prediction_type
from ..schedules import DIFFUSERS_SPACINGS, Schedule, spaced_timesteps
from . import register_sampler
from ._common import StepInfo, check_output, step_reporter

__all__ = [
    "FINAL_ALPHA_BAR",
    "SPACINGS",
    "PRK_MIDPOINTS",
    "PLMS_WEIGHTS",
    "transfer_coefficients",
    "pndm_transfer",
    "prk_epsilon",
    "plms_epsilon",
    "sample_pndm",
    "sample_plms",
]

FINAL_ALPHA_BAR = ("one", "alpha_bar_0")
#: Where the PRK midpoint lies when a step spans an odd number of indices (see sample_pndm).
PRK_MIDPOINTS = ("consistent", "diffusers")
SPACINGS = DIFFUSERS_SPACINGS
#: Adams–Bashforth weights of the pseudo linear multistep method by number of model values,
#: newest first (Liu et al. 2022, §3, and its lower-order starts).
PLMS_WEIGHTS = {
    1: (1.0,),
    2: (1.5, -0.5),
    3: (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    4: (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
}


class _Lv(NamedTuple):
    """A level: ᾱ, 1 − ᾱ, log ᾱ (host floats) and the model's timestep (None below the lowest)."""

    ab: float
    om: float
    log_ab: float
    t_model: int | None


def transfer_coefficients(
    ab_t: float,
    ab_prev: float,
    *,
    one_minus_ab_t: float | None = None,
    one_minus_ab_prev: float | None = None,
    log_ab_t: float | None = None,
    log_ab_prev: float | None = None,
) -> tuple[float, float]:
    """(c_x, c_ε) of the transfer part x_prev = c_x·x_t − c_ε·ε (Liu et al. 2022, Eq. 9).

    c_x = √(ᾱ_prev/ᾱ_t), c_ε = (ᾱ_prev − ᾱ_t)/(ᾱ_t·√(1−ᾱ_prev) + √(ᾱ_t(1−ᾱ_t)ᾱ_prev)); the
    difference ᾱ_prev − ᾱ_t is formed as ᾱ_prev·(−expm1(log ᾱ_t − log ᾱ_prev)) when the logs
    are given. ᾱ_t must be positive (the transfer divides by it).
    """
    ab_t = check_real("ab_t", ab_t, lo=0.0, hi=1.0)
    ab_prev = check_real("ab_prev", ab_prev, lo=0.0, hi=1.0)
    if ab_t == 0.0:
        raise RefdiffValueError(
            "ab_t=0.0: the PNDM transfer divides by ᾱ_t, which is 0 at a "
            "zero-terminal-SNR step; start sampling below it"
        )
    om_t = 1.0 - ab_t if one_minus_ab_t is None else float(one_minus_ab_t)
    om_p = 1.0 - ab_prev if one_minus_ab_prev is None else float(one_minus_ab_prev)
    if log_ab_t is not None and log_ab_prev is not None:
        diff = -ab_prev * math.expm1(float(log_ab_t) - float(log_ab_prev))
    else:
        diff = ab_prev - ab_t
    denom = ab_t * math.sqrt(om_p) + math.sqrt(ab_t * om_t * ab_prev)
    return math.sqrt(ab_prev / ab_t), diff / denom


def pndm_transfer(x: Array, eps: Array, c_x: float, c_eps: float) -> Array:
    """φ(x_t, ε, t, t−δ) = c_x·x_t − c_ε·ε from :func:`transfer_coefficients` (Liu et al. 2022, Eq. 9)."""
    check_output(eps, x, name="eps")
    return c_x * x - c_eps * eps


def prk_epsilon(e1: Array, e2: Array, e3: Array, e4: Array) -> Array:
    """ε' = (e1 + 2·e2 + 2·e3 + e4)/6, the pseudo Runge–Kutta combination (Liu et al. 2022, §3)."""
    return (e1 + 2.0 * (e2 + e3) + e4) * (1.0 / 6.0)


def plms_epsilon(eps_newest_first: list[Array]) -> Array:
    """ε' = Σ_k w_k·e_k with the Adams–Bashforth weights of :data:`PLMS_WEIGHTS` (Liu et al. 2022, §3)."""
    if len(eps_newest_first) not in PLMS_WEIGHTS:
        fail("eps_newest_first", len(eps_newest_first), "expected 1 to 4 model values")
    w = PLMS_WEIGHTS[len(eps_newest_first)]
    out = w[0] * eps_newest_first[0]
    for wk, e in zip(w[1:], eps_newest_first[1:]):
        out = out + wk * e
    return out


# --------------------------------------------------------------------------------------------
# Levels
# --------------------------------------------------------------------------------------------


def _indices(
    schedule: Schedule,
    steps: int | None,
    spacing: str,
    steps_offset: int,
    timesteps: Sequence[int] | Array | None,
) -> list[int]:
    """The sampling levels as ascending indices of ``schedule``."""
    T = schedule.num_timesteps
    if timesteps is not None:
        if steps is not None:
            fail("timesteps", timesteps, "give either steps= or timesteps=, not both")
        use = np.asarray(timesteps)
        if use.ndim != 1 or use.size == 0 or not np.issubdtype(use.dtype, np.integer):
            fail("timesteps", timesteps, "expected a non-empty 1-D sequence of integer indices")
        if np.any(use < 0) or np.any(use >= T) or np.unique(use).size != use.size:
            fail("timesteps", timesteps, f"expected distinct indices in [0, {T})")
        return sorted(int(i) for i in use)
    if steps is None:
        return list(range(T))
    steps = check_int("steps", steps, minimum=1)
    if steps > T:
        fail("steps", steps, f"expected at most T={T} steps")
    check_choice("spacing", spacing, SPACINGS, "timestep spacing")
    off = check_int("steps_offset", steps_offset, minimum=0)
    use = spaced_timesteps(T, steps, spacing, steps_offset=off)
    if int(use.max()) >= T:
        fail(
            "steps_offset", steps_offset, f"it moves the highest level to {int(use.max())} >= T={T}"
        )
    return sorted(int(i) for i in use)


def _level(schedule: Schedule, i: int) -> _Lv:
    return _Lv(
        float(schedule.alphas_cumprod[i]),
        float(schedule.one_minus_alphas_cumprod[i]),
        float(schedule.log_alphas_cumprod[i]),
        int(schedule.timestep_map[i]),
    )


def _final(schedule: Schedule, final_alpha_bar: str | float, base_schedule: Schedule | None) -> _Lv:
    if isinstance(final_alpha_bar, str):
        check_choice("final_alpha_bar", final_alpha_bar, FINAL_ALPHA_BAR, "final ᾱ_prev convention")
        if final_alpha_bar == "one":
            return _Lv(1.0, 0.0, 0.0, None)
        src = schedule if base_schedule is None else base_schedule
        if base_schedule is None and int(schedule.timestep_map[0]) != 0:
            fail(
                "base_schedule",
                base_schedule,
                "final_alpha_bar='alpha_bar_0' on a respaced "
                "schedule that skips index 0 needs the training schedule: pass base_schedule=",
            )
        if not isinstance(src, Schedule):
            fail("base_schedule", base_schedule, "expected a refdiff.schedules.Schedule")
        return _Lv(
            float(src.alphas_cumprod[0]),
            float(src.one_minus_alphas_cumprod[0]),
            float(src.log_alphas_cumprod[0]),
            None,
        )
    v = check_real("final_alpha_bar", final_alpha_bar, lo=0.0, hi=1.0, lo_open=True)
    return _Lv(v, 1.0 - v, math.log(v), None)


def _coef(a: _Lv, b: _Lv) -> tuple[float, float]:
    return transfer_coefficients(
        a.ab,
        b.ab,
        one_minus_ab_t=a.om,
        one_minus_ab_prev=b.om,
        log_ab_t=a.log_ab,
        log_ab_prev=b.log_ab,
    )


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@register_sampler("pndm", family="discrete", stochastic=False, order=2.0, step=pndm_transfer)
def sample_pndm(
    model: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    schedule: Schedule,
    steps: int | None = None,
    spacing: str = "trailing",
    steps_offset: int = 0,
    timesteps: Sequence[int] | Array | None = None,
    skip_prk_steps: bool = False,
    prk_midpoint: str = "consistent",
    final_alpha_bar: str | float = "one",
    base_schedule: Schedule | None = None,
    mean_type: str = "eps",
    noise: Noise = None,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """PNDM sampling x_T -> x_0: three pseudo Runge–Kutta steps, then pseudo linear multistep (Liu et al. 2022, §3, Eq. 9).

    Parameters
    ----------
    model : callable
        ``model(x, t) -> output`` with t the training-schedule timesteps (int64, shape (B,)).
    x_T : array
        The start at the highest sampling level, batch axis first.
    schedule : Schedule
        The schedule whose levels are sampled (its tables give every coefficient).
    steps, spacing, steps_offset, timesteps
        The sampling levels (module docstring): ``steps`` indices by diffusers' spacing
        (default "trailing", which starts at T−1; diffusers' PNDMScheduler uses "leading"), or
        explicit ascending indices.
    skip_prk_steps : bool
        Start with the pseudo improved Euler step instead of PRK (diffusers' option): n + 1
        model evaluations for n steps instead of n + 9.
    prk_midpoint : {"consistent", "diffusers"}
        Where the PRK midpoint of a step from index i down to j lies. "consistent": index
        m = i − ⌊(i − j)/2⌋ for both midpoint states and their model calls. "diffusers"
        (``PNDMScheduler``): x1 moves to i − ⌊(i − j)/2⌋, while both midpoint model calls and x2
        use j + ⌊(i − j)/2⌋ — one index lower when i − j is odd (e.g. 8 or 12 steps over
        T = 1000), the same point otherwise.
    final_alpha_bar : {"one", "alpha_bar_0"} or float
        ᾱ below the lowest level (diffusers' ``set_alpha_to_one`` True / False).
    base_schedule : Schedule, optional
        The training schedule, for ``final_alpha_bar="alpha_bar_0"`` on a respaced schedule.
    mean_type : {"eps", "x0", "v", "score"}
        What the model predicts (converted to ε at each call; diffusers: "epsilon",
        "v_prediction").
    noise
        Ignored (deterministic).
    callback, progress
        ``callback(StepInfo)`` before each step (x, x̂0 from its first model value, t, σ);
        ``progress(done, total)``.

    Returns
    -------
    array
        x_0, the shape of x_T.
    """
    if not isinstance(schedule, Schedule):
        fail("schedule", schedule, "expected a refdiff.schedules.Schedule")
    if not callable(model):
        fail("model", model, "expected a callable model(x, t) -> prediction")
    if getattr(x_T, "ndim", 0) < 1:
        fail("x_T", x_T, "expected an array with the batch axis first (ndim >= 1)")
    if not isinstance(skip_prk_steps, bool):
        fail("skip_prk_steps", skip_prk_steps, "expected True or False")
    kind = prediction_type(mean_type, "mean_type", PREDICTION_TYPES[:4])
    idx = _indices(schedule, steps, spacing, steps_offset, timesteps)
    final = _final(schedule, final_alpha_bar, base_schedule)
    down = idx[::-1]  # sampling order, highest first
    n = len(down)
    lv = [_level(schedule, i) for i in down] + [final]
    if lv[0].ab == 0.0:
        fail(
            "schedule",
            schedule,
            f"ᾱ = 0 at the first sampling level (timestep "
            f"{lv[0].t_model}, zero terminal SNR): the PNDM transfer divides by ᾱ_t; start below "
            "it (timesteps= or steps with another spacing)",
        )
    # host-float plan: transfer coefficients of every move the loop makes
    step_c = [_coef(lv[k], lv[k + 1]) for k in range(n)]
    n_prk = 0 if skip_prk_steps else min(3, n - 1)  # the step onto the final level is PLMS
    check_choice("prk_midpoint", prk_midpoint, PRK_MIDPOINTS, "PRK midpoint placement")
    mid: list[_Lv] = []  # the level of the midpoint model calls and of x2
    mid_c: list[tuple[float, float]] = []
    first_c: list[tuple[float, float]] = []  # the transfer of x1
    for k in range(n_prk):
        half = (down[k] - down[k + 1]) // 2
        hi = _level(schedule, down[k] - half)
        m = hi if prk_midpoint == "consistent" else _level(schedule, down[k + 1] + half)
        mid.append(m)
        mid_c.append(_coef(lv[k], m))
        first_c.append(_coef(lv[k], hi))
    xp = array_namespace(x_T)
    dev = device_of(x_T)
    B = x_T.shape[0]

    def eps_at(x: Array, level: _Lv) -> Array:
        t = xp.full((B,), level.t_model, dtype=xp.int64, device=dev)
        out = check_output(model(x, t), x, name="model output")
        if kind == "eps":
            return out
        return eps_from_prediction(out, x, math.sqrt(level.ab), math.sqrt(level.om), kind)

    report = step_reporter(callback, progress)

    def tell(k: int, x: Array, e: Array) -> None:
        if report is not None:
            a = lv[k]
            x0 = (x - math.sqrt(a.om) * e) * (1.0 / math.sqrt(a.ab))
            report(StepInfo(k, n, x, x0, t=a.t_model, sigma=math.sqrt(a.om / a.ab)))

    x = x_T
    ets: list[Array] = []
    for k in range(n):
        e = eps_at(x, lv[k])
        tell(k, x, e)
        if k < n_prk:  # pseudo Runge–Kutta
            ets.append(e)
            x1 = pndm_transfer(x, e, *first_c[k])
            e2 = eps_at(x1, mid[k])
            x2 = pndm_transfer(x, e2, *mid_c[k])
            e3 = eps_at(x2, mid[k])
            x3 = pndm_transfer(x, e3, *step_c[k])
            e4 = eps_at(x3, lv[k + 1])
            x = pndm_transfer(x, prk_epsilon(e, e2, e3, e4), *step_c[k])
        elif skip_prk_steps and k == 0 and n > 1:  # pseudo improved Euler
            ets.append(e)
            x1 = pndm_transfer(x, e, *step_c[0])
            x = pndm_transfer(x, 0.5 * (e + eps_at(x1, lv[1])), *step_c[0])
        else:  # pseudo linear multistep
            ets = (ets + [e])[-4:]
            x = pndm_transfer(x, plms_epsilon(ets[::-1]), *step_c[k])
    return x


@register_sampler("plms", family="discrete", stochastic=False, order=2.0, step=pndm_transfer)
def sample_plms(
    model: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    schedule: Schedule,
    noise: Noise = None,
    **options: Any,
) -> Array:
    """PLMS: :func:`sample_pndm` with ``skip_prk_steps=True`` (Liu et al. 2022, §3: PLMS after one pseudo improved Euler step)."""
    if "skip_prk_steps" in options:
        fail(
            "skip_prk_steps",
            options["skip_prk_steps"],
            "the sampler 'plms' fixes skip_prk_steps=True; call sample_pndm for the PRK warm-up",
        )
    return sample_pndm(model, x_T, schedule=schedule, noise=noise, skip_prk_steps=True, **options)
