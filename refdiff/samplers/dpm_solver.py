"""DPM-Solver and DPM-Solver++: exponential integrators of the diffusion ODE in the half log-SNR λ.

Lu, Zhou, Bao, Chen, Li & Zhu (2022a), "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
Model Sampling in Around 10 Steps" (arXiv:2206.00927v3; noise prediction: DPM-Solver-1 Eq. 3.7,
DPM-Solver-2 and -3 Algs. 1-2, DPM-Solver-fast and the step grids §3.3, discrete-time models §3.4)
and (2022b) "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
(arXiv:2211.01095v2; data prediction §3-4, DPM-Solver++(2S) Alg. 1, multistep DPM-Solver++(2M)
Alg. 2). With λ_t = log(α_t/σ_t) and h = λ_t - λ_s the exact solution of the diffusion ODE from s
to t is

    x_t = (α_t/α_s) x_s - α_t ∫_{λ_s}^{λ_t} e^{-λ} ε̂(x_λ, λ) dλ          (noise prediction)
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂0(x_λ, λ) dλ          (data prediction)

and the order-k solvers Taylor-expand ε̂ or x̂0 in λ. The integrals of the Taylor terms are the
φ-functions, formed here with ``math.expm1`` and series for small h, never as exp(h) - 1:

    φ1(h) = e^h - 1,   φ2(h) = (e^h - 1 - h)/h,   φ3(h) = (e^h - 1 - h - h²/2)/h²

(DPM-Solver's ``phi_1``, ``phi_2``, ``phi_3`` of the noise form; the data form uses their values at
-h). Every schedule quantity is a host float computed in float64; only the state x and the model
outputs are arrays, so the solvers run unchanged on any array-API namespace.

Step plan: a sampler call evaluates the noise schedule once, vectorised over every time it will
visit (grid and intermediate points), and turns each step into a handful of host-float
coefficients (``*_coefficients``); the loop then only combines arrays. Every update function
accepts those coefficients (``coefficients=``) in place of the schedule and times.

Family ``"vp"``: ``fn(model, x_T, *, noise_schedule, steps, noise=None, **options)`` where
``model(x, t)`` takes an array t of shape (B,) of continuous times (or another model input, see
``model_time``) and returns the prediction named by ``model_type``. ``steps`` is the number of
model evaluations (NFE), as in DPM-Solver's ``sample``; an explicit grid (``timesteps=`` or
``sigmas=``) may replace it.

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
  ``"always"`` at any step count, ``"never"`` keeps order k to the end, ``"euler_at_final"``
  keeps order k to the end but makes the last step first order (diffusers' ``euler_at_final``).
* Step grids (``skip_type``, DPM-Solver's names): ``"time_uniform"``, ``"logSNR"`` (uniform in λ)
  and ``"time_quadratic"`` (uniform in √t); or an explicit grid: ``timesteps=`` (times t, or
  ``time_unit="index"`` for the integer timesteps n of a discrete schedule, t = (n+1)/N) or
  ``sigmas=`` (σ/α on the variance-exploding scale, λ = -log σ), optionally completed by a final
  step to σ = 0 or to the schedule's smallest σ (``final_sigmas_type``, diffusers' option).
* A step into σ = 0 (the clean data, α = 1, λ = +∞) is first order whatever the solver order —
  its limit x = α x̂0 is finite only there (diffusers and k-diffusion do the same).
* Intermediate points of the single-step solvers (``intermediate``): ``"lambda"`` puts them at
  λ_s + r h with r = 1/2 (order 2) or 1/3, 2/3 (order 3) (2022a, Algs. 1-2); ``"grid"`` puts them on
  the step grid between s and t (DPM-Solver's code: ``timesteps_inner`` of the ``skip_type``
  grid; diffusers' single-step scheduler: its own timesteps). The two coincide for
  ``skip_type="logSNR"`` only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from .._errors import UnknownNameError, check_choice, check_int, check_real, fail
from .._typing import Array, Noise
from ..parameterizations import eps_from_prediction, prediction_type, x0_from_prediction
from . import register_sampler
from ._common import StepInfo, batch_full, check_output, host_table_index, step_reporter

#: A host time or log-SNR: a float, or a NumPy float64 array (methods return the same kind).
_HT = TypeVar("_HT", float, np.ndarray)

if TYPE_CHECKING:
    from typing import TypeAlias

    from ..schedules import Schedule
    from ..sde import SDE

    #: The model's time input: a named convention (:data:`MODEL_TIMES`) or a map t -> model time.
    ModelTime: TypeAlias = str | Callable[[float], float]

__all__ = [
    "NoiseScheduleVP",
    "LAMBDA_CLIPS",
    "LOWER_ORDER_FINAL",
    "SKIP_TYPES",
    "MODEL_TYPES",
    "MODEL_TIMES",
    "ALGORITHM_TYPES",
    "SOLVER_TYPES",
    "METHODS",
    "D2_SCALES",
    "WARMUPS",
    "FINAL_SIGMAS_TYPES",
    "TIME_UNITS",
    "INTERMEDIATES",
    "SECOND_INTERMEDIATES",
    "phi_1",
    "phi_2",
    "phi_3",
    "get_time_steps",
    "singlestep_orders",
    "multistep_step_orders",
    "SchedulePoint",
    "schedule_points",
    "first_order_coefficients",
    "singlestep_second_coefficients",
    "singlestep_third_coefficients",
    "multistep_second_coefficients",
    "multistep_third_coefficients",
    "dpm_solver_first_update",
    "singlestep_dpm_solver_second_update",
    "singlestep_dpm_solver_third_update",
    "singlestep_dpm_solver_update",
    "multistep_dpm_solver_second_update",
    "multistep_dpm_solver_third_update",
    "multistep_dpm_solver_update",
    "sample_dpm_solver",
    "dpm_solver_sample",
]

#: Named λ clips for discrete schedules: DPM-Solver's numerical_clip_alpha (λ ≥ -5.1).
LAMBDA_CLIPS = {"dpm_solver": -5.1}
#: Named lower-order-final rules: use lower orders at the last steps when steps < threshold.
LOWER_ORDER_FINAL = {
    "dpm_solver": 10,
    "diffusers": 15,
    "always": math.inf,
    "never": 0,
    "euler_at_final": 0,  # order k to the end, but the last step first order
}
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
#: What the model returns, in refdiff's prediction vocabulary (DPM-Solver's "noise" and "x_start"
#: are accepted as aliases, see refdiff.parameterizations.PREDICTION_ALIASES).
MODEL_TYPES = ("eps", "x0", "v", "score")
ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++")
SOLVER_TYPES = ("dpmsolver", "taylor")
METHODS = ("singlestep", "singlestep_fixed", "multistep")
#: D2 of the multistep third-order update: 2× DPM-Solver's (consistent, order 3) or DPM-Solver's own.
D2_SCALES = ("consistent", "dpm_solver")
#: How the multistep order-3 solver starts: DPM-Solver's lower-order multistep steps, or one
#: single-step DPM-Solver-2 step (keeps the global order 3).
WARMUPS = ("lower_order", "singlestep")
#: The time the model sees: t; DPM-Solver's discrete input (t - 1/N)·1000; the discrete index
#: t·N - 1 (an exact integer at t = (n+1)/N, diffusers' timesteps); σ_t/α_t (k-diffusion's σ);
#: the discrete index nearest in log σ (diffusers' timesteps with use_karras_sigmas=True).
MODEL_TIMES = ("continuous", "dpm_solver", "index", "sigma", "nearest_index")
#: Where an explicit grid ends besides its own last entry (diffusers' ``final_sigmas_type``).
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
#: What ``timesteps=`` holds: continuous times t, or integer timesteps n of a discrete schedule.
TIME_UNITS = ("t", "index")
#: Where single-step solvers put their intermediate points.
INTERMEDIATES = ("lambda", "grid")
#: How single-step DPM-Solver-3 forms its second intermediate state u2: Alg. 2's φ2 form
#: (DPM-Solver), or the second-order single-step update of the chosen solver_type (diffusers).
SECOND_INTERMEDIATES = ("dpm_solver", "diffusers")


# --------------------------------------------------------------------------------------------
# φ-functions (host floats, float64)
# --------------------------------------------------------------------------------------------


def _exp_tail(h: float, k: int) -> float:
    """(e^h - Σ_{j<k} h^j/j!) / h^(k-1) for k ≥ 1, by its series when |h| < 2 (no cancellation)."""
    term = 1.0
    for j in range(1, k):
        term /= j  # term = 1/(k-1)!
    total = 0.0
    j = k
    term = term * h / k  # h^k/k! divided by h^(k-1)
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


def _interp(x: npt.ArrayLike, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation with linear extrapolation beyond both ends (DPM-Solver's interpolate_fn)."""
    x = np.asarray(x, dtype=np.float64)
    idx = np.clip(np.searchsorted(xs, x, side="left"), 1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return y0 + (x - x0) * ((y1 - y0) / (x1 - x0))


def _log_sigma_from_log_alpha(la: np.ndarray) -> np.ndarray:
    """log σ = ½ log(1 - α²) = ½ log(-expm1(2 log α)) (VP: α² + σ² = 1)."""
    return 0.5 * np.log(-np.expm1(2.0 * la))


def _lambda_from_log_alpha(la: npt.ArrayLike) -> np.ndarray:
    """λ = log α - log σ of a VP schedule (+inf where α = 1)."""
    la = np.asarray(la, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = la - _log_sigma_from_log_alpha(la)
    return np.where(la == 0.0, np.inf, out)


def _scalar_or_array(v: float | np.ndarray, like: _HT) -> _HT:
    return cast(_HT, float(v) if np.ndim(like) == 0 else np.asarray(v, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class NoiseScheduleVP:
    """A noise schedule α_t, σ_t, λ_t = log(α_t/σ_t) on t ∈ [0, T] for DPM-Solver (Lu et al. 2022a, §2.1 and §3.4).

    Host-side (NumPy float64) like the schedule tables: methods take a float or a NumPy array of
    times and return the same. Build one with :meth:`linear` (the linear VP-SDE of Song et al.
    2021, whose closed forms are :class:`refdiff.sde.VPSDE`'s), :meth:`discrete` (a discrete
    schedule by DPM-Solver's piecewise-linear interpolation of log α in t, with t_n = (n+1)/N for
    the index n = 0..N-1) or :meth:`from_sde` (any refdiff continuous SDE: VP, sub-VP or VE).

    Attributes
    ----------
    kind : {"linear", "discrete", "sde"}
    T : float
        End time (1).
    total_N : int
        Number of discrete steps (1000 for "linear", as DPM-Solver; the kept entries for
        "discrete"); the default end time of sampling is 1/total_N.
    sde : refdiff.sde.SDE or None
        The SDE whose closed forms give α, σ and λ ("linear" and "sde").
    """

    kind: str
    T: float = 1.0
    total_N: int = 1000
    beta_min: float | None = None
    beta_max: float | None = None
    t_array: np.ndarray | None = None
    log_alpha_array: np.ndarray | None = None
    clip_lambda: float | None = None
    sde: SDE | None = None

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> NoiseScheduleVP:
        """The linear VP-SDE β(t) = β0 + t(β1 - β0) (Song et al. 2021, Eq. 33; DPM-Solver's 'linear'), through refdiff.sde.VPSDE."""
        from ..sde import VPSDE

        sde = VPSDE(beta_min=beta_min, beta_max=beta_max, N=1000)
        return cls(
            "linear",
            T=float(sde.T),
            total_N=1000,
            beta_min=sde.beta_min,
            beta_max=sde.beta_max,
            sde=sde,
        )

    @classmethod
    def discrete(
        cls,
        schedule: Schedule | None = None,
        *,
        betas: Sequence[float] | None = None,
        alphas_cumprod: Sequence[float] | None = None,
        clip_lambda: str | float | None = "dpm_solver",
    ) -> NoiseScheduleVP:
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
        assert schedule is not None
        log_alpha = 0.5 * np.array(schedule.log_alphas_cumprod, dtype=np.float64)
        if isinstance(clip_lambda, str):
            clip = LAMBDA_CLIPS.get(clip_lambda)
            if clip is None:
                raise UnknownNameError(
                    f"clip_lambda={clip_lambda!r} is not a known λ clip; allowed: "
                    f"{', '.join(map(repr, LAMBDA_CLIPS))}, a float or None"
                )
        elif clip_lambda is None:
            clip = None
        else:
            clip = check_real("clip_lambda", clip_lambda)
        if clip is not None:
            lam = _lambda_from_log_alpha(log_alpha)
            drop = int(np.sum(lam < clip))  # λ decreases in n: the dropped entries are trailing
            if drop >= log_alpha.size - 1:
                fail(
                    "clip_lambda",
                    clip_lambda,
                    f"it leaves {log_alpha.size - drop} entries of the "
                    "schedule; at least 2 are needed",
                )
            if drop:
                log_alpha = log_alpha[:-drop]
        if log_alpha.size < 2:
            fail("schedule", schedule, "expected at least 2 timesteps for the interpolation")
        if not np.isfinite(log_alpha[-1]):
            fail(
                "schedule",
                schedule,
                "its last ᾱ is 0 (zero terminal SNR): λ = -inf there; use "
                "clip_lambda= or start later with lambda_min=",
            )
        n = log_alpha.size
        t_array = np.arange(1, n + 1, dtype=np.float64) / n
        return cls(
            "discrete", total_N=n, t_array=t_array, log_alpha_array=log_alpha, clip_lambda=clip
        )

    @classmethod
    def from_sde(cls, sde: SDE) -> NoiseScheduleVP:
        """The marginal schedule of a refdiff continuous SDE (refdiff.sde: VPSDE, SubVPSDE, VESDE).

        α_t, σ_t and λ_t come from the SDE's closed forms (sub-VP and VE are not variance
        preserving; the solvers only use α_t, σ_t and λ_t, so they apply unchanged).
        """
        for attr in ("marginal_log_mean_coeff", "marginal_std", "lambda_", "t_from_lambda"):
            if not hasattr(sde, attr):
                fail("sde", sde, "expected a refdiff.sde SDE (VPSDE, SubVPSDE or VESDE)")
        return cls("sde", T=float(sde.T), total_N=int(sde.N), sde=sde)

    # -- marginals ---------------------------------------------------------------------------
    def _check_t(self, t: npt.ArrayLike) -> np.ndarray:
        a = np.asarray(t, dtype=np.float64)
        if not np.all((a >= 0.0) & (a <= self.T)):
            fail("t", t, f"expected times in [0, {self.T!r}]")
        return a

    def marginals(self, t: _HT) -> tuple[_HT, _HT, _HT]:
        """(log α_t, σ_t, λ_t) in one evaluation of the schedule (host floats or NumPy arrays)."""
        a = self._check_t(t)
        if self.sde is not None:
            la = np.asarray(self.sde.marginal_log_mean_coeff(a), dtype=np.float64)
            sig = np.asarray(self.sde.marginal_std(a), dtype=np.float64)
            lam = np.asarray(self.sde.lambda_(a), dtype=np.float64)
        else:
            assert (
                self.t_array is not None and self.log_alpha_array is not None
            )  # a discrete schedule
            la = _interp(a, self.t_array, self.log_alpha_array)
            sig = np.sqrt(-np.expm1(2.0 * la))
            lam = _lambda_from_log_alpha(la)
        return _scalar_or_array(la, t), _scalar_or_array(sig, t), _scalar_or_array(lam, t)

    def marginal_log_mean_coeff(self, t: _HT) -> _HT:
        """log α_t (the SDE's closed form; discrete: piecewise-linear in t)."""
        a = self._check_t(t)
        if self.sde is not None:
            out = self.sde.marginal_log_mean_coeff(a)
        else:
            assert (
                self.t_array is not None and self.log_alpha_array is not None
            )  # a discrete schedule
            out = _interp(a, self.t_array, self.log_alpha_array)
        return _scalar_or_array(out, t)

    def marginal_alpha(self, t: _HT) -> _HT:
        """α_t = exp(log α_t)."""
        return _scalar_or_array(np.exp(self.marginal_log_mean_coeff(t)), t)

    def marginal_std(self, t: _HT) -> _HT:
        """σ_t: the SDE's, or √(-expm1(2 log α_t)) (discrete VP)."""
        return self.marginals(t)[1]

    def marginal_lambda(self, t: _HT) -> _HT:
        """λ_t = log α_t - log σ_t (+inf where σ_t = 0)."""
        return self.marginals(t)[2]

    def inverse_lambda(self, lam: _HT) -> _HT:
        """The t with λ_t = lam (the SDE's closed form; discrete: interpolation of t in log α)."""
        lam_a = np.asarray(lam, dtype=np.float64)
        if np.any(np.isnan(lam_a)):
            fail("lam", lam, "expected real half log-SNR values (NaN given)")
        if self.sde is not None:
            out = np.asarray(self.sde.t_from_lambda(lam_a), dtype=np.float64)
        else:
            assert (
                self.t_array is not None and self.log_alpha_array is not None
            )  # a discrete schedule
            la = -0.5 * np.logaddexp(0.0, -2.0 * lam_a)  # log α = -½ log(1 + e^{-2λ}) (VP)
            out = _interp(la, self.log_alpha_array[::-1].copy(), self.t_array[::-1].copy())
        return _scalar_or_array(out, lam)

    def model_input_time(self, t: _HT, convention: str = "continuous") -> _HT:
        """The time fed to the model: t itself, DPM-Solver's discrete input (t - 1/N)·1000, or the discrete index t·N - 1.

        ``"index"`` rounds t·N - 1 to the integer n where it is within 1e-9 of it (the knots
        t_n = (n+1)/N), so diffusers' integer timesteps reach the model exactly. ``"sigma"``
        (σ_t/α_t) is formed by the sampler from its plan (see :func:`schedule_points`).
        """
        check_choice("model_time", convention, MODEL_TIMES, "model time convention")
        if convention == "continuous":
            return t
        if convention in ("sigma", "nearest_index"):
            la, sig, _ = self.marginals(t)
            sve = sig / np.exp(la)
            if convention == "sigma":
                return sve
            self._check_discrete(convention)
            out = [self.nearest_index(float(v)) for v in np.atleast_1d(sve)]
            return _scalar_or_array(np.asarray(out, dtype=np.float64), t)
        self._check_discrete(convention)
        if convention == "dpm_solver":
            return (t - 1.0 / self.total_N) * 1000.0
        n = np.asarray(t, dtype=np.float64) * self.total_N - 1.0
        r = np.round(n)
        return _scalar_or_array(np.where(np.abs(n - r) <= 1e-9, r, n), t)

    def _check_discrete(self, convention: str) -> None:
        """Raise unless this is a discrete schedule (the discrete model-time conventions need one)."""
        if self.kind != "discrete":
            fail(
                "model_time",
                convention,
                f"the {convention!r} discrete model time needs a "
                "discrete noise schedule (NoiseScheduleVP.discrete)",
            )

    def nearest_index(self, sigma: float) -> float:
        """The discrete index n whose σ_n/α_n is nearest to ``sigma`` in log σ (diffusers' ``_sigma_to_t``, rounded: its ``use_karras_sigmas`` timesteps)."""
        self._check_discrete("nearest_index")
        log_sigma = math.log(sigma) if sigma > 0.0 else -math.inf  # σ = 0: the first index
        return host_table_index(log_sigma, self._log_sigma_table, "nearest")

    @functools.cached_property
    def _log_sigma_table(self) -> list[float]:
        """log(σ_n/α_n) = ½ log(e^(−2 log α_n) − 1) of the discrete table, increasing in n."""
        la = np.asarray(self.log_alpha_array, dtype=np.float64)
        return [float(v) for v in 0.5 * np.log(np.expm1(-2.0 * la))]


def _check_ns(noise_schedule: object) -> NoiseScheduleVP:
    if not isinstance(noise_schedule, NoiseScheduleVP):
        fail(
            "noise_schedule",
            noise_schedule,
            "expected a refdiff.samplers.dpm_solver."
            "NoiseScheduleVP (NoiseScheduleVP.linear(), .discrete(schedule) or .from_sde(sde))",
        )
    return noise_schedule


# --------------------------------------------------------------------------------------------
# Schedule points: the host floats a step needs at one time
# --------------------------------------------------------------------------------------------


class SchedulePoint(NamedTuple):
    """The schedule at one time, as host floats: t, log α, α, σ, λ, σ/α and the model's input time."""

    t: float
    log_alpha: float
    alpha: float
    sigma: float
    lam: float
    sigma_ve: float
    model_t: float


#: σ = 0 is the clean data: α = 1, λ = +∞ (the last point of a grid that ends at σ = 0).
def _zero_point() -> SchedulePoint:
    return SchedulePoint(0.0, 0.0, 1.0, 0.0, math.inf, 0.0, 0.0)


def _model_times(
    ns: NoiseScheduleVP, ts: np.ndarray, sve: np.ndarray, model_time: ModelTime
) -> list[float]:
    if callable(model_time):
        return [float(model_time(float(t))) for t in ts]
    if model_time == "sigma":
        return [float(s) for s in sve]
    if model_time == "nearest_index":
        return [ns.nearest_index(float(s)) for s in sve]
    return [float(v) for v in np.atleast_1d(ns.model_input_time(ts, model_time))]


def schedule_points(
    noise_schedule: NoiseScheduleVP,
    times: npt.ArrayLike,
    *,
    model_time: ModelTime = "continuous",
    sigmas: npt.ArrayLike | None = None,
) -> list[SchedulePoint]:
    """The schedule at every time of ``times`` in one vectorised evaluation (the step plan's inputs).

    With ``sigmas`` (σ/α on the variance-exploding scale, one per time) λ = -log σ and σ_t = α_t·σ
    are taken from the grid itself (``times`` then holds t(λ), used for the model time), and so is
    α = (1 + σ²)^(-1/2) for a variance-preserving schedule (α_t of the schedule otherwise); σ = 0
    gives the clean-data point (α = 1, λ = +∞).
    """
    ns = _check_ns(noise_schedule)
    ts = np.atleast_1d(np.asarray(times, dtype=np.float64))
    la, sig, lam = (np.atleast_1d(v) for v in ns.marginals(ts))
    alpha = np.array([math.exp(float(v)) for v in la])
    if sigmas is not None:
        sve = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
        with np.errstate(divide="ignore"):
            lam = -np.log(sve)
        if _is_vp(ns):  # α² + σ² = 1: α = (1 + σ²)^(-1/2) from the grid itself
            la = -0.5 * np.log1p(sve * sve)
            alpha = np.array([math.exp(float(v)) for v in la])
        sig = alpha * sve
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            sve = sig / alpha
    tin = _model_times(ns, ts, sve, model_time)
    out = []
    for k in range(ts.size):
        if sve[k] == 0.0:
            out.append(_zero_point()._replace(model_t=tin[k]))
        else:
            out.append(
                SchedulePoint(
                    float(ts[k]),
                    float(la[k]),
                    float(alpha[k]),
                    float(sig[k]),
                    float(lam[k]),
                    float(sve[k]),
                    tin[k],
                )
            )
    return out


def _is_vp(ns: NoiseScheduleVP) -> bool:
    """Whether α_t² + σ_t² = 1 (linear and discrete schedules, refdiff.sde.VPSDE)."""
    from ..sde import VPSDE

    return ns.kind in ("linear", "discrete") or isinstance(ns.sde, VPSDE)


def _point(ns: NoiseScheduleVP, t: float | None, name: str = "t") -> SchedulePoint:
    if t is None:
        fail(name, t, "give the times s and t, or the step's coefficients=")
        raise AssertionError("unreachable")
    return schedule_points(ns, [float(t)])[0]


# --------------------------------------------------------------------------------------------
# Time grids
# --------------------------------------------------------------------------------------------


def get_time_steps(
    noise_schedule: NoiseScheduleVP, skip_type: str, t_T: float, t_0: float, N: int
) -> np.ndarray:
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


def singlestep_orders(steps: int, order: int, lower_order_final: str = "dpm_solver") -> list[int]:
    """Per-step orders of DPM-Solver-fast with ``steps`` NFE and maximum order 1-3 (Lu et al. 2022a, §3.3).

    ``lower_order_final="diffusers"`` is diffusers' single-step order list instead: the same,
    except that an even number of order-2 evaluations ends with two first-order steps
    ([2, …, 2, 1, 1] where DPM-Solver-fast takes [2, …, 2]); the other rules change nothing here.
    """
    steps = check_int("steps", steps, minimum=1)
    order = check_int("order", order, minimum=1)
    _lower_order_threshold(lower_order_final)
    if order == 2 and lower_order_final == "diffusers" and steps % 2 == 0:
        return [2] * (steps // 2 - 1) + [1, 1]
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
    raise AssertionError("unreachable")


def multistep_step_orders(
    steps: int, order: int, lower_order_final: str = "dpm_solver"
) -> list[int]:
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
    if lower_order_final == "euler_at_final":
        orders[-1] = 1
    return orders


def _lower_order_threshold(name: object) -> float:
    if not isinstance(name, str) or name not in LOWER_ORDER_FINAL:
        raise UnknownNameError(
            f"lower_order_final={name!r} is not a known rule; allowed: "
            f"{', '.join(map(repr, LOWER_ORDER_FINAL))}"
        )
    return LOWER_ORDER_FINAL[name]


def _explicit_grid(
    ns: NoiseScheduleVP,
    timesteps: npt.ArrayLike | None,
    sigmas: npt.ArrayLike | None,
    time_unit: str,
    final_sigmas_type: str | None,
    model_time: ModelTime,
) -> list[SchedulePoint]:
    """The points of an explicit grid (``timesteps=`` or ``sigmas=``), completed by ``final_sigmas_type``."""
    check_choice("time_unit", time_unit, TIME_UNITS, "time unit")
    if final_sigmas_type is not None:
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES, "final σ")
    given: npt.ArrayLike | None  # the grid argument named in error messages
    if sigmas is not None:
        s = np.asarray(sigmas, dtype=np.float64)
        if s.ndim != 1 or s.size < 1 or not np.all(np.isfinite(s)) or np.any(s < 0.0):
            fail("sigmas", sigmas, "expected a 1-D grid of finite noise levels σ >= 0")
        pos = s > 0.0
        with np.errstate(divide="ignore"):
            lam = -np.log(s)
        lam_T = float(ns.marginal_lambda(ns.T))
        # A σ above the schedule's largest by < 1e-6 relative (its float32 copy) is taken at t = T.
        if np.any(lam[pos] < lam_T - 1e-6):
            fail(
                "sigmas",
                sigmas,
                f"the largest σ/α of the noise schedule is {math.exp(-lam_T)!r} "
                "(at t = T); every σ must lie within it",
            )
        ts = np.zeros_like(s)
        ts[pos] = np.atleast_1d(ns.inverse_lambda(np.maximum(lam[pos], lam_T)))
        points = schedule_points(ns, ts, model_time=model_time, sigmas=s)
        name, given = "sigmas", sigmas
    else:
        raw = np.asarray(timesteps)
        if raw.ndim != 1 or raw.size < 1:
            fail("timesteps", timesteps, "expected a 1-D grid of times")
        if time_unit == "index":
            if ns.kind != "discrete":
                fail(
                    "time_unit",
                    time_unit,
                    "integer timesteps need a discrete noise schedule (NoiseScheduleVP.discrete)",
                )
            n = np.asarray(raw, dtype=np.float64)
            if (
                not np.all(np.isfinite(n))
                or np.any(n != np.round(n))
                or np.any(n < 0)
                or np.any(n >= ns.total_N)
            ):
                fail(
                    "timesteps",
                    timesteps,
                    f"expected integer timesteps n in [0, {ns.total_N - 1}] "
                    "of the discrete schedule (t = (n+1)/N)",
                )
            assert ns.t_array is not None  # a discrete schedule (checked above)
            ts = ns.t_array[n.astype(np.int64)]
        else:
            ts = np.asarray(raw, dtype=np.float64)
            if not np.all(np.isfinite(ts)) or np.any(ts < 0.0) or np.any(ts > ns.T):
                fail("timesteps", timesteps, f"expected times t in [0, {ns.T!r}]")
        points = schedule_points(ns, ts, model_time=model_time)
        name, given = "timesteps", timesteps
    if final_sigmas_type == "zero":
        points.append(_zero_point())
    elif final_sigmas_type == "sigma_min":
        points.extend(schedule_points(ns, [1.0 / ns.total_N], model_time=model_time))
    for k, p in enumerate(points):
        if not (math.isfinite(p.lam) or (p.sigma == 0.0 and k == len(points) - 1)):
            fail(
                name,
                given,
                f"λ is {p.lam!r} at entry {k} (t = {p.t!r}); only the last point "
                "may be σ = 0 (or use final_sigmas_type='zero')",
            )
    if len(points) < 2:
        fail(
            name,
            given,
            "expected at least two points (one step); add final_sigmas_type= to "
            "end the grid at σ = 0 or σ_min",
        )
    for k in range(1, len(points)):
        if not points[k].lam > points[k - 1].lam:
            fail(
                name,
                given,
                f"the grid must run from noise to data (λ strictly increasing); entry "
                f"{k} (t = {points[k].t!r}) does not follow entry {k - 1} (t = {points[k - 1].t!r})"
                + (
                    f" after final_sigmas_type={final_sigmas_type!r}"
                    if k == len(points) - 1 and final_sigmas_type is not None
                    else ""
                ),
            )
    return points


# --------------------------------------------------------------------------------------------
# Step coefficients (host floats) and step functions
# --------------------------------------------------------------------------------------------


def _check_alg(algorithm_type: str, solver_type: str) -> None:
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES, "DPM-Solver algorithm")
    check_choice("solver_type", solver_type, SOLVER_TYPES, "DPM-Solver solver type")


class FirstCoefficients(NamedTuple):
    """x_t = a·x_s - b·m_s."""

    a: float
    b: float


class MultistepSecondCoefficients(NamedTuple):
    """x_t = a·x - b·m0 - c·D1 with D1 = (m0 - m1)·w."""

    a: float
    b: float
    w: float
    c: float


class MultistepThirdCoefficients(NamedTuple):
    """x_t = a·x - b·m0 - c2·D1 - c3·D2 from D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + w(D1_0 - D1_1), D2 = d2·(D1_0 - D1_1)."""

    a: float
    b: float
    r0: float
    r1: float
    w: float
    d2: float
    c2: float
    c3: float


class SinglestepSecondCoefficients(NamedTuple):
    """u = a1·x - b1·m_s at s1; x_t = a·x - b·m_s - c·(m_s1 - m_s)."""

    s1: SchedulePoint
    a1: float
    b1: float
    a: float
    b: float
    c: float


class SinglestepThirdCoefficients(NamedTuple):
    """u1 = a1·x - b1·m_s; u2 = a2·x - b2·m_s - k2·(m_s1 - m_s); then the "dpmsolver" (k) or "taylor" (r1, r2, c2, c3) combination."""

    s1: SchedulePoint
    s2: SchedulePoint
    a1: float
    b1: float
    a2: float
    b2: float
    k2: float
    a: float
    b: float
    k: float
    r1: float
    r2: float
    c2: float
    c3: float
    taylor: bool


def first_order_coefficients(
    s: SchedulePoint, t: SchedulePoint, algorithm_type: str = "dpmsolver", h: float | None = None
) -> FirstCoefficients:
    """(a, b) of the first-order step x_t = a x_s - b m_s (Lu et al. 2022a, Eq. 3.7; 2022b, §4).

    Noise form: a = α_t/α_s, b = σ_t φ1(h); data form: a = σ_t/σ_s, b = α_t φ1(-h). A step into
    σ_t = 0 takes the limits (x_t = α_t x̂0): noise form b = α_t σ_s/α_s, data form a = 0, b = -α_t.
    ``h`` defaults to λ_t - λ_s.
    """
    if h is None:
        h = t.lam - s.lam
    if algorithm_type == "dpmsolver++":
        return FirstCoefficients(t.sigma / s.sigma, t.alpha * phi_1(-h))
    a = math.exp(t.log_alpha - s.log_alpha)
    if t.sigma == 0.0:
        return FirstCoefficients(a, a * s.sigma)
    return FirstCoefficients(a, t.sigma * phi_1(h))


def _first(x: Array, m: Array, c: FirstCoefficients) -> Array:
    """The first-order term a·x - b·m (every update starts from it)."""
    return c.a * x - c.b * m


def _cphi(p: SchedulePoint, phi: Callable[[float], float], h: float, pp: bool) -> float:
    """α_t φ(-h) (data form) or σ_t φ(h) (noise form)."""
    return p.alpha * phi(-h) if pp else p.sigma * phi(h)


def multistep_second_coefficients(
    p1: SchedulePoint,
    p0: SchedulePoint,
    pt: SchedulePoint,
    *,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
) -> MultistepSecondCoefficients:
    """Coefficients of the multistep second-order update from p0 to pt with history p1 (Lu et al. 2022b, Alg. 2)."""
    h0, h = p0.lam - p1.lam, pt.lam - p0.lam
    a, b = first_order_coefficients(p0, pt, algorithm_type, h)
    if solver_type == "dpmsolver":
        c = 0.5 * b
    else:
        c = _cphi(pt, phi_2, h, algorithm_type == "dpmsolver++")
    return MultistepSecondCoefficients(a, b, h / h0, c)


def multistep_third_coefficients(
    p2: SchedulePoint,
    p1: SchedulePoint,
    p0: SchedulePoint,
    pt: SchedulePoint,
    *,
    algorithm_type: str = "dpmsolver",
    d2_scale: str = "consistent",
) -> MultistepThirdCoefficients:
    """Coefficients of the multistep third-order update from p0 to pt with history p1, p2 (Lu et al. 2022b, §4, 3M)."""
    h1, h0, h = p1.lam - p2.lam, p0.lam - p1.lam, pt.lam - p0.lam
    r0, r1 = h0 / h, h1 / h
    a, b = first_order_coefficients(p0, pt, algorithm_type, h)
    pp = algorithm_type == "dpmsolver++"
    return MultistepThirdCoefficients(
        a,
        b,
        r0,
        r1,
        r0 / (r0 + r1),
        (2.0 if d2_scale == "consistent" else 1.0) / (r0 + r1),
        _cphi(pt, phi_2, h, pp),
        _cphi(pt, phi_3, h, pp),
    )


def singlestep_second_coefficients(
    ps: SchedulePoint,
    p1: SchedulePoint,
    pt: SchedulePoint,
    r1: float,
    *,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
) -> SinglestepSecondCoefficients:
    """Coefficients of single-step DPM-Solver-2 from ps to pt via p1 at λ_s + r1 h (Lu et al. 2022a, Alg. 1; 2022b, Alg. 1)."""
    h = pt.lam - ps.lam
    a1, b1 = first_order_coefficients(ps, p1, algorithm_type, r1 * h)
    a, b = first_order_coefficients(ps, pt, algorithm_type, h)
    if solver_type == "dpmsolver":
        c = (0.5 / r1) * b
    else:
        c = (1.0 / r1) * _cphi(pt, phi_2, h, algorithm_type == "dpmsolver++")
    return SinglestepSecondCoefficients(p1, a1, b1, a, b, c)


def singlestep_third_coefficients(
    ps: SchedulePoint,
    p1: SchedulePoint,
    p2: SchedulePoint,
    pt: SchedulePoint,
    r1: float,
    r2: float,
    *,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
    second_intermediate: str = "dpm_solver",
) -> SinglestepThirdCoefficients:
    """Coefficients of single-step DPM-Solver-3 from ps to pt via λ_s + r1 h and λ_s + r2 h (Lu et al. 2022a, Alg. 2).

    ``second_intermediate="diffusers"`` with ``solver_type="dpmsolver"`` forms u2 by the
    midpoint second-order step from s to s2 via s1 (k2 = ½ (r2/r1) b2), as diffusers'
    single-step scheduler does; otherwise u2 is Alg. 2's φ2 form.
    """
    h = pt.lam - ps.lam
    pp = algorithm_type == "dpmsolver++"
    a1, b1 = first_order_coefficients(ps, p1, algorithm_type, r1 * h)
    a2, b2 = first_order_coefficients(ps, p2, algorithm_type, r2 * h)
    if second_intermediate == "diffusers" and solver_type == "dpmsolver":
        k2 = (0.5 / (r1 / r2)) * b2
    else:
        # The data form uses α and φ(-h) where the noise form uses σ and φ(h) (DPM-Solver's
        # phi_2 = phi_1/h + 1 of the data form is -phi_2(-h) here).
        k2 = (r2 / r1) * _cphi(p2, phi_2, r2 * h, pp)
    a, b = first_order_coefficients(ps, pt, algorithm_type, h)
    c2 = _cphi(pt, phi_2, h, pp)
    return SinglestepThirdCoefficients(
        p1,
        p2,
        a1,
        b1,
        a2,
        b2,
        k2,
        a,
        b,
        (1.0 / r2) * c2,
        r1,
        r2,
        c2,
        _cphi(pt, phi_3, h, pp),
        solver_type == "taylor",
    )


def dpm_solver_first_update(
    noise_schedule: NoiseScheduleVP | None,
    x: Array,
    s: float | None,
    t: float | None,
    model_s: Array,
    *,
    algorithm_type: str = "dpmsolver",
    coefficients: FirstCoefficients | None = None,
) -> Array:
    """DPM-Solver-1 from s to t: x_t = (α_t/α_s) x_s - σ_t φ1(h) ε̂_s (Lu et al. 2022a, Eq. 3.7 / Alg. 1, = DDIM).

    With ``algorithm_type="dpmsolver++"``, ``model_s`` is the data prediction x̂0 and
    x_t = (σ_t/σ_s) x_s - α_t φ1(-h) x̂0_s (Lu et al. 2022b, §4, first order). ``coefficients``
    (from :func:`first_order_coefficients`) replaces the schedule and the times.
    """
    if coefficients is None:
        ns = _check_ns(noise_schedule)
        _check_alg(algorithm_type, "dpmsolver")
        coefficients = first_order_coefficients(_point(ns, s, "s"), _point(ns, t), algorithm_type)
    return _first(x, model_s, coefficients)


def singlestep_dpm_solver_second_update(
    noise_schedule: NoiseScheduleVP | None,
    model_fn: Callable[[Array, float], Array],
    x: Array,
    s: float | None,
    t: float | None,
    *,
    r1: float = 0.5,
    model_s: Array | None = None,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
    coefficients: SinglestepSecondCoefficients | None = None,
) -> tuple[Array, list[Array]]:
    """Single-step DPM-Solver-2 from s to t via s1 with λ_{s1} = λ_s + r1 h (Lu et al. 2022a, Alg. 1; 2022b, Alg. 1 for ++).

    ``model_fn(x, t) -> prediction`` (noise, or data for "dpmsolver++"). Returns
    (x_t, [model_s, model_s1]). ``coefficients`` (from :func:`singlestep_second_coefficients`)
    replaces the schedule, s, t and r1; ``model_s`` must then be given.
    """
    c = coefficients
    if c is None:
        ns = _check_ns(noise_schedule)
        _check_alg(algorithm_type, solver_type)
        r1 = check_real("r1", r1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        ps, pt = _point(ns, s, "s"), _point(ns, t)
        p1 = _point(ns, float(ns.inverse_lambda(ps.lam + r1 * (pt.lam - ps.lam))))
        c = singlestep_second_coefficients(
            ps, p1, pt, r1, algorithm_type=algorithm_type, solver_type=solver_type
        )
        if model_s is None:
            model_s = model_fn(x, ps.t)
    model_s1 = model_fn(_first(x, model_s, FirstCoefficients(c.a1, c.b1)), c.s1.t)
    x_t = _first(x, model_s, FirstCoefficients(c.a, c.b)) - c.c * (model_s1 - model_s)
    return x_t, [model_s, model_s1]


def singlestep_dpm_solver_third_update(
    noise_schedule: NoiseScheduleVP | None,
    model_fn: Callable[[Array, float], Array],
    x: Array,
    s: float | None,
    t: float | None,
    *,
    r1: float = 1.0 / 3.0,
    r2: float = 2.0 / 3.0,
    model_s: Array | None = None,
    model_s1: Array | None = None,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
    coefficients: SinglestepThirdCoefficients | None = None,
) -> tuple[Array, list[Array]]:
    """Single-step DPM-Solver-3 from s to t via λ_s + r1 h and λ_s + r2 h (Lu et al. 2022a, Alg. 2; 2022b, §4 for ++).

    Returns (x_t, [model_s, model_s1, model_s2]). ``coefficients`` (from
    :func:`singlestep_third_coefficients`) replaces the schedule, s, t, r1 and r2; ``model_s``
    must then be given.
    """
    c = coefficients
    if c is None:
        ns = _check_ns(noise_schedule)
        _check_alg(algorithm_type, solver_type)
        r1 = check_real("r1", r1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        r2 = check_real("r2", r2, lo=r1, hi=1.0, lo_open=True, hi_open=True)
        ps, pt = _point(ns, s, "s"), _point(ns, t)
        h = pt.lam - ps.lam
        t12 = np.asarray(ns.inverse_lambda(np.array([ps.lam + r1 * h, ps.lam + r2 * h])))
        p1, p2 = schedule_points(ns, t12)
        c = singlestep_third_coefficients(
            ps, p1, p2, pt, r1, r2, algorithm_type=algorithm_type, solver_type=solver_type
        )
        if model_s is None:
            model_s = model_fn(x, ps.t)
    if model_s1 is None:
        model_s1 = model_fn(_first(x, model_s, FirstCoefficients(c.a1, c.b1)), c.s1.t)
    d1 = model_s1 - model_s
    model_s2 = model_fn(_first(x, model_s, FirstCoefficients(c.a2, c.b2)) - c.k2 * d1, c.s2.t)
    d2 = model_s2 - model_s
    base = _first(x, model_s, FirstCoefficients(c.a, c.b))
    if not c.taylor:
        x_t = base - c.k * d2
    else:
        D1_0, D1_1 = d1 / c.r1, d2 / c.r2
        D1 = (c.r2 * D1_0 - c.r1 * D1_1) / (c.r2 - c.r1)
        D2 = 2.0 * (D1_1 - D1_0) / (c.r2 - c.r1)
        x_t = base - c.c2 * D1 - c.c3 * D2
    return x_t, [model_s, model_s1, model_s2]


def singlestep_dpm_solver_update(
    noise_schedule: NoiseScheduleVP | None,
    model_fn: Callable[[Array, float], Array],
    x: Array,
    s: float | None,
    t: float | None,
    *,
    order: int,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
    r1: float | None = None,
    r2: float | None = None,
    model_s: Array | None = None,
    coefficients: FirstCoefficients
    | SinglestepSecondCoefficients
    | SinglestepThirdCoefficients
    | None = None,
) -> tuple[Array, list[Array]]:
    """One single-step DPM-Solver-k update (k = 1, 2, 3) from s to t (Lu et al. 2022a, Eq. 3.7, Algs. 1-2).

    Returns (x_t, model values at s and the intermediate times). ``coefficients`` is the one of
    the order's ``*_coefficients`` helper (``model_s`` must then be given).
    """
    if order == 1:
        if model_s is None:
            model_s = model_fn(x, _point(_check_ns(noise_schedule), s, "s").t)
        return dpm_solver_first_update(
            noise_schedule,
            x,
            s,
            t,
            model_s,
            algorithm_type=algorithm_type,
            coefficients=cast("FirstCoefficients | None", coefficients),
        ), [model_s]
    if order == 2:
        return singlestep_dpm_solver_second_update(
            noise_schedule,
            model_fn,
            x,
            s,
            t,
            r1=0.5 if r1 is None else r1,
            model_s=model_s,
            algorithm_type=algorithm_type,
            solver_type=solver_type,
            coefficients=cast("SinglestepSecondCoefficients | None", coefficients),
        )
    if order == 3:
        return singlestep_dpm_solver_third_update(
            noise_schedule,
            model_fn,
            x,
            s,
            t,
            r1=1.0 / 3.0 if r1 is None else r1,
            r2=2.0 / 3.0 if r2 is None else r2,
            model_s=model_s,
            algorithm_type=algorithm_type,
            solver_type=solver_type,
            coefficients=cast("SinglestepThirdCoefficients | None", coefficients),
        )
    fail("order", order, "expected 1, 2 or 3")
    raise AssertionError("unreachable")


def multistep_dpm_solver_second_update(
    noise_schedule: NoiseScheduleVP | None,
    x: Array,
    model_prev_list: Sequence[Array],
    t_prev_list: Sequence[float] | None,
    t: float | None,
    *,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
    coefficients: MultistepSecondCoefficients | None = None,
) -> Array:
    """Multistep DPM-Solver-2 from t_prev_list[-1] to t with the last two model values (Lu et al. 2022b, Alg. 2).

    D1 = (m_0 - m_1)/r0 with r0 = h_0/h is the first-derivative estimate; x_t is the first-order
    step minus ½ α_t φ1(-h) D1 ("dpmsolver") or α_t φ2(-h) D1 ("taylor") (data form).
    Evaluated as a·x - (b + c·w)·m0 + (c·w)·m1 with host coefficients: five array passes instead
    of seven, the same number up to rounding.
    """
    c = coefficients
    if c is None:
        ns = _check_ns(noise_schedule)
        _check_alg(algorithm_type, solver_type)
        tp = cast("Sequence[float]", t_prev_list)  # given whenever coefficients= is not
        p1, p0, pt = schedule_points(ns, [tp[-2], tp[-1], cast(float, t)])
        c = multistep_second_coefficients(
            p1, p0, pt, algorithm_type=algorithm_type, solver_type=solver_type
        )
    m1, m0 = model_prev_list[-2], model_prev_list[-1]
    cw = c.c * c.w
    return c.a * x - (c.b + cw) * m0 + cw * m1


def multistep_dpm_solver_third_update(
    noise_schedule: NoiseScheduleVP | None,
    x: Array,
    model_prev_list: Sequence[Array],
    t_prev_list: Sequence[float] | None,
    t: float | None,
    *,
    algorithm_type: str = "dpmsolver",
    d2_scale: str = "consistent",
    coefficients: MultistepThirdCoefficients | None = None,
) -> Array:
    """Multistep DPM-Solver-3 from t_prev_list[-1] to t with the last three model values (Lu et al. 2022b, §4, 3M).

    With D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1 (r0 = h0/h, r1 = h1/h): D1 = D1_0 + r0/(r0+r1)
    (D1_0 - D1_1) ≈ h m' and δ = (D1_0 - D1_1)/(r0+r1) ≈ h² m''/2. The φ3 term of the exponential
    integrator needs h² m'', so ``d2_scale="consistent"`` (default) uses D2 = 2δ, giving local
    error O(h⁴) (global order 3); ``"dpm_solver"`` uses D2 = δ exactly as DPM-Solver's and
    diffusers' ``multistep_dpm_solver_third_update`` do, whose local error is then O(h³)
    (global order 2 — measured in docs/SAMPLERS.md).
    """
    c = coefficients
    if c is None:
        ns = _check_ns(noise_schedule)
        _check_alg(algorithm_type, "dpmsolver")
        check_choice("d2_scale", d2_scale, D2_SCALES, "multistep third-order D2 convention")
        tp = cast("Sequence[float]", t_prev_list)  # given whenever coefficients= is not
        p2, p1, p0, pt = schedule_points(ns, [tp[-3], tp[-2], tp[-1], cast(float, t)])
        c = multistep_third_coefficients(
            p2, p1, p0, pt, algorithm_type=algorithm_type, d2_scale=d2_scale
        )
    m2, m1, m0 = model_prev_list[-3], model_prev_list[-2], model_prev_list[-1]
    D1_0 = (m0 - m1) / c.r0
    D1_1 = (m1 - m2) / c.r1
    D1 = D1_0 + c.w * (D1_0 - D1_1)
    D2 = (D1_0 - D1_1) * c.d2
    return _first(x, m0, FirstCoefficients(c.a, c.b)) - c.c2 * D1 - c.c3 * D2


def multistep_dpm_solver_update(
    noise_schedule: NoiseScheduleVP | None,
    x: Array,
    model_prev_list: Sequence[Array],
    t_prev_list: Sequence[float] | None,
    t: float | None,
    *,
    order: int,
    algorithm_type: str = "dpmsolver",
    solver_type: str = "dpmsolver",
    d2_scale: str = "consistent",
    coefficients: FirstCoefficients
    | MultistepSecondCoefficients
    | MultistepThirdCoefficients
    | None = None,
) -> Array:
    """One multistep DPM-Solver-k update (k = 1, 2, 3) from t_prev_list[-1] to t (Lu et al. 2022b, Alg. 2)."""
    if order == 1:
        return dpm_solver_first_update(
            noise_schedule,
            x,
            None if t_prev_list is None else t_prev_list[-1],
            t,
            model_prev_list[-1],
            algorithm_type=algorithm_type,
            coefficients=cast("FirstCoefficients | None", coefficients),
        )
    if order == 2:
        return multistep_dpm_solver_second_update(
            noise_schedule,
            x,
            model_prev_list,
            t_prev_list,
            t,
            algorithm_type=algorithm_type,
            solver_type=solver_type,
            coefficients=cast("MultistepSecondCoefficients | None", coefficients),
        )
    if order == 3:
        return multistep_dpm_solver_third_update(
            noise_schedule,
            x,
            model_prev_list,
            t_prev_list,
            t,
            algorithm_type=algorithm_type,
            d2_scale=d2_scale,
            coefficients=cast("MultistepThirdCoefficients | None", coefficients),
        )
    fail("order", order, "expected 1, 2 or 3")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# The model, as noise or data prediction
# --------------------------------------------------------------------------------------------


def _check_model_time(ns: NoiseScheduleVP, model_time: ModelTime) -> None:
    if not callable(model_time):
        check_choice("model_time", model_time, MODEL_TIMES, "model time convention")
        if model_time in ("dpm_solver", "index", "nearest_index"):
            ns._check_discrete(model_time)


def _x0_correction(
    correcting_x0_fn: str | Callable[[Array, float], Array] | None,
    dynamic_thresholding_ratio: float,
) -> Callable[[Array, float], Array] | None:
    if isinstance(correcting_x0_fn, str):
        check_choice(
            "correcting_x0_fn", correcting_x0_fn, ("dynamic_thresholding",), "x0 correction"
        )
        from ..diffusion import dynamic_threshold

        ratio = check_real("dynamic_thresholding_ratio", dynamic_thresholding_ratio, lo=0.0, hi=1.0)

        def correct(x0: Array, t: float, _ratio: float = ratio) -> Array:
            return dynamic_threshold(x0, ratio=_ratio)

        return correct
    if correcting_x0_fn is not None and not callable(correcting_x0_fn):
        fail(
            "correcting_x0_fn",
            correcting_x0_fn,
            "expected None, 'dynamic_thresholding' or a callable (x0, t) -> x0",
        )
    return correcting_x0_fn


def _predictors(
    model: Callable[[Array, Array], Array],
    prediction: str,
    correct: Callable[[Array, float], Array] | None,
) -> tuple[Callable[[Array, SchedulePoint], Array], Callable[[Array, SchedulePoint], Array]]:
    """(noise_fn, data_fn): ``fn(x, point) -> ε̂ or x̂0`` from the raw model output (Lu et al. 2022b, §3; DPM-Solver's model_wrapper)."""

    def raw(x: Array, p: SchedulePoint) -> Array:
        return check_output(model(x, batch_full(x, p.model_t)), x, name="model output")

    def noise_fn(x: Array, p: SchedulePoint) -> Array:
        return eps_from_prediction(raw(x, p), x, p.alpha, p.sigma, prediction)

    def data_fn(x: Array, p: SchedulePoint) -> Array:
        x0 = x0_from_prediction(raw(x, p), x, p.alpha, p.sigma, prediction)
        return x0 if correct is None else correct(x0, p.t)

    return noise_fn, data_fn


def _prediction_fns(
    model: Callable[[Array, Array], Array],
    ns: NoiseScheduleVP,
    *,
    model_type: str,
    model_time: ModelTime,
    correcting_x0_fn: str | Callable[[Array, float], Array] | None,
    dynamic_thresholding_ratio: float,
) -> tuple[Callable[[Array, float], Array], Callable[[Array, float], Array]]:
    """(noise_fn, data_fn) of host times t: ``fn(x, t) -> ε̂ or x̂0`` (one schedule evaluation per call; for checks)."""
    prediction = prediction_type(model_type, "model_type", MODEL_TYPES)
    _check_model_time(ns, model_time)
    noise_fn, data_fn = _predictors(
        model, prediction, _x0_correction(correcting_x0_fn, dynamic_thresholding_ratio)
    )

    def at(fn: Callable[[Array, SchedulePoint], Array]) -> Callable[[Array, float], Array]:
        return lambda x, t: fn(x, schedule_points(ns, [float(t)], model_time=model_time)[0])

    return at(noise_fn), at(data_fn)


# --------------------------------------------------------------------------------------------
# The step plan and the loop
# --------------------------------------------------------------------------------------------


def _time_range(
    ns: NoiseScheduleVP, t_start: float | None, t_end: float | None, lambda_min: float | None
) -> tuple[float, float]:
    t_T = ns.T if t_start is None else check_real("t_start", t_start, lo=0.0, hi=ns.T, lo_open=True)
    t_0 = (
        1.0 / ns.total_N
        if t_end is None
        else check_real("t_end", t_end, lo=0.0, hi=ns.T, lo_open=True)
    )
    if t_T == t_0:
        fail("t_end", t_end, f"must differ from t_start = {t_T!r}")
    if lambda_min is not None:
        lam_min = check_real("lambda_min", lambda_min)
        if t_T > t_0 and float(ns.marginal_lambda(t_T)) < lam_min:
            t_T = float(ns.inverse_lambda(lam_min))
            if not t_T > t_0:
                fail(
                    "lambda_min",
                    lambda_min,
                    f"it moves the start time to {t_T!r}, not after t_end = {t_0!r}",
                )
    lam = ns.marginal_lambda(np.array([t_T, t_0]))
    for name, t, lt in (("t_start", t_T, lam[0]), ("t_end", t_0, lam[1])):
        if not math.isfinite(float(lt)):
            fail(
                name,
                t,
                f"λ is {float(lt)!r} there (α or σ is 0); choose a time with finite log-SNR",
            )
    return t_T, t_0


def _singlestep_blocks(orders: list[int], fine_len: int) -> list[int]:
    idx = np.cumsum([0] + orders)
    if int(idx[-1]) != fine_len - 1:
        raise AssertionError("single-step orders do not cover the grid")
    return [int(i) for i in idx]


def _lambda_inner(
    ns: NoiseScheduleVP, outer: list[SchedulePoint], orders: list[int], model_time: ModelTime
) -> list[list[SchedulePoint]]:
    """Intermediate points at λ_s + r h (r = 1/2; 1/3, 2/3), all blocks in one schedule evaluation."""
    fracs = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}
    lams: list[float] = []
    for j, o in enumerate(orders):
        s, t = outer[j], outer[j + 1]
        lams.extend(s.lam + r * (t.lam - s.lam) for r in fracs[o])
    pts = (
        schedule_points(ns, np.atleast_1d(ns.inverse_lambda(np.array(lams))), model_time=model_time)
        if lams
        else []
    )
    out, k = [], 0
    for o in orders:
        out.append(pts[k : k + o - 1])
        k += o - 1
    return out


def _singlestep_plan(
    ns: NoiseScheduleVP,
    steps: int,
    order: int,
    method: str,
    skip_type: str,
    intermediate: str,
    grid: list[SchedulePoint] | None,
    t_T: float,
    t_0: float,
    model_time: ModelTime,
    algorithm_type: str,
    solver_type: str,
    second_intermediate: str,
    lower_order_final: str,
) -> tuple[list[tuple[int, Any]], list[SchedulePoint]]:
    """[(order, coefficients)] of the single-step loop and the outer points."""
    if grid is not None:
        nfe = len(grid) - 1
        if method == "singlestep":
            orders = singlestep_orders(nfe, order, lower_order_final)
        else:
            if nfe % order:
                fail(
                    "steps",
                    nfe,
                    f"singlestep_fixed of order {order} needs a grid of k·{order} "
                    "steps (one per model evaluation)",
                )
            orders = [order] * (nfe // order)
        if grid[-1].sigma == 0.0 and orders[-1] > 1:  # the step into σ = 0 is first order
            orders[-1:] = [orders[-1] - 1, 1]
        idx = _singlestep_blocks(orders, len(grid))
        outer = [grid[i] for i in idx]
        fine_inner = [grid[idx[j] + 1 : idx[j + 1]] for j in range(len(orders))]
    else:
        if method == "singlestep":
            orders = singlestep_orders(steps, order, lower_order_final)
            if skip_type == "logSNR":
                outer_t = get_time_steps(ns, skip_type, t_T, t_0, len(orders))
            else:
                outer_t = get_time_steps(ns, skip_type, t_T, t_0, steps)[np.cumsum([0] + orders)]
        else:
            if steps < order:
                fail("steps", steps, f"singlestep_fixed of order {order} needs steps >= {order}")
            orders = [order] * (steps // order)
            outer_t = get_time_steps(ns, skip_type, t_T, t_0, len(orders))
        outer = schedule_points(ns, outer_t, model_time=model_time)
        fine_inner = None
        if intermediate == "grid":
            # DPM-Solver's code: the inner points of the skip_type grid between s and t, all
            # blocks in one schedule evaluation (for "logSNR" they are the λ fractions).
            if skip_type == "logSNR":
                fine_inner = _lambda_inner(ns, outer, orders, model_time)
            else:
                inner_t = [
                    get_time_steps(ns, skip_type, float(outer_t[j]), float(outer_t[j + 1]), o)[1:-1]
                    for j, o in enumerate(orders)
                ]
                flat = np.concatenate([np.asarray(v, dtype=np.float64) for v in inner_t])
                pts = schedule_points(ns, flat, model_time=model_time) if flat.size else []
                fine_inner, k = [], 0
                for o in orders:
                    fine_inner.append(pts[k : k + o - 1])
                    k += o - 1
    if intermediate == "lambda":
        inner = _lambda_inner(ns, outer, orders, model_time)
        fixed_r = True
    else:
        inner = cast("list[list[SchedulePoint]]", fine_inner)  # built above for "grid"
        fixed_r = False
    plan: list[tuple[int, Any]] = []
    for j, o in enumerate(orders):
        ps, pt, mid = outer[j], outer[j + 1], inner[j]
        h = pt.lam - ps.lam
        c: FirstCoefficients | SinglestepSecondCoefficients | SinglestepThirdCoefficients
        if o == 1:
            c = first_order_coefficients(ps, pt, algorithm_type)
        elif o == 2:
            r1 = 0.5 if fixed_r else (mid[0].lam - ps.lam) / h
            c = singlestep_second_coefficients(
                ps, mid[0], pt, r1, algorithm_type=algorithm_type, solver_type=solver_type
            )
        else:
            r1, r2 = (
                (1.0 / 3.0, 2.0 / 3.0)
                if fixed_r
                else ((mid[0].lam - ps.lam) / h, (mid[1].lam - ps.lam) / h)
            )
            c = singlestep_third_coefficients(
                ps,
                mid[0],
                mid[1],
                pt,
                r1,
                r2,
                algorithm_type=algorithm_type,
                solver_type=solver_type,
                second_intermediate=second_intermediate,
            )
        plan.append((o, c))
    return plan, outer


def _multistep_plan(
    ns: NoiseScheduleVP,
    points: list[SchedulePoint],
    order: int,
    lower_order_final: str,
    warmup: str,
    model_time: ModelTime,
    algorithm_type: str,
    solver_type: str,
    d2_scale: str,
) -> list[tuple[str, int, Any]]:
    steps = len(points) - 1
    orders = multistep_step_orders(steps, order, lower_order_final)
    if points[-1].sigma == 0.0:
        orders[-1] = 1  # the step into σ = 0 is first order
    plan: list[tuple[str, int, Any]] = []
    for i in range(steps):
        o, pt = orders[i], points[i + 1]
        if i == 0 and order == 3 and warmup == "singlestep" and steps >= 2:
            p0 = points[0]
            mid = _lambda_inner(ns, [p0, pt], [2], model_time)[0][0]
            plan.append(
                (
                    "single",
                    2,
                    singlestep_second_coefficients(
                        p0, mid, pt, 0.5, algorithm_type=algorithm_type, solver_type=solver_type
                    ),
                )
            )
        elif o == 1:
            plan.append(("multi", 1, first_order_coefficients(points[i], pt, algorithm_type)))
        elif o == 2:
            plan.append(
                (
                    "multi",
                    2,
                    multistep_second_coefficients(
                        points[i - 1],
                        points[i],
                        pt,
                        algorithm_type=algorithm_type,
                        solver_type=solver_type,
                    ),
                )
            )
        else:
            plan.append(
                (
                    "multi",
                    3,
                    multistep_third_coefficients(
                        points[i - 2],
                        points[i - 1],
                        points[i],
                        pt,
                        algorithm_type=algorithm_type,
                        d2_scale=d2_scale,
                    ),
                )
            )
    return plan


def sample_dpm_solver(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: NoiseScheduleVP,
    steps: int | None = None,
    order: int = 2,
    method: str = "multistep",
    algorithm_type: str = "dpmsolver++",
    model_type: str = "eps",
    skip_type: str = "time_uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    timesteps: npt.ArrayLike | None = None,
    sigmas: npt.ArrayLike | None = None,
    time_unit: str = "t",
    final_sigmas_type: str | None = None,
    intermediate: str = "lambda",
    second_intermediate: str = "dpm_solver",
    lower_order_final: str = "dpm_solver",
    solver_type: str = "dpmsolver",
    denoise_to_zero: bool = False,
    correcting_x0_fn: str | Callable[[Array, float], Array] | None = None,
    dynamic_thresholding_ratio: float = 0.995,
    model_time: ModelTime = "continuous",
    lambda_min: float | None = None,
    d2_scale: str = "consistent",
    warmup: str = "lower_order",
    noise: Noise = None,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """DPM-Solver / DPM-Solver++ sampling from t_start to t_end (Lu et al. 2022a, §3; 2022b, §4), as DPM-Solver's ``sample``.

    With the same settings it reproduces DPM-Solver's ``DPM_Solver.sample``, except that its
    single-step methods on a ``time_uniform`` or ``time_quadratic`` grid place the intermediate
    points on that grid: give ``intermediate="grid"`` for those (the default puts them at the λ
    fractions of the papers). The rows of docs/PEERS.md map diffusers' and k-diffusion's calls.

    Parameters
    ----------
    model : callable
        ``model(x, t) -> output`` with t of shape (B,) (continuous times, or see ``model_time``).
    x : array
        The sample at the first time (e.g. standard normal at t = T), batch axis first.
    noise_schedule : NoiseScheduleVP
    steps : int, optional
        Number of model evaluations (NFE), excluding the extra one of ``denoise_to_zero``.
        Required unless ``timesteps`` or ``sigmas`` is given (then it must match the grid).
    order : {1, 2, 3}
    method : {"multistep", "singlestep", "singlestep_fixed"}
        "singlestep" is DPM-Solver-fast (orders mixed to spend exactly ``steps`` NFE),
        "singlestep_fixed" uses ⌊steps/order⌋ steps of order ``order``.
    algorithm_type : {"dpmsolver++", "dpmsolver"}
        Data prediction (DPM-Solver++) or noise prediction (DPM-Solver).
    model_type : {"eps", "x0", "v", "score"}
        What the model returns (ε̂, x̂0, v̂ = α ε̂ - σ x̂0, or the score -ε̂/σ); DPM-Solver's
        "noise" and "x_start" (and the other aliases of refdiff.parameterizations) are accepted.
    skip_type : {"time_uniform", "logSNR", "time_quadratic"}
        The generated grid (without ``timesteps`` / ``sigmas``).
    t_start, t_end : float, optional
        Default T and 1/total_N (1e-3 for the linear schedule). t_start < t_end runs the ODE
        forwards (DPM-Solver's ``inverse``).
    timesteps : 1-D array, optional
        An explicit grid from noise to data, in place of ``skip_type``/``t_start``/``t_end``:
        continuous times t (``time_unit="t"``) or integer timesteps n of a discrete schedule
        (``time_unit="index"``: t = (n+1)/N, diffusers' ``scheduler.timesteps``). Multistep:
        one model evaluation per step; single-step: the grid of every model evaluation (its
        blocks of ``order`` intervals are the steps).
    sigmas : 1-D array, optional
        An explicit grid of σ/α on the variance-exploding scale (k-diffusion's ``sigmas``; may
        end with 0): λ = -log σ exactly, t = t(λ) of the schedule, σ_t = α_t σ.
    time_unit : {"t", "index"}
    final_sigmas_type : {None, "zero", "sigma_min"}
        Append a last step to σ = 0 (first order, x = α x̂0) or to the schedule's smallest σ
        (t = 1/N) after the explicit grid (diffusers' ``final_sigmas_type``).
    intermediate : {"lambda", "grid"}
        Single-step only: intermediate points at λ_s + r h (the papers' r = 1/2; 1/3, 2/3) or on
        the grid between s and t (DPM-Solver's code; diffusers' single-step scheduler).
    second_intermediate : {"dpm_solver", "diffusers"}
        Single-step order 3 only: the second intermediate state u2 by DPM-Solver-3's φ2 form
        (2022a, Alg. 2; DPM-Solver's code) or, with ``solver_type="dpmsolver"``, by the midpoint
        second-order step from s via s1 (diffusers' single-step scheduler, solver_type
        "midpoint"); the two agree for ``solver_type="taylor"``.
    lower_order_final : {"dpm_solver", "diffusers", "always", "never", "euler_at_final"}
        Multistep: lower orders at the last steps when steps < 10 / < 15 / always / never /
        only the last step, first order (diffusers' ``euler_at_final=True`` with
        ``lower_order_final=False``).
        Single-step (``method="singlestep"``): ``"diffusers"`` takes diffusers' order list, which
        ends an even number of order-2 evaluations with two first-order steps (see
        :func:`singlestep_orders`); the other rules keep DPM-Solver-fast's list.
    solver_type : {"dpmsolver", "taylor"}
        How the derivative terms of orders 2-3 are formed (DPM-Solver's two variants; diffusers'
        "midpoint" and "heun").
    denoise_to_zero : bool
        Return the data prediction at the last time (one more model evaluation).
    correcting_x0_fn : None, "dynamic_thresholding" or callable (x0, t) -> x0
        Applied to every data prediction (DPM-Solver++ and ``denoise_to_zero``);
        "dynamic_thresholding" is Imagen's with ``dynamic_thresholding_ratio`` (0.995) and the
        lower bound 1 (DPM-Solver's ``thresholding_max_val = 1``).
    model_time : {"continuous", "dpm_solver", "index", "sigma", "nearest_index"} or callable
        The time the model sees: t itself, DPM-Solver's discrete input (t - 1/N)·1000, the
        discrete index t·N - 1 (integers at the knots: diffusers), σ_t/α_t (k-diffusion), the
        discrete index nearest in log σ (diffusers' timesteps with ``use_karras_sigmas=True``),
        or ``model_time(t) -> float``.
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
    callback : callable, optional
        ``callback(info)`` with a :class:`refdiff.samplers.StepInfo` before each step: t the
        continuous time, sigma = σ_t/α_t, denoised the data prediction there.
    progress : callable, optional
        ``progress(i, n)`` after each step (built on the same hook).

    Returns
    -------
    array
        The sample at the last time (or its data prediction with ``denoise_to_zero``).
    """
    ns = _check_ns(noise_schedule)
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")
    order = check_int("order", order, minimum=1)
    if order > 3:
        fail("order", order, "expected 1, 2 or 3")
    check_choice("method", method, METHODS, "DPM-Solver method")
    _check_alg(algorithm_type, solver_type)
    check_choice("skip_type", skip_type, SKIP_TYPES, "step grid")
    check_choice("intermediate", intermediate, INTERMEDIATES, "intermediate-point placement")
    check_choice(
        "second_intermediate",
        second_intermediate,
        SECOND_INTERMEDIATES,
        "second intermediate state",
    )
    check_choice("time_unit", time_unit, TIME_UNITS, "time unit")
    if final_sigmas_type is not None:
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES, "final σ")
    _lower_order_threshold(lower_order_final)
    if method == "multistep":
        check_choice("d2_scale", d2_scale, D2_SCALES, "multistep third-order D2 convention")
        check_choice("warmup", warmup, WARMUPS, "multistep warm-up")
    if not isinstance(denoise_to_zero, bool):
        fail("denoise_to_zero", denoise_to_zero, "expected True or False")
    prediction = prediction_type(model_type, "model_type", MODEL_TYPES)
    _check_model_time(ns, model_time)
    if not callable(model):
        fail("model", model, "expected a callable model(x, t) -> prediction")
    noise_fn, data_fn = _predictors(
        model, prediction, _x0_correction(correcting_x0_fn, dynamic_thresholding_ratio)
    )
    fn = data_fn if algorithm_type == "dpmsolver++" else noise_fn
    report = step_reporter(callback, progress)

    grid = None
    if timesteps is not None or sigmas is not None:
        if timesteps is not None and sigmas is not None:
            fail("sigmas", "...", "give timesteps= or sigmas=, not both")
        for name, v in (("t_start", t_start), ("t_end", t_end), ("lambda_min", lambda_min)):
            if v is not None:
                fail(
                    name,
                    v,
                    "not with an explicit grid (timesteps= or sigmas=): the grid fixes the times",
                )
        grid = _explicit_grid(ns, timesteps, sigmas, time_unit, final_sigmas_type, model_time)
        nfe = len(grid) - 1
        if steps is not None and check_int("steps", steps, minimum=1) != nfe:
            fail("steps", steps, f"the grid has {nfe} steps; leave steps= out or make them agree")
        steps = nfe
        t_T, t_0 = grid[0].t, grid[-1].t
    else:
        if final_sigmas_type is not None:
            fail(
                "final_sigmas_type",
                final_sigmas_type,
                "it completes an explicit grid; give timesteps= or sigmas=",
            )
        if steps is None:
            fail(
                "steps",
                steps,
                "give steps= (the number of model evaluations) or an explicit "
                "grid (timesteps= or sigmas=)",
            )
        steps = check_int("steps", steps, minimum=1)
        t_T, t_0 = _time_range(ns, t_start, t_end, lambda_min)

    if method == "multistep":
        if steps < order:
            fail("steps", steps, f"the multistep solver of order {order} needs steps >= {order}")
        if grid is None:
            grid = schedule_points(
                ns, get_time_steps(ns, skip_type, t_T, t_0, steps), model_time=model_time
            )
        plan: list[Any] = _multistep_plan(
            ns,
            grid,
            order,
            lower_order_final,
            warmup,
            model_time,
            algorithm_type,
            solver_type,
            d2_scale,
        )
        last = grid[-1]
        by_t = _by_time(grid, plan)
        fn_t = lambda xx, t: fn(xx, by_t[t])  # noqa: E731  (model_fn of the single-step warm-up)
        hist = [fn(x, grid[0])]
        for i, (kind, o, c) in enumerate(plan):
            p = grid[i]
            if report is not None:
                report(
                    StepInfo(
                        i,
                        steps,
                        x,
                        _denoised(hist[-1], x, p, algorithm_type),
                        t=p.t,
                        sigma=p.sigma_ve,
                    )
                )
            if kind == "single":
                x, _ = singlestep_dpm_solver_second_update(
                    None, fn_t, x, None, None, model_s=hist[-1], coefficients=c
                )
            else:
                x = multistep_dpm_solver_update(None, x, hist, None, None, order=o, coefficients=c)
            if i < steps - 1:
                hist.append(fn(x, grid[i + 1]))
                if len(hist) > order:
                    del hist[0]
    else:
        plan, outer = _singlestep_plan(
            ns,
            steps,
            order,
            method,
            skip_type,
            intermediate,
            grid,
            t_T,
            t_0,
            model_time,
            algorithm_type,
            solver_type,
            second_intermediate,
            lower_order_final,
        )
        last = outer[-1]
        by_t = _by_time(outer, [(None, o, c) for o, c in plan])
        fn_t = lambda xx, t: fn(xx, by_t[t])  # noqa: E731
        n = len(plan)
        for j, (o, c) in enumerate(plan):
            p = outer[j]
            m_s = fn(x, p)
            if report is not None:
                report(
                    StepInfo(j, n, x, _denoised(m_s, x, p, algorithm_type), t=p.t, sigma=p.sigma_ve)
                )
            x, _ = singlestep_dpm_solver_update(
                None, fn_t, x, None, None, order=o, model_s=m_s, coefficients=c
            )
    if denoise_to_zero:
        x = data_fn(x, last)
    return x


def _by_time(
    points: list[SchedulePoint], plan: Sequence[tuple[object, int, NamedTuple]]
) -> dict[float, SchedulePoint]:
    """Every point the plan's updates evaluate the model at, keyed by its time."""
    out = {p.t: p for p in points}
    for _, _, c in plan:
        for name in ("s1", "s2"):
            p = getattr(c, name, None)
            if p is not None:
                out.setdefault(p.t, p)
    return out


def _denoised(m: Array, x: Array, p: SchedulePoint, algorithm_type: str) -> Array:
    """The data prediction at a step's start: the model value itself (DPM-Solver++) or x̂0 from ε̂."""
    return (
        m if algorithm_type == "dpmsolver++" else x0_from_prediction(m, x, p.alpha, p.sigma, "eps")
    )


def _register(
    name: str,
    *,
    order: int,
    method: str,
    algorithm_type: str,
    step: Callable[..., object],
    formal_order: int | None,
    doc: str,
) -> Callable[..., Array]:
    fixed: dict[str, Any] = {"order": order, "method": method, "algorithm_type": algorithm_type}

    def sampler(
        model: Callable[[Array, Array], Array],
        x: Array,
        *,
        noise_schedule: NoiseScheduleVP,
        steps: int | None = None,
        noise: Noise = None,
        **options: Any,
    ) -> Array:
        for key in fixed:
            if key in options:
                fail(
                    key,
                    options[key],
                    f"the sampler {name!r} fixes {key} to "
                    f"{fixed[key]!r}; call sample_dpm_solver for other settings",
                )
        return sample_dpm_solver(
            model, x, noise_schedule=noise_schedule, steps=steps, noise=noise, **fixed, **options
        )

    sampler.__name__ = "sample_" + name.replace("+", "p")
    sampler.__qualname__ = sampler.__name__
    sampler.__doc__ = (
        doc + "\n\nSee :func:`sample_dpm_solver` for the options (all but order, "
        "method and algorithm_type)."
    )
    register_sampler(name, family="vp", stochastic=False, order=formal_order, step=step)(sampler)
    globals()[sampler.__name__] = sampler
    return sampler


_SPECS: list[tuple[Any, ...]] = [
    (
        "dpm_solver_1",
        1,
        "singlestep_fixed",
        "dpmsolver",
        dpm_solver_first_update,
        1,
        "DPM-Solver-1 (= DDIM), noise prediction (Lu et al. 2022a, Eq. 3.7).",
    ),
    (
        "dpm_solver_2",
        2,
        "singlestep_fixed",
        "dpmsolver",
        singlestep_dpm_solver_second_update,
        2,
        "Single-step DPM-Solver-2, noise prediction (Lu et al. 2022a, Alg. 1, r1 = 1/2).",
    ),
    (
        "dpm_solver_3",
        3,
        "singlestep_fixed",
        "dpmsolver",
        singlestep_dpm_solver_third_update,
        3,
        "Single-step DPM-Solver-3, noise prediction (Lu et al. 2022a, Alg. 2, r1 = 1/3, r2 = 2/3).",
    ),
    (
        "dpm_solver_fast",
        3,
        "singlestep",
        "dpmsolver",
        singlestep_dpm_solver_update,
        2,
        "DPM-Solver-fast: orders 3, ..., 3 then 2/1 to spend exactly `steps` NFE (Lu et al. 2022a, §3.3).",
    ),
    (
        "dpm_solver_2m",
        2,
        "multistep",
        "dpmsolver",
        multistep_dpm_solver_second_update,
        2,
        "Multistep DPM-Solver-2, noise prediction (Lu et al. 2022b, Alg. 2 in the noise form).",
    ),
    (
        "dpm_solver_3m",
        3,
        "multistep",
        "dpmsolver",
        multistep_dpm_solver_third_update,
        3,
        "Multistep DPM-Solver-3, noise prediction (Lu et al. 2022b, §4 multistep, in the noise form).",
    ),
    (
        "dpmpp_2s",
        2,
        "singlestep_fixed",
        "dpmsolver++",
        singlestep_dpm_solver_second_update,
        2,
        "Single-step DPM-Solver++(2S), data prediction (Lu et al. 2022b, Alg. 1).",
    ),
    (
        "dpmpp_3s",
        3,
        "singlestep_fixed",
        "dpmsolver++",
        singlestep_dpm_solver_third_update,
        3,
        "Single-step DPM-Solver++(3S), data prediction (Lu et al. 2022b, §4).",
    ),
    (
        "dpmpp_2m",
        2,
        "multistep",
        "dpmsolver++",
        multistep_dpm_solver_second_update,
        2,
        "Multistep DPM-Solver++(2M), data prediction (Lu et al. 2022b, Alg. 2).",
    ),
    (
        "dpmpp_3m",
        3,
        "multistep",
        "dpmsolver++",
        multistep_dpm_solver_third_update,
        3,
        "Multistep DPM-Solver++(3M), data prediction (Lu et al. 2022b, §4 multistep, third order).",
    ),
]

for _spec in _SPECS:
    _register(
        _spec[0],
        order=_spec[1],
        method=_spec[2],
        algorithm_type=_spec[3],
        step=_spec[4],
        formal_order=_spec[5],
        doc=_spec[6],
    )
del _spec


#: Deprecated name (one release) of :func:`sample_dpm_solver`.
dpm_solver_sample = sample_dpm_solver
