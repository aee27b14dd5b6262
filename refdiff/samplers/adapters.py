"""Bridges between the families: a network trained on a discrete schedule used by every sampler.

A discrete network ``model(x_t, t)`` (t: integer indices of the training schedule, x_t =
√ᾱ_t·x0 + √(1−ᾱ_t)·ε) is the same function as

* a **Karras denoiser** D(x; σ) on the variance-exploding scale x = x0 + σ·z with
  σ_t = √((1−ᾱ_t)/ᾱ_t), since x_t = x/√(1+σ²) (Karras et al. 2022, §2 and Eq. 7 with s(t) =
  1/√(1+σ²); k-diffusion's ``DiscreteEpsDDPMDenoiser`` is the precedent) — :func:`karras_denoiser`;
* a **continuous-time VP model** on DPM-Solver's discrete-time noise schedule, where the time
  t_n = (n+1)/N stands for index n (Lu et al. 2022a, §3.4) — :func:`vp_model`;
* a **score function** of the linear VP-SDE whose discretisation is the schedule (Song et al.
  2021, App. B and D: ∇ log p_t(x) = −ε̂/σ_t, with score_sde's index t·(N−1)) —
  :func:`score_fn`.

:func:`sample_with_discrete_model` runs any registered sampler with such a network through the
right bridge, so the CLI's ``refdiff sample`` offers every sampler.

Every bridge evaluates the network at an integer timestep by default (``timestep="nearest"``:
the training index whose σ (or time) is closest, k-diffusion's ``quantize=True``); with
``timestep="interp"`` it passes the fractional index instead (k-diffusion's ``sigma_to_t``,
linear in log σ), for networks whose time embedding accepts real t.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import numpy as np

from .._errors import RefdiffValueError, check_choice, fail
from .._typing import Array, Namespace, Noise
from .._xp import append_dims, array_namespace, device_of, is_numpy
from ..parameterizations import (
    PREDICTION_TYPES,
    eps_from_prediction,
    prediction_type,
    x0_from_prediction,
)
from ..schedules import Schedule
from . import get_sampler
from ._common import batch_full, host_table_index

__all__ = [
    "TIMESTEP_MODES",
    "karras_denoiser",
    "karras_grid",
    "vp_model",
    "score_fn",
    "sample_with_discrete_model",
]

#: How a bridge turns a continuous σ or t into the network's timestep argument.
TIMESTEP_MODES = ("nearest", "interp")


def _check_schedule(schedule: Schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        fail(
            "schedule",
            schedule,
            "expected the host refdiff.schedules.Schedule the network was trained on",
        )
    return schedule


def _drop_variance(out: Array, x: Array) -> Array:
    """The prediction channels of an output with learned-variance channels appended (B, 2C, ...)."""
    c = x.shape[1] if x.ndim > 1 else None
    if c is not None and out.ndim == x.ndim and out.shape[1] == 2 * c:
        return out[:, :c, ...]
    return out


class _Table:
    """A host float64 table moved once per (namespace, device, dtype) it is used with."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.array(
            values, dtype=np.float64
        )  # a writable copy (torch warns on read-only)
        self._moved: dict = {}

    def like(self, x: Array, xp: Namespace) -> Array:
        try:
            key = (xp, x.dtype, device_of(x))
            hash(key)
        except TypeError:  # an unhashable device or dtype object: key on its text
            key = (xp, str(x.dtype), str(device_of(x)))
        table = self._moved.get(key)
        if table is None:
            table = self._moved[key] = xp.asarray(self.values, dtype=x.dtype, device=device_of(x))
        return table


def _index_from_log(log_value: Array, log_table: Array, mode: str, xp: Namespace) -> Array:
    """The training index (int64) or fractional index (x's dtype) of values on an increasing log table."""
    d = xp.abs(log_value[:, None] - log_table[None, :])
    nearest = xp.argmin(d, axis=1)
    if mode == "nearest":
        return xp.astype(nearest, xp.int64)
    n = log_table.shape[0]
    if n == 1:  # one level: index 0 (no interval to interpolate in)
        return xp.zeros_like(log_value)
    below = xp.sum(xp.astype(log_table[None, :] <= log_value[:, None], xp.int64), axis=1) - 1
    lo = xp.clip(below, 0, n - 2)
    lo_v = xp.take(log_table, lo, axis=0)
    hi_v = xp.take(log_table, lo + 1, axis=0)
    w = xp.clip((log_value - lo_v) / (hi_v - lo_v), 0.0, 1.0)
    return xp.astype(lo, log_value.dtype) + w


