"""Discrete-time samplers: DDPM ancestral sampling, DDIM (any η) and deterministic DDIM inversion.

Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models" (Algorithm 2, Eqs. 6–7, 11);
Nichol & Dhariwal (2021), "Improved DDPM" (learned variances, respacing); Song, Meng & Ermon
(2021), "Denoising Diffusion Implicit Models" (Eqs. 12, 16; §4.3 for the ODE and its inversion).

Conventions (each a named argument with a documented default; see ``docs/api/samplers_discrete.md``):

* **Index base.** Sampling steps i = n-1, ..., 0 of the (possibly respaced) ``schedule``; the
  model is called as ``model(x, t)`` with ``t = schedule.timestep_map[i]`` (an int64 array of
  shape (B,)), i.e. the index of the training schedule (improved-diffusion's ``_WrappedModel``).
* **Final-step noise** (``final_noise``): ``"none"`` (improved-diffusion, diffusers DDPM,
  lucidrains: the last step returns its mean) or ``"always"`` (labml's DDPM adds σ_1 z at the last
  step too; diffusers DDIM adds σ z at the last step whenever η > 0).
* **Final ᾱ_prev of DDIM** (``final_alpha_bar``): ``"one"`` (improved-diffusion,
  diffusers ``set_alpha_to_one=True``: the last step lands on clean data) or ``"alpha_bar_0"``
  (diffusers ``set_alpha_to_one=False``: the last step lands at ᾱ_0 of the training schedule), or a
  number in (0, 1].
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
"""

from __future__ import annotations

import math
from typing import Callable

from array_api_compat import is_array_api_obj

from .._errors import check_choice, check_int, check_real, fail
from .._xp import array_namespace, device_of
from ..diffusion import T0_CONVENTIONS, p_mean_variance
from ..guidance import check_scale, condition_mean, condition_score
from ..schedules import Schedule, respace
from . import register_sampler
from ._common import call_progress, check_eta, check_output, check_steps, draw_noise

__all__ = [
    "FINAL_NOISE", "FINAL_ALPHA_BAR", "MODEL_TIMES", "SPACINGS", "COND_MODES",
    "ancestral_step", "p_sample", "ddim_sigma", "ddim_coefficients", "ddim_step",
    "ddim_reverse_step", "sample_ddpm", "sample_ddim", "sample_ddim_stochastic", "ddim_invert",
    "sampling_schedule",
]

FINAL_NOISE = ("none", "always")
FINAL_ALPHA_BAR = ("one", "alpha_bar_0")
MODEL_TIMES = ("current", "next")
SPACINGS = ("trailing", "leading", "linspace", "ddim")
COND_MODES = ("mean", "score")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def _is_array(a) -> bool:
    return is_array_api_obj(a) and not isinstance(a, (float, int))


def _ops(*vals):
    """(sqrt, is_array, xp) for coefficients given as Python numbers or arrays."""
    arrs = [v for v in vals if _is_array(v)]
    if arrs:
        xp = array_namespace(*arrs)
        return xp.sqrt, True, xp
    return math.sqrt, False, None


def _host(table, i: int) -> float:
    return float(table[i])


def _timesteps(schedule: Schedule, i: int, x):
    """The model's time argument for step i: timestep_map[i] as an int64 array of shape (B,)."""
    xp = array_namespace(x)
    t = int(schedule.timestep_map[i])
    return xp.full((x.shape[0],), t, dtype=xp.int64, device=device_of(x))


def _step_index(schedule: Schedule, i: int, x):
    xp = array_namespace(x)
    return xp.full((x.shape[0],), i, dtype=xp.int64, device=device_of(x))


def sampling_schedule(schedule, steps=None, spacing: str = "trailing") -> Schedule:
    """The schedule the loop steps on: ``schedule`` itself, or it respaced to ``steps`` steps.

    ``spacing`` is "trailing" (default; starts at T-1, Lin et al. 2023), "leading", "linspace"
    (diffusers) or "ddim" (improved-diffusion's ``"ddimN"`` = range(0, T, stride)).
    """
    if not isinstance(schedule, Schedule):
        fail("schedule", schedule, "expected a refdiff.schedules.Schedule")
    if steps is None:
        return schedule
    steps = check_steps(steps)
    check_choice("spacing", spacing, SPACINGS, "timestep spacing")
    if steps > schedule.num_timesteps:
        fail("steps", steps, f"expected at most T={schedule.num_timesteps} steps")
    if spacing == "ddim":
        return respace(schedule, f"ddim{steps}")
    return respace(schedule, steps, spacing=spacing)


