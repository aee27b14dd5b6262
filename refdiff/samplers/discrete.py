"""Discrete-time samplers: DDPM ancestral sampling, DDIM (any η) and deterministic DDIM inversion.

Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models" (Algorithm 2, Eqs. 6–7, 11);
Nichol & Dhariwal (2021), "Improved DDPM" (learned variances, respacing); Song, Meng & Ermon
(2021), "Denoising Diffusion Implicit Models" (Eqs. 12, 16; §4.3 for the ODE and its inversion).

Conventions (each a named argument with a documented default; see ``docs/api/samplers_discrete.md``):

* **Index base.** Sampling steps i = n-1, ..., 0 of the (possibly respaced) ``schedule``; the
  model is called as ``model(x, t)`` with ``t = schedule.timestep_map[i]`` (an int64 array of
  shape (B,)), i.e. the index of the training schedule (improved-diffusion's ``_WrappedModel``).
* **Final-step noise** (``final_noise``): ``"none"`` (improved-diffusion, lucidrains, and diffusers
  DDPM whenever its last timestep is 0: the last step returns its mean) or ``"always"`` (labml's
  DDPM adds σ_1 z at the last step too; diffusers DDPM does whenever its last timestep is not 0,
  e.g. with "trailing" spacing; diffusers DDIM adds σ z at the last step whenever η > 0).
* **Final ᾱ_prev of DDIM** (``final_alpha_bar``): ``"one"`` (improved-diffusion,
  diffusers ``set_alpha_to_one=True``: the last step lands on clean data) or ``"alpha_bar_0"``
  (diffusers ``set_alpha_to_one=False``: the last step lands at ᾱ_0 of the training schedule), or a
  number in (0, 1].
* **Previous timestep of DDIM** (``prev_timestep``): ``"listed"`` (the next level of the
  schedule, improved-diffusion) or ``"stride"`` (diffusers ``DDIMScheduler.step``: always
  t − T//n on the training schedule, also where that is not the next listed timestep).
* **t = 0 variance** (``t0``): ``"clipped"`` (improved-diffusion) or ``"clamped"`` (diffusers), see
  :mod:`refdiff.diffusion`.
* **ε after clipping in DDIM** (``eps_from_clipped_x0``): True re-derives ε from the clipped x̂0
  (improved-diffusion); False keeps the model's ε (diffusers ``use_clipped_model_output=False``).
* **Inversion model time** (``model_time``): ``"current"`` evaluates the model at the level the
  step starts from (improved-diffusion ``ddim_reverse_sample``; the exact inverse of DDIM when the
  x0-prediction is constant), ``"next"`` at the level it moves to (diffusers
  ``DDIMInverseScheduler``).

Noise: ``noise`` is an array of shape (n,) + x.shape (one draw per step, draw k used by the k-th
step taken) or a callable ``noise(k) -> array``; deterministic samplers ignore it.

Step plan: every loop reads the coefficients of all its steps from the float64 tables once, as
host floats, before its first model call; a step then does only array arithmetic on x.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from .._cache import IdentityCache
from .._errors import RefdiffValueError, check_choice, check_int, check_real, fail
from .._typing import Array, Device, Namespace, Noise
from .._xp import array_namespace, device_of
from ..diffusion import T0_CONVENTIONS, VAR_TYPES, PMeanVar, p_mean_variance, split_variance_output
from ..guidance import check_scale, condition_eps, condition_mean, condition_score
from ..parameterizations import (
    LevelCoefficients,
    check_table_namespace,
    eps_from_prediction,
    eps_from_x0_at,
    level_coefficients,
    prediction_type,
    x0_from_output_at,
    x0_from_prediction,
    x0_linear_coefficients,
)
from ..schedules import SPACINGS, Schedule, respace
from . import register_sampler
from ._common import StepInfo, check_eta, check_output, check_steps, draw_noise, step_reporter

__all__ = [
    "FINAL_NOISE",
    "FINAL_ALPHA_BAR",
    "MODEL_TIMES",
    "PREV_TIMESTEPS",
    "SPACINGS",
    "COND_MODES",
    "DDPMCoefficients",
    "ddpm_coefficients",
    "ancestral_step",
    "p_sample",
    "ddim_sigma",
    "ddim_coefficients",
    "ddim_step",
    "ddim_reverse_step",
    "DDIMStepOutput",
    "ddim_step_at",
    "sample_ddpm",
    "sample_ddim",
    "sample_ddim_stochastic",
    "ddim_invert",
    "sampling_schedule",
]

FINAL_NOISE = ("none", "always")
FINAL_ALPHA_BAR = ("one", "alpha_bar_0")
MODEL_TIMES = ("current", "next")
PREV_TIMESTEPS = ("listed", "stride")
COND_MODES = ("mean", "score")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _host_table(table: Array) -> np.ndarray:
    """A schedule table as a host NumPy array: one transfer for a table moved with ``Schedule.to``."""
    if isinstance(table, np.ndarray):
        return table
    try:
        return np.asarray(table)
    except Exception:  # noqa: BLE001 - a device array refuses implicit conversion
        pass
    try:
        from array_api_compat import to_device

        return np.asarray(to_device(table, "cpu"))
    except Exception:  # noqa: BLE001
        return np.array([float(v) for v in table])


class _Host:
    """The tables of a schedule read to the host once each, on first use (for the step plans)."""

    def __init__(self, schedule: Schedule) -> None:
        self._schedule = schedule

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        arr = _host_table(getattr(self._schedule, name))
        setattr(self, name, arr)
        return arr


def _check_namespace(schedule: Schedule, x: Array) -> None:
    """Raise unless the schedule's tables live in x's array namespace (as the table conversions do)."""
    check_table_namespace(schedule, schedule.alphas_cumprod, x)


def _timestep_rows(xp: Namespace, x: Array, ts: Sequence[int], device: Device) -> Array:
    """Every step's model timesteps as one (n, B) int64 array, moved once: row k is step k's t."""
    rows = np.repeat(np.asarray(ts, dtype=np.int64)[:, None], x.shape[0], axis=1)
    return xp.asarray(rows, device=device)


def sampling_schedule(
    schedule: Schedule,
    steps: int | None = None,
    spacing: str = "trailing",
    *,
    steps_offset: int = 0,
    timesteps: Sequence[int] | Array | None = None,
) -> Schedule:
    """The schedule the loop steps on: ``schedule`` itself, or it respaced to ``steps`` steps.

    ``spacing`` is one of :data:`refdiff.schedules.SPACINGS`: "trailing" (default; starts at T-1,
    Lin et al. 2023), "leading", "linspace" (diffusers, no ``steps_offset``), "ddim"
    (improved-diffusion's ``"ddimN"`` = range(0, T, stride)) or "sections" (improved-diffusion's
    one-section ``"N"``). ``steps_offset`` shifts the "leading" grid (diffusers' option of the
    same name). ``timesteps`` instead gives the grid itself: distinct training timesteps in any
    order (diffusers' ``set_timesteps(timesteps=[...])``). Respaced schedules are cached per
    (schedule, steps or timesteps, spacing).
    """
    if not isinstance(schedule, Schedule):
        fail("schedule", schedule, "expected a refdiff.schedules.Schedule")
    steps_offset = check_int("steps_offset", steps_offset, minimum=0)
    if timesteps is not None:
        if steps is not None or steps_offset:
            fail(
                "timesteps",
                timesteps,
                "give either timesteps= (the grid) or steps= (and "
                "spacing=, steps_offset=), not both",
            )
        if isinstance(timesteps, str) or not hasattr(timesteps, "__len__"):
            fail(
                "timesteps", timesteps, "expected a sequence of distinct integer training timesteps"
            )
        return respace(
            schedule,
            sorted(int(check_int("timesteps[i]", v, minimum=0)) for v in _host_table(timesteps)),
        )
    if steps is None:
        if steps_offset:
            fail("steps_offset", steps_offset, "needs steps= (it shifts a respaced grid)")
        return schedule
    steps = check_steps(steps)
    check_choice("spacing", spacing, SPACINGS, "timestep spacing")
    if steps > schedule.num_timesteps:
        fail("steps", steps, f"expected at most T={schedule.num_timesteps} steps")
    if spacing == "ddim":
        return respace(schedule, f"ddim{steps}")
    if spacing == "sections":
        return respace(schedule, str(steps))
    if steps_offset and spacing != "leading":
        fail(
            "steps_offset",
            steps_offset,
            f"only the 'leading' spacing takes an offset, not {spacing!r}",
        )
    return respace(schedule, steps, spacing=spacing, steps_offset=steps_offset)


def _zero_snr_check(ab: float, i: int, mean_type: str) -> None:
    if ab == 0.0 and mean_type in ("eps", "score"):
        raise RefdiffValueError(
            f"t={i} has zero SNR (alphas_cumprod = 0): x0 from {mean_type} is undefined there; use "
            "a v- or x0-prediction model at the terminal step (Lin et al. 2023, §3.2)"
        )


def _split_output(out: Array, x: Array, var_type: str) -> tuple[Array, Array | None]:
    """The mean part of a model output (the variance channels dropped for learned variances)."""
    if var_type in ("fixed_small", "fixed_large"):
        check_output(out, x)
        return out, None
    return split_variance_output(out, x)


def _process_x0(
    x0: Array, xp: Namespace | None, clip_x0: bool, denoised_fn: Callable[[Array], Array] | None
) -> Array:
    if denoised_fn is not None:
        x0 = denoised_fn(x0)
    if clip_x0:
        x0 = (array_namespace(x0) if xp is None else xp).clip(x0, -1.0, 1.0)
    return x0


# --------------------------------------------------------------------------------------------
# DDPM
# --------------------------------------------------------------------------------------------


class DDPMCoefficients(NamedTuple):
    """Host floats of one DDPM step at sampling level i (from :func:`ddpm_coefficients`).

    ``level`` holds the x̂0/ε/posterior-mean coefficients; ``variance`` and ``log_variance`` the
    fixed σ² and log σ² (None for learned variances); ``min_log`` and ``max_log`` the
    learned-range endpoints log β̃ and log β (Nichol & Dhariwal 2021, Eq. 15).
    """

    i: int
    level: LevelCoefficients
    variance: float | None
    log_variance: float | None
    min_log: float
    max_log: float


def ddpm_coefficients(
    schedule: Schedule,
    i: int,
    *,
    var_type: str = "fixed_small",
    t0: str = "clipped",
    _host: _Host | None = None,
) -> DDPMCoefficients:
    """The coefficients of the DDPM step at level i as host floats (Ho et al. 2020, Eqs. 7, 11; Nichol & Dhariwal 2021, §3.1).

    The same table entries :func:`refdiff.diffusion.p_mean_variance` gathers, read once: pass the
    result to :func:`p_sample` as ``coefficients=`` to step without table look-ups.
    """
    check_choice("var_type", var_type, VAR_TYPES, "variance type")
    check_choice("t0", t0, T0_CONVENTIONS, "t=0 convention")
    n = schedule.num_timesteps
    i = check_int("i", i, minimum=0)
    if i >= n:
        fail("i", i, f"expected a level in [0, {n})")
    return _ddpm_coefficients(_Host(schedule) if _host is None else _host, n, i, var_type, t0)


def _ddpm_coefficients(h: _Host, n: int, i: int, var_type: str, t0: str) -> DDPMCoefficients:
    """:func:`ddpm_coefficients` for arguments already checked."""
    log_table = (
        h.posterior_log_variance_clipped if t0 == "clipped" else h.posterior_log_variance_clamped
    )
    min_log = float(log_table[i])
    beta = float(h.betas[i])
    max_log = math.log(beta)
    var: float | None
    log_var: float | None
    if var_type == "fixed_small":
        var, log_var = float(h.posterior_variance[i]), min_log
    elif var_type == "fixed_large":
        if t0 == "clipped" and n > 1 and i == 0:
            # improved-diffusion: β̃_1 replaces β_0 at t=0 in the fixed-large variance.
            var, log_var = float(h.posterior_variance[1]), min_log
        else:
            var, log_var = beta, max_log
    else:
        var, log_var = None, None
    return DDPMCoefficients(i, level_coefficients(h, i), var, log_var, min_log, max_log)


def ancestral_step(mean: Array, log_variance: Array | float, noise: Array) -> Array:
    """x_{t-1} = μ_θ + exp(½ log σ_t²)·z (Ho et al. 2020, Algorithm 2, line 4); log σ² an array or a host float."""
    if isinstance(log_variance, (int, float)):
        return mean + math.exp(0.5 * log_variance) * noise
    xp = array_namespace(mean, log_variance, noise)
    return mean + xp.exp(0.5 * log_variance) * noise


def p_sample(
    model_output: Array,
    x_t: Array,
    t: Array | int,
    *,
    schedule: Schedule,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = False,
    denoised_fn: Callable[[Array], Array] | None = None,
    t0: str = "clipped",
    noise: Array | None = None,
    add_noise: bool = True,
    grad: Array | None = None,
    cond_mode: str = "mean",
    coefficients: DDPMCoefficients | None = None,
) -> tuple[Array, PMeanVar]:
    """One DDPM ancestral step x_t -> x_{t-1} from a model output (Ho et al. 2020, Algorithm 2).

    Parameters
    ----------
    model_output : array
        The model's output at (x_t, t): x_t's shape, or (B, 2C, ...) for a learned variance.
    t : int or integer array
        Index into ``schedule`` (the sampling schedule, possibly respaced).
    noise : array, optional
        The standard-normal draw z; required when ``add_noise``.
    add_noise : bool
        False returns the mean (the final step under ``final_noise="none"``).
    grad : array, optional
        ∇_x log p(y | x_t) (already scaled) for classifier guidance by ``cond_mode`` "mean"
        (μ + Σ·g, Dhariwal & Nichol 2021, Alg. 1) or "score" (ε − √(1−ᾱ_t)·g, Alg. 2).
    coefficients : DDPMCoefficients, optional
        The step's host-float coefficients from :func:`ddpm_coefficients` (for the same
        schedule, level t, ``var_type`` and ``t0``): no table look-ups, and no ε̂ or broadcast
        variance formed that the step does not use. The returned PMeanVar then holds the fixed
        variance as host floats and ``pred_eps`` only where the step formed it (else None).

    Returns
    -------
    (x_prev, PMeanVar)
        The sample and the (guided) reverse Gaussian with its x0/ε predictions.
    """
    if coefficients is None:
        return _p_sample_tables(
            model_output,
            x_t,
            t,
            schedule=schedule,
            mean_type=mean_type,
            var_type=var_type,
            clip_x0=clip_x0,
            denoised_fn=denoised_fn,
            t0=t0,
            noise=noise,
            add_noise=add_noise,
            grad=grad,
            cond_mode=cond_mode,
        )
    c = coefficients.level
    out, var_out = _split_output(model_output, x_t, var_type)
    if var_out is None:
        var, log_var = coefficients.variance, coefficients.log_variance
    else:
        if var_type == "learned":
            log_var = var_out
        else:
            frac = (var_out + 1.0) / 2.0
            log_var = frac * coefficients.max_log + (1.0 - frac) * coefficients.min_log
        var = None
    pred_x0 = _process_x0(x0_from_output_at(out, x_t, c, mean_type), None, clip_x0, denoised_fn)
    pred_eps = out if mean_type == "eps" and not (clip_x0 or denoised_fn is not None) else None
    if grad is not None and cond_mode == "score":
        check_output(grad, x_t, name="classifier gradient")
        eps = pred_eps if pred_eps is not None else eps_from_x0_at(x_t, pred_x0, c)
        pred_eps = condition_eps(eps, grad, c.sqrt_one_minus_alphas_cumprod)
        pred_x0 = x0_from_output_at(pred_eps, x_t, c, "eps")
    if mean_type == "mean" and not (grad is not None and cond_mode == "score"):
        mean = out
    else:
        mean = c.posterior_mean_coef1 * pred_x0 + c.posterior_mean_coef2 * x_t
    if grad is not None and cond_mode == "mean":
        check_choice("cond_mode", cond_mode, COND_MODES, "classifier-guidance mode")
        check_output(grad, x_t, name="classifier gradient")
        if var is None:
            var = array_namespace(log_var).exp(log_var)
        mean = condition_mean(mean, var, grad)
    elif grad is not None:
        check_choice("cond_mode", cond_mode, COND_MODES, "classifier-guidance mode")
    pmv = PMeanVar(mean, var, log_var, pred_x0, pred_eps)
    if not add_noise:
        return mean, pmv
    if noise is None:
        fail("noise", noise, "p_sample adds noise: pass a standard-normal draw of x's shape")
    check_output(noise, x_t, name="noise")
    return ancestral_step(mean, log_var, noise), pmv


def _p_sample_tables(
    model_output: Array,
    x_t: Array,
    t: Array | int,
    *,
    schedule: Schedule,
    mean_type: str,
    var_type: str,
    clip_x0: bool,
    denoised_fn: Callable[[Array], Array] | None,
    t0: str,
    noise: Array | None,
    add_noise: bool,
    grad: Array | None,
    cond_mode: str,
) -> tuple[Array, PMeanVar]:
    """:func:`p_sample` with per-batch timesteps t, through :func:`refdiff.diffusion.p_mean_variance`."""
    out = p_mean_variance(
        schedule,
        model_output,
        x_t,
        t,
        mean_type=mean_type,
        var_type=var_type,
        clip_x0=clip_x0,
        denoised_fn=denoised_fn,
        t0=t0,
    )
    if grad is not None:
        check_choice("cond_mode", cond_mode, COND_MODES, "classifier-guidance mode")
        check_output(grad, x_t, name="classifier gradient")
        if cond_mode == "mean":
            out = out._replace(mean=condition_mean(out.mean, out.variance, grad))
        else:
            out = condition_score(schedule, out, x_t, t, grad)
    if not add_noise:
        return out.mean, out
    if noise is None:
        fail("noise", noise, "p_sample adds noise: pass a standard-normal draw of x's shape")
    check_output(noise, x_t, name="noise")
    return ancestral_step(out.mean, out.log_variance, noise), out


@register_sampler("ddpm", family="discrete", stochastic=True, step=p_sample)
def sample_ddpm(
    model: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    schedule: Schedule,
    noise: Noise = None,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = False,
    denoised_fn: Callable[[Array], Array] | None = None,
    t0: str = "clipped",
    final_noise: str = "none",
    steps: int | None = None,
    spacing: str = "trailing",
    steps_offset: int = 0,
    timesteps: Sequence[int] | Array | None = None,
    cond_fn: Callable[[Array, Array], Array] | None = None,
    cond_mode: str = "mean",
    cond_scale: float = 1.0,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """DDPM ancestral sampling x_T -> x_0 (Ho et al. 2020, Algorithm 2; Nichol & Dhariwal 2021, §3–4).

    Parameters
    ----------
    model : callable
        ``model(x, t) -> output`` with t the training-schedule indices (int64, shape (B,)).
    x_T : array
        The starting noise, shape (B, ...).
    schedule : Schedule
        The schedule to step on (respaced schedules rebuild β, so every step is a DDPM step with
        the respaced β'_i = 1 − ᾱ_i/ᾱ_{i−1}); or the training schedule with ``steps``.
    noise : array or callable
        Draws z: shape (n,) + x_T.shape, draw k for the k-th step (the last one is used only
        with ``final_noise="always"``).
    mean_type, var_type, clip_x0, denoised_fn, t0
        As :func:`refdiff.diffusion.p_mean_variance` (``denoised_fn=dynamic_threshold`` for
        Imagen's dynamic thresholding).
    final_noise : {"none", "always"}
        Whether the last step adds noise (module docstring).
    steps, spacing, steps_offset, timesteps
        Respace ``schedule`` to ``steps`` steps first, or to the explicit grid ``timesteps`` of
        training timesteps (see :func:`sampling_schedule`).
    cond_fn, cond_mode, cond_scale
        Classifier guidance: ``cond_fn(x, t) -> ∇ log p(y|x_t)``, multiplied by ``cond_scale``,
        applied by mean shift ("mean", improved-diffusion ``p_sample``) or by score ("score").
    callback : callable, optional
        ``callback(info)`` with a :class:`refdiff.samplers.StepInfo` at each step (``t`` the
        training timestep the model was called with, ``denoised`` the step's x̂0).
    progress : callable, optional
        ``progress(k, n)`` after each step.

    Returns
    -------
    array
        x_0, the shape of x_T.
    """
    sched = sampling_schedule(
        schedule, steps, spacing, steps_offset=steps_offset, timesteps=timesteps
    )
    check_choice("final_noise", final_noise, FINAL_NOISE, "final-step noise convention")
    check_choice("t0", t0, T0_CONVENTIONS, "t=0 convention")
    check_choice("var_type", var_type, VAR_TYPES, "variance type")
    check_choice("cond_mode", cond_mode, COND_MODES, "classifier-guidance mode")
    mean_type = prediction_type(mean_type, "mean_type")
    cond_scale = check_scale(cond_scale, "cond_scale")
    report = step_reporter(callback, progress)
    n = sched.num_timesteps
    _check_namespace(sched, x_T)
    plan = _PLANS.get(
        sched,
        ("ddpm", var_type, t0, final_noise, mean_type),
        lambda: _ddpm_plan(sched, var_type, t0, final_noise, mean_type),
    )
    xp = array_namespace(x_T)
    t_rows = _timestep_rows(xp, x_T, [t for t, _, _ in plan], device_of(x_T))
    if (
        var_type in ("fixed_small", "fixed_large")
        and mean_type != "mean"
        and not clip_x0
        and denoised_fn is None
        and cond_fn is None
    ):
        return _ddpm_linear_loop(model, x_T, plan, t_rows, mean_type, noise, report)
    x = x_T
    for k, (t, pc, add) in enumerate(plan):
        t_model = t_rows[k, ...]
        out = model(x, t_model)
        grad = None
        if cond_fn is not None:
            grad = cond_fn(x, t_model)
            grad = grad * cond_scale if cond_scale != 1.0 else grad
        z = draw_noise(noise, k, x) if add else None
        x_new, pmv = p_sample(
            out,
            x,
            pc.i,
            schedule=sched,
            mean_type=mean_type,
            var_type=var_type,
            clip_x0=clip_x0,
            denoised_fn=denoised_fn,
            t0=t0,
            noise=z,
            add_noise=add,
            grad=grad,
            cond_mode=cond_mode,
            coefficients=pc,
        )
        if report is not None:
            report(StepInfo(k, n, x, pmv.pred_x0, t=t))
        x = x_new
    return x


#: Step plans per (sampling schedule, options): schedules are immutable.
_PLANS = IdentityCache(64)


def _ddpm_plan(
    sched: Schedule, var_type: str, t0: str, final_noise: str, mean_type: str
) -> tuple[tuple[int, DDPMCoefficients, bool], ...]:
    """(model timestep, host coefficients, adds noise) of every DDPM step, first step first."""
    h = _Host(sched)
    n = sched.num_timesteps
    plan = []
    for i in range(n - 1, -1, -1):
        pc = _ddpm_coefficients(h, n, i, var_type, t0)
        _zero_snr_check(float(h.alphas_cumprod[i]), i, mean_type)
        plan.append((int(h.timestep_map[i]), pc, i > 0 or final_noise == "always"))
    return tuple(plan)


def _ddpm_linear_loop(
    model: Callable[[Array, Array], Array],
    x_T: Array,
    plan: Sequence[tuple[int, DDPMCoefficients, bool]],
    t_rows: Array,
    mean_type: str,
    noise: Noise,
    report: Callable[[StepInfo], None] | None,
) -> Array:
    """DDPM with a fixed variance and an unprocessed x̂0: μ_θ = (c₁p + c₂)·x_t + c₁q·out, one pass each.

    The posterior mean c₁·x̂0 + c₂·x_t (Ho et al. 2020, Eq. 7) with x̂0 = p·x_t + q·out folded on
    the host: three array passes for the mean and two for the noise, instead of eight.
    """
    x = x_T
    n = len(plan)
    for k, (t, pc, add) in enumerate(plan):
        c = pc.level
        p, q = x0_linear_coefficients(c, mean_type)
        out, _ = _split_output(model(x, t_rows[k, ...]), x, "fixed_small")
        if report is not None:
            report(StepInfo(k, n, x, p * x + q * out, t=t))
        a = c.posterior_mean_coef1 * p + c.posterior_mean_coef2
        b = c.posterior_mean_coef1 * q
        mean = a * x + b * out
        if add:  # a fixed variance: log σ² is a host float
            x = ancestral_step(mean, cast(float, pc.log_variance), draw_noise(noise, k, x))
        else:
            x = mean
    return x


# --------------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------------


def _ops(*vals: Array | float) -> tuple[Callable[[Array | float], Array | float], bool, Namespace]:
    """(sqrt, is_array, xp) for coefficients given as Python numbers or arrays."""
    arrs = [v for v in vals if not isinstance(v, (int, float)) and hasattr(v, "shape")]
    if arrs:
        xp = array_namespace(*arrs)
        return xp.sqrt, True, xp
    return math.sqrt, False, None


def ddim_sigma(
    alpha_bar: Array | float,
    alpha_bar_prev: Array | float,
    *,
    eta: float = 0.0,
    one_minus_alpha_bar: Array | float | None = None,
    one_minus_alpha_bar_prev: Array | float | None = None,
    beta: Array | float | None = None,
) -> Array | float:
    """σ_t(η) = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev) (Song et al. 2021, Eq. 16).

    The complements may be passed exactly (``one_minus_*``, ``beta`` = 1 − ᾱ_t/ᾱ_prev); otherwise
    they are formed by subtraction. Numbers or arrays (broadcast together).
    """
    eta = check_eta(eta)
    sqrt, _, _ = _ops(alpha_bar, alpha_bar_prev)
    om = 1.0 - alpha_bar if one_minus_alpha_bar is None else one_minus_alpha_bar
    omp = 1.0 - alpha_bar_prev if one_minus_alpha_bar_prev is None else one_minus_alpha_bar_prev
    b = (alpha_bar_prev - alpha_bar) / alpha_bar_prev if beta is None else beta
    return eta * sqrt(omp / om * b)


def ddim_coefficients(
    alpha_bar: Array | float,
    alpha_bar_prev: Array | float,
    *,
    eta: float = 0.0,
    one_minus_alpha_bar: Array | float | None = None,
    one_minus_alpha_bar_prev: Array | float | None = None,
    beta: Array | float | None = None,
) -> tuple[Array | float, Array | float, Array | float]:
    """(√ᾱ_prev, √(1−ᾱ_prev−σ²), σ) of x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σz (Song et al. 2021, Eq. 12).

    1 − ᾱ_prev − σ² is formed as (1−ᾱ_prev)·((1−η²) + η²·ᾱ_t(1−ᾱ_prev)/(ᾱ_prev(1−ᾱ_t))), a sum of
    non-negative terms for η ≤ 1 (no cancellation); η > 1 is allowed while this stays ≥ 0.
    """
    eta = check_eta(eta)
    sqrt, is_arr, xp = _ops(alpha_bar, alpha_bar_prev)
    om = 1.0 - alpha_bar if one_minus_alpha_bar is None else one_minus_alpha_bar
    omp = 1.0 - alpha_bar_prev if one_minus_alpha_bar_prev is None else one_minus_alpha_bar_prev
    sigma = ddim_sigma(
        alpha_bar,
        alpha_bar_prev,
        eta=eta,
        one_minus_alpha_bar=om,
        one_minus_alpha_bar_prev=omp,
        beta=beta,
    )
    r = alpha_bar * omp / (alpha_bar_prev * om)
    dir2 = omp * ((1.0 - eta * eta) + eta * eta * r)
    neg = bool(xp.any(dir2 < 0)) if is_arr else dir2 < 0
    if neg:
        fail(
            "eta",
            eta,
            "η this large makes σ² exceed 1 − ᾱ_prev (the direction term would be "
            "imaginary); expected η ≤ 1 or a step where σ² ≤ 1 − ᾱ_prev",
        )
    return sqrt(alpha_bar_prev), sqrt(dir2), sigma


def ddim_step(
    x: Array,
    pred_x0: Array,
    pred_eps: Array,
    alpha_bar: Array | float | None = None,
    alpha_bar_prev: Array | float | None = None,
    *,
    eta: float = 0.0,
    noise: Array | None = None,
    one_minus_alpha_bar: Array | float | None = None,
    one_minus_alpha_bar_prev: Array | float | None = None,
    beta: Array | float | None = None,
    coefficients: tuple[Array | float, Array | float, Array | float] | None = None,
) -> Array:
    """x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z (Song et al. 2021, Eq. 12).

    ``noise`` is needed only when σ > 0 (η > 0); with noise=None the σz term is left out (the
    mean of the step). ``coefficients`` = (√ᾱ_prev, √(1−ᾱ_prev−σ²), σ) precomputed by
    :func:`ddim_coefficients` replaces ᾱ, ᾱ_prev and the options (a loop's step plan).
    """
    check_output(pred_x0, x, name="pred_x0")
    check_output(pred_eps, x, name="pred_eps")
    if coefficients is None:
        if alpha_bar is None or alpha_bar_prev is None:
            fail(
                "alpha_bar",
                alpha_bar,
                "ddim_step needs alpha_bar and alpha_bar_prev (or "
                "coefficients= from ddim_coefficients)",
            )
        coefficients = ddim_coefficients(
            alpha_bar,
            alpha_bar_prev,
            eta=eta,
            one_minus_alpha_bar=one_minus_alpha_bar,
            one_minus_alpha_bar_prev=one_minus_alpha_bar_prev,
            beta=beta,
        )
    c_x0, c_eps, sigma = coefficients
    out = c_x0 * pred_x0 + c_eps * pred_eps
    if noise is not None:
        check_output(noise, x, name="noise")
        out = out + sigma * noise
    return out


def ddim_reverse_step(
    x: Array,
    pred_x0: Array,
    pred_eps: Array,
    alpha_bar_next: Array | float,
    *,
    one_minus_alpha_bar_next: Array | float | None = None,
) -> Array:
    """x_next = √ᾱ_next·x̂0 + √(1−ᾱ_next)·ε̂, one deterministic DDIM inversion step (Song et al. 2021, Eq. 13 run forward).

    ``one_minus_alpha_bar_next`` passes 1 − ᾱ_next exactly (otherwise formed by subtraction).
    """
    check_output(pred_x0, x, name="pred_x0")
    check_output(pred_eps, x, name="pred_eps")
    sqrt, _, _ = _ops(alpha_bar_next)
    om = 1.0 - alpha_bar_next if one_minus_alpha_bar_next is None else one_minus_alpha_bar_next
    return sqrt(alpha_bar_next) * pred_x0 + sqrt(om) * pred_eps


class _Level(NamedTuple):
    """(ᾱ, 1 − ᾱ, log ᾱ) of one level as host floats."""

    ab: float
    om: float
    log: float


def _final_level(
    h: _Host,
    schedule: Schedule,
    final_alpha_bar: str | float,
    base: Schedule | None,
    base_h: _Host | None,
) -> _Level:
    """The level below step 0 under the final_alpha_bar convention."""
    if isinstance(final_alpha_bar, str):
        check_choice("final_alpha_bar", final_alpha_bar, FINAL_ALPHA_BAR, "final ᾱ_prev convention")
        if final_alpha_bar == "one":
            return _Level(1.0, 0.0, 0.0)
        src = base_h
        if src is None:
            if int(h.timestep_map[0]) != 0:
                fail(
                    "base_schedule",
                    base,
                    "final_alpha_bar='alpha_bar_0' on a respaced "
                    "schedule that skips index 0 needs the training schedule: pass base_schedule=",
                )
            src = h
        return _Level(
            float(src.alphas_cumprod[0]),
            float(src.one_minus_alphas_cumprod[0]),
            float(src.log_alphas_cumprod[0]),
        )
    v = check_real("final_alpha_bar", final_alpha_bar, lo=0.0, hi=1.0, lo_open=True)
    return _Level(v, 1.0 - v, math.log(v))


def _level(h: _Host, i: int, final: _Level) -> _Level:
    """Level i of the host tables (−1 = the final level)."""
    if i < 0:
        return final
    return _Level(
        float(h.alphas_cumprod[i]),
        float(h.one_minus_alphas_cumprod[i]),
        float(h.log_alphas_cumprod[i]),
    )


def _beta_between(h: _Host, i: int, prev: _Level, cur: _Level, own: bool) -> float:
    """1 − ᾱ_cur/ᾱ_prev for a step from level i (the exact table entry where it is the schedule's own)."""
    if own and (i >= 1 or (i == 0 and prev.ab == 1.0)):
        return float(h.betas[i])
    return -math.expm1(cur.log - prev.log)


def _stride_base(schedule: Schedule, respaced: bool, base_schedule: Schedule | None) -> Schedule:
    """The training schedule the "stride" rule reads (T and ᾱ at t − T//n)."""
    if respaced:
        return schedule
    if base_schedule is not None:
        if not isinstance(base_schedule, Schedule):
            fail("base_schedule", base_schedule, "expected a refdiff.schedules.Schedule")
        return base_schedule
    tmap = _host_table(schedule.timestep_map)
    if not np.array_equal(tmap, np.arange(schedule.num_timesteps)):
        fail(
            "base_schedule",
            base_schedule,
            "prev_timestep='stride' on a respaced schedule needs "
            "the training schedule: pass base_schedule= (or the training schedule with steps=)",
        )
    return schedule


def _ddim_tables(
    sched: Schedule,
    schedule: Schedule,
    x: Array,
    *,
    respaced: bool,
    base_schedule: Schedule | None,
    prev_timestep: str,
    final_alpha_bar: str | float,
) -> tuple[_Host, Schedule | None, _Host | None, _Level]:
    """The host tables of the sampling schedule and of the training schedule, and the final level."""
    _check_namespace(sched, x)
    h = _Host(sched)
    base: Schedule | None
    if prev_timestep == "stride":
        base = _stride_base(schedule, respaced, base_schedule)
    else:
        base = base_schedule if base_schedule is not None or not respaced else schedule
    base_h = _Host(base) if base is not None else None
    return h, base, base_h, _final_level(h, sched, final_alpha_bar, base, base_h)


def _ddim_prev_levels(
    h: _Host,
    sched: Schedule,
    levels: range,
    prev_timestep: str,
    final: _Level,
    base: Schedule | None,
    base_h: _Host | None,
) -> dict[int, tuple[_Level, bool]]:
    """For each level i in ``levels``: (ᾱ of the level it steps to, whether that level is the schedule's own)."""
    n = sched.num_timesteps
    out: dict[int, tuple[_Level, bool]] = {}
    for i in levels:
        if prev_timestep == "listed":
            out[i] = (_level(h, i - 1, final), True)
        else:
            assert base is not None and base_h is not None  # _stride_base returned one
            tp = int(h.timestep_map[i]) - base.num_timesteps // n
            out[i] = (_level(base_h, tp, final), False)
    return out


def _x0_eps(
    out: Array,
    x: Array,
    c: LevelCoefficients,
    xp: Namespace | None,
    *,
    mean_type: str,
    clip_x0: bool,
    denoised_fn: Callable[[Array], Array] | None,
    eps_from_clipped_x0: bool,
) -> tuple[Array, Array]:
    """(x̂0, ε̂) from a model output at one level: x̂0 processed, ε̂ from it or from the raw output."""
    raw = x0_from_output_at(out, x, c, mean_type)
    processed = clip_x0 or denoised_fn is not None
    x0 = _process_x0(raw, xp, clip_x0, denoised_fn) if processed else raw
    if mean_type == "eps" and (not processed or not eps_from_clipped_x0):
        return x0, out
    return x0, eps_from_x0_at(x, x0 if eps_from_clipped_x0 else raw, c)


@register_sampler("ddim", family="discrete", stochastic=False, order=1.0, step=ddim_step)
def sample_ddim(
    model: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    schedule: Schedule,
    noise: Noise = None,
    eta: float = 0.0,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = False,
    denoised_fn: Callable[[Array], Array] | None = None,
    final_alpha_bar: str | float = "one",
    base_schedule: Schedule | None = None,
    final_noise: str = "none",
    eps_from_clipped_x0: bool = True,
    prev_timestep: str = "listed",
    steps: int | None = None,
    spacing: str = "trailing",
    steps_offset: int = 0,
    timesteps: Sequence[int] | Array | None = None,
    start: int | None = None,
    stop: int = -1,
    cond_fn: Callable[[Array, Array], Array] | None = None,
    cond_scale: float = 1.0,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """DDIM sampling x_T -> x_0 with noise scale η (Song et al. 2021, Eqs. 12 and 16; η = 0 is deterministic).

    Parameters
    ----------
    model, x_T, schedule, mean_type, var_type, clip_x0, denoised_fn
        As :func:`sample_ddpm` (a learned-variance output has its variance channels ignored).
    noise : array or callable, optional
        Draws z for η > 0 (shape (n,) + x_T.shape).
    eta : float
        η ≥ 0; η = 1 with consecutive steps is DDPM with σ_t² = β̃_t.
    final_alpha_bar : {"one", "alpha_bar_0"} or float
        ᾱ of the level below the last step (module docstring); "alpha_bar_0" reads ᾱ_0 of
        ``base_schedule`` (required when ``schedule`` is respaced and skips index 0).
    final_noise : {"none", "always"}
        Whether the last step adds σz (only matters when σ > 0 there).
    eps_from_clipped_x0 : bool
        With clipping / ``denoised_fn``: True re-derives ε̂ from the processed x̂0
        (improved-diffusion), False keeps the model's ε̂ (diffusers default).
    prev_timestep : {"listed", "stride"}
        The level each step moves to: the next level of the schedule, or diffusers'
        ``DDIMScheduler`` rule t − T//n on the training schedule (``base_schedule``, or
        ``schedule`` itself when ``steps`` is given); below 0 it is the final level.
    steps, spacing, steps_offset, timesteps
        Respace first (see :func:`sampling_schedule`); ``schedule`` is then the training
        schedule, also for ``final_alpha_bar="alpha_bar_0"`` and ``prev_timestep="stride"``
        (with ``steps``).
    start, stop : int
        Run from level ``start`` (default n−1, x_T) down to level ``stop`` (default −1, the data
        level); the partial chain pairs with :func:`ddim_invert`.
    cond_fn, cond_scale
        Classifier guidance by score (Dhariwal & Nichol 2021, Alg. 2; improved-diffusion's
        ``condition_score``).
    callback, progress
        Per-step hooks (:func:`sample_ddpm`).
    """
    sched = sampling_schedule(
        schedule, steps, spacing, steps_offset=steps_offset, timesteps=timesteps
    )
    eta = check_eta(eta)
    cond_scale = check_scale(cond_scale, "cond_scale")
    mean_type = prediction_type(mean_type, "mean_type")
    check_choice("var_type", var_type, VAR_TYPES, "variance type")
    check_choice("final_noise", final_noise, FINAL_NOISE, "final-step noise convention")
    check_choice("prev_timestep", prev_timestep, PREV_TIMESTEPS, "previous-timestep rule")
    report = step_reporter(callback, progress)
    n = sched.num_timesteps
    start = n - 1 if start is None else check_int("start", start, minimum=0)
    stop = check_int("stop", stop, minimum=-1)
    if start > n - 1 or stop >= start:
        fail("start", start, f"expected n-1 >= start > stop >= -1 with n={n} (stop={stop})")
    h, base, base_h, final = _ddim_tables(
        sched,
        schedule,
        x_T,
        respaced=steps is not None or timesteps is not None,
        base_schedule=base_schedule,
        prev_timestep=prev_timestep,
        final_alpha_bar=final_alpha_bar,
    )
    levels = range(start, stop, -1)
    prevs = _ddim_prev_levels(h, sched, levels, prev_timestep, final, base, base_h)
    plan: list[
        tuple[int, LevelCoefficients, tuple[Array | float, Array | float, Array | float], bool]
    ] = []
    for i in levels:
        cur = _level(h, i, final)
        prev, own = prevs[i]
        _zero_snr_check(cur.ab, i, mean_type)
        beta = _beta_between(h, i, prev, cur, own)
        coef = ddim_coefficients(
            cur.ab,
            prev.ab,
            eta=eta,
            one_minus_alpha_bar=cur.om,
            one_minus_alpha_bar_prev=prev.om,
            beta=beta,
        )
        last = i == 0
        add = coef[2] > 0 and (not last or final_noise == "always")
        plan.append((int(h.timestep_map[i]), level_coefficients(h, i), coef, add))
    total = len(plan)
    xp = array_namespace(x_T)
    t_rows = _timestep_rows(xp, x_T, [p[0] for p in plan], device_of(x_T))
    x = x_T
    for k, (t, c, coef, add) in enumerate(plan):
        t_model = t_rows[k, ...]
        out, _ = _split_output(model(x, t_model), x, var_type)
        pred_x0, pred_eps = _x0_eps(
            out,
            x,
            c,
            xp,
            mean_type=mean_type,
            clip_x0=clip_x0,
            denoised_fn=denoised_fn,
            eps_from_clipped_x0=eps_from_clipped_x0,
        )
        if cond_fn is not None:
            grad = cond_fn(x, t_model)
            check_output(grad, x, name="classifier gradient")
            if cond_scale != 1.0:
                grad = grad * cond_scale
            pred_eps = condition_eps(pred_eps, grad, c.sqrt_one_minus_alphas_cumprod)
            pred_x0 = x0_from_output_at(pred_eps, x, c, "eps")
        if report is not None:
            report(StepInfo(k, total, x, pred_x0, t=t))
        z = draw_noise(noise, k, x) if add else None
        x = ddim_step(x, pred_x0, pred_eps, noise=z, coefficients=coef)
    return x


@register_sampler("ddim_stochastic", family="discrete", stochastic=True, step=ddim_step)
def sample_ddim_stochastic(
    model: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    schedule: Schedule,
    noise: Noise = None,
    eta: float = 1.0,
    **options: Any,
) -> Array:
    """DDIM with η = 1 by default: the stochastic member of the family (Song et al. 2021, Eq. 16)."""
    return sample_ddim(model, x_T, schedule=schedule, noise=noise, eta=eta, **options)


class DDIMStepOutput(NamedTuple):
    """One DDIM step's result, named as diffusers' ``DDIMSchedulerOutput``."""

    prev_sample: Array
    pred_original_sample: Array


def ddim_step_at(
    model_output: Array,
    t: int,
    t_prev: int,
    x_t: Array,
    *,
    schedule: Schedule,
    eta: float = 0.0,
    noise: Array | None = None,
    prediction_type: str = "eps",
    final_alpha_bar: str | float = "one",
    clip_x0: bool = False,
    clip_range: float = 1.0,
    denoised_fn: Callable[[Array], Array] | None = None,
    eps_from_clipped_x0: bool = False,
) -> DDIMStepOutput:
    """One DDIM step between training timesteps t -> t_prev, shaped like diffusers' ``DDIMScheduler.step`` (Song et al. 2021, Eq. 12).

    ``DDIMScheduler.step(model_output, timestep, sample, eta, use_clipped_model_output,
    variance_noise=...)`` is ``ddim_step_at(model_output, timestep, timestep - T//n, sample,
    schedule=training_schedule, eta=eta, noise=variance_noise, eps_from_clipped_x0=...)`` with
    its ``prediction_type``, ``set_alpha_to_one`` (``final_alpha_bar="one"`` / ``"alpha_bar_0"``),
    ``clip_sample`` (``clip_x0``, ``clip_range``) and ``thresholding`` (``denoised_fn=
    partial(dynamic_threshold, ratio=..., max_value=...)``).

    Parameters
    ----------
    model_output : array
        The network's prediction at (x_t, t) of type ``prediction_type`` ("eps", "x0", "v" or
        "score"; diffusers' "epsilon", "sample", "v_prediction" are aliases).
    t, t_prev : int
        Training timesteps; t_prev < 0 steps to the final level (``final_alpha_bar``).
    noise : array, optional
        The draw z (diffusers' ``variance_noise``); σz is added when given and σ > 0.
    eps_from_clipped_x0 : bool
        diffusers' ``use_clipped_model_output`` (default False, as there).

    Returns
    -------
    DDIMStepOutput
        ``(prev_sample, pred_original_sample)``.
    """
    if not isinstance(schedule, Schedule):
        fail("schedule", schedule, "expected a refdiff.schedules.Schedule")
    pt = _canonical_prediction(prediction_type)
    T = schedule.num_timesteps
    t = check_int("t", t, minimum=0)
    if t >= T:
        fail("t", t, f"expected a training timestep in [0, {T})")
    t_prev = check_int("t_prev", t_prev)
    if t_prev >= t:
        fail("t_prev", t_prev, f"expected a timestep below t={t} (negative: the final level)")
    clip_range = check_real("clip_range", clip_range, lo=0.0, lo_open=True)
    h = _Host(schedule)
    final = _final_level(h, schedule, final_alpha_bar, None, None)
    cur = _level(h, t, final)
    prev = _level(h, t_prev, final) if t_prev >= 0 else final
    _zero_snr_check(cur.ab, t, pt)
    a, s = math.sqrt(cur.ab), math.sqrt(cur.om)
    check_output(model_output, x_t)
    x0 = x0_from_prediction(model_output, x_t, a, s, pt)
    eps = eps_from_prediction(model_output, x_t, a, s, pt)
    if denoised_fn is not None or clip_x0:
        xp = array_namespace(x_t)
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        elif clip_x0:
            x0 = xp.clip(x0, -clip_range, clip_range)
        if eps_from_clipped_x0:
            eps = eps_from_prediction(x0, x_t, a, s, "x0")
    x_prev = ddim_step(
        x_t,
        x0,
        eps,
        cur.ab,
        prev.ab,
        eta=eta,
        noise=noise,
        one_minus_alpha_bar=cur.om,
        one_minus_alpha_bar_prev=prev.om,
        beta=-math.expm1(cur.log - prev.log),
    )
    return DDIMStepOutput(x_prev, x0)


def _canonical_prediction(value: str) -> str:
    return prediction_type(value, "prediction_type", ("eps", "x0", "v", "score"))


def ddim_invert(
    model: Callable[[Array, Array], Array],
    x0: Array,
    *,
    schedule: Schedule,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = False,
    denoised_fn: Callable[[Array], Array] | None = None,
    final_alpha_bar: str | float = "one",
    base_schedule: Schedule | None = None,
    model_time: str = "current",
    prev_timestep: str = "listed",
    steps: int | None = None,
    spacing: str = "trailing",
    steps_offset: int = 0,
    timesteps: Sequence[int] | Array | None = None,
    start: int = -1,
    stop: int | None = None,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Deterministic DDIM inversion x_0 -> x_T: the η = 0 update run toward more noise (Song et al. 2021, §4.3, Eq. 13).

    Step from level j to j+1 (level −1 = the data level of ``final_alpha_bar``):
    x_{j+1} = √ᾱ_{j+1}·x̂0 + √(1−ᾱ_{j+1})·ε̂ (:func:`ddim_reverse_step`), where ε̂ is the model's
    ε at the time of level j (``model_time="current"``, improved-diffusion) or level j+1
    (``"next"``, diffusers ``DDIMInverseScheduler``) and x̂0 = (x − √(1−ᾱ_j)·ε̂)/√ᾱ_j. From the
    data level (ᾱ = 1) both evaluate the model at level 0 and take x̂0 = x. With a constant
    x0-prediction (point-mass data) "current" inverts :func:`sample_ddim` (η = 0) exactly;
    otherwise it differs by the discretization error. ``prev_timestep="stride"`` takes the level
    a step starts from as diffusers' inverse scheduler does: min(t_{j+1} − T//n, T − 1) on the
    training schedule (below 0: the data level).

    Parameters
    ----------
    start, stop : int
        Levels to run between (default: −1 -> n−1, data to x_T).
    callback, progress
        Per-step hooks (:func:`sample_ddpm`); ``t`` is the timestep the model was called with.

    Returns
    -------
    array
        x at level ``stop`` (x_T by default).
    """
    sched = sampling_schedule(
        schedule, steps, spacing, steps_offset=steps_offset, timesteps=timesteps
    )
    check_choice("model_time", model_time, MODEL_TIMES, "inversion model-time convention")
    check_choice("prev_timestep", prev_timestep, PREV_TIMESTEPS, "previous-timestep rule")
    check_choice("var_type", var_type, VAR_TYPES, "variance type")
    mean_type = prediction_type(mean_type, "mean_type")
    report = step_reporter(callback, progress)
    n = sched.num_timesteps
    start = check_int("start", start, minimum=-1)
    stop = n - 1 if stop is None else check_int("stop", stop, minimum=0)
    if stop > n - 1 or start >= stop:
        fail("stop", stop, f"expected -1 <= start < stop <= n-1 with n={n} (start={start})")
    h, base, base_h, final = _ddim_tables(
        sched,
        schedule,
        x0,
        respaced=steps is not None or timesteps is not None,
        base_schedule=base_schedule,
        prev_timestep=prev_timestep,
        final_alpha_bar=final_alpha_bar,
    )
    plan: list[tuple[int, LevelCoefficients, bool, tuple[float, float] | None, _Level]] = []
    for j in range(start, stop):
        nxt = _level(h, j + 1, final)
        if prev_timestep == "listed":
            src_i, cur, src_h = j, _level(h, j, final), h
        else:
            assert base is not None and base_h is not None  # _stride_base returned one
            T = base.num_timesteps
            src_i = min(int(h.timestep_map[j + 1]) - T // n, T - 1)
            cur, src_h = _level(base_h, src_i, final), base_h
        if src_i < 0 or model_time == "next":
            # the model's ε at level j+1 (or at level 0 from the data level), x̂0 from level j
            mi = j + 1
            t_model = int(h.timestep_map[mi])
            c_model = level_coefficients(h, mi)
            _zero_snr_check(float(h.alphas_cumprod[mi]), mi, mean_type)
            plan.append((t_model, c_model, True, (math.sqrt(cur.ab), math.sqrt(cur.om)), nxt))
        else:
            t_model = int(src_h.timestep_map[src_i]) if src_h is h else src_i
            c_model = level_coefficients(src_h, src_i)
            _zero_snr_check(cur.ab, src_i, mean_type)
            plan.append((t_model, c_model, False, None, nxt))
    total = len(plan)
    xp = array_namespace(x0)
    t_rows = _timestep_rows(xp, x0, [p[0] for p in plan], device_of(x0))
    x = x0
    for k, (t, c, model_next, cur_as, nxt) in enumerate(plan):
        t_model = t_rows[k, ...]
        out, _ = _split_output(model(x, t_model), x, var_type)
        if model_next:
            eps = (
                out
                if mean_type == "eps"
                else eps_from_x0_at(x, x0_from_output_at(out, x, c, mean_type), c)
            )
            assert cur_as is not None  # planned with the level it steps from
            pred_x0 = x0_from_prediction(eps, x, cur_as[0], cur_as[1], "eps")
            pred_x0 = _process_x0(pred_x0, xp, clip_x0, denoised_fn)
        else:
            pred_x0, eps = _x0_eps(
                out,
                x,
                c,
                xp,
                mean_type=mean_type,
                clip_x0=clip_x0,
                denoised_fn=denoised_fn,
                eps_from_clipped_x0=True,
            )
        if report is not None:
            report(StepInfo(k, total, x, pred_x0, t=t))
        x = ddim_reverse_step(x, pred_x0, eps, nxt.ab, one_minus_alpha_bar_next=nxt.om)
    return x


# Deprecated names (one release): the sampler loops are sample_<registered name>.
ddpm_sample = sample_ddpm
ddim_sample = sample_ddim
ddim_stochastic_sample = sample_ddim_stochastic
