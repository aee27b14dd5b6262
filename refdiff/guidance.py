"""Guidance: classifier guidance (mean shift and score), classifier-free guidance, ILVR, EGSDE, Langevin.

* Classifier guidance — Dhariwal & Nichol (2021), "Diffusion Models Beat GANs", Algorithm 1
  (``condition_mean``: μ + Σ·∇ log p(y|x_t), after Sohl-Dickstein et al. 2015) and Algorithm 2
  (``condition_score``: ε − √(1−ᾱ_t)·∇ log p(y|x_t), after Song et al. 2021). As in
  guided-diffusion, a classifier scale is folded into the gradient (``scale=``).
* Classifier-free guidance — Ho & Salimans (2021). Two weight conventions by name:
  ``"guidance_scale"`` ε_u + s(ε_c − ε_u), s = 1 is no guidance (diffusers, DPM-Solver, Imagen's
  w); ``"ho_salimans"`` (1 + w)ε_c − wε_u, w = 0 is no guidance (Ho & Salimans 2021, Eq. 6). They
  agree when s = 1 + w. Guidance rescale: Lin et al. (2023), "Common Diffusion Noise Schedules and
  Sample Steps are Flawed", Eqs. 15–16.
* ILVR — Choi et al. (2021), "ILVR: Conditioning Method for Denoising Diffusion Probabilistic
  Models", Algorithm 1: after each step, x_{t−1} ← φ_N(y_{t−1}) + x'_{t−1} − φ_N(x'_{t−1}).
* EGSDE — Zhao et al. (2022), "EGSDE: Unpaired Image-to-Image Translation via Energy-Guided
  Stochastic Differential Equations", Eq. 7: the reverse SDE with score s(x, t) − ∇_x E(x, y0, t)
  for a user-supplied energy, started from the source image perturbed to time t_start.
* Langevin dynamics for a time-independent score — Welling & Teh (2011); Song & Ermon (2019),
  Eq. 4: x ← x + (ε/2)∇ log p(x) + √ε z.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import RefdiffShapeError, check_choice, check_int, check_real, fail
from ._typing import Array, Noise
from ._xp import array_namespace, device_of
from .parameterizations import coefficient, mu_from_x0, x0_from_eps

if TYPE_CHECKING:
    from .diffusion import PMeanVar
    from .samplers._common import StepInfo
    from .schedules import Schedule

__all__ = [
    "CFG_CONVENTIONS",
    "check_scale",
    "condition_mean",
    "condition_score",
    "condition_eps",
    "cfg_combine",
    "cfg_weight",
    "rescale_cfg",
    "cfg_model",
    "low_pass",
    "ilvr_refine",
    "ilvr_sample",
    "egsde_score",
    "egsde_step",
    "egsde_sample",
    "langevin_step",
    "langevin_dynamics",
]

CFG_CONVENTIONS = ("guidance_scale", "ho_salimans")


def check_scale(value: float, name: str = "guidance_scale") -> float:
    """A finite real guidance scale (any sign), or a clear error naming it."""
    if isinstance(value, bool):
        fail(name, value, "expected a finite real number")
    return check_real(name, value)


def _same(name: str, a: Array, x: Array) -> None:
    if tuple(getattr(a, "shape", ())) != tuple(x.shape):
        raise RefdiffShapeError(
            f"{name} has shape {tuple(getattr(a, 'shape', ()))} but x has "
            f"shape {tuple(x.shape)}; they must match"
        )


# --------------------------------------------------------------------------------------------
# Classifier guidance
# --------------------------------------------------------------------------------------------


def condition_mean(
    mean: Array, variance: Array | float, grad: Array, *, scale: float = 1.0
) -> Array:
    """μ̂ = μ + s·Σ·∇_x log p(y|x_t) (Dhariwal & Nichol 2021, Algorithm 1)."""
    scale = check_scale(scale, "scale")
    _same("grad", grad, mean)
    return mean + variance * (grad * scale if scale != 1.0 else grad)


def condition_eps(
    pred_eps: Array, grad: Array, sigma: Array | float, *, scale: float = 1.0
) -> Array:
    """ε̂ = ε − σ_t·s·∇_x log p(y|x_t) (Dhariwal & Nichol 2021, Algorithm 2; σ_t = √(1−ᾱ_t))."""
    scale = check_scale(scale, "scale")
    _same("grad", grad, pred_eps)
    return pred_eps - sigma * (grad * scale if scale != 1.0 else grad)


def condition_score(
    schedule: Schedule,
    p_mean_var: PMeanVar,
    x_t: Array,
    t: Array | int,
    grad: Array,
    *,
    scale: float = 1.0,
) -> PMeanVar:
    """Guide a discrete step by score: ε̂ = ε(x̂0) − √(1−ᾱ_t)·s·g, then x̂0 and μ from ε̂ (Dhariwal & Nichol 2021, Alg. 2).

    ``p_mean_var`` is a :class:`refdiff.diffusion.PMeanVar` at sampling index t; its ``pred_eps``
    is the ε to guide. Returns a PMeanVar with the guided mean, pred_x0 and pred_eps (variance
    unchanged), as guided-diffusion's ``condition_score``.
    """
    eps = condition_eps(
        p_mean_var.pred_eps,
        grad,
        coefficient(schedule, "sqrt_one_minus_alphas_cumprod", t, x_t),
        scale=scale,
    )
    pred_x0 = x0_from_eps(schedule, x_t, t, eps)
    mean = mu_from_x0(schedule, x_t, t, pred_x0)
    return p_mean_var._replace(mean=mean, pred_x0=pred_x0, pred_eps=eps)


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------


def cfg_weight(scale: float, convention: str = "guidance_scale") -> float:
    """The guidance_scale s equivalent to ``scale`` under ``convention`` (s = 1 + w for "ho_salimans")."""
    check_choice("convention", convention, CFG_CONVENTIONS, "classifier-free guidance convention")
    scale = check_scale(scale)
    return scale if convention == "guidance_scale" else 1.0 + scale


def cfg_combine(
    uncond: Array, cond: Array, scale: float, *, convention: str = "guidance_scale"
) -> Array:
    """Classifier-free guidance: ε_u + s(ε_c − ε_u) or (1 + w)ε_c − wε_u (Ho & Salimans 2021, Eq. 6)."""
    check_choice("convention", convention, CFG_CONVENTIONS, "classifier-free guidance convention")
    scale = check_scale(scale)
    _same("cond", cond, uncond)
    w = scale - 1.0 if convention == "guidance_scale" else scale
    # ε_c + w(ε_c − ε_u): the same value in both conventions, and exactly ε_c without guidance
    return cond + w * (cond - uncond)


def rescale_cfg(guided: Array, cond: Array, *, phi: float) -> Array:
    """x = φ·guided·std(cond)/std(guided) + (1 − φ)·guided, std per sample (Lin et al. 2023, Eqs. 15–16).

    The std is taken over all non-batch axes; its normalisation (N or N−1) cancels in the ratio.
    """
    xp = array_namespace(guided, cond)
    phi = check_real("phi", phi, lo=0.0, hi=1.0)
    _same("cond", cond, guided)
    axes = tuple(range(1, guided.ndim))
    std_c = xp.std(cond, axis=axes, keepdims=True)
    std_g = xp.std(guided, axis=axes, keepdims=True)
    if bool(xp.any(std_g == 0)):
        fail("guided", guided, "a sample has zero spread; guidance rescale divides by its std")
    return phi * (guided * (std_c / std_g)) + (1.0 - phi) * guided


def cfg_model(
    model: Callable[[Array, Array, Any], Array],
    *,
    cond: object,
    uncond: object,
    scale: float,
    convention: str = "guidance_scale",
    rescale: float = 0.0,
) -> Callable[[Array, Array], Array]:
    """Wrap ``model(x, t, c)`` into a guided ``model(x, t)`` (Ho & Salimans 2021; rescale: Lin et al. 2023)."""
    check_choice("convention", convention, CFG_CONVENTIONS, "classifier-free guidance convention")
    scale = check_scale(scale)
    rescale = check_real("rescale", rescale, lo=0.0, hi=1.0)

    def guided(x: Array, t: Array) -> Array:
        e_c = model(x, t, cond)
        e_u = model(x, t, uncond)
        out = cfg_combine(e_u, e_c, scale, convention=convention)
        return rescale_cfg(out, e_c, phi=rescale) if rescale > 0 else out

    return guided


# --------------------------------------------------------------------------------------------
# ILVR
# --------------------------------------------------------------------------------------------


def low_pass(x: Array, factor: int) -> Array:
    """φ_N(x): block-average down by N on every spatial axis (axes 2…), then nearest-neighbour up (a projection, φ∘φ = φ).

    ILVR uses a bicubic resizer; any linear projection fits Algorithm 1 (pass ``low_pass=`` to
    :func:`ilvr_sample` to use another).
    """
    xp = array_namespace(x)
    N = check_int("factor", factor, minimum=1)
    if x.ndim < 3:
        fail("x", x, "low_pass needs (B, C, *spatial) with at least one spatial axis")
    spatial = tuple(x.shape[2:])
    if any(s % N for s in spatial):
        fail("factor", factor, f"every spatial size {spatial} must be divisible by it")
    if N == 1:
        return x
    blocked = tuple(x.shape[:2])
    for s in spatial:
        blocked += (s // N, N)
    xb = xp.reshape(x, blocked)
    block_axes = tuple(3 + 2 * k for k in range(len(spatial)))
    m = xp.mean(xb, axis=block_axes, keepdims=True)
    return xp.reshape(xp.broadcast_to(m, blocked), tuple(x.shape))


def ilvr_refine(
    x_prev: Array,
    y_prev: Array,
    *,
    factor: int = 4,
    low_pass_fn: Callable[[Array], Array] | None = None,
) -> Array:
    """x_{t−1} = φ_N(y_{t−1}) + (x'_{t−1} − φ_N(x'_{t−1})) (Choi et al. 2021, Algorithm 1).

    The high-pass part x' − φ_N(x') is formed first: it is small where x' is smooth, and exactly
    0 for N = 1, so the result is φ_N(y) itself there; adding φ_N(y) to x' first would round it
    to x''s precision (an error of eps·|x'| that the difference does not cancel).
    """
    _same("y_prev", y_prev, x_prev)
    phi = (lambda a: low_pass(a, factor)) if low_pass_fn is None else low_pass_fn
    return phi(y_prev) + (x_prev - phi(x_prev))


def ilvr_sample(
    model: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    schedule: Schedule,
    reference: Array,
    noise: Noise,
    reference_noise: Noise,
    factor: int = 4,
    low_pass_fn: Callable[[Array], Array] | None = None,
    range_t: int = -1,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = False,
    t0: str = "clipped",
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """ILVR: DDPM ancestral sampling refined toward the low frequencies of ``reference`` (Choi et al. 2021, Algorithm 1).

    Parameters
    ----------
    reference : array
        The reference image y (x_T's shape).
    noise, reference_noise : array or callable
        Draws for the DDPM steps and for y_{t−1} = √ᾱ_{t−1}·y + √(1−ᾱ_{t−1})·ξ (shape
        (n,) + x_T.shape each). The last step uses y itself (ᾱ = 1) and adds no noise.
    factor, low_pass_fn
        φ_N: :func:`low_pass` with ``factor``, or your own linear filter.
    range_t : int
        Refine only while the training timestep t of the step is > range_t (−1: every step, as
        Algorithm 1; the ILVR code's ``range_t`` uses the same test).
    callback, progress
        Per-step hooks, as :func:`refdiff.samplers.discrete.sample_ddpm`.
    """
    from .diffusion import q_sample
    from .samplers._common import StepInfo, draw_noise, step_reporter
    from .samplers.discrete import ddpm_coefficients, p_sample, sampling_schedule

    sched = sampling_schedule(schedule, None)
    _same("reference", reference, x_T)
    range_t = check_int("range_t", range_t, minimum=-1)
    report = step_reporter(callback, progress)
    n = sched.num_timesteps
    tmap = [int(v) for v in sched.timestep_map]
    sab = [float(v) for v in sched.sqrt_alphas_cumprod]
    s1m = [float(v) for v in sched.sqrt_one_minus_alphas_cumprod]
    plan = [
        (i, tmap[i], ddpm_coefficients(sched, i, var_type=var_type, t0=t0))
        for i in range(n - 1, -1, -1)
    ]
    xp = array_namespace(x_T)
    dev = device_of(x_T)
    x = x_T
    for k, (i, t, pc) in enumerate(plan):
        t_model = xp.full((x.shape[0],), t, dtype=xp.int64, device=dev)
        out = model(x, t_model)
        add = i > 0
        z = draw_noise(noise, k, x) if add else None
        x_new, pmv = p_sample(
            out,
            x,
            i,
            schedule=sched,
            mean_type=mean_type,
            var_type=var_type,
            clip_x0=clip_x0,
            t0=t0,
            noise=z,
            add_noise=add,
            coefficients=pc,
        )
        if report is not None:
            report(StepInfo(k, n, x, pmv.pred_x0, t=t))
        x = x_new
        if t > range_t:
            if i > 0:
                xi = draw_noise(reference_noise, k, x, name="reference_noise")
                y = q_sample(
                    sched, reference, i - 1, noise=xi, coefficients=(sab[i - 1], s1m[i - 1])
                )
            else:
                y = reference
            x = ilvr_refine(x, y, factor=factor, low_pass_fn=low_pass_fn)
    return x


# --------------------------------------------------------------------------------------------
# EGSDE
# --------------------------------------------------------------------------------------------


def egsde_score(score: Array, energy_grad: Array) -> Array:
    """s̃(x, t) = s(x, t) − ∇_x E(x, y0, t) (Zhao et al. 2022, Eq. 7)."""
    _same("energy_grad", energy_grad, score)
    return score - energy_grad


def egsde_step(
    x: Array, score: Array, energy_grad: Array, *, beta: float, noise: Array | None = None
) -> Array:
    """x_{t−1} = (x + β_t·s̃)/√(1−β_t) + √β_t·z: the VP ancestral predictor (Song et al. 2021, Eq. 47) with s̃ = s − ∇E (Zhao et al. 2022, Eq. 7)."""
    beta = check_real("beta", beta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    s = egsde_score(score, energy_grad)
    out = (x + beta * s) / math.sqrt(1.0 - beta)
    if noise is not None:
        _same("noise", noise, x)
        out = out + math.sqrt(beta) * noise
    return out


def egsde_sample(
    model: Callable[[Array, Array], Array],
    y0: Array,
    *,
    schedule: Schedule,
    energy_grad: Callable[[Array, Array], Array],
    t_start: int,
    noise: Noise,
    start_noise: Array,
    mean_type: str = "eps",
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """EGSDE: perturb the source y0 to t_start, then run the energy-guided reverse VP SDE to t = 0 (Zhao et al. 2022, Algorithm 1).

    Parameters
    ----------
    model : callable
        ``model(x, t)`` predicting ``mean_type`` ("eps", "x0", "v" or "score") on ``schedule``
        (not respaced: every index from t_start down to 0 is a step).
    energy_grad : callable
        ``energy_grad(x, t) -> ∇_x E(x, y0, t)`` (the weighted sum of the realistic and faithful
        expert energies, e.g. λ_s ∇E_s − λ_i ∇E_i; the sign convention is the user's).
    t_start : int
        The perturbation index M (EGSDE uses M = 0.5·T).
    noise, start_noise : array or callable / array
        Draws for the reverse steps ((t_start + 1,) + y0.shape; the last step adds none) and the
        draw of x_M = √ᾱ_M·y0 + √(1−ᾱ_M)·ξ.
    callback, progress
        Per-step hooks (``denoised`` is None: the step uses the score directly).
    """
    from .diffusion import q_sample
    from .parameterizations import eps_from_x0_at, level_coefficients, x0_from_output_at
    from .samplers._common import StepInfo, draw_noise, step_reporter

    check_choice("mean_type", mean_type, ("eps", "x0", "v", "score"), "model kind")
    T = schedule.num_timesteps
    t_start = check_int("t_start", t_start, minimum=0)
    if t_start >= T:
        fail("t_start", t_start, f"expected an index in [0, {T})")
    _same("start_noise", start_noise, y0)
    report = step_reporter(callback, progress)
    plan = [
        (i, level_coefficients(schedule, i), float(schedule.betas[i]))
        for i in range(t_start, -1, -1)
    ]
    xp = array_namespace(y0)
    dev = device_of(y0)
    c0 = plan[0][1]
    x = q_sample(
        schedule,
        y0,
        t_start,
        noise=start_noise,
        coefficients=(c0.sqrt_alphas_cumprod, c0.sqrt_one_minus_alphas_cumprod),
    )
    for k, (i, c, beta) in enumerate(plan):
        t = xp.full((x.shape[0],), i, dtype=xp.int64, device=dev)
        out = model(x, t)
        _same("model output", out, x)
        if mean_type == "score":
            s = out
        else:
            eps = (
                out
                if mean_type == "eps"
                else eps_from_x0_at(x, x0_from_output_at(out, x, c, mean_type), c)
            )
            s = -eps / c.sqrt_one_minus_alphas_cumprod
        g = energy_grad(x, t)
        z = draw_noise(noise, k, x) if i > 0 else None
        if report is not None:
            report(StepInfo(k, t_start + 1, x, None, t=i))
        x = egsde_step(x, s, g, beta=beta, noise=z)
    return x


# --------------------------------------------------------------------------------------------
# Langevin dynamics
# --------------------------------------------------------------------------------------------


def langevin_step(x: Array, score: Array, *, step_size: float, noise: Array) -> Array:
    """x ← x + (ε/2)·∇ log p(x) + √ε·z (Song & Ermon 2019, Eq. 4; Welling & Teh 2011)."""
    eps = check_real("step_size", step_size, lo=0.0, lo_open=True)
    _same("score", score, x)
    _same("noise", noise, x)
    return x + (0.5 * eps) * score + math.sqrt(eps) * noise


def langevin_dynamics(
    score_fn: Callable[[Array], Array],
    x: Array,
    *,
    step_size: float,
    n_steps: int,
    noise: Noise,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """n_steps of Langevin dynamics for a time-independent score ``score_fn(x)`` (Song & Ermon 2019, Eq. 4).

    ``noise``: shape (n_steps,) + x.shape or a callable ``noise(k)``. As ε → 0 and n_steps → ∞ the
    law of x tends to p (for finite ε it is the stationary law of the discretised chain).
    """
    from .samplers._common import StepInfo, draw_noise, step_reporter

    check_real("step_size", step_size, lo=0.0, lo_open=True)
    n = check_int("n_steps", n_steps, minimum=1)
    report = step_reporter(callback, progress)
    for k in range(n):
        s = score_fn(x)
        if report is not None:
            report(StepInfo(k, n, x, None))
        x = langevin_step(x, s, step_size=step_size, noise=draw_noise(noise, k, x))
    return x
