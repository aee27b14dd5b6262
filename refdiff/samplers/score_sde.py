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
  ``"per_sample"`` one ε per sample. α_i is the DDPM chain's 1 - β_i for VP and sub-VP (score_sde;
  its sub-VP branch reads the VP chain of the same β's) and 1 for VE.
* Noise: step i consumes ``draws_per_step`` draws, the corrector's first (index
  i·draws_per_step + j for corrector step j), then the predictor's. With ``denoise=True``
  (score_sde's default noise removal) the final predictor returns its mean and its draw is not
  read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

from .._errors import RefdiffValueError, check_choice, check_int, check_real, fail
from .._xp import append_dims, array_namespace, device_of
from . import register_sampler
from ._common import call_progress, check_output, draw_noise

__all__ = [
    "PREDICTORS", "CORRECTORS", "LANGEVIN_NORMS", "TIME_GRIDS", "euler_maruyama_step",
    "reverse_diffusion_step", "ancestral_sampling_step", "langevin_step_size",
    "langevin_corrector_step", "annealed_langevin_step", "pc_time_grid", "sample_pc",
    "sample_euler_maruyama", "sample_reverse_diffusion", "sample_ancestral",
    "ncsn_step_size", "ncsn_langevin_step", "sample_ncsn_annealed_langevin",
]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
CORRECTORS = ("langevin", "ald", "none")
LANGEVIN_NORMS = ("batch_mean", "per_sample")
TIME_GRIDS = ("score_sde", "uniform")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _check_sde(sde):
    from ..sde import SDE
    if not isinstance(sde, SDE):
        fail("sde", sde, "expected a refdiff.sde SDE (VPSDE, SubVPSDE or VESDE)")
    return sde


def _kind(sde) -> str:
    from ..sde import SubVPSDE, VESDE, VPSDE
    if isinstance(sde, VPSDE):
        return "vp"
    if isinstance(sde, SubVPSDE):
        return "subvp"
    if isinstance(sde, VESDE):
        return "ve"
    return "other"


def _t_array(x, t: float):
    xp = array_namespace(x)
    return xp.full((x.shape[0],), float(t), dtype=x.dtype, device=device_of(x))


def _score(score_fn: Callable, x, t_arr):
    return check_output(score_fn(x, t_arr), x, name="score_fn output")


def _index(sde, t: float) -> int:
    """The chain index i = round/floor(t (N-1)/T) (the SDE's ``index_rounding``), host-side."""
    u = t * (sde.N - 1) / float(sde.T)
    return int(math.floor(u)) if sde.index_rounding == "floor" else int(round(u))


def _table_value(table, i: int) -> float:
    return float(table[i])


@functools.lru_cache(maxsize=16)
def _vp_betas(beta_min: float, beta_max: float, N: int):
    """The DDPM chain's β_i of a VP SDE (host float64, cached: built in double-double)."""
    from ..sde import VPSDE
    return VPSDE(beta_min, beta_max, N).discrete_betas


@functools.lru_cache(maxsize=16)
def _ve_sigmas(sigma_min: float, sigma_max: float, N: int):
    """The SMLD chain's σ_i of a VE SDE (host float64, cached)."""
    from ..sde import VESDE
    return VESDE(sigma_min, sigma_max, N).discrete_sigmas


def _norms(x):
    """Per-sample Euclidean norms over all non-batch axes, shape (B,)."""
    xp = array_namespace(x)
    flat = xp.reshape(x, (x.shape[0], -1))
    return xp.sqrt(xp.sum(flat * flat, axis=1))


# --------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------

def euler_maruyama_step(sde, score_fn: Callable, x, t: float, dt: float, *, noise):
    """Reverse-SDE Euler–Maruyama: x̄ = x + [f - g² s] dt, x = x̄ + g √(-dt) z, dt < 0 (Song et al. 2021, Eq. 6).

    Returns (x, x̄).
    """
    _check_sde(sde)
    dt = check_real("dt", dt, hi=0.0, hi_open=True)
    drift, diffusion = sde.reverse(score_fn).sde(x, _t_array(x, t))
    x_mean = x + drift * dt
    return x_mean + append_dims(diffusion * math.sqrt(-dt), x.ndim) * noise, x_mean


def reverse_diffusion_step(sde, score_fn: Callable, x, t: float, *, noise):
    """Reverse diffusion predictor x̄ = x - f_i + G_i² s, x = x̄ + G_i z (Song et al. 2021, App. E, Eq. 46).

    f_i, G_i are the SDE's own discretization (DDPM chain for VP, SMLD chain for VE, Euler for
    sub-VP with dt = T/N). Returns (x, x̄).
    """
    _check_sde(sde)
    rev_f, rev_G = sde.reverse(score_fn).discretize(x, _t_array(x, t))
    x_mean = x - rev_f
    return x_mean + append_dims(rev_G, x.ndim) * noise, x_mean


def ancestral_sampling_step(sde, score_fn: Callable, x, t: float, *, noise):
    """Ancestral sampling predictor (Song et al. 2021, App. F; Ho et al. 2020, Eq. 11 / Song & Ermon 2019 read backwards).

    VP (DDPM chain β_i): x̄ = (x + β_i s)/√(1 - β_i), x = x̄ + √β_i z.
    VE (SMLD chain σ_i, σ_{-1} = 0): x̄ = x + (σ_i² - σ_{i-1}²) s,
    x = x̄ + √(σ_{i-1}² (σ_i² - σ_{i-1}²)/σ_i²) z. Returns (x, x̄).
    """
    kind = _kind(_check_sde(sde))
    i = _index(sde, t)
    s = _score(score_fn, x, _t_array(x, t))
    if kind == "vp":
        _check_ddpm_chain(sde)
        beta = _table_value(_vp_betas(sde.beta_min, sde.beta_max, sde.N), i)
        x_mean = (x + beta * s) / math.sqrt(1.0 - beta)
        return x_mean + math.sqrt(beta) * noise, x_mean
    if kind == "ve":
        sig = _ve_sigmas(sde.sigma_min, sde.sigma_max, sde.N)
        sigma = _table_value(sig, i)
        prev = _table_value(sig, i - 1) if i > 0 else 0.0
        gap = (sigma - prev) * (sigma + prev)           # σ_i² - σ_{i-1}²
        x_mean = x + gap * s
        std = prev * math.sqrt(gap) / sigma
        return x_mean + std * noise, x_mean
    fail("sde", sde, "ancestral sampling needs a discrete chain: VPSDE (DDPM) or VESDE (SMLD); "
         "sub-VP has none (score_sde raises NotImplementedError too)")


# --------------------------------------------------------------------------------------------
# Correctors
# --------------------------------------------------------------------------------------------

def _langevin_alpha(sde, t: float) -> float:
    """α_i = 1 - β_i of the DDPM chain (VP and sub-VP), 1 for VE (score_sde LangevinCorrector)."""
    kind = _kind(sde)
    if kind in ("vp", "subvp"):
        _check_ddpm_chain(sde)
        return 1.0 - _table_value(_vp_betas(sde.beta_min, sde.beta_max, sde.N), _index(sde, t))
    return 1.0


def _check_ddpm_chain(sde) -> None:
    """The DDPM chain of a VP / sub-VP SDE needs β_i = β/N < 1, i.e. N > max(β_min, β_max)."""
    if max(sde.beta_min, sde.beta_max) >= sde.N:
        fail("N", sde.N, f"the DDPM chain (N = steps) needs β_i = β/N < 1, i.e. N > "
             f"max(beta_min, beta_max) = {max(sde.beta_min, sde.beta_max)!r}; use more steps")


def langevin_step_size(score, noise, *, snr: float, alpha: float = 1.0,
                       norm: str = "batch_mean"):
    """ε = 2α (r ‖z‖/‖s‖)² (Song et al. 2021, Alg. 4 / 5); norms batch-averaged (score_sde) or per sample.

    Returns a 0-d array ("batch_mean") or shape (B,) ("per_sample"). A zero score norm makes ε
    undefined and raises.
    """
    check_choice("langevin_norm", norm, LANGEVIN_NORMS, "Langevin norm convention")
    snr = check_real("snr", snr, lo=0.0)
    xp = array_namespace(score, noise)
    g, n = _norms(score), _norms(noise)
    if norm == "batch_mean":
        g, n = xp.mean(g), xp.mean(n)
    if bool(xp.any(g == 0)):
        raise RefdiffValueError("the score has zero norm, so the signal-to-noise Langevin step "
                                "size 2α(r‖z‖/‖s‖)² is undefined; skip the corrector there")
    r = snr * n / g
    return 2.0 * alpha * r * r


def langevin_corrector_step(sde, score_fn: Callable, x, t: float, *, snr: float, noise,
                            norm: str = "batch_mean"):
    """Langevin corrector x̄ = x + ε s, x = x̄ + √(2ε) z with the SNR step size (Song et al. 2021, Alg. 4 / 5).

    Returns (x, x̄).
    """
    _check_sde(sde)
    s = _score(score_fn, x, _t_array(x, t))
    eps = langevin_step_size(s, noise, snr=snr, alpha=_langevin_alpha(sde, t), norm=norm)
    xp = array_namespace(x)
    eps = append_dims(eps, x.ndim) if eps.ndim else eps
    x_mean = x + eps * s
    return x_mean + xp.sqrt(2.0 * eps) * noise, x_mean


def annealed_langevin_step(sde, score_fn: Callable, x, t: float, *, snr: float, noise):
    """score_sde's annealed Langevin corrector: ε = 2α (r σ_t)², x̄ = x + ε s, x = x̄ + √(2ε) z (Song et al. 2021, App. G).

    σ_t is the perturbation std of ``sde.marginal_prob``. Returns (x, x̄).
    """
    _check_sde(sde)
    snr = check_real("snr", snr, lo=0.0)
    t_arr = _t_array(x, t)
    s = _score(score_fn, x, t_arr)
    std = float(sde.marginal_std(float(t)))
    eps = 2.0 * _langevin_alpha(sde, t) * (snr * std) ** 2
    x_mean = x + eps * s
    return x_mean + math.sqrt(2.0 * eps) * noise, x_mean


# --------------------------------------------------------------------------------------------
# The predictor–corrector driver
# --------------------------------------------------------------------------------------------

def pc_time_grid(sde, steps: int, *, eps: float = 1e-3, time_grid: str = "score_sde"):
    """(times, dts) of the N steps as host floats, per the named ``time_grid`` convention (Song et al. 2021, Alg. 1)."""
    import numpy as np
    steps = check_int("steps", steps, minimum=1)
    check_choice("time_grid", time_grid, TIME_GRIDS, "time grid")
    T = float(sde.T)
    eps = check_real("eps", eps, lo=0.0, hi=T, hi_open=True)
    if time_grid == "score_sde":
        ts = np.linspace(T, eps, steps)
        return [float(v) for v in ts], [-T / steps] * steps
    ts = np.linspace(T, eps, steps + 1)
    return [float(v) for v in ts[:-1]], [float(ts[i + 1] - ts[i]) for i in range(steps)]


def _chain_sde(sde, steps: int):
    """The SDE with N = steps (its discrete chains then have one step per grid point)."""
    return sde if sde.N == steps else dataclasses.replace(sde, N=steps)


@register_sampler("sde_pc", family="sde", stochastic=True, step=langevin_corrector_step)
def sample_sde_pc(score_fn: Callable, x_T, *, sde, steps: int, noise=None,
              predictor: str = "reverse_diffusion", corrector: str = "langevin",
              snr: float = 0.16, n_corrector_steps: int = 1, eps: float = 1e-3,
              denoise: bool = True, time_grid: str = "score_sde",
              langevin_norm: str = "batch_mean", progress: Callable | None = None):
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
    progress : callable, optional

    Returns
    -------
    array
        The sample at t = eps.
    """
    _check_sde(sde)
    if getattr(x_T, "ndim", 0) < 1:
        fail("x_T", x_T, "expected an array with the batch axis first (ndim >= 1)")
    check_choice("predictor", predictor, PREDICTORS, "predictor")
    check_choice("corrector", corrector, CORRECTORS, "corrector")
    check_choice("langevin_norm", langevin_norm, LANGEVIN_NORMS, "Langevin norm convention")
    n_corr = check_int("n_corrector_steps", n_corrector_steps, minimum=0)
    snr = check_real("snr", snr, lo=0.0)
    if not isinstance(denoise, bool):
        fail("denoise", denoise, "expected True or False")
    ts, dts = pc_time_grid(sde, steps, eps=eps, time_grid=time_grid)
    chain = _chain_sde(sde, len(ts))
    if predictor == "ancestral_sampling" and _kind(chain) not in ("vp", "ve"):
        fail("sde", sde, "ancestral sampling needs a VPSDE or VESDE")
    uses_chain = (corrector != "none" and n_corr > 0) or predictor == "ancestral_sampling" or (
        predictor == "reverse_diffusion" and _kind(chain) == "vp")
    if uses_chain and _kind(chain) in ("vp", "subvp"):
        _check_ddpm_chain(chain)
    k = (n_corr if corrector != "none" else 0) + (1 if predictor != "none" else 0)
    xp = array_namespace(x_T)
    x = x_T
    x_mean = x_T
    for i, (t, dt) in enumerate(zip(ts, dts)):
        if corrector != "none":
            for j in range(n_corr):
                z = draw_noise(noise, i * k + j, x)
                if corrector == "langevin":
                    x, x_mean = langevin_corrector_step(chain, score_fn, x, t, snr=snr, noise=z,
                                                        norm=langevin_norm)
                else:
                    x, x_mean = annealed_langevin_step(chain, score_fn, x, t, snr=snr, noise=z)
        if predictor != "none":
            last = i == len(ts) - 1
            z = xp.zeros_like(x) if (last and denoise) else draw_noise(noise, i * k + k - 1, x)
            if predictor == "euler_maruyama":
                x, x_mean = euler_maruyama_step(sde, score_fn, x, t, dt, noise=z)
            elif predictor == "reverse_diffusion":
                x, x_mean = reverse_diffusion_step(chain, score_fn, x, t, noise=z)
            else:
                x, x_mean = ancestral_sampling_step(chain, score_fn, x, t, noise=z)
        call_progress(progress, i + 1, len(ts))
    return x_mean if denoise else x


def _predictor_only(name: str, predictor: str, step: Callable, doc: str):
    def sampler(score_fn: Callable, x_T, *, sde, steps: int, noise=None, eps: float = 1e-3,
                denoise: bool = True, time_grid: str = "score_sde",
                progress: Callable | None = None):
        return sample_sde_pc(score_fn, x_T, sde=sde, steps=steps, noise=noise, predictor=predictor,
                         corrector="none", eps=eps, denoise=denoise, time_grid=time_grid,
                         progress=progress)

    sampler.__name__ = sampler.__qualname__ = "sample_" + name
    sampler.__doc__ = (doc + "\n\nOne draw per step (``noise[i]``); options ``eps``, ``denoise``, "
                       "``time_grid`` as in :func:`sample_pc`.")
    register_sampler(name, family="sde", stochastic=True, step=step)(sampler)
    return sampler


sample_sde_euler_maruyama = _predictor_only(
    "sde_euler_maruyama", "euler_maruyama", euler_maruyama_step,
    "Euler–Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6; score_sde EulerMaruyamaPredictor).")
sample_sde_reverse_diffusion = _predictor_only(
    "sde_reverse_diffusion", "reverse_diffusion", reverse_diffusion_step,
    "Reverse-diffusion predictor (Song et al. 2021, Eq. 46; score_sde ReverseDiffusionPredictor).")
sample_sde_ancestral = _predictor_only(
    "sde_ancestral", "ancestral_sampling", ancestral_sampling_step,
    "Ancestral sampling on the DDPM (VP) or SMLD (VE) chain (Song et al. 2021, App. F; score_sde AncestralSamplingPredictor).")


# --------------------------------------------------------------------------------------------
# NCSN annealed Langevin dynamics
# --------------------------------------------------------------------------------------------

def ncsn_step_size(sigma: float, sigma_last: float, step_lr: float) -> float:
    """α_i = ε σ_i² / σ_L² (Song & Ermon 2019, Alg. 1 line 3)."""
    return step_lr * (sigma / sigma_last) ** 2


def ncsn_langevin_step(score, x, step_size: float, *, noise):
    """x ← x + (α/2) s + √α z (Song & Ermon 2019, Alg. 1 line 6)."""
    return x + (0.5 * step_size) * score + math.sqrt(step_size) * noise


@register_sampler("ncsn_annealed_langevin", family="sde", stochastic=True,
                  step=ncsn_langevin_step)
def sample_ncsn_annealed_langevin(score_fn: Callable, x_T, *, sde, steps: int, noise=None,
                                  n_steps_each: int = 100, step_lr: float = 2e-5,
                                  denoise: bool = False, progress: Callable | None = None):
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
        ε of Alg. 1 (2e-5 in NCSN for CIFAR-10).
    denoise : bool
        Finish with x + σ_L² s(x, σ_L) (Tweedie; NCSNv2's final denoising, Song & Ermon 2020).
    progress : callable, optional
    """
    if _kind(_check_sde(sde)) != "ve":
        fail("sde", sde, "annealed Langevin dynamics runs over the noise levels of a VESDE")
    if getattr(x_T, "ndim", 0) < 1:
        fail("x_T", x_T, "expected an array with the batch axis first (ndim >= 1)")
    steps = check_int("steps", steps, minimum=1)
    n_each = check_int("n_steps_each", n_steps_each, minimum=1)
    step_lr = check_real("step_lr", step_lr, lo=0.0, lo_open=True)
    if not isinstance(denoise, bool):
        fail("denoise", denoise, "expected True or False")
    import numpy as np
    ts = [float(v) for v in np.linspace(float(sde.T), 0.0, steps)]
    sigmas = [float(sde.sigma(t)) for t in ts]
    x = x_T
    for i, t in enumerate(ts):
        a = ncsn_step_size(sigmas[i], sigmas[-1], step_lr)
        t_arr = _t_array(x, t)
        for j in range(n_each):
            x = ncsn_langevin_step(_score(score_fn, x, t_arr), x, a,
                                   noise=draw_noise(noise, i * n_each + j, x))
        call_progress(progress, i + 1, steps)
    if denoise:
        x = x + sigmas[-1] ** 2 * _score(score_fn, x, _t_array(x, ts[-1]))
    return x


# Deprecated names (one release): the sampler loops are sample_<registered name>.
sample_pc = sample_sde_pc
sample_euler_maruyama = sample_sde_euler_maruyama
sample_reverse_diffusion = sample_sde_reverse_diffusion
sample_ancestral = sample_sde_ancestral
