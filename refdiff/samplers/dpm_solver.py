"""DPM-Solver and DPM-Solver++: exponential integrators of the diffusion ODE in the half log-SNR λ.

Lu, Zhou, Bao, Chen, Li & Zhu (2022a), "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
Model Sampling in Around 10 Steps" (arXiv:2206.00927v3; noise prediction: DPM-Solver-1 Eq. 3.7, DPM-Solver-2 and -3
Algs. 1-2, DPM-Solver-fast and the step grids §3.3, discrete-time models §3.4) and (2022b) "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models" (arXiv:2211.01095v2; data prediction §3-4,
DPM-Solver++(2S) Alg. 1, multistep DPM-Solver++(2M) Alg. 2). With λ_t = log(α_t/σ_t) and h = λ_t - λ_s the exact solution of the
diffusion ODE from s to t is

    x_t = (α_t/α_s) x_s - α_t ∫_{λ_s}^{λ_t} e^{-λ} ε̂(x_λ, λ) dλ          (noise prediction)
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂0(x_λ, λ) dλ          (data prediction)

and the order-k solvers Taylor-expand ε̂ or x̂0 in λ. The integrals of the Taylor terms are the
φ-functions, formed here with ``math.expm1`` and series for small h, never as exp(h) - 1:

    φ1(h) = e^h - 1,   φ2(h) = (e^h - 1 - h)/h,   φ3(h) = (e^h - 1 - h - h²/2)/h²

(DPM-Solver's ``phi_1``, ``phi_2``, ``phi_3`` of the noise form; the data form uses their values at
-h). Every schedule quantity is a host float computed in float64; only the state x and the model
outputs are arrays, so the solvers run unchanged on any array-API namespace.

Family ``"vp"``: ``fn(model, x_T, *, noise_schedule, steps, noise=None, **options)`` where
``model(x, t)`` takes an array t of shape (B,) of continuous times (or of DPM-Solver's discrete
model inputs, see ``model_time``) and returns the prediction named by ``model_type``.
``steps`` is the number of model evaluations (NFE), as in DPM-Solver's ``sample``.

Named conventions
-----------------
* λ clipping of discrete schedules (:class:`NoiseScheduleVP`, ``clip_lambda``):
  ``"dpm_solver"`` drops the trailing entries of the schedule whose λ is below -5.1, as
  DPM-Solver's ``NoiseScheduleVP.numerical_clip_alpha`` (the remaining N' entries are then mapped
  to t_n = (n+1)/N'); ``None`` keeps every entry; a float clips at that λ. Separately the sampler
  option ``lambda_min`` starts sampling at the time where λ = lambda_min, leaving the schedule
  intact, like diffusers' ``lambda_min_clipped``.
* Lower-order final steps of the multistep solvers (``lower_order_final``): ``"dpm_solver"`` uses
  order min(k, steps + 1 - i) at step i when steps < 10 (DPM-Solver's code; its docstring says
  15), ``"diffusers"`` the same when steps < 15 (diffusers' ``lower_order_final``),
  ``"always"`` at any step count, ``"never"`` keeps order k to the end.
* Step grids (``skip_type``, DPM-Solver's names): ``"time_uniform"``, ``"logSNR"`` (uniform in λ)
  and ``"time_quadratic"`` (uniform in √t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._errors import UnknownNameError, check_choice, check_int, check_real, fail
from .._xp import array_namespace, device_of
from . import register_sampler
from ._common import call_progress, check_output

__all__ = [
    "NoiseScheduleVP", "LAMBDA_CLIPS", "LOWER_ORDER_FINAL", "SKIP_TYPES", "MODEL_TYPES",
    "ALGORITHM_TYPES", "SOLVER_TYPES", "METHODS", "D2_SCALES", "WARMUPS", "phi_1", "phi_2", "phi_3", "get_time_steps",
    "singlestep_orders", "dpm_solver_first_update", "singlestep_dpm_solver_second_update",
    "singlestep_dpm_solver_third_update", "singlestep_dpm_solver_update",
    "multistep_dpm_solver_second_update", "multistep_dpm_solver_third_update",
    "multistep_dpm_solver_update", "multistep_step_orders", "sample_dpm_solver", "dpm_solver_sample",
]

#: Named λ clips for discrete schedules: DPM-Solver's numerical_clip_alpha (λ ≥ -5.1).
LAMBDA_CLIPS = {"dpm_solver": -5.1}
#: Named lower-order-final rules: use lower orders at the last steps when steps < threshold.
LOWER_ORDER_FINAL = {"dpm_solver": 10, "diffusers": 15, "always": math.inf, "never": 0}
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
MODEL_TYPES = ("noise", "x_start", "v", "score")
ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++")
SOLVER_TYPES = ("dpmsolver", "taylor")
METHODS = ("singlestep", "singlestep_fixed", "multistep")
#: D2 of the multistep third-order update: 2× DPM-Solver's (consistent, order 3) or DPM-Solver's own.
D2_SCALES = ("consistent", "dpm_solver")
#: How the multistep order-3 solver starts: DPM-Solver's lower-order multistep steps, or one
#: single-step DPM-Solver-2 step (keeps the global order 3).
WARMUPS = ("lower_order", "singlestep")
MODEL_TIMES = ("continuous", "dpm_solver")


# --------------------------------------------------------------------------------------------
# φ-functions (host floats, float64)
# --------------------------------------------------------------------------------------------

def _exp_tail(h: float, k: int) -> float:
    """(e^h - Σ_{j<k} h^j/j!) / h^(k-1) for k ≥ 1, by its series when |h| < 2 (no cancellation)."""
    term = 1.0
    for j in range(1, k):
        term /= j                     # term = 1/(k-1)!
    total = 0.0
    j = k
    term = term * h / k               # h^k/k! divided by h^(k-1)
    while True:
        total += term
        j += 1
        term *= h / j
        if abs(term) <= 1e-17 * abs(total):
            return total + term


def phi_1(h: float) -> float:
    """φ1(h) = e^h - 1 = expm1(h) (Lu et al. 2022a, Eq. 3.7)."""
    return math.expm1(h)


def phi_2(h: float) -> float:
    """φ2(h) = (e^h - 1 - h)/h (DPM-Solver's ``phi_2 = phi_1/h - 1``; Lu et al. 2022a, Alg. 2); φ2(0) = 0."""
    if h == 0.0:
        return 0.0
    if abs(h) < 2.0:
        return _exp_tail(h, 2)
    return (math.expm1(h) - h) / h


def phi_3(h: float) -> float:
    """φ3(h) = (e^h - 1 - h - h²/2)/h² (DPM-Solver's ``phi_3 = phi_2/h - 1/2``; Lu et al. 2022b, Alg. 2); φ3(0) = 0."""
    if h == 0.0:
        return 0.0
    if abs(h) < 2.0:
        return _exp_tail(h, 3)
    return (math.expm1(h) - h - 0.5 * h * h) / (h * h)


# --------------------------------------------------------------------------------------------
# The noise schedule
# --------------------------------------------------------------------------------------------

def _interp(x, xs: np.ndarray, ys: np.ndarray):
    """Piecewise-linear interpolation with linear extrapolation beyond both ends (DPM-Solver's interpolate_fn)."""
    x = np.asarray(x, dtype=np.float64)
    idx = np.clip(np.searchsorted(xs, x, side="left"), 1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return y0 + (x - x0) * ((y1 - y0) / (x1 - x0))


def _log_sigma_from_log_alpha(la):
    """log σ = ½ log(1 - α²) = ½ log(-expm1(2 log α)) (VP: α² + σ² = 1)."""
    return 0.5 * np.log(-np.expm1(2.0 * la))


def _scalar_or_array(v, like):
    return float(v) if np.ndim(like) == 0 else v


@dataclass(frozen=True, eq=False)
class NoiseScheduleVP:
    """A VP noise schedule α_t, σ_t = √(1 - α_t²), λ_t = log(α_t/σ_t) on t ∈ [0, T] (Lu et al. 2022a, §2.1 and §3.4).

    Host-side (NumPy float64) like the schedule tables: methods take a float or a NumPy array of
    times and return the same. Build one with :meth:`linear` (the continuous linear VP-SDE of
    Song et al. 2021, closed forms), :meth:`discrete` (a discrete schedule by DPM-Solver's
    piecewise-linear interpolation of log α in t, with t_n = (n+1)/N for the index n = 0..N-1) or
    :meth:`from_sde` (any refdiff continuous SDE: VP, sub-VP or VE).

    Attributes
    ----------
    kind : {"linear", "discrete", "sde"}
    T : float
        End time (1).
    total_N : int
        Number of discrete steps (1000 for "linear", as DPM-Solver; the kept entries for
        "discrete"); the default end time of sampling is 1/total_N.
    """

    kind: str
    T: float = 1.0
    total_N: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_array: Any = None
    log_alpha_array: Any = None
    clip_lambda: float | None = None
    sde: Any = None

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> "NoiseScheduleVP":
        """The linear VP-SDE: log α_t = -¼ t² (β1 - β0) - ½ t β0 (Song et al. 2021, Eq. 33; DPM-Solver 'linear')."""
        b0 = check_real("beta_min", beta_min, lo=0.0)
        b1 = check_real("beta_max", beta_max, lo=0.0)
        if b0 + b1 == 0.0:
            fail("beta_max", beta_max, "beta_min and beta_max cannot both be 0")
        return cls("linear", beta_min=b0, beta_max=b1)

    @classmethod
    def discrete(cls, schedule=None, *, betas=None, alphas_cumprod=None,
                 clip_lambda: str | float | None = "dpm_solver") -> "NoiseScheduleVP":
        """A discrete schedule as DPM-Solver's ``NoiseScheduleVP('discrete', ...)`` (Lu et al. 2022a, §3.4).

        Parameters
        ----------
        schedule : refdiff.schedules.Schedule, optional
            The discrete schedule (its exact ``log_alphas_cumprod`` table is used); or give one
            of ``betas`` / ``alphas_cumprod`` (built through refdiff.schedules, so the log ᾱ
            table is exact too).
        clip_lambda : {"dpm_solver"} or float or None
            Drop the trailing entries whose λ_n = ½ log(ᾱ_n/(1-ᾱ_n)) is below the clip:
            ``"dpm_solver"`` = -5.1 (DPM-Solver's numerical_clip_alpha), a float, or None.
        """
        from .. import schedules as _sched
        given = [v is not None for v in (schedule, betas, alphas_cumprod)]
        if sum(given) != 1:
            fail("schedule", schedule, "give exactly one of schedule=, betas=, alphas_cumprod=")
        if betas is not None:
            schedule = _sched.from_betas(betas)
        elif alphas_cumprod is not None:
            schedule = _sched.from_alphas_cumprod(alphas_cumprod)
        if not hasattr(schedule, "log_alphas_cumprod"):
            fail("schedule", schedule, "expected a refdiff.schedules.Schedule")
        log_alpha = 0.5 * np.array(schedule.log_alphas_cumprod, dtype=np.float64)
        if isinstance(clip_lambda, str):
            clip = LAMBDA_CLIPS.get(clip_lambda)
            if clip is None:
                raise UnknownNameError(f"clip_lambda={clip_lambda!r} is not a known λ clip; allowed: "
                                       f"{', '.join(map(repr, LAMBDA_CLIPS))}, a float or None")
        elif clip_lambda is None:
            clip = None
        else:
            clip = check_real("clip_lambda", clip_lambda)
        if clip is not None:
            lam = _lambda_from_log_alpha(log_alpha)
            drop = int(np.sum(lam < clip))   # λ decreases in n: the dropped entries are trailing
            if drop >= log_alpha.size - 1:
                fail("clip_lambda", clip_lambda, f"it leaves {log_alpha.size - drop} entries of the "
                     "schedule; at least 2 are needed")
            if drop:
                log_alpha = log_alpha[:-drop]
        if log_alpha.size < 2:
            fail("schedule", schedule, "expected at least 2 timesteps for the interpolation")
        if not np.isfinite(log_alpha[-1]):
            fail("schedule", schedule, "its last ᾱ is 0 (zero terminal SNR): λ = -inf there; use "
                 "clip_lambda= or start later with lambda_min=")
        n = log_alpha.size
        t_array = np.arange(1, n + 1, dtype=np.float64) / n
        return cls("discrete", total_N=n, t_array=t_array, log_alpha_array=log_alpha,
                   clip_lambda=clip)

    @classmethod
    def from_sde(cls, sde) -> "NoiseScheduleVP":
        """The marginal schedule of a refdiff continuous SDE (refdiff.sde: VPSDE, SubVPSDE, VESDE).

        α_t, σ_t and λ_t come from the SDE's closed forms (sub-VP and VE are not variance
        preserving; the solvers only use α_t, σ_t and λ_t, so they apply unchanged).
        """
        for attr in ("marginal_log_mean_coeff", "marginal_std", "lambda_", "t_from_lambda"):
            if not hasattr(sde, attr):
                fail("sde", sde, "expected a refdiff.sde SDE (VPSDE, SubVPSDE or VESDE)")
        return cls("sde", T=float(sde.T), total_N=int(sde.N), sde=sde)

    # -- marginals ---------------------------------------------------------------------------
    def _check_t(self, t):
        a = np.asarray(t, dtype=np.float64)
        if not np.all((a >= 0.0) & (a <= self.T)):
            fail("t", t, f"expected times in [0, {self.T!r}]")
        return a

    def marginal_log_mean_coeff(self, t):
        """log α_t (linear: closed form; discrete: piecewise-linear in t; sde: the SDE's)."""
        a = self._check_t(t)
        if self.kind == "linear":
            out = a * (a * (self.beta_max - self.beta_min) + 2.0 * self.beta_min) * -0.25
        elif self.kind == "discrete":
            out = _interp(a, self.t_array, self.log_alpha_array)
        else:
            out = np.asarray(self.sde.marginal_log_mean_coeff(a), dtype=np.float64)
        return _scalar_or_array(out, t)

    def marginal_alpha(self, t):
        """α_t = exp(log α_t)."""
        return _scalar_or_array(np.exp(self.marginal_log_mean_coeff(t)), t)

    def marginal_std(self, t):
        """σ_t = √(-expm1(2 log α_t)) (VP), or the SDE's σ_t."""
        if self.kind == "sde":
            a = self._check_t(t)
            return _scalar_or_array(np.asarray(self.sde.marginal_std(a), dtype=np.float64), t)
        la = np.asarray(self.marginal_log_mean_coeff(t))
        return _scalar_or_array(np.sqrt(-np.expm1(2.0 * la)), t)

    def marginal_lambda(self, t):
        """λ_t = log α_t - log σ_t (+inf where σ_t = 0)."""
        if self.kind == "sde":
            a = self._check_t(t)
            return _scalar_or_array(np.asarray(self.sde.lambda_(a), dtype=np.float64), t)
        la = np.asarray(self.marginal_log_mean_coeff(t), dtype=np.float64)
        return _scalar_or_array(_lambda_from_log_alpha(la), t)

    def inverse_lambda(self, lam):
        """The t with λ_t = lam (linear: closed form; discrete: interpolation of t in log α)."""
        lam_a = np.asarray(lam, dtype=np.float64)
        if np.any(np.isnan(lam_a)):
            fail("lam", lam, "expected real half log-SNR values (NaN given)")
        if self.kind == "sde":
            out = np.asarray(self.sde.t_from_lambda(lam_a), dtype=np.float64)
        else:
            # log α = -½ log(1 + e^{-2λ})
            la = -0.5 * np.logaddexp(0.0, -2.0 * lam_a)
            if self.kind == "linear":
                L = -2.0 * la                        # ∫_0^t β = Δ t²/2 + β0 t
                d = self.beta_max - self.beta_min
                out = np.where(L > 0, 2.0 * L / (self.beta_min + np.sqrt(
                    self.beta_min ** 2 + 2.0 * d * np.where(L > 0, L, 1.0))), 0.0)
            else:
                out = _interp(la, self.log_alpha_array[::-1].copy(), self.t_array[::-1].copy())
        return _scalar_or_array(out, lam)

    def model_input_time(self, t, convention: str = "continuous"):
        """The time fed to the model: t itself, or DPM-Solver's discrete input (t - 1/N)·1000."""
        check_choice("model_time", convention, MODEL_TIMES, "model time convention")
        if convention == "continuous":
            return t
        if self.kind != "discrete":
            fail("model_time", convention, "the 'dpm_solver' discrete model time needs a discrete "
                 "noise schedule (NoiseScheduleVP.discrete)")
        return (t - 1.0 / self.total_N) * 1000.0


def _lambda_from_log_alpha(la):
    la = np.asarray(la, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = la - _log_sigma_from_log_alpha(la)
    return np.where(la == 0.0, np.inf, out)


def _check_ns(noise_schedule) -> NoiseScheduleVP:
    if not isinstance(noise_schedule, NoiseScheduleVP):
        fail("noise_schedule", noise_schedule, "expected a refdiff.samplers.dpm_solver."
             "NoiseScheduleVP (NoiseScheduleVP.linear(), .discrete(schedule) or .from_sde(sde))")
    return noise_schedule


# --------------------------------------------------------------------------------------------
# Time grids
# --------------------------------------------------------------------------------------------

def get_time_steps(noise_schedule: NoiseScheduleVP, skip_type: str, t_T: float, t_0: float,
                   N: int) -> np.ndarray:
    """N + 1 times from t_T down to t_0: uniform in t, in λ ("logSNR") or in √t (Lu et al. 2022a, §3.3)."""
    ns = _check_ns(noise_schedule)
    check_choice("skip_type", skip_type, SKIP_TYPES, "step grid")
    N = check_int("N", N, minimum=1)
    if skip_type == "logSNR":
        lam_T, lam_0 = ns.marginal_lambda(t_T), ns.marginal_lambda(t_0)
        ts = np.asarray(ns.inverse_lambda(np.linspace(lam_T, lam_0, N + 1)), dtype=np.float64)
    elif skip_type == "time_uniform":
        ts = np.linspace(t_T, t_0, N + 1)
    else:
        ts = np.linspace(math.sqrt(t_T), math.sqrt(t_0), N + 1) ** 2
    ts[0], ts[-1] = t_T, t_0
    return ts


def singlestep_orders(steps: int, order: int) -> list[int]:
    """Per-step orders of DPM-Solver-fast with ``steps`` NFE and maximum order 1-3 (Lu et al. 2022a, §3.3)."""
    steps = check_int("steps", steps, minimum=1)
    order = check_int("order", order, minimum=1)
    if order == 3:
        K = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (K - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (K - 1) + [1]
        return [3] * (K - 1) + [2]
    if order == 2:
        return [2] * (steps // 2) + ([1] if steps % 2 else [])
    if order == 1:
        return [1] * steps
    fail("order", order, "expected 1, 2 or 3")


def multistep_step_orders(steps: int, order: int, lower_order_final: str = "dpm_solver") -> list[int]:
    """Order used at each of the ``steps`` multistep updates: warm-up 1..k-1, then k, lowered at the end by the named rule."""
    threshold = _lower_order_threshold(lower_order_final)
    orders = []
    for step in range(1, steps + 1):
        if step < order:
            orders.append(step)
        elif steps < threshold:
            orders.append(min(order, steps + 1 - step))
        else:
            orders.append(order)
    return orders


def _lower_order_threshold(name) -> float:
    if not isinstance(name, str) or name not in LOWER_ORDER_FINAL:
        raise UnknownNameError(f"lower_order_final={name!r} is not a known rule; allowed: "
                               f"{', '.join(map(repr, LOWER_ORDER_FINAL))}")
    return LOWER_ORDER_FINAL[name]


# --------------------------------------------------------------------------------------------
# Step functions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pt:
    """Schedule quantities at one time (host floats)."""

    t: float
    log_alpha: float
    alpha: float
    sigma: float
    lam: float


def _pt(ns: NoiseScheduleVP, t: float) -> _Pt:
    la = float(ns.marginal_log_mean_coeff(float(t)))
    return _Pt(float(t), la, math.exp(la), float(ns.marginal_std(float(t))),
               float(ns.marginal_lambda(float(t))))


def _check_alg(algorithm_type: str, solver_type: str) -> None:
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES, "DPM-Solver algorithm")
    check_choice("solver_type", solver_type, SOLVER_TYPES, "DPM-Solver solver type")


def _first(x, m_s, s: _Pt, t: _Pt, h: float, algorithm_type: str):
    """x_t from x_s with the first-order term only (both forms)."""
    if algorithm_type == "dpmsolver++":
        return (t.sigma / s.sigma) * x - (t.alpha * phi_1(-h)) * m_s
    return math.exp(t.log_alpha - s.log_alpha) * x - (t.sigma * phi_1(h)) * m_s


def dpm_solver_first_update(noise_schedule: NoiseScheduleVP, x, s: float, t: float, model_s, *,
                            algorithm_type: str = "dpmsolver"):
    """DPM-Solver-1 from s to t: x_t = (α_t/α_s) x_s - σ_t φ1(h) ε̂_s (Lu et al. 2022a, Eq. 3.7 / Alg. 1, = DDIM).

    With ``algorithm_type="dpmsolver++"``, ``model_s`` is the data prediction x̂0 and
    x_t = (σ_t/σ_s) x_s - α_t φ1(-h) x̂0_s (Lu et al. 2022b, §4, first order).
    """
    ns = _check_ns(noise_schedule)
    _check_alg(algorithm_type, "dpmsolver")
    ps, pt = _pt(ns, s), _pt(ns, t)
    return _first(x, model_s, ps, pt, pt.lam - ps.lam, algorithm_type)


def singlestep_dpm_solver_second_update(noise_schedule: NoiseScheduleVP, model_fn: Callable, x,
                                        s: float, t: float, *, r1: float = 0.5, model_s=None,
                                        algorithm_type: str = "dpmsolver",
                                        solver_type: str = "dpmsolver"):
    """Single-step DPM-Solver-2 from s to t via s1 with λ_{s1} = λ_s + r1 h (Lu et al. 2022a, Alg. 1; 2022b, Alg. 1 for ++).

    ``model_fn(x, t) -> prediction`` (noise, or data for "dpmsolver++"). Returns
    (x_t, [model_s, model_s1]).
    """
    ns = _check_ns(noise_schedule)
    _check_alg(algorithm_type, solver_type)
    r1 = check_real("r1", r1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    ps, pt = _pt(ns, s), _pt(ns, t)
    h = pt.lam - ps.lam
    p1 = _pt(ns, float(ns.inverse_lambda(ps.lam + r1 * h)))
    if model_s is None:
        model_s = model_fn(x, ps.t)
    x_s1 = _first(x, model_s, ps, p1, r1 * h, algorithm_type)
    model_s1 = model_fn(x_s1, p1.t)
    diff = model_s1 - model_s
    if algorithm_type == "dpmsolver++":
        base = (pt.sigma / ps.sigma) * x - (pt.alpha * phi_1(-h)) * model_s
        if solver_type == "dpmsolver":
            x_t = base - (0.5 / r1) * (pt.alpha * phi_1(-h)) * diff
        else:
            x_t = base - (1.0 / r1) * (pt.alpha * phi_2(-h)) * diff
    else:
        base = math.exp(pt.log_alpha - ps.log_alpha) * x - (pt.sigma * phi_1(h)) * model_s
        if solver_type == "dpmsolver":
            x_t = base - (0.5 / r1) * (pt.sigma * phi_1(h)) * diff
        else:
            x_t = base - (1.0 / r1) * (pt.sigma * phi_2(h)) * diff
    return x_t, [model_s, model_s1]


def singlestep_dpm_solver_third_update(noise_schedule: NoiseScheduleVP, model_fn: Callable, x,
                                       s: float, t: float, *, r1: float = 1.0 / 3.0,
                                       r2: float = 2.0 / 3.0, model_s=None, model_s1=None,
                                       algorithm_type: str = "dpmsolver",
                                       solver_type: str = "dpmsolver"):
    """Single-step DPM-Solver-3 from s to t via λ_s + r1 h and λ_s + r2 h (Lu et al. 2022a, Alg. 2; 2022b, §4 for ++).

    Returns (x_t, [model_s, model_s1, model_s2]).
    """
    ns = _check_ns(noise_schedule)
    _check_alg(algorithm_type, solver_type)
    r1 = check_real("r1", r1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    r2 = check_real("r2", r2, lo=r1, hi=1.0, lo_open=True, hi_open=True)
    ps, pt = _pt(ns, s), _pt(ns, t)
    h = pt.lam - ps.lam
    p1 = _pt(ns, float(ns.inverse_lambda(ps.lam + r1 * h)))
    p2 = _pt(ns, float(ns.inverse_lambda(ps.lam + r2 * h)))
    pp = algorithm_type == "dpmsolver++"
    # Both forms in one: the data form uses α and φ(-h) where the noise form uses σ and φ(h)
    # (DPM-Solver's phi_2 = phi_1/h + 1 of the data form is -phi_2(-h) here).
    sgn = -1.0 if pp else 1.0
    if model_s is None:
        model_s = model_fn(x, ps.t)
    if model_s1 is None:
        model_s1 = model_fn(_first(x, model_s, ps, p1, r1 * h, algorithm_type), p1.t)
    d1 = model_s1 - model_s
    c2 = p2.alpha if pp else p2.sigma
    x_s2 = (_first(x, model_s, ps, p2, r2 * h, algorithm_type)
            - (r2 / r1) * (c2 * phi_2(sgn * r2 * h)) * d1)
    model_s2 = model_fn(x_s2, p2.t)
    d2 = model_s2 - model_s
    base = _first(x, model_s, ps, pt, h, algorithm_type)
    c = pt.alpha if pp else pt.sigma
    if solver_type == "dpmsolver":
        x_t = base - (1.0 / r2) * (c * phi_2(sgn * h)) * d2
    else:
        D1_0, D1_1 = d1 / r1, d2 / r2
        D1 = (r2 * D1_0 - r1 * D1_1) / (r2 - r1)
        D2 = 2.0 * (D1_1 - D1_0) / (r2 - r1)
        x_t = base - (c * phi_2(sgn * h)) * D1 - (c * phi_3(sgn * h)) * D2
    return x_t, [model_s, model_s1, model_s2]


def singlestep_dpm_solver_update(noise_schedule: NoiseScheduleVP, model_fn: Callable, x, s: float,
                                 t: float, *, order: int, algorithm_type: str = "dpmsolver",
                                 solver_type: str = "dpmsolver", r1: float | None = None,
                                 r2: float | None = None, model_s=None):
    """One single-step DPM-Solver-k update (k = 1, 2, 3) from s to t (Lu et al. 2022a, Eq. 3.7, Algs. 1-2).

    Returns (x_t, model values at s and the intermediate times).
    """
    if order == 1:
        if model_s is None:
            model_s = model_fn(x, float(s))
        return dpm_solver_first_update(noise_schedule, x, s, t, model_s,
                                       algorithm_type=algorithm_type), [model_s]
    if order == 2:
        return singlestep_dpm_solver_second_update(
            noise_schedule, model_fn, x, s, t, r1=0.5 if r1 is None else r1, model_s=model_s,
            algorithm_type=algorithm_type, solver_type=solver_type)
    if order == 3:
        return singlestep_dpm_solver_third_update(
            noise_schedule, model_fn, x, s, t, r1=1.0 / 3.0 if r1 is None else r1,
            r2=2.0 / 3.0 if r2 is None else r2, model_s=model_s, algorithm_type=algorithm_type,
            solver_type=solver_type)
    fail("order", order, "expected 1, 2 or 3")


def multistep_dpm_solver_second_update(noise_schedule: NoiseScheduleVP, x, model_prev_list,
                                       t_prev_list, t: float, *, algorithm_type: str = "dpmsolver",
                                       solver_type: str = "dpmsolver"):
    """Multistep DPM-Solver-2 from t_prev_list[-1] to t with the last two model values (Lu et al. 2022b, Alg. 2).

    D1 = (m_0 - m_1)/r0 with r0 = h_0/h is the first-derivative estimate.
    """
    ns = _check_ns(noise_schedule)
    _check_alg(algorithm_type, solver_type)
    m1, m0 = model_prev_list[-2], model_prev_list[-1]
    p1, p0, pt = _pt(ns, t_prev_list[-2]), _pt(ns, t_prev_list[-1]), _pt(ns, t)
    h0, h = p0.lam - p1.lam, pt.lam - p0.lam
    D1 = (m0 - m1) * (h / h0)
    if algorithm_type == "dpmsolver++":
        base = (pt.sigma / p0.sigma) * x - (pt.alpha * phi_1(-h)) * m0
        if solver_type == "dpmsolver":
            return base - 0.5 * (pt.alpha * phi_1(-h)) * D1
        return base - (pt.alpha * phi_2(-h)) * D1
    base = math.exp(pt.log_alpha - p0.log_alpha) * x - (pt.sigma * phi_1(h)) * m0
    if solver_type == "dpmsolver":
        return base - 0.5 * (pt.sigma * phi_1(h)) * D1
    return base - (pt.sigma * phi_2(h)) * D1


def multistep_dpm_solver_third_update(noise_schedule: NoiseScheduleVP, x, model_prev_list,
                                      t_prev_list, t: float, *, algorithm_type: str = "dpmsolver",
                                      d2_scale: str = "consistent"):
    """Multistep DPM-Solver-3 from t_prev_list[-1] to t with the last three model values (Lu et al. 2022b, §4, 3M).

    With D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1 (r0 = h0/h, r1 = h1/h): D1 = D1_0 + r0/(r0+r1)
    (D1_0 - D1_1) ≈ h m' and δ = (D1_0 - D1_1)/(r0+r1) ≈ h² m''/2. The φ3 term of the exponential
    integrator needs h² m'', so ``d2_scale="consistent"`` (default) uses D2 = 2δ, giving local
    error O(h⁴) (global order 3); ``"dpm_solver"`` uses D2 = δ exactly as DPM-Solver's and
    diffusers' ``multistep_dpm_solver_third_update`` do, whose local error is then O(h³)
    (global order 2 — measured in docs/SAMPLERS.md).
    """
    ns = _check_ns(noise_schedule)
    _check_alg(algorithm_type, "dpmsolver")
    check_choice("d2_scale", d2_scale, D2_SCALES, "multistep third-order D2 convention")
    m2, m1, m0 = model_prev_list[-3], model_prev_list[-2], model_prev_list[-1]
    p2, p1, p0, pt = (_pt(ns, t_prev_list[-3]), _pt(ns, t_prev_list[-2]), _pt(ns, t_prev_list[-1]),
                      _pt(ns, t))
    h1, h0, h = p1.lam - p2.lam, p0.lam - p1.lam, pt.lam - p0.lam
    r0, r1 = h0 / h, h1 / h
    D1_0 = (m0 - m1) / r0
    D1_1 = (m1 - m2) / r1
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
    D2 = (D1_0 - D1_1) * ((2.0 if d2_scale == "consistent" else 1.0) / (r0 + r1))
    if algorithm_type == "dpmsolver++":
        return ((pt.sigma / p0.sigma) * x - (pt.alpha * phi_1(-h)) * m0
                - (pt.alpha * phi_2(-h)) * D1 - (pt.alpha * phi_3(-h)) * D2)
    return (math.exp(pt.log_alpha - p0.log_alpha) * x - (pt.sigma * phi_1(h)) * m0
            - (pt.sigma * phi_2(h)) * D1 - (pt.sigma * phi_3(h)) * D2)


def multistep_dpm_solver_update(noise_schedule: NoiseScheduleVP, x, model_prev_list, t_prev_list,
                                t: float, *, order: int, algorithm_type: str = "dpmsolver",
                                solver_type: str = "dpmsolver", d2_scale: str = "consistent"):
    """One multistep DPM-Solver-k update (k = 1, 2, 3) from t_prev_list[-1] to t (Lu et al. 2022b, Alg. 2)."""
    if order == 1:
        return dpm_solver_first_update(noise_schedule, x, t_prev_list[-1], t, model_prev_list[-1],
                                       algorithm_type=algorithm_type)
    if order == 2:
        return multistep_dpm_solver_second_update(noise_schedule, x, model_prev_list, t_prev_list,
                                                  t, algorithm_type=algorithm_type,
                                                  solver_type=solver_type)
    if order == 3:
        return multistep_dpm_solver_third_update(noise_schedule, x, model_prev_list, t_prev_list,
                                                 t, algorithm_type=algorithm_type,
                                                 d2_scale=d2_scale)
    fail("order", order, "expected 1, 2 or 3")


# --------------------------------------------------------------------------------------------
# The model, as noise or data prediction
# --------------------------------------------------------------------------------------------

def _prediction_fns(model: Callable, ns: NoiseScheduleVP, *, model_type: str, model_time,
                    correcting_x0_fn, dynamic_thresholding_ratio: float):
    """(noise_fn, data_fn): ``fn(x, t) -> ε̂ or x̂0`` from the raw model output (Lu et al. 2022b, §3; DPM-Solver's model_wrapper)."""
    check_choice("model_type", model_type, MODEL_TYPES, "model type")
    if not callable(model):
        fail("model", model, "expected a callable model(x, t) -> prediction")
    if not callable(model_time):
        check_choice("model_time", model_time, MODEL_TIMES, "model time convention")
        if model_time == "dpm_solver" and ns.kind != "discrete":
            fail("model_time", model_time, "the 'dpm_solver' discrete model time needs a "
                 "discrete noise schedule (NoiseScheduleVP.discrete)")
    if isinstance(correcting_x0_fn, str):
        check_choice("correcting_x0_fn", correcting_x0_fn, ("dynamic_thresholding",),
                     "x0 correction")
        from ..diffusion import dynamic_threshold
        ratio = check_real("dynamic_thresholding_ratio", dynamic_thresholding_ratio, lo=0.0, hi=1.0)

        def correcting_x0_fn(x0, t, _ratio=ratio):
            return dynamic_threshold(x0, ratio=_ratio)
    elif correcting_x0_fn is not None and not callable(correcting_x0_fn):
        fail("correcting_x0_fn", correcting_x0_fn,
             "expected None, 'dynamic_thresholding' or a callable (x0, t) -> x0")

    def raw(x, t: float):
        xp = array_namespace(x)
        tin = model_time(t) if callable(model_time) else ns.model_input_time(t, model_time)
        t_arr = xp.full((x.shape[0],), float(tin), dtype=x.dtype, device=device_of(x))
        return check_output(model(x, t_arr), x, name="model output"), _pt(ns, t)

    def noise_fn(x, t: float):
        out, p = raw(x, t)
        if model_type == "noise":
            return out
        if model_type == "x_start":
            return (x - p.alpha * out) / p.sigma
        if model_type == "v":
            return p.alpha * out + p.sigma * x
        return (-p.sigma) * out

    def data_fn(x, t: float):
        out, p = raw(x, t)
        if model_type == "noise":
            x0 = (x - p.sigma * out) / p.alpha
        elif model_type == "x_start":
            x0 = out
        elif model_type == "v":
            x0 = p.alpha * x - p.sigma * out
        else:
            x0 = (x + (p.sigma * p.sigma) * out) / p.alpha
        if correcting_x0_fn is not None:
            x0 = correcting_x0_fn(x0, t)
        return x0

    return noise_fn, data_fn


def _time_range(ns: NoiseScheduleVP, t_start, t_end, lambda_min) -> tuple[float, float]:
    t_T = ns.T if t_start is None else check_real("t_start", t_start, lo=0.0, hi=ns.T, lo_open=True)
    t_0 = (1.0 / ns.total_N if t_end is None
           else check_real("t_end", t_end, lo=0.0, hi=ns.T, lo_open=True))
    if t_T == t_0:
        fail("t_end", t_end, f"must differ from t_start = {t_T!r}")
    if lambda_min is not None:
        lam_min = check_real("lambda_min", lambda_min)
        if t_T > t_0 and float(ns.marginal_lambda(t_T)) < lam_min:
            t_T = float(ns.inverse_lambda(lam_min))
            if not t_T > t_0:
                fail("lambda_min", lambda_min, f"it moves the start time to {t_T!r}, not after "
                     f"t_end = {t_0!r}")
    for name, t in (("t_start", t_T), ("t_end", t_0)):
        lam = float(ns.marginal_lambda(t))
        if not math.isfinite(lam):
            fail(name, t, f"λ is {lam!r} there (α or σ is 0); choose a time with finite log-SNR")
    return t_T, t_0


def sample_dpm_solver(model: Callable, x, *, noise_schedule: NoiseScheduleVP, steps: int,
                      order: int = 2, method: str = "multistep",
                      algorithm_type: str = "dpmsolver++", model_type: str = "noise",
                      skip_type: str = "time_uniform", t_start: float | None = None,
                      t_end: float | None = None, lower_order_final: str = "dpm_solver",
                      solver_type: str = "dpmsolver", denoise_to_zero: bool = False,
                      correcting_x0_fn=None, dynamic_thresholding_ratio: float = 0.995,
                      model_time="continuous", lambda_min: float | None = None,
                      d2_scale: str = "consistent", warmup: str = "lower_order",
                      noise=None, progress: Callable | None = None):
    """DPM-Solver / DPM-Solver++ sampling from t_start to t_end (Lu et al. 2022a, §3; 2022b, §4), as DPM-Solver's ``sample``.

    Parameters
    ----------
    model : callable
        ``model(x, t) -> output`` with t of shape (B,) (continuous times, or see ``model_time``).
    x : array
        The sample at t_start (e.g. standard normal at t = T), batch axis first.
    noise_schedule : NoiseScheduleVP
    steps : int
        Number of model evaluations (NFE), excluding the extra one of ``denoise_to_zero``.
    order : {1, 2, 3}
    method : {"multistep", "singlestep", "singlestep_fixed"}
        "singlestep" is DPM-Solver-fast (orders mixed to spend exactly ``steps`` NFE),
        "singlestep_fixed" uses ⌊steps/order⌋ steps of order ``order``.
    algorithm_type : {"dpmsolver++", "dpmsolver"}
        Data prediction (DPM-Solver++) or noise prediction (DPM-Solver).
    model_type : {"noise", "x_start", "v", "score"}
        What the model returns (ε̂, x̂0, v̂ = α ε̂ - σ x̂0, or the score -ε̂/σ).
    skip_type : {"time_uniform", "logSNR", "time_quadratic"}
    t_start, t_end : float, optional
        Default T and 1/total_N (1e-3 for the linear schedule). t_start < t_end runs the ODE
        forwards (DPM-Solver's ``inverse``).
    lower_order_final : {"dpm_solver", "diffusers", "always", "never"}
        Multistep only: lower orders at the last steps when steps < 10 / < 15 / always / never.
    solver_type : {"dpmsolver", "taylor"}
        How the derivative terms of orders 2-3 are formed (DPM-Solver's two variants).
    denoise_to_zero : bool
        Return the data prediction at t_end (one more model evaluation).
    correcting_x0_fn : None, "dynamic_thresholding" or callable (x0, t) -> x0
        Applied to every data prediction (DPM-Solver++ and ``denoise_to_zero``);
        "dynamic_thresholding" is Imagen's with ``dynamic_thresholding_ratio`` (0.995) and the
        lower bound 1 (DPM-Solver's ``thresholding_max_val = 1``).
    model_time : {"continuous", "dpm_solver"} or callable
        The time the model sees: t itself, DPM-Solver's discrete input (t - 1/N)·1000, or
        ``model_time(t) -> float``.
    lambda_min : float, optional
        Start where λ = lambda_min if λ(t_start) is below it (diffusers' lambda_min_clipped).
    d2_scale : {"consistent", "dpm_solver"}
        Multistep order 3 only: the second-derivative estimate of the 3M update (see
        :func:`multistep_dpm_solver_third_update`); "dpm_solver" reproduces DPM-Solver and
        diffusers (globally second order), "consistent" is third order.
    warmup : {"lower_order", "singlestep"}
        Multistep order 3 only: "lower_order" starts with multistep orders 1 and 2 (DPM-Solver,
        diffusers; its first step's O(h²) local error caps the global order at 2);
        "singlestep" makes the first step a single-step DPM-Solver-2 (r1 = 1/2; one extra model
        evaluation) so the global order stays 3.
    noise
        Ignored (the solvers are deterministic); accepted for the family's calling convention.
    progress : callable, optional
        ``progress(i, n)`` after each update.

    Returns
    -------
    array
        The sample at t_end (or its data prediction with ``denoise_to_zero``).
    """
    ns = _check_ns(noise_schedule)
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")
    steps = check_int("steps", steps, minimum=1)
    order = check_int("order", order, minimum=1)
    if order > 3:
        fail("order", order, "expected 1, 2 or 3")
    check_choice("method", method, METHODS, "DPM-Solver method")
    _check_alg(algorithm_type, solver_type)
    check_choice("skip_type", skip_type, SKIP_TYPES, "step grid")
    _lower_order_threshold(lower_order_final)
    if not isinstance(denoise_to_zero, bool):
        fail("denoise_to_zero", denoise_to_zero, "expected True or False")
    noise_fn, data_fn = _prediction_fns(model, ns, model_type=model_type, model_time=model_time,
                                        correcting_x0_fn=correcting_x0_fn,
                                        dynamic_thresholding_ratio=dynamic_thresholding_ratio)
    fn = data_fn if algorithm_type == "dpmsolver++" else noise_fn
    t_T, t_0 = _time_range(ns, t_start, t_end, lambda_min)
    if method == "multistep":
        if steps < order:
            fail("steps", steps, f"the multistep solver of order {order} needs steps >= {order}")
        check_choice("d2_scale", d2_scale, D2_SCALES, "multistep third-order D2 convention")
        check_choice("warmup", warmup, WARMUPS, "multistep warm-up")
        ts = get_time_steps(ns, skip_type, t_T, t_0, steps)
        orders = multistep_step_orders(steps, order, lower_order_final)
        t_prev, m_prev = [float(ts[0])], [fn(x, float(ts[0]))]
        for step in range(1, steps + 1):
            t = float(ts[step])
            if step == 1 and order == 3 and warmup == "singlestep" and orders[0] < 2 <= steps:
                x, _ = singlestep_dpm_solver_second_update(
                    ns, fn, x, t_prev[-1], t, r1=0.5, model_s=m_prev[-1],
                    algorithm_type=algorithm_type, solver_type=solver_type)
            else:
                x = multistep_dpm_solver_update(ns, x, m_prev, t_prev, t, order=orders[step - 1],
                                                algorithm_type=algorithm_type,
                                                solver_type=solver_type, d2_scale=d2_scale)
            t_prev = (t_prev + [t])[-order:]
            if step < steps:
                m_prev = (m_prev + [fn(x, t)])[-order:]
            call_progress(progress, step, steps)
    else:
        if method == "singlestep":
            orders = singlestep_orders(steps, order)
            if skip_type == "logSNR":
                outer = get_time_steps(ns, skip_type, t_T, t_0, len(orders))
            else:
                fine = get_time_steps(ns, skip_type, t_T, t_0, steps)
                outer = fine[np.cumsum([0] + orders)]
        else:
            if steps < order:
                fail("steps", steps, f"singlestep_fixed of order {order} needs steps >= {order}")
            orders = [order] * (steps // order)
            outer = get_time_steps(ns, skip_type, t_T, t_0, len(orders))
        for i, o in enumerate(orders):
            x, _ = singlestep_dpm_solver_update(ns, fn, x, float(outer[i]), float(outer[i + 1]),
                                                order=o, algorithm_type=algorithm_type,
                                                solver_type=solver_type)
            call_progress(progress, i + 1, len(orders))
    if denoise_to_zero:
        x = data_fn(x, t_0)
    return x


def _register(name: str, *, order: int, method: str, algorithm_type: str, step: Callable,
              formal_order: int | None, doc: str):
    def sampler(model: Callable, x, *, noise_schedule, steps: int, noise=None, **options):
        for fixed in ("order", "method", "algorithm_type"):
            if fixed in options:
                fail(fixed, options[fixed], f"the sampler {name!r} fixes {fixed} to "
                     f"{locals_[fixed]!r}; call sample_dpm_solver for other settings")
        return sample_dpm_solver(model, x, noise_schedule=noise_schedule, steps=steps,
                                 order=order, method=method, algorithm_type=algorithm_type,
                                 noise=noise, **options)

    locals_ = {"order": order, "method": method, "algorithm_type": algorithm_type}
    sampler.__name__ = "sample_" + name.replace("+", "p")
    sampler.__qualname__ = sampler.__name__
    sampler.__doc__ = (doc + "\n\nSee :func:`sample_dpm_solver` for the options (all but order, "
                       "method and algorithm_type).")
    register_sampler(name, family="vp", stochastic=False, order=formal_order, step=step)(sampler)
    globals()[sampler.__name__] = sampler
    return sampler


_SPECS = [
    ("dpm_solver_1", 1, "singlestep_fixed", "dpmsolver", dpm_solver_first_update, 1,
     "DPM-Solver-1 (= DDIM), noise prediction (Lu et al. 2022a, Eq. 3.7)."),
    ("dpm_solver_2", 2, "singlestep_fixed", "dpmsolver", singlestep_dpm_solver_second_update, 2,
     "Single-step DPM-Solver-2, noise prediction (Lu et al. 2022a, Alg. 1, r1 = 1/2)."),
    ("dpm_solver_3", 3, "singlestep_fixed", "dpmsolver", singlestep_dpm_solver_third_update, 3,
     "Single-step DPM-Solver-3, noise prediction (Lu et al. 2022a, Alg. 2, r1 = 1/3, r2 = 2/3)."),
    ("dpm_solver_fast", 3, "singlestep", "dpmsolver", singlestep_dpm_solver_update, 2,
     "DPM-Solver-fast: orders 3, ..., 3 then 2/1 to spend exactly `steps` NFE (Lu et al. 2022a, §3.3)."),
    ("dpm_solver_2m", 2, "multistep", "dpmsolver", multistep_dpm_solver_second_update, 2,
     "Multistep DPM-Solver-2, noise prediction (Lu et al. 2022b, Alg. 2 in the noise form)."),
    ("dpm_solver_3m", 3, "multistep", "dpmsolver", multistep_dpm_solver_third_update, 3,
     "Multistep DPM-Solver-3, noise prediction (Lu et al. 2022b, §4 multistep, in the noise form)."),
    ("dpmpp_2s", 2, "singlestep_fixed", "dpmsolver++", singlestep_dpm_solver_second_update, 2,
     "Single-step DPM-Solver++(2S), data prediction (Lu et al. 2022b, Alg. 1)."),
    ("dpmpp_3s", 3, "singlestep_fixed", "dpmsolver++", singlestep_dpm_solver_third_update, 3,
     "Single-step DPM-Solver++(3S), data prediction (Lu et al. 2022b, §4)."),
    ("dpmpp_2m", 2, "multistep", "dpmsolver++", multistep_dpm_solver_second_update, 2,
     "Multistep DPM-Solver++(2M), data prediction (Lu et al. 2022b, Alg. 2)."),
    ("dpmpp_3m", 3, "multistep", "dpmsolver++", multistep_dpm_solver_third_update, 3,
     "Multistep DPM-Solver++(3M), data prediction (Lu et al. 2022b, §4 multistep, third order)."),
]

for _spec in _SPECS:
    _register(_spec[0], order=_spec[1], method=_spec[2], algorithm_type=_spec[3], step=_spec[4],
              formal_order=_spec[5], doc=_spec[6])
del _spec


#: Deprecated name (one release) of :func:`sample_dpm_solver`.
dpm_solver_sample = sample_dpm_solver