def karras_denoiser(
    model: Callable, schedule: Schedule, *, prediction_type: str = "eps", timestep: str = "nearest"
) -> Callable:
    """D(x; σ) from a discrete network: D = x0̂(x/√(1+σ²), t(σ)) (Karras et al. 2022, Eq. 7 with s = 1/√(1+σ²)).

    Parameters
    ----------
    model : callable
        ``model(x_t, t)`` of the discrete family (t: training-schedule indices, shape (B,)).
    schedule : Schedule
        The host training schedule; its σ_t = √((1−ᾱ_t)/ᾱ_t) table maps σ to t.
    prediction_type : {"eps", "x0", "v", "score"}
        What the network predicts (aliases accepted). For ε this is k-diffusion's
        ``DiscreteEpsDDPMDenoiser``: D = x − σ·ε̂; for v its ``DiscreteVDDPMDenoiser``.
    timestep : {"nearest", "interp"}
        The integer index of the nearest σ, or the fractional index linear in log σ.

    Returns
    -------
    callable
        ``denoiser(x, sigma)`` with ``sigma`` of shape (B,) in x's namespace (the Karras family's
        convention).
    """
    sched = _check_schedule(schedule)
    pt = prediction_type_checked(prediction_type)
    check_choice("timestep", timestep, TIMESTEP_MODES, "timestep mode")
    return _KarrasBridge(model, np.log(np.asarray(sched.sigmas, dtype=np.float64)), pt, timestep)


class _KarrasBridge:
    """D(x; σ) of a discrete network (see :func:`karras_denoiser`), with a shared-σ entry point for the loops."""

    def __init__(self, model: Callable, log_sigmas: np.ndarray, pt: str, timestep: str) -> None:
        self.model, self.pt, self.timestep = model, pt, timestep
        self.log_sigmas = _Table(log_sigmas)
        self._log_list = [float(v) for v in log_sigmas]

    def __call__(self, x: Array, sigma: Array) -> Array:
        """D(x; σ) with one σ per sample (σ of shape (B,) in x's namespace)."""
        xp = array_namespace(x)
        if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
            fail("sigma", sigma, f"expected shape ({x.shape[0]},) (one σ per sample)")
        t = _index_from_log(xp.log(sigma), self.log_sigmas.like(sigma, xp), self.timestep, xp)
        sig_b = xp.reshape(sigma, (x.shape[0],) + (1,) * (x.ndim - 1))
        c_in_b = 1.0 / xp.sqrt(1.0 + sig_b * sig_b)
        return self._denoised(x, self.model(x * c_in_b, t), sig_b, c_in_b)

    def at_sigma(self, x: Array, sigma: float) -> Array:
        """D(x; σ) at one host noise level shared by the whole batch: host coefficients, scalar products."""
        log_sigma = float(np.log(np.float64(sigma))) if sigma > 0.0 else -math.inf  # σ = 0: index 0
        t = host_table_index(log_sigma, self._log_list, self.timestep)
        c_in = 1.0 / math.sqrt(1.0 + sigma * sigma)
        xp = array_namespace(x)
        nearest = self.timestep == "nearest"
        t_b = batch_full(x, int(t) if nearest else t, dtype=xp.int64 if nearest else None)
        return self._denoised(x, self.model(x * c_in, t_b), sigma, c_in)

    def _denoised(self, x: Array, raw: Array, sigma: Array | float, c_in: Array | float) -> Array:
        """D = x0̂ of the network output at x·c_in (σ, c_in per sample or one host float)."""
        out = _drop_variance(raw, x)
        if self.pt == "eps":
            return x - sigma * out
        return x0_from_prediction(out, x * c_in, c_in, sigma * c_in, self.pt)


def prediction_type_checked(value: str) -> str:
    """A prediction type the continuous bridges support (ε, x0, v, score)."""
    return prediction_type(value, "prediction_type", PREDICTION_TYPES[:4])