def _model_output(model: Callable, x, t, *, var_type: str):
    out = model(x, t)
    if var_type in ("fixed_small", "fixed_large"):
        check_output(out, x)
    return out


# --------------------------------------------------------------------------------------------
# DDPM
# --------------------------------------------------------------------------------------------

def ancestral_step(mean, log_variance, noise):
    """x_{t-1} = μ_θ + exp(½ log σ_t²)·z (Ho et al. 2020, Algorithm 2, line 4)."""
    xp = array_namespace(mean, log_variance, noise)
    return mean + xp.exp(0.5 * log_variance) * noise


def p_sample(model_output, x_t, t, *, schedule, mean_type: str = "eps",
             var_type: str = "fixed_small", clip_x0: bool = False,
             denoised_fn: Callable | None = None, t0: str = "clipped", noise=None,
             add_noise: bool = True, grad=None, cond_mode: str = "mean"):
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

    Returns
    -------
    (x_prev, PMeanVar)
        The sample and the (guided) reverse Gaussian with its x0/ε predictions.
    """
    out = p_mean_variance(schedule, model_output, x_t, t, mean_type=mean_type, var_type=var_type,
                          clip_x0=clip_x0, denoised_fn=denoised_fn, t0=t0)
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
def sample_ddpm(model: Callable, x_T, *, schedule, noise=None, mean_type: str = "eps",
                var_type: str = "fixed_small", clip_x0: bool = False,
                denoised_fn: Callable | None = None, t0: str = "clipped",
                final_noise: str = "none", steps: int | None = None, spacing: str = "trailing",
                cond_fn: Callable | None = None, cond_mode: str = "mean",
                cond_scale: float = 1.0, progress: Callable | None = None):
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
    steps, spacing
        Respace ``schedule`` to ``steps`` steps first (see :func:`sampling_schedule`).
    cond_fn, cond_mode, cond_scale
        Classifier guidance: ``cond_fn(x, t) -> ∇ log p(y|x_t)``, multiplied by ``cond_scale``,
        applied by mean shift ("mean", improved-diffusion ``p_sample``) or by score ("score").
    progress : callable, optional
        ``progress(k, n)`` after each step.

    Returns
    -------
    array
        x_0, the shape of x_T.
    """
    sched = sampling_schedule(schedule, steps, spacing)
    check_choice("final_noise", final_noise, FINAL_NOISE, "final-step noise convention")
    check_choice("t0", t0, T0_CONVENTIONS, "t=0 convention")
    check_choice("cond_mode", cond_mode, COND_MODES, "classifier-guidance mode")
    cond_scale = check_scale(cond_scale, "cond_scale")
    n = sched.num_timesteps
    x = x_T
    for k, i in enumerate(range(n - 1, -1, -1)):
        t_model = _timesteps(sched, i, x)
        out = _model_output(model, x, t_model, var_type=var_type)
        grad = None
        if cond_fn is not None:
            grad = cond_fn(x, t_model)
            grad = grad * cond_scale if cond_scale != 1.0 else grad
        add = i > 0 or final_noise == "always"
        z = draw_noise(noise, k, x) if add else None
        x, _ = p_sample(out, x, _step_index(sched, i, x), schedule=sched, mean_type=mean_type,
                        var_type=var_type, clip_x0=clip_x0, denoised_fn=denoised_fn, t0=t0,
                        noise=z, add_noise=add, grad=grad, cond_mode=cond_mode)
        call_progress(progress, k + 1, n)
    return x


# --------------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------------

def ddim_sigma(alpha_bar, alpha_bar_prev, *, eta: float = 0.0, one_minus_alpha_bar=None,
               one_minus_alpha_bar_prev=None, beta=None):
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


