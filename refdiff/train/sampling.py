"""Sampling for training runs and ``refdiff sample``: run a registered sampler with a network's model function.

The sampler mathematics lives in ``refdiff.samplers`` (its registry) and ``refdiff.diffusion``;
this module only wires a network trained on a discrete schedule to them:

* family ``"discrete"`` (``ddpm``, ``ddim``, ``ddim_stochastic``): the host training schedule is
  respaced to ``steps`` steps (``spacing``), moved next to the data, and passed as ``schedule``;
  the sampler calls the network with training-schedule indices (``timestep_map``);
* family ``"vp"`` (``dpm_solver_*``, ``dpmpp_*``): ``NoiseScheduleVP.discrete`` of the training
  schedule, with ``steps`` model evaluations; the network sees the index-scale time
  t·N' − 1 (so t_n = (n+1)/N' maps to index n, whatever T is).

Samplers of the ``"karras"`` and ``"sde"`` families take a σ-space denoiser or a score function of
continuous time; a network trained on discrete timesteps is not wired to them here.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .._errors import RefdiffValueError, UnknownNameError, check_int

__all__ = ["run_sampler", "available_samplers", "respaced", "SPACINGS"]

SPACINGS = ("trailing", "leading", "linspace", "ddim", "sections")
_MODEL_TYPES = {"eps": "noise", "x0": "x_start", "v": "v"}


def _registry():
    from .. import samplers

    return samplers


def available_samplers() -> list[str]:
    """Names accepted by :func:`run_sampler`: the registry's discrete-time and VP-solver samplers."""
    reg = _registry()
    return sorted(set(reg.list_samplers("discrete")) | set(reg.list_samplers("vp")))


def respaced(schedule, steps: int, spacing: str = "trailing"):
    """The host schedule respaced to ``steps`` steps.

    ``trailing`` (default; Lin et al. 2023), ``leading``, ``linspace``: diffusers' spacings;
    ``ddim``: improved-diffusion's ``"ddimN"`` stride; ``sections``: improved-diffusion's even
    spacing over [0, T-1] with both ends kept (``space_timesteps(T, "N")``).
    """
    from .. import schedules

    if spacing not in SPACINGS:
        raise UnknownNameError(f"spacing={spacing!r} is not a known timestep spacing; allowed: "
                               f"{', '.join(map(repr, SPACINGS))}")
    if steps >= schedule.num_timesteps:
        return schedule
    if spacing == "sections":
        return schedules.respace(schedule, str(steps))
    if spacing == "ddim":
        return schedules.respace(schedule, f"ddim{steps}")
    return schedules.respace(schedule, steps, spacing=spacing)


def _accepted(fn: Callable, options: dict) -> dict:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params}


def run_sampler(name: str, model: Callable, schedule, x_T, *, steps: int, noise_sampler: Callable,
                eta: float = 0.0, mean_type: str = "eps", var_type: str = "fixed_small",
                clip_x0: bool = True, spacing: str = "trailing",
                progress: Callable | None = None) -> Any:
    """Sample from ``model(x_t, t)`` (t: the network's timestep indices) starting at ``x_T``.

    Parameters
    ----------
    name : a registered sampler of the ``discrete`` or ``vp`` family.
    schedule : the host (float64 NumPy) training schedule.
    steps : sampler steps (discrete family: the respaced schedule's length; vp family: NFE).
    noise_sampler : ``noise_sampler() -> array`` of x_T's shape (stochastic samplers).
    eta, mean_type, var_type, clip_x0 : passed to the sampler where it takes them.
    spacing : respacing of the discrete family (:func:`respaced`).
    """
    from .._xp import array_namespace, device_of

    steps = check_int("steps", steps, minimum=1)
    reg = _registry()
    spec = reg.get_sampler(name)            # UnknownNameError lists the registered ones
    xp = array_namespace(x_T)
    if spec.family == "discrete":
        host = respaced(schedule, steps, spacing)
        sched = host.to(xp, device=device_of(x_T), dtype=x_T.dtype)
        options = {"eta": eta, "mean_type": mean_type, "var_type": var_type, "clip_x0": clip_x0,
                   "progress": progress}
        return spec.fn(model, x_T, schedule=sched, noise=lambda k: noise_sampler(),
                       **_accepted(spec.fn, options))
    if spec.family == "vp":
        from ..samplers.dpm_solver import NoiseScheduleVP

        if mean_type not in _MODEL_TYPES:
            raise RefdiffValueError(f"sampler={name!r} needs an eps, x0 or v network; this one predicts "
                                    f"mean_type={mean_type!r}")
        ns = NoiseScheduleVP.discrete(schedule)
        channels = x_T.shape[1]

        def net(x, t):
            out = model(x, t)
            return out[:, :channels] if out.shape[1] != channels else out   # drop variance channels

        options = {"model_type": _MODEL_TYPES[mean_type], "model_time": lambda t: t * ns.total_N - 1.0,
                   "progress": progress}
        if clip_x0:
            options["correcting_x0_fn"] = lambda x0, t: xp.clip(x0, -1.0, 1.0)
        return spec.fn(net, x_T, noise_schedule=ns, steps=steps, **options)
    raise RefdiffValueError(
        f"sampler={name!r} belongs to the {spec.family!r} family, which needs a continuous-time "
        "denoiser or score function; a network trained on discrete timesteps samples with: "
        + ", ".join(available_samplers()))
