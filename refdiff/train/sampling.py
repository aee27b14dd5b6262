"""Sampling for training runs and ``refdiff sample``: run a registered sampler with a network's model function.

The sampler mathematics lives in ``refdiff.samplers`` (its registry) and ``refdiff.diffusion``;
this module only wires a network trained on a discrete schedule to them:

* family ``"discrete"`` (``ddpm``, ``ddim``, ``ddim_stochastic``): the host training schedule is
  respaced to ``steps`` steps (``spacing``), moved next to the data, and passed as ``schedule``;
  the sampler calls the network with training-schedule indices (``timestep_map``);
* families ``"vp"``, ``"karras"`` and ``"sde"``: through the bridges of
  ``refdiff.samplers.adapters`` — the network as a model of DPM-Solver's continuous time on
  ``NoiseScheduleVP.discrete`` of the training schedule (t_n = (n+1)/N for index n; ``steps``
  model evaluations), as a Karras denoiser D(x; σ) (Karras et al. 2022, Eq. 7), or as the score
  −ε̂/σ_t of the linear VP-SDE (Song et al. 2021); the network is called at the nearest
  integer training index.
"""

from __future__ import annotations

import inspect
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from collections.abc import Callable

from .._errors import RefdiffValueError, UnknownNameError, check_int, fail
from .._typing import Array, Model, Namespace

if TYPE_CHECKING:
    from ..samplers import SamplerSpec
    from ..schedules import Schedule

__all__ = ["run_sampler", "available_samplers", "SPACINGS", "check_sampler"]

from ..schedules import SPACINGS

_R = TypeVar("_R")

#: Prediction types the continuous-family bridges take from a discrete network.
_BRIDGED_TYPES = ("eps", "x0", "v")