def ddim_coefficients(alpha_bar, alpha_bar_prev, *, eta: float = 0.0, one_minus_alpha_bar=None,
                      one_minus_alpha_bar_prev=None, beta=None):
    """(√ᾱ_prev, √(1−ᾱ_prev−σ²), σ) of x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σz (Song et al. 2021, Eq. 12).

    1 − ᾱ_prev − σ² is formed as (1−ᾱ_prev)·((1−η²) + η²·ᾱ_t(1−ᾱ_prev)/(ᾱ_prev(1−ᾱ_t))), a sum of
    non-negative terms for η ≤ 1 (no cancellation); η > 1 is allowed while this stays ≥ 0.
    """
    eta = check_eta(eta)
    sqrt, is_arr, xp = _ops(alpha_bar, alpha_bar_prev)
    om = 1.0 - alpha_bar if one_minus_alpha_bar is None else one_minus_alpha_bar
    omp = 1.0 - alpha_bar_prev if one_minus_alpha_bar_prev is None else one_minus_alpha_bar_prev
    sigma = ddim_sigma(alpha_bar, alpha_bar_prev, eta=eta, one_minus_alpha_bar=om,
                       one_minus_alpha_bar_prev=omp, beta=beta)
    r = alpha_bar * omp / (alpha_bar_prev * om)
    dir2 = omp * ((1.0 - eta * eta) + eta * eta * r)
    neg = bool(xp.any(dir2 < 0)) if is_arr else dir2 < 0
    if neg:
        fail("eta", eta, "η this large makes σ² exceed 1 − ᾱ_prev (the direction term would be "
             "imaginary); expected η ≤ 1 or a step where σ² ≤ 1 − ᾱ_prev")
    return sqrt(alpha_bar_prev), sqrt(dir2), sigma


def ddim_step(x, pred_x0, pred_eps, alpha_bar, alpha_bar_prev, *, eta: float = 0.0, noise=None,
              one_minus_alpha_bar=None, one_minus_alpha_bar_prev=None, beta=None):
    """x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z (Song et al. 2021, Eq. 12).

    ``noise`` is needed only when σ > 0 (η > 0); with noise=None the σz term is left out (the
    mean of the step).
    """
    check_output(pred_x0, x, name="pred_x0")
    check_output(pred_eps, x, name="pred_eps")
    c_x0, c_eps, sigma = ddim_coefficients(
        alpha_bar, alpha_bar_prev, eta=eta, one_minus_alpha_bar=one_minus_alpha_bar,
        one_minus_alpha_bar_prev=one_minus_alpha_bar_prev, beta=beta)
    out = c_x0 * pred_x0 + c_eps * pred_eps
    if noise is not None:
        check_output(noise, x, name="noise")
        out = out + sigma * noise
    return out


def ddim_reverse_step(x, pred_x0, pred_eps, alpha_bar_next):
    """x_next = √ᾱ_next·x̂0 + √(1−ᾱ_next)·ε̂, one deterministic DDIM inversion step (Song et al. 2021, Eq. 13 run forward)."""
    check_output(pred_x0, x, name="pred_x0")
    check_output(pred_eps, x, name="pred_eps")
    sqrt, _, _ = _ops(alpha_bar_next)
    return sqrt(alpha_bar_next) * pred_x0 + sqrt(1.0 - alpha_bar_next) * pred_eps


def _final_level(schedule: Schedule, final_alpha_bar, base_schedule):
    """(ᾱ, 1 − ᾱ, log ᾱ) of the level below step 0 under the final_alpha_bar convention."""
    if isinstance(final_alpha_bar, str):
        check_choice("final_alpha_bar", final_alpha_bar, FINAL_ALPHA_BAR, "final ᾱ_prev convention")
        if final_alpha_bar == "one":
            return 1.0, 0.0, 0.0
        src = base_schedule
        if src is None:
            if int(schedule.timestep_map[0]) != 0:
                fail("base_schedule", base_schedule, "final_alpha_bar='alpha_bar_0' on a respaced "
                     "schedule that skips index 0 needs the training schedule: pass base_schedule=")
            src = schedule
        return (_host(src.alphas_cumprod, 0), _host(src.one_minus_alphas_cumprod, 0),
                _host(src.log_alphas_cumprod, 0))
    v = check_real("final_alpha_bar", final_alpha_bar, lo=0.0, hi=1.0, lo_open=True)
    return v, 1.0 - v, math.log(v)


def _level(schedule: Schedule, i: int, final):
    """(ᾱ, 1 − ᾱ, log ᾱ) of level i (−1 = the final level)."""
    if i < 0:
        return final
    return (_host(schedule.alphas_cumprod, i), _host(schedule.one_minus_alphas_cumprod, i),
            _host(schedule.log_alphas_cumprod, i))


