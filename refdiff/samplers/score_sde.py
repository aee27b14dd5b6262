"""Score-SDE samplers: predictors, Langevin correctors, the predictor–corrector driver, NCSN's annealed Langevin.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative Modeling
through Stochastic Differential Equations" (arXiv:2011.13456v2): the reverse-time SDE (Eq. 6),
Euler–Maruyama, the reverse-diffusion predictor (App. E, Eq. 46), ancestral sampling (App. F: the
DDPM and SMLD chains read backwards), Langevin correction with a signal-to-noise step size (Alg. 4 / 5) and the
predictor–corrector sampler (Alg. 1); Song & Ermon (2019), "Generative Modeling by Estimating
Gradients of the Data Distribution", Alg. 1 (annealed Langevin dynamics).

Family ``"sde"``: ``fn(score_fn, x_T, *, sde, steps, noise=None, **options)`` with
``score_fn(x, t) -> ∇ log p_t(x)`` (t an array of shape (B,) in x's namespace and dtype) and
``sde`` a refdiff.sde SDE (VPSDE, SubVPSDE, VESDE). ``x_T`` is the prior sample (e.g.
``sde.prior_sampling(shape, noise=z)``).

Named conventions
-----------------
* Time grid (``time_grid``): ``"score_sde"`` evaluates at t_i = linspace(T, eps, N)[i] and steps
  Euler–Maruyama by dt = -T/N (score_sde's ``get_pc_sampler`` with ``EulerMaruyamaPredictor``:
  the grid spacing (T - eps)/(N - 1) and the step T/N differ); ``"uniform"`` evaluates at
  t_i = linspace(T, eps, N + 1)[i] and steps by dt = t_{i+1} - t_i, so the N steps integrate
  exactly from T to eps.
* The discrete chains (reverse diffusion, ancestral sampling, the Langevin α_i) are those of the
  SDE with N = ``steps`` (score_sde ties N to the SDE); the index is i = round or floor of
  t (N-1)/T per the SDE's ``index_rounding`` (score_sde: floor).
* Langevin step size ε = 2 α_i (r ‖z‖/‖s‖)² (r = ``snr``): ``langevin_norm="batch_mean"`` uses
  the batch means of the per-sample norms (score_sde, so ε depends on the batch),
  ``"per_sample"`` one ε per sample. α_i is the DDPM chain's 1 - β_i for VP (score_sde) and 1 for
  VE. For sub-VP refdiff uses the DDPM chain of the same β's; score_sde's corrector fails there
  (its sub-VP SDE has no ``alphas`` table).
* Step plan: the per-step coefficients (the SDE's drift and diffusion, the chain's β_i or σ_i, the
  Langevin α_i) are computed once per call as host float64 numbers by the SDE's
  ``*_coefficients`` methods; each step is then array arithmetic on x: x̄ = p x + q s,
  x = x̄ + r z.
* Callback: ``callback(info)`` at each predictor step i with the state the step starts from and
  t = t_i (``info.denoised`` is None: these samplers use the score, not an x0 prediction).
* Noise: step i consumes ``draws_per_step`` draws, the corrector's first (index
  i·draws_per_step + j for corrector step j), then the predictor's. With ``denoise=True``
  (score_sde's default noise removal) the final predictor returns its mean and its draw is not
  read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from .._errors import RefdiffValueError, check_choice, check_int, check_real, fail
from .._typing import Array, Namespace, Noise
from .._xp import append_dims, array_namespace
from ..guidance import langevin_step
from ..sde import SDE, VESDE
from . import register_sampler
from ._common import StepInfo, batch_full, check_output, draw_noise, step_reporter

__all__ = [
    "PREDICTORS",
    "CORRECTORS",
    "LANGEVIN_NORMS",
    "TIME_GRIDS",
    "euler_maruyama_step",
    "reverse_diffusion_step",
    "ancestral_sampling_step",
    "predictor_coefficients",
    "predictor_update",
    "langevin_step_size",
    "langevin_corrector_step",
    "annealed_langevin_step",
    "pc_time_grid",
    "sample_sde_pc",
    "sample_sde_euler_maruyama",
    "sample_sde_reverse_diffusion",
    "sample_sde_ancestral",
    "ncsn_step_size",
    "ncsn_langevin_step",
    "sample_ncsn_annealed_langevin",
]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
CORRECTORS = ("langevin", "ald", "none")
LANGEVIN_NORMS = ("batch_mean", "per_sample")
TIME_GRIDS = ("score_sde", "uniform")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_sde(sde: Any) -> SDE:
    """The ``sde`` argument of the score-SDE and probability-flow samplers: a refdiff.sde SDE."""
    if not isinstance(sde, SDE):
        fail("sde", sde, "expected a refdiff.sde SDE (VPSDE, SubVPSDE or VESDE)")
    return sde


def _check_x_T(x_T: Array) -> None:
    if getattr(x_T, "ndim", 0) < 1:
        fail("x_T", x_T, "expected an array with the batch axis first (ndim >= 1)")


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        fail(name, value, "expected True or False")
    return value


def _score(score_fn: Callable[[Array, Array], Array], x: Array, t_arr: Array) -> Array:
    return check_output(score_fn(x, t_arr), x, name="score_fn output")


def _norms(x: Array, xp: Namespace) -> Array:
    """Per-sample Euclidean norms over all non-batch axes, shape (B,)."""
    flat = xp.reshape(x, (x.shape[0], -1))
    return xp.sqrt(xp.sum(flat * flat, axis=1))


# --------------------------------------------------------------------------------------------
# Predictors: host coefficients (p, q, r) per step, then x̄ = p x + q s, x = x̄ + r z
# --------------------------------------------------------------------------------------------


def predictor_coefficients(
    predictor: str, sde: SDE, ts: Sequence[float], dts: Sequence[float] | None = None
) -> list[tuple[float, float, float]]:
    """(p, q, r) per time with x̄ = p x + q s(x, t), x = x̄ + r z, as host floats (Song et al. 2021).

    * ``"euler_maruyama"`` (Eq. 6, step dt < 0): p = 1 + a dt, q = -g² dt, r = g √(-dt), with
      f(x, t) = a x and g from ``sde.drift_coefficients``.
    * ``"reverse_diffusion"`` (Eq. 46): p = 1 - c, q = G², r = G with f_i = c x and G_i from
      ``sde.reverse_diffusion_coefficients`` (DDPM chain for VP, SMLD for VE, Euler for sub-VP).
    * ``"ancestral_sampling"`` (App. F): p = 1/d, q = b/d, r = std from
      ``sde.ancestral_coefficients`` (x̄ = (x + b s)/d).
    """
    check_choice("predictor", predictor, PREDICTORS[:-1], "predictor")
    if predictor == "euler_maruyama":
        a, g = sde.drift_coefficients(ts)
        dt = np.asarray(dts, dtype=np.float64)
        return [
            (float(p), float(q), float(r))
            for p, q, r in zip(1.0 + a * dt, -(g * g) * dt, g * np.sqrt(-dt))
        ]
    if predictor == "reverse_diffusion":
        c, G = sde.reverse_diffusion_coefficients(ts)
        return [(float(p), float(q), float(r)) for p, q, r in zip(1.0 - c, G * G, G)]
    b, d, std = sde.ancestral_coefficients(ts)
    return [(float(p), float(q), float(r)) for p, q, r in zip(1.0 / d, b / d, std)]


def predictor_update(
    x: Array, score: Array, p: float, q: float, r: float, noise: Array | None = None
) -> tuple[Array, Array]:
    """x̄ = p x + q s, x = x̄ + r z (the array part of every predictor step). Returns (x, x̄).

    ``noise=None`` returns (x̄, x̄): no draw (the PC loop's final noise removal).
    """
    x_mean = (x + q * score) if p == 1.0 else (p * x + q * score)
    if noise is None or r == 0.0:
        return x_mean, x_mean
    return x_mean + r * noise, x_mean


def _need_noise(noise: Array | None) -> None:
    if noise is None:
        fail("noise", noise, "this step adds noise: pass a standard-normal draw of x's shape")


def _em_generic(
    sde: SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: float, dt: float, noise: Array
) -> tuple[Array, Array]:
    """Euler–Maruyama for an SDE whose drift is not linear in x: x̄ = x + [f - g² s] dt."""
    drift, diffusion = sde.reverse(score_fn).sde(x, batch_full(x, t))
    x_mean = x + drift * dt
    return x_mean + append_dims(diffusion * math.sqrt(-dt), x.ndim) * noise, x_mean


def _linear_drift(sde: SDE) -> bool:
    try:
        sde.drift_coefficients([0.0])
    except NotImplementedError:
        return False
    return True


def euler_maruyama_step(
    sde: SDE,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    t: float,
    dt: float,
    *,
    noise: Array,
) -> tuple[Array, Array]:
    """Reverse-SDE Euler–Maruyama: x̄ = x + [f - g² s] dt, x = x̄ + g √(-dt) z, dt < 0 (Song et al. 2021, Eq. 6).

    Returns (x, x̄).
    """
    _check_sde(sde)
    dt = check_real("dt", dt, hi=0.0, hi_open=True)
    _need_noise(noise)
    if not _linear_drift(sde):
        return _em_generic(sde, score_fn, x, t, dt, noise)
    ((p, q, r),) = predictor_coefficients("euler_maruyama", sde, [t], [dt])
    return predictor_update(x, _score(score_fn, x, batch_full(x, t)), p, q, r, noise)


def reverse_diffusion_step(
    sde: SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: float, *, noise: Array
) -> tuple[Array, Array]:
    """Reverse diffusion predictor x̄ = x - f_i + G_i² s, x = x̄ + G_i z (Song et al. 2021, App. E, Eq. 46).

    f_i, G_i are the SDE's own discretization (DDPM chain for VP, SMLD chain for VE, Euler for
    sub-VP with dt = T/N). Returns (x, x̄).
    """
    _need_noise(noise)
    ((p, q, r),) = predictor_coefficients("reverse_diffusion", _check_sde(sde), [t])
    return predictor_update(x, _score(score_fn, x, batch_full(x, t)), p, q, r, noise)


def ancestral_sampling_step(
    sde: SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: float, *, noise: Array
) -> tuple[Array, Array]:
    """Ancestral sampling predictor (Song et al. 2021, App. F; Ho et al. 2020, Eq. 11 / Song & Ermon 2019 read backwards).

    VP (DDPM chain β_i): x̄ = (x + β_i s)/√(1 - β_i), x = x̄ + √β_i z.
    VE (SMLD chain σ_i, σ_{-1} = 0): x̄ = x + (σ_i² - σ_{i-1}²) s,
    x = x̄ + √(σ_{i-1}² (σ_i² - σ_{i-1}²)/σ_i²) z. Returns (x, x̄).
    """
    _need_noise(noise)
    ((p, q, r),) = predictor_coefficients("ancestral_sampling", _check_sde(sde), [t])
    return predictor_update(x, _score(score_fn, x, batch_full(x, t)), p, q, r, noise)


# --------------------------------------------------------------------------------------------
# Correctors
# --------------------------------------------------------------------------------------------


def langevin_step_size(
    score: Array, noise: Array, *, snr: float, alpha: float = 1.0, norm: str = "batch_mean"
) -> Array:
    """ε = 2α (r ‖z‖/‖s‖)² (Song et al. 2021, Alg. 4 / 5); norms batch-averaged (score_sde) or per sample.

    Returns a 0-d array ("batch_mean") or shape (B,) ("per_sample"). A zero score norm makes ε
    undefined and raises.
    """
    check_choice("langevin_norm", norm, LANGEVIN_NORMS, "Langevin norm convention")
    snr = check_real("snr", snr, lo=0.0)
    return _step_size(score, noise, snr, alpha, norm, array_namespace(score, noise), check=True)


def _step_size(
    score: Array, noise: Array, snr: float, alpha: float, norm: str, xp: Namespace, *, check: bool
) -> Array:
    """ε of :func:`langevin_step_size`; ``check=False`` (the loops) reads nothing back from the
    device, so a zero score norm gives ε = ∞ and a non-finite state instead of an error."""
    g, n = _norms(score, xp), _norms(noise, xp)
    if norm == "batch_mean":
        g, n = xp.mean(g), xp.mean(n)
    if check and bool(xp.any(g == 0)):
        raise RefdiffValueError(
            "the score has zero norm, so the signal-to-noise Langevin step "
            "size 2α(r‖z‖/‖s‖)² is undefined; skip the corrector there"
        )
    r = snr * n / g
    return 2.0 * alpha * r * r


def _corrector_update(
    x: Array, score: Array, eps: float | Array, noise: Array, xp: Namespace | None = None
) -> tuple[Array, Array]:
    """x̄ = x + ε s, x = x̄ + √(2ε) z (Song et al. 2021, Alg. 4 / 5) for a host-float or array ε. Returns (x, x̄)."""
    if isinstance(eps, float):
        x_mean = x + eps * score
        return x_mean + math.sqrt(2.0 * eps) * noise, x_mean
    xp = array_namespace(x) if xp is None else xp
    eps = append_dims(eps, x.ndim) if eps.ndim else eps
    x_mean = x + eps * score
    return x_mean + xp.sqrt(2.0 * eps) * noise, x_mean


def langevin_corrector_step(
    sde: SDE,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    t: float,
    *,
    snr: float,
    noise: Array,
    norm: str = "batch_mean",
) -> tuple[Array, Array]:
    """Langevin corrector x̄ = x + ε s, x = x̄ + √(2ε) z with the SNR step size (Song et al. 2021, Alg. 4 / 5).

    Returns (x, x̄).
    """
    alpha = float(_check_sde(sde).langevin_alpha([t])[0])
    s = _score(score_fn, x, batch_full(x, t))
    return _corrector_update(
        x, s, langevin_step_size(s, noise, snr=snr, alpha=alpha, norm=norm), noise
    )


def _ald_step_sizes(sde: SDE, ts: Sequence[float], snr: float) -> list[float]:
    """ε_i = 2 α_i (r σ_{t_i})² of score_sde's annealed Langevin corrector, host floats."""
    alpha = sde.langevin_alpha(ts)
    std = np.asarray(sde.marginal_std(np.asarray(ts, dtype=np.float64)), dtype=np.float64)
    return [float(v) for v in 2.0 * alpha * (snr * std) ** 2]