def _takes(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts the keyword ``name`` (the DPM-Solver wrappers forward ``**options``)."""
    params = inspect.signature(fn).parameters
    return name in params or (
        any(p.kind is p.VAR_KEYWORD for p in params.values())
        and fn.__module__.endswith("dpm_solver")
    )


def _registry() -> ModuleType:
    from .. import samplers

    return samplers


#: Sampler families a network trained on discrete timesteps can drive (the others through the
#: bridges of ``refdiff.samplers.adapters``: Karras denoiser, score function).
FAMILIES = ("discrete", "vp", "karras", "sde")
#: Registered samplers of those families that a VP-trained network cannot drive.
EXCLUDED = {"ncsn_annealed_langevin": "it runs over the noise levels of a variance-exploding SDE"}


def available_samplers() -> list[str]:
    """Names accepted by :func:`run_sampler`: every registered sampler of :data:`FAMILIES`."""
    reg = _registry()
    return sorted(n for fam in FAMILIES for n in reg.list_samplers(fam) if n not in EXCLUDED)


def check_sampler(name: str, *, steps: int, T: int, spacing: str = "trailing") -> str:
    """Raise unless ``name``, ``steps`` and ``spacing`` can sample a network trained on T steps."""
    if name not in available_samplers():
        raise UnknownNameError(
            f"sampler={name!r} is not a sampler for a network trained on discrete "
            f"timesteps; allowed: {', '.join(map(repr, available_samplers()))}"
        )
    steps = check_int("steps", steps, minimum=1)
    if steps > T:
        fail(
            "steps",
            steps,
            f"expected at most T={T} sampler steps (the diffusion steps the network "
            "was trained with)",
        )
    if spacing not in SPACINGS:
        raise UnknownNameError(
            f"spacing={spacing!r} is not a known timestep spacing; allowed: "
            f"{', '.join(map(repr, SPACINGS))}"
        )
    return name


def _respaced(schedule: Schedule, steps: int, spacing: str) -> Schedule:
    """The host schedule respaced to ``steps`` steps (``sections``: improved-diffusion's even
    spacing over [0, T-1] with both ends kept, ``space_timesteps(T, "N")``)."""
    from .. import schedules
    from ..samplers.discrete import sampling_schedule

    if spacing == "sections":
        return (
            schedule if steps == schedule.num_timesteps else schedules.respace(schedule, str(steps))
        )
    return sampling_schedule(schedule, steps, spacing)


def respaced(schedule: Schedule, steps: int, spacing: str = "trailing") -> Schedule:
    """Deprecated: the host schedule respaced to ``steps`` steps; use
    ``refdiff.samplers.discrete.sampling_schedule`` (kept for one release)."""
    return _respaced(schedule, steps, spacing)


def _accepted(fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params}


#: Options a sampler may not take; dropped (at these neutral values) when a wrapper with
#: ``**options`` passes them to a loop without them.
_NEUTRAL = {
    "eta": 0.0,
    "callback": None,
    "progress": None,
    "clip_x0": None,
    "var_type": None,
    "correcting_x0_fn": None,
}


def _call(fn: Callable[..., _R], *args: Any, **options: Any) -> _R:
    """``fn(*args, **options)``, dropping neutral options the loop turns out not to take."""
    while True:
        try:
            return fn(*args, **options)
        except TypeError as exc:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            key = m.group(1) if m else None
            if (
                key not in options
                or key not in _NEUTRAL
                or (_NEUTRAL[key] is not None and options[key] != _NEUTRAL[key])
            ):
                raise
            options = {k: v for k, v in options.items() if k != key}


def run_sampler(
    name: str,
    model: Model,
    schedule: Schedule,
    x_T: Array,
    *,
    steps: int,
    noise_sampler: Callable[[], Array],
    eta: float = 0.0,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = True,
    spacing: str = "trailing",
    progress: Callable | None = None,
    callback: Callable | None = None,
    require_finite: bool = True,
) -> Array:
    """Sample from ``model(x_t, t)`` (t: the network's timestep indices) starting at ``x_T``.

    Parameters
    ----------
    name : a registered sampler of the ``discrete`` or ``vp`` family.
    schedule : the host (float64 NumPy) training schedule.
    steps : sampler steps (discrete family: the respaced schedule's length; vp family: NFE).
    noise_sampler : ``noise_sampler() -> array`` of x_T's shape (stochastic samplers).
    eta, mean_type, var_type, clip_x0 : passed to the sampler where it takes them.
    spacing : respacing of the discrete family (``SPACINGS``).
    callback : per-step ``callback(info)`` for samplers that take one (e.g.
        ``refdiff.samplers.check_finite()``).
    require_finite : raise if the returned sample is not finite (default).

    Raises
    ------
    RefdiffValueError
        ``steps`` above the schedule's T, or a sample that is not finite.
    """
    from .._xp import array_namespace

    reg = _registry()
    spec = reg.get_sampler(name)  # UnknownNameError lists the registered ones
    check_sampler(name, steps=steps, T=schedule.num_timesteps, spacing=spacing)
    xp = array_namespace(x_T)
    out = _run(
        spec,
        model,
        schedule,
        x_T,
        xp,
        steps=steps,
        noise_sampler=noise_sampler,
        eta=eta,
        mean_type=mean_type,
        var_type=var_type,
        clip_x0=clip_x0,
        spacing=spacing,
        progress=progress,
        callback=callback,
    )
    if require_finite and not bool(xp.all(xp.isfinite(out))):
        raise RefdiffValueError(
            f"sampler={name!r} returned non-finite values (NaN or inf): the "
            "network's output is not finite; check the checkpoint's weights"
        )
    return out


def _run(
    spec: SamplerSpec,
    model: Model,
    schedule: Schedule,
    x_T: Array,
    xp: Namespace,
    *,
    steps: int,
    noise_sampler: Callable[[], Array],
    eta: float,
    mean_type: str,
    var_type: str,
    clip_x0: bool,
    spacing: str,
    progress: Callable | None,
    callback: Callable | None,
) -> Array:
    from .._xp import device_of

    name = spec.name if hasattr(spec, "name") else "sampler"
    if spec.family == "discrete":
        host = _respaced(schedule, steps, spacing)
        sched = host.to(xp, device=device_of(x_T), dtype=x_T.dtype)
        options: dict[str, Any] = {
            "eta": eta,
            "mean_type": mean_type,
            "var_type": var_type,
            "clip_x0": clip_x0,
            "progress": progress,
            "callback": callback,
        }
        return _call(
            spec.fn,
            model,
            x_T,
            schedule=sched,
            noise=lambda k: noise_sampler(),
            **_accepted(spec.fn, options),
        )
    if spec.family in ("vp", "karras", "sde"):
        from ..samplers.adapters import sample_with_discrete_model

        if mean_type not in _BRIDGED_TYPES:
            raise RefdiffValueError(
                f"sampler={name!r} needs an eps, x0 or v network; this one predicts "
                f"mean_type={mean_type!r}"
            )
        options = {
            k: v for k, v in (("callback", callback), ("progress", progress)) if v is not None
        }
        if clip_x0 and _takes(spec.fn, "correcting_x0_fn"):
            options["correcting_x0_fn"] = lambda x0, t: xp.clip(x0, -1.0, 1.0)
        return sample_with_discrete_model(
            name,
            model,
            x_T,
            schedule=schedule,
            steps=steps,
            prediction_type=mean_type,
            noise=lambda k: noise_sampler(),
            **options,
        )
    raise RefdiffValueError(
        f"sampler={name!r} belongs to the {spec.family!r} family, which needs a continuous-time "
        "denoiser or score function; a network trained on discrete timesteps samples with: "
        + ", ".join(available_samplers())
    )