def _beta_between(schedule: Schedule, i: int, lo, hi) -> float:
    """1 − ᾱ_hi/ᾱ_lo for the step from level i to level i−1 (exact table when it is the schedule's own)."""
    if i >= 1 or (i == 0 and lo[0] == 1.0):
        return _host(schedule.betas, i)
    return -math.expm1(hi[2] - lo[2])


def _predictions(model, x, schedule, i, *, mean_type, var_type, clip_x0, denoised_fn,
                 eps_from_clipped_x0: bool, cond_fn=None, cond_scale=1.0, model_i=None):
    """(x̂0, ε̂) at sampling level i, with the model called at the time of level ``model_i``."""
    mi = i if model_i is None else model_i
    t_model = _timesteps(schedule, mi, x)
    out = _model_output(model, x, t_model, var_type=var_type)
    pmv = p_mean_variance(schedule, out, x, _step_index(schedule, i, x), mean_type=mean_type,
                          var_type=var_type, clip_x0=clip_x0, denoised_fn=denoised_fn)
    pred_x0, pred_eps = pmv.pred_x0, pmv.pred_eps
    if (clip_x0 or denoised_fn is not None) and not eps_from_clipped_x0:
        raw = p_mean_variance(schedule, out, x, _step_index(schedule, i, x), mean_type=mean_type,
                              var_type=var_type)
        pred_eps = raw.pred_eps
    if cond_fn is not None:
        grad = cond_fn(x, t_model)
        check_output(grad, x, name="classifier gradient")
        if cond_scale != 1.0:
            grad = grad * cond_scale
        pmv = condition_score(schedule, pmv._replace(pred_eps=pred_eps), x,
                              _step_index(schedule, i, x), grad)
        pred_x0, pred_eps = pmv.pred_x0, pmv.pred_eps
    return pred_x0, pred_eps


@register_sampler("ddim", family="discrete", stochastic=False, order=1.0, step=ddim_step)
def sample_ddim(model: Callable, x_T, *, schedule, noise=None, eta: float = 0.0,
                mean_type: str = "eps", var_type: str = "fixed_small", clip_x0: bool = False,
                denoised_fn: Callable | None = None, final_alpha_bar="one",
                base_schedule: Schedule | None = None, final_noise: str = "none",
                eps_from_clipped_x0: bool = True, steps: int | None = None,
                spacing: str = "trailing", start: int | None = None, stop: int = -1,
                cond_fn: Callable | None = None, cond_scale: float = 1.0,
                progress: Callable | None = None):
    """DDIM sampling x_T -> x_0 with noise scale η (Song et al. 2021, Eqs. 12 and 16; η = 0 is deterministic).

    Parameters
    ----------
    model, x_T, schedule, mean_type, var_type, clip_x0, denoised_fn
        As :func:`ddpm_sample` (a learned-variance output has its variance channels ignored).
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
    steps, spacing
        Respace first (see :func:`sampling_schedule`).
    start, stop : int
        Run from level ``start`` (default n−1, x_T) down to level ``stop`` (default −1, the data
        level); the partial chain pairs with :func:`ddim_invert`.
    cond_fn, cond_scale
        Classifier guidance by score (Dhariwal & Nichol 2021, Alg. 2; improved-diffusion's
        ``condition_score``).
    """
    sched = sampling_schedule(schedule, steps, spacing)
    eta = check_eta(eta)
    cond_scale = check_scale(cond_scale, "cond_scale")
    check_choice("final_noise", final_noise, FINAL_NOISE, "final-step noise convention")
    n = sched.num_timesteps
    start = n - 1 if start is None else check_int("start", start, minimum=0)
    stop = check_int("stop", stop, minimum=-1)
    if start > n - 1 or stop >= start:
        fail("start", start, f"expected n-1 >= start > stop >= -1 with n={n} (stop={stop})")
    final = _final_level(sched, final_alpha_bar, base_schedule)
    x = x_T
    total = start - stop
    for k, i in enumerate(range(start, stop, -1)):
        cur = _level(sched, i, final)
        prev = _level(sched, i - 1, final)
        pred_x0, pred_eps = _predictions(model, x, sched, i, mean_type=mean_type,
                                         var_type=var_type, clip_x0=clip_x0,
                                         denoised_fn=denoised_fn,
                                         eps_from_clipped_x0=eps_from_clipped_x0,
                                         cond_fn=cond_fn, cond_scale=cond_scale)
        beta = _beta_between(sched, i, prev, cur)
        c_x0, c_eps, sigma = ddim_coefficients(cur[0], prev[0], eta=eta, one_minus_alpha_bar=cur[1],
                                               one_minus_alpha_bar_prev=prev[1], beta=beta)
        x_new = c_x0 * pred_x0 + c_eps * pred_eps
        last = i - 1 == -1
        if sigma > 0 and (not last or final_noise == "always"):
            x_new = x_new + sigma * draw_noise(noise, k, x)
        x = x_new
        call_progress(progress, k + 1, total)
    return x