def annealed_langevin_step(
    sde: SDE,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    t: float,
    *,
    snr: float,
    noise: Array,
) -> tuple[Array, Array]:
    """score_sde's annealed Langevin corrector: ε = 2α (r σ_t)², x̄ = x + ε s, x = x̄ + √(2ε) z (Song et al. 2021, App. G).

    σ_t is the perturbation std of ``sde.marginal_prob``. Returns (x, x̄).
    """
    snr = check_real("snr", snr, lo=0.0)
    (eps,) = _ald_step_sizes(_check_sde(sde), [t], snr)
    return _corrector_update(x, _score(score_fn, x, batch_full(x, t)), eps, noise)


# --------------------------------------------------------------------------------------------
# The predictor–corrector driver
# --------------------------------------------------------------------------------------------


def pc_time_grid(
    sde: SDE, steps: int, *, eps: float = 1e-3, time_grid: str = "score_sde"
) -> tuple[list[float], list[float]]:
    """(times, dts) of the N steps as host floats, per the named ``time_grid`` convention (Song et al. 2021, Alg. 1)."""
    steps = check_int("steps", steps, minimum=1)
    check_choice("time_grid", time_grid, TIME_GRIDS, "time grid")
    T = float(sde.T)
    eps = check_real("eps", eps, lo=0.0, hi=T, hi_open=True)
    if time_grid == "score_sde":
        ts = np.linspace(T, eps, steps)
        return [float(v) for v in ts], [-T / steps] * steps
    ts = np.linspace(T, eps, steps + 1)
    return [float(v) for v in ts[:-1]], [float(ts[i + 1] - ts[i]) for i in range(steps)]


