"""Samplers, registered by name so tools (the conformance suite, the CLI) can enumerate them.

Every sampler is a pure function of its inputs with explicit randomness. A registered sampler has
a *family* that fixes its calling convention:

* ``"discrete"`` — ``fn(model, x_T, *, schedule, noise=None, **options)`` where
  ``model(x, t) -> output`` takes integer timesteps of the (possibly respaced) schedule, mapped to
  the original indices through ``schedule.timestep_map`` before the call; ``noise`` is an array of
  shape (num_steps,) + x_T.shape or a callable ``noise(i) -> array`` (ignored by deterministic
  samplers).
* ``"karras"`` — ``fn(denoiser, x, *, sigmas, noise=None, **options)`` with the denoiser
  D(x, σ) ≈ E[x0 | x] on the variance-exploding scale x = x0 + σ z (Karras et al. 2022) and a
  decreasing σ grid (last entry may be 0).
* ``"vp"`` — ``fn(model, x_T, *, noise_schedule, steps, noise=None, **options)`` for DPM-Solver
  style solvers over a VP noise schedule α_t, σ_t, λ_t in continuous time.
* ``"sde"`` — ``fn(score_fn, x_T, *, sde, steps, noise=None, **options)`` for the SDE/ODE
  samplers of Song et al. 2021 with ``score_fn(x, t) -> ∇ log p_t(x)``.
* ``"flow"`` — ``fn(model, x_T, *, noise_schedule, steps, noise=None, **options)`` for flow
  matching / rectified flow on x_t = (1 − t)·x0 + t·ε with a
  :class:`~refdiff.samplers.flow.FlowSchedule` and ``model(x, t)`` predicting the velocity ε − x0.

``noise`` may be an array holding every draw (the first axis indexes the draws) or a callable
``noise(i) -> array`` returning the i-th standard-normal draw of x's shape.

Every loop takes ``callback=`` — ``callback(info)`` with a :class:`StepInfo` (step index, state,
x0 prediction, t or σ) at each step, k-diffusion's hook — and ``progress=`` (``progress(done,
total)``, built on the same hook). :func:`check_finite` makes a callback that stops a loop at the
first non-finite step.

Naming: the registered sampler ``name`` is the function ``sample_<name>`` of its module (``+``
spelled ``p``), and every one is importable from here: ``from refdiff.samplers import sample_ddim``.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable

from .._errors import RefdiffError, UnknownNameError
from .._typing import Array
from ._common import StepInfo, check_finite

__all__ = [
    "SamplerSpec",
    "FAMILIES",
    "register_sampler",
    "get_sampler",
    "list_samplers",
    "sample",
    "StepInfo",
    "check_finite",
    "sampler_function_name",
]

FAMILIES = ("discrete", "karras", "vp", "sde", "flow")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its name, family, loop function, and whether it draws noise."""

    name: str
    family: str
    fn: Callable
    stochastic: bool
    order: float | None = None
    step: Callable | None = None
    doc: str = ""


_REGISTRY: dict[str, SamplerSpec] = {}


def register_sampler(
    name: str,
    *,
    family: str,
    stochastic: bool,
    order: float | None = None,
    step: Callable | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator registering a sampler loop under ``name`` (``order``: its convergence order, if deterministic)."""
    if family not in FAMILIES:
        raise UnknownNameError(
            f"family={family!r} is not a known sampler family; allowed: "
            f"{', '.join(map(repr, FAMILIES))}"
        )

    def deco(fn: Callable) -> Callable:
        expected = sampler_function_name(name)
        if fn.__name__ != expected:
            raise RefdiffError(
                f"sampler {name!r} must be the function {expected}, not "
                f"{fn.__name__} (one naming pattern: sample_<name>)"
            )
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = SamplerSpec(name, family, fn, stochastic, order, step, doc)
        globals()[expected] = fn
        return fn

    return deco


def sampler_function_name(name: str) -> str:
    """The function name of the registered sampler ``name``: ``sample_<name>`` with ``+`` as ``p``."""
    return "sample_" + name.replace("+", "p")


def list_samplers(family: str | None = None) -> list[str]:
    """Names of the registered samplers (of one family if given)."""
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler called ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"sampler={name!r} is not a known sampler; allowed: "
            f"{', '.join(map(repr, sorted(_REGISTRY)))}"
        )
    return _REGISTRY[name]


def sample(name: str, model: Callable, x: Array, **kwargs: Any) -> Array:
    """Run the registered sampler ``name`` (see the family conventions in the module docstring)."""
    return get_sampler(name).fn(model, x, **kwargs)


# The built-in sampler modules register themselves on import; they are light (NumPy and the
# reference only), so they load with the package and ``refdiff.samplers.<module>`` always works.
from . import discrete, karras, dpm_solver, score_sde, ode  # noqa: E402,F401  (registration)
from . import adapters  # noqa: E402,F401  (bridges between the families)
from . import unipc, deis, pndm, flow  # noqa: E402,F401  (registration)
from . import karras_dpm, dpm_solver_sde  # noqa: E402,F401  (registration)