def karras_grid(schedule: Schedule, steps: int, *, rho: float = 7.0) -> np.ndarray:
    """The Karras σ grid (Karras et al. 2022, Eq. 5) between the schedule's σ_min and σ_max, with σ_N = 0 appended."""
    from ..edm import karras_sigmas

    sig = np.asarray(_check_schedule(schedule).sigmas, dtype=np.float64)
    return np.asarray(karras_sigmas(steps, float(sig[0]), float(sig[-1]), rho), dtype=np.float64)


def vp_model(
    model: Callable, schedule: Schedule, *, timestep: str = "nearest"
) -> tuple[Callable[..., Array], Any]:
    """(model_fn, noise_schedule): a discrete network as a model of DPM-Solver's continuous time (Lu et al. 2022a, §3.4).

    The noise schedule is ``NoiseScheduleVP.discrete(schedule)`` (t_n = (n+1)/N for index n), and
    ``model_fn(x, t)`` calls ``model(x, t·N − 1)``, rounded to the nearest index
    (``timestep="nearest"``) or fractional (``"interp"``). The prediction type is unchanged: pass
    it to the vp sampler as ``model_type``.
    """
    from .dpm_solver import NoiseScheduleVP

    sched = _check_schedule(schedule)
    check_choice("timestep", timestep, TIMESTEP_MODES, "timestep mode")
    ns = NoiseScheduleVP.discrete(sched)
    n = float(ns.total_N)

    def model_fn(x: Array, t: Array) -> Array:
        xp = array_namespace(x, t)
        idx = t * n - 1.0
        idx = xp.astype(xp.round(idx), xp.int64) if timestep == "nearest" else idx
        return _drop_variance(model(x, idx), x)

    return model_fn, ns


def _linear_vp_sde(schedule: Schedule) -> Any:
    """The linear VP-SDE whose DDPM discretisation is ``schedule`` (Song et al. 2021, App. B: β_i = β̄_i/N)."""
    from ..sde import VPSDE

    betas = np.asarray(schedule.betas, dtype=np.float64)
    N = betas.size
    lin = np.linspace(betas[0], betas[-1], N)
    if (
        N < 2
        or not np.allclose(betas, lin, rtol=1e-12, atol=0.0)
        or int(schedule.timestep_map[-1]) != N - 1
    ):
        fail(
            "schedule",
            schedule,
            "the score-SDE samplers need the linear VP-SDE, whose "
            "discretisation is a linear β schedule of the full length; this schedule is not "
            "linear (use a discrete, karras or vp sampler)",
        )
    return VPSDE(beta_min=float(betas[0] * N), beta_max=float(betas[-1] * N), N=N)


def score_fn(
    model: Callable, schedule: Schedule, *, prediction_type: str = "eps"
) -> tuple[Callable[..., Array], Any]:
    """(score_fn, sde): s(x, t) = −ε̂(x, i)/√(1−ᾱ_i) with i = ⌊t·(N−1)⌋ (Song et al. 2021, §3.3; score_sde's discrete VP score).

    ``sde`` is the linear VP-SDE whose DDPM chain is ``schedule`` (a linear β schedule). σ is read
    from the discrete table at the truncated index i, as score_sde does for DDPM-trained
    networks; the network is called at the same integer i (score_sde passes it the fractional
    label t·(N−1) instead — a network trained on integer timesteps is evaluated where it was
    trained).
    """
    sched = _check_schedule(schedule)
    pt = prediction_type_checked(prediction_type)
    sde = _linear_vp_sde(sched)
    n1 = float(sched.num_timesteps - 1)
    sqrt_ab = _Table(np.asarray(sched.sqrt_alphas_cumprod, dtype=np.float64))
    sqrt_1m = _Table(np.asarray(sched.sqrt_one_minus_alphas_cumprod, dtype=np.float64))

    def score(x: Array, t: Array) -> Array:
        xp = array_namespace(x, t)
        i = xp.astype(xp.floor(t * n1), xp.int64)
        out = _drop_variance(model(x, i), x)
        a = append_dims(xp.take(sqrt_ab.like(x, xp), i, axis=0), x.ndim)
        s = append_dims(xp.take(sqrt_1m.like(x, xp), i, axis=0), x.ndim)
        if pt == "score":
            return out
        return -eps_from_prediction(out, x, a, s, pt) / s

    return score, sde