def _chain_sde(sde: SDE, steps: int) -> SDE:
    """The SDE with N = steps (its discrete chains then have one step per grid point)."""
    return (
        sde if sde.N == steps else dataclasses.replace(cast(Any, sde), N=steps)
    )  # every SDE is a dataclass


@register_sampler("sde_pc", family="sde", stochastic=True, step=langevin_corrector_step)
def sample_sde_pc(
    score_fn: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    sde: SDE,
    steps: int,
    noise: Noise = None,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    eps: float = 1e-3,
    denoise: bool = True,
    time_grid: str = "score_sde",
    langevin_norm: str = "batch_mean",
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1; score_sde ``get_pc_sampler``).

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, t) -> ∇ log p_t(x)``.
    x_T : array
        The prior sample at t = T, batch axis first.
    sde : refdiff.sde.SDE
    steps : int
        Number of predictor steps N.
    noise : array or callable
        Standard-normal draws, ``steps · draws_per_step`` of them (see the module docstring).
    predictor : {"reverse_diffusion", "euler_maruyama", "ancestral_sampling", "none"}
    corrector : {"langevin", "ald", "none"}
    snr : float
        The corrector's signal-to-noise ratio r (score_sde: 0.16 for VE CIFAR-10, 0.17 LSUN).
    n_corrector_steps : int
        Corrector steps per predictor step.
    eps : float
        Final time (score_sde's ``sampling_eps``: 1e-3 for VP/sub-VP, 1e-5 for VE).
    denoise : bool
        Return the last predictor's noise-free mean (score_sde's ``noise_removal``).
    time_grid : {"score_sde", "uniform"}
    langevin_norm : {"batch_mean", "per_sample"}
        How the Langevin step size averages the norms (:func:`langevin_step_size`). The loop
        reads nothing back from the device, so a score of zero norm, where the step size is
        undefined, makes the state non-finite instead of raising
        (:func:`refdiff.samplers.check_finite` stops there).
    callback : callable, optional
        ``callback(info)`` at each step i with x at t_i (before its corrector), t = t_i.
    progress : callable, optional
        ``progress(i + 1, N)`` at each step.

    Returns
    -------
    array
        The sample at t = eps.
    """
    _check_sde(sde)
    _check_x_T(x_T)
    check_choice("predictor", predictor, PREDICTORS, "predictor")
    check_choice("corrector", corrector, CORRECTORS, "corrector")
    check_choice("langevin_norm", langevin_norm, LANGEVIN_NORMS, "Langevin norm convention")
    n_corr = check_int("n_corrector_steps", n_corrector_steps, minimum=0)
    snr = check_real("snr", snr, lo=0.0)
    _check_bool("denoise", denoise)
    ts, dts = pc_time_grid(sde, steps, eps=eps, time_grid=time_grid)
    chain = _chain_sde(sde, len(ts))
    n = len(ts)
    if corrector == "none":
        n_corr = 0
    # the step plan: host floats per step
    if n_corr and corrector == "langevin":
        alphas = [float(a) for a in chain.langevin_alpha(ts)]
    ald = _ald_step_sizes(chain, ts, snr) if (n_corr and corrector == "ald") else []
    generic_em = predictor == "euler_maruyama" and not _linear_drift(sde)
    pred: list[tuple[float, float, float]] = []
    if predictor != "none" and not generic_em:
        pred = predictor_coefficients(
            predictor, sde if predictor == "euler_maruyama" else chain, ts, dts
        )
    report = step_reporter(callback, progress)
    k = n_corr + (1 if predictor != "none" else 0)
    xp = array_namespace(x_T)
    x = x_mean = x_T
    for i, t in enumerate(ts):
        t_arr = batch_full(x, t)
        if report is not None:
            report(StepInfo(i, n, x, None, t=t))
        for j in range(n_corr):
            z = draw_noise(noise, i * k + j, x)
            s = _score(score_fn, x, t_arr)
            step = (
                ald[i] if ald else _step_size(s, z, snr, alphas[i], langevin_norm, xp, check=False)
            )
            x, x_mean = _corrector_update(x, s, step, z, xp)
        if predictor != "none":
            z = None if (i == n - 1 and denoise) else draw_noise(noise, i * k + k - 1, x)
            if generic_em:
                x, x_mean = _em_generic(
                    sde, score_fn, x, t, dts[i], z if z is not None else xp.zeros_like(x)
                )
            else:
                p, q, r = pred[i]
                x, x_mean = predictor_update(x, _score(score_fn, x, t_arr), p, q, r, z)
    return x_mean if denoise else x


def _predictor_only(
    name: str, predictor: str, step: Callable[..., tuple[Array, Array]], doc: str
) -> Callable[..., Array]:
    def sampler(
        score_fn: Callable[[Array, Array], Array],
        x_T: Array,
        *,
        sde: SDE,
        steps: int,
        noise: Noise = None,
        eps: float = 1e-3,
        denoise: bool = True,
        time_grid: str = "score_sde",
        callback: Callable[[StepInfo], object] | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> Array:
        return sample_sde_pc(
            score_fn,
            x_T,
            sde=sde,
            steps=steps,
            noise=noise,
            predictor=predictor,
            corrector="none",
            eps=eps,
            denoise=denoise,
            time_grid=time_grid,
            callback=callback,
            progress=progress,
        )

    sampler.__name__ = sampler.__qualname__ = "sample_" + name
    sampler.__module__ = __name__
    sampler.__doc__ = (
        doc + "\n\nOne draw per step (``noise[i]``); options ``eps``, ``denoise``, "
        "``time_grid``, ``callback``, ``progress`` as in :func:`sample_sde_pc`."
    )
    register_sampler(name, family="sde", stochastic=True, step=step)(sampler)
    return sampler


sample_sde_euler_maruyama = _predictor_only(
    "sde_euler_maruyama",
    "euler_maruyama",
    euler_maruyama_step,
    "Euler–Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6; score_sde EulerMaruyamaPredictor).",
)
sample_sde_reverse_diffusion = _predictor_only(
    "sde_reverse_diffusion",
    "reverse_diffusion",
    reverse_diffusion_step,
    "Reverse-diffusion predictor (Song et al. 2021, Eq. 46; score_sde ReverseDiffusionPredictor).",
)
sample_sde_ancestral = _predictor_only(
    "sde_ancestral",
    "ancestral_sampling",
    ancestral_sampling_step,
    "Ancestral sampling on the DDPM (VP) or SMLD (VE) chain (Song et al. 2021, App. F; score_sde AncestralSamplingPredictor).",
)


# --------------------------------------------------------------------------------------------
# NCSN annealed Langevin dynamics
# --------------------------------------------------------------------------------------------


def ncsn_step_size(sigma: float, sigma_last: float, step_lr: float) -> float:
    """α_i = ε σ_i² / σ_L² (Song & Ermon 2019, Alg. 1 line 3)."""
    return step_lr * (sigma / sigma_last) ** 2


def ncsn_langevin_step(score: Array, x: Array, step_size: float, *, noise: Array) -> Array:
    """x ← x + (α/2) s + √α z (Song & Ermon 2019, Alg. 1 line 6): :func:`refdiff.guidance.langevin_step`.

    Kept with NCSN's argument order (score first) for one release; new code calls
    ``langevin_step(x, score, step_size=α, noise=z)``.
    """
    return langevin_step(x, score, step_size=step_size, noise=noise)


@register_sampler("ncsn_annealed_langevin", family="sde", stochastic=True, step=langevin_step)
def sample_ncsn_annealed_langevin(
    score_fn: Callable[[Array, Array], Array],
    x_T: Array,
    *,
    sde: SDE,
    steps: int,
    noise: Noise = None,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    denoise: bool = False,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Annealed Langevin dynamics over `steps` geometric noise levels (Song & Ermon 2019, Alg. 1).

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, t)``; level i uses t_i = linspace(T, 0, steps)[i], i.e. σ_i = σ(t_i) of the
        VE SDE from σ_max down to σ_min (``steps`` = L, 10 in NCSN).
    x_T : array
        The starting sample (NCSN: uniform noise; any array of x's shape).
    sde : refdiff.sde.VESDE
    steps : int
        Number of noise levels L.
    noise : array or callable
        ``steps · n_steps_each`` draws; level i, inner step j uses index i·n_steps_each + j.
    n_steps_each : int
        Langevin steps per level (T = 100 in NCSN).
    step_lr : float
        ε of Alg. 1 (2e-5 in the paper for CIFAR-10). The NCSN code's ``step_lr`` s steps
        x + s_i s + √(2 s_i) z with s_i = s σ_i²/σ_L², which is ε = 2s here.
    denoise : bool
        Finish with x + σ_L² s(x, σ_L) (Tweedie; NCSNv2's final denoising, Song & Ermon 2020).
    callback : callable, optional
        ``callback(info)`` at the start of each level i, with t = t_i and σ = σ_i.
    progress : callable, optional
        ``progress(i + 1, L)`` at each level.

    Returns
    -------
    array
        The sample after the last level.
    """
    if not isinstance(_check_sde(sde), VESDE):
        fail("sde", sde, "annealed Langevin dynamics runs over the noise levels of a VESDE")
    assert isinstance(sde, VESDE)
    _check_x_T(x_T)
    steps = check_int("steps", steps, minimum=1)
    n_each = check_int("n_steps_each", n_steps_each, minimum=1)
    step_lr = check_real("step_lr", step_lr, lo=0.0, lo_open=True)
    _check_bool("denoise", denoise)
    ts = [float(v) for v in np.linspace(float(sde.T), 0.0, steps)]
    sigmas = [float(v) for v in sde.sigma(np.asarray(ts))]
    sizes = [ncsn_step_size(sig, sigmas[-1], step_lr) for sig in sigmas]
    report = step_reporter(callback, progress)
    x = x_T
    for i, t in enumerate(ts):
        t_arr = batch_full(x, t)
        if report is not None:
            report(StepInfo(i, steps, x, None, t=t, sigma=sigmas[i]))
        for j in range(n_each):
            x = langevin_step(
                x,
                _score(score_fn, x, t_arr),
                step_size=sizes[i],
                noise=draw_noise(noise, i * n_each + j, x),
            )
    if denoise:
        x = x + sigmas[-1] ** 2 * _score(score_fn, x, batch_full(x, ts[-1]))
    return x


# Deprecated names (one release): the sampler loops are sample_<registered name>.
sample_pc = sample_sde_pc
sample_euler_maruyama = sample_sde_euler_maruyama
sample_reverse_diffusion = sample_sde_reverse_diffusion
sample_ancestral = sample_sde_ancestral