@register_sampler("ddim_stochastic", family="discrete", stochastic=True, step=ddim_step)
def sample_ddim_stochastic(model: Callable, x_T, *, schedule, noise=None, eta: float = 1.0,
                           **options):
    """DDIM with η = 1 by default: the stochastic member of the family (Song et al. 2021, Eq. 16)."""
    return sample_ddim(model, x_T, schedule=schedule, noise=noise, eta=eta, **options)


def ddim_invert(model: Callable, x0, *, schedule, mean_type: str = "eps",
                var_type: str = "fixed_small", clip_x0: bool = False,
                denoised_fn: Callable | None = None, final_alpha_bar="one",
                base_schedule: Schedule | None = None, model_time: str = "current",
                steps: int | None = None, spacing: str = "trailing", start: int = -1,
                stop: int | None = None, progress: Callable | None = None):
    """Deterministic DDIM inversion x_0 -> x_T: the η = 0 update run toward more noise (Song et al. 2021, §4.3, Eq. 13).

    Step from level j to j+1 (level −1 = the data level of ``final_alpha_bar``):
    x_{j+1} = √ᾱ_{j+1}·x̂0 + √(1−ᾱ_{j+1})·ε̂, where ε̂ is the model's ε at the time of level j
    (``model_time="current"``, improved-diffusion) or level j+1 (``"next"``, diffusers
    ``DDIMInverseScheduler``) and x̂0 = (x − √(1−ᾱ_j)·ε̂)/√ᾱ_j. From the data level (ᾱ = 1) both
    evaluate the model at level 0 and take x̂0 = x. With a constant x0-prediction (point-mass data)
    "current" inverts :func:`ddim_sample` (η = 0) exactly; otherwise it differs by the
    discretization error.

    Parameters
    ----------
    start, stop : int
        Levels to run between (default: −1 -> n−1, data to x_T).

    Returns
    -------
    array
        x at level ``stop`` (x_T by default).
    """
    sched = sampling_schedule(schedule, steps, spacing)
    check_choice("model_time", model_time, MODEL_TIMES, "inversion model-time convention")
    n = sched.num_timesteps
    start = check_int("start", start, minimum=-1)
    stop = n - 1 if stop is None else check_int("stop", stop, minimum=0)
    if stop > n - 1 or start >= stop:
        fail("stop", stop, f"expected -1 <= start < stop <= n-1 with n={n} (start={start})")
    final = _final_level(sched, final_alpha_bar, base_schedule)
    x = x0
    total = stop - start
    for k, j in enumerate(range(start, stop)):
        cur = _level(sched, j, final)
        nxt = _level(sched, j + 1, final)
        if j < 0 or model_time == "next":
            # the model's ε at level j+1 (or at level 0 from the data level), x̂0 from level j
            _, eps = _predictions(model, x, sched, j + 1, mean_type=mean_type, var_type=var_type,
                                  clip_x0=False, denoised_fn=None, eps_from_clipped_x0=True)
            pred_x0 = (x - math.sqrt(cur[1]) * eps) / math.sqrt(cur[0])
            if clip_x0 or denoised_fn is not None:
                xp = array_namespace(x)
                if denoised_fn is not None:
                    pred_x0 = denoised_fn(pred_x0)
                if clip_x0:
                    pred_x0 = xp.clip(pred_x0, -1.0, 1.0)
        else:
            pred_x0, eps = _predictions(model, x, sched, j, mean_type=mean_type, var_type=var_type,
                                        clip_x0=clip_x0, denoised_fn=denoised_fn,
                                        eps_from_clipped_x0=True)
        x = math.sqrt(nxt[0]) * pred_x0 + math.sqrt(nxt[1]) * eps
        call_progress(progress, k + 1, total)
    return x


# Deprecated names (one release): the sampler loops are sample_<registered name>.
ddpm_sample = sample_ddpm
ddim_sample = sample_ddim
ddim_stochastic_sample = sample_ddim_stochastic