def sample_with_discrete_model(
    name: str,
    model: Callable,
    x_T: Array,
    *,
    schedule: Schedule,
    steps: int,
    prediction_type: str = "eps",
    noise: Noise = None,
    timestep: str = "nearest",
    callback: Callable | None = None,
    progress: Callable | None = None,
    **options: Any,
) -> Array:
    """Run the registered sampler ``name`` of any family with a network trained on ``schedule``.

    Parameters
    ----------
    name : str
        A registered sampler (``refdiff.samplers.list_samplers()``).
    model : callable
        ``model(x_t, t)`` of the discrete family (t: training-schedule indices).
    x_T : array
        The standard-normal start at the noisiest level (VP scale); the Karras family starts
        from x_T·√(1+σ_0²), the same state on its variance-exploding scale.
    schedule : Schedule
        The host training schedule.
    steps : int
        Discrete family: the respaced schedule's length (respaced on the host, then moved once
        to x_T's namespace and device when x_T is not a NumPy array); Karras family: σ levels of
        the Karras grid (:func:`karras_grid`, unless ``sigmas=`` is given); vp and sde families:
        ``steps``.
    prediction_type : str
        What the network predicts (``mean_type`` of the discrete family).
    noise : array or callable, optional
        The stochastic samplers' draws (each family's convention).
    timestep : {"nearest", "interp"}
        How the continuous bridges form the network's timestep.
    callback, progress
        The per-step hooks every loop takes.
    **options
        Passed to the sampler (e.g. ``eta``, ``spacing``, ``clip_x0``, ``sigmas``).

    Returns
    -------
    array
        The sample, on the data scale.

    Examples
    --------
    A network of the discrete schedule (here the exact ε of data concentrated at 0.5) sampled with
    a Karras-family sampler:

    >>> import numpy as np
    >>> from refdiff import analytic, schedules
    >>> s = schedules.linear(1000)
    >>> model = analytic.discrete_model(analytic.GaussianData([0.5, 0.5], 0.0), s, "eps")
    >>> x = sample_with_discrete_model("karras_heun", model, np.ones((1, 2)), schedule=s, steps=8)
    >>> bool(np.allclose(x, 0.5, atol=1e-3))
    True
    """
    spec = get_sampler(name)
    sched = _check_schedule(schedule)
    hooks = {k: v for k, v in (("callback", callback), ("progress", progress)) if v is not None}
    if spec.family == "discrete":
        xp = array_namespace(x_T)
        on: dict[str, Any] = {"schedule": sched, "steps": steps}
        if not is_numpy(xp):  # the tables must live in x's namespace: respace here, move once
            from .discrete import sampling_schedule

            where = {
                k: options.pop(k) for k in ("spacing", "steps_offset", "timesteps") if k in options
            }
            respaced = sampling_schedule(sched, None if "timesteps" in where else steps, **where)
            on = {"schedule": respaced.to(xp, device=device_of(x_T))}
        return spec.fn(model, x_T, noise=noise, mean_type=prediction_type, **on, **hooks, **options)
    if spec.family == "karras":
        sigmas = options.pop("sigmas", None)
        grid = karras_grid(sched, steps) if sigmas is None else np.asarray(sigmas, dtype=np.float64)
        den = karras_denoiser(model, sched, prediction_type=prediction_type, timestep=timestep)
        x = x_T * math.sqrt(1.0 + float(grid[0]) ** 2)
        return spec.fn(den, x, sigmas=grid, noise=noise, **hooks, **options)
    if spec.family == "vp":
        fn, ns = vp_model(model, sched, timestep=timestep)
        return spec.fn(
            fn,
            x_T,
            noise_schedule=ns,
            steps=steps,
            noise=noise,
            model_type=prediction_type_checked(prediction_type),
            **hooks,
            **options,
        )
    if spec.family == "sde":
        fn, sde = score_fn(model, sched, prediction_type=prediction_type)
        return spec.fn(fn, x_T, sde=sde, steps=steps, noise=noise, **hooks, **options)
    raise RefdiffValueError(
        f"sampler={name!r} belongs to the {spec.family!r} family, which has no "
        "bridge from a discrete-schedule network"
    )
