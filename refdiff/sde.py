"""Continuous-time diffusion families: the VP, sub-VP and VE SDEs and their reverse-time SDE/ODE.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative Modeling
through Stochastic Differential Equations" (ICLR 2021; equation numbers from arXiv:2011.13456v2).
The forward SDE is dx = f(x, t) dt + g(t) dw (Eq. 5), the reverse-time SDE
dx = [f(x, t) - g(t)² ∇ log p_t(x)] dt + g(t) dw̄ (Eq. 6) and the probability-flow ODE
dx/dt = f(x, t) - ½ g(t)² ∇ log p_t(x) (Eq. 13).

Shape and conventions (score_sde's ``sde_lib`` interface, as a plain class hierarchy):

* ``x`` has a batch axis first; ``t`` is a float array of shape ``(B,)`` (or a 0-d array, or a
  Python number) broadcast against ``x`` by :func:`refdiff._xp.append_dims`. It is cast to the
  dtype of ``x`` and must lie in [0, T].
* Coefficients that do not depend on ``x`` (the diffusion g(t), the marginal std, the
  discretization's G) come back with the shape of ``t``; quantities that do (drift, mean, f) with
  the shape of ``x``.
* Every function is array-API code (``xp = array_namespace(x, t)``): NumPy float64 is the oracle,
  array_api_strict / PyTorch / CuPy arrays run the same lines.
* The discrete index used by the DDPM / SMLD discretizations is i = round(t (N-1) / T)
  (``index_rounding="round"``, default) or score_sde's truncation ``(t * (N - 1) / T).long()``
  (``index_rounding="floor"``).
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from array_api_compat import is_array_api_obj

from . import _dd
from ._errors import RefdiffShapeError, check_choice, check_int, check_real, fail
from ._typing import Array, Namespace
from ._xp import append_dims, array_namespace, as_float_array, check_leading_axes, device_of

__all__ = [
    "SDE",
    "ReverseSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "probability_flow_drift",
    "INDEX_ROUNDINGS",
    "VE_MARGINALS",
]

#: How a continuous t maps to the discrete index of the DDPM/SMLD chains.
INDEX_ROUNDINGS = ("round", "floor")
#: The two conventions for the VE marginal std (see :class:`VESDE`).
VE_MARGINALS = ("score_sde", "exact")

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _range_error(name: str, xp: Namespace, a: Array, interval: str) -> None:
    if a.ndim == 0:
        fail(name, a, f"expected a value in {interval}")
    lo, hi = float(xp.min(a)), float(xp.max(a))
    fail(name, a, f"expected values in {interval}; got values from {lo!r} to {hi!r}")


def _check_in(name: str, xp: Namespace, a: Array, lo: float, hi: float) -> None:
    """Raise unless every element of ``a`` lies in [lo, hi] (NaN is outside)."""
    if not bool(xp.all((a >= lo) & (a <= hi))):
        _range_error(name, xp, a, f"[{lo!r}, {hi!r}]")


def _full_like(xp: Namespace, a: Array, value: float) -> Array:
    return xp.full(a.shape, value, dtype=a.dtype, device=device_of(a))


# --------------------------------------------------------------------------------------------
# The abstract SDE and its reverse
# --------------------------------------------------------------------------------------------


class SDE(abc.ABC):
    """A forward SDE dx = f(x, t) dt + g(t) dw on t ∈ [0, T] (Song et al. 2021, Eq. 5).

    Subclasses give the closed forms; the base class supplies the Euler discretization and the
    reverse-time SDE. Every method works on a mini-batch: ``x`` has the batch axis first and
    ``t`` has shape ``(B,)`` or is 0-d.
    """

    #: Number of discretization steps (score_sde's ``N``).
    N: int
    #: How a continuous t maps to a discrete chain index (one of :data:`INDEX_ROUNDINGS`).
    index_rounding: str

    if TYPE_CHECKING:  # defined by every concrete family

        def marginal_log_mean_coeff(self, t: Array | float) -> Array: ...
        def log_snr(self, t: Array | float) -> Array: ...
        def t_from_lambda(self, lam: Array | float) -> Array: ...

    @property
    @abc.abstractmethod
    def T(self) -> float:
        """End time of the SDE."""

    @abc.abstractmethod
    def sde(self, x: Array, t: Array | float) -> tuple[Array, Array]:
        """(drift f(x, t) shaped like x, diffusion g(t) shaped like t) (Song et al. 2021, Eq. 5)."""

    @abc.abstractmethod
    def marginal_prob(self, x: Array, t: Array | float) -> tuple[Array, Array]:
        """(mean shaped like x, std shaped like t) of the perturbation kernel p_0t(x(t) | x(0) = x)."""

    @abc.abstractmethod
    def prior_sampling(self, shape: Sequence[int], *, noise: Array) -> Array:
        """A sample of the prior p_T built from standard-normal ``noise`` of the given shape."""

    @abc.abstractmethod
    def prior_logp(self, z: Array) -> Array:
        """log p_T(z) per sample, summed over all non-batch axes."""

    # -- helpers shared by subclasses --------------------------------------------------------
    def _time(self, t: Array | float, *, like: Array | None = None) -> tuple[Namespace, Array]:
        """Validated times: a float array in ``like``'s namespace/dtype, every value in [0, T]."""
        xp, t = as_float_array(t, "t", like=like)
        if like is not None:
            check_leading_axes("t", t, like)
        _check_in("t", xp, t, 0.0, float(self.T))
        return xp, t

    def _index(self, xp: Namespace | None, t: Array | float) -> Array | int:
        """The index i = round/floor(t (N-1)/T) of the discrete chain (``index_rounding``), as floats.

        With ``xp=None`` and a host float ``t`` it is the Python int (the samplers' step plan).
        """
        u = t * ((self.N - 1) / float(self.T))
        if xp is None:
            return int(round(u)) if self.index_rounding == "round" else int(math.floor(u))
        return xp.round(u) if self.index_rounding == "round" else xp.floor(u)

    def chain_index(self, t: float) -> int:
        """The discrete-chain index of a host time t ∈ [0, T] (same rule as the array methods)."""
        return self._index(None, check_real("t", t, lo=0.0, hi=float(self.T)))

    def _check_noise(self, shape: Sequence[int], noise: Array) -> Namespace:
        if not is_array_api_obj(noise):
            fail("noise", noise, "expected an array of standard-normal draws")
        if tuple(noise.shape) != tuple(shape):
            raise RefdiffShapeError(
                f"noise has shape {tuple(noise.shape)} but shape={tuple(shape)} was requested; "
                "they must match"
            )
        xp = array_namespace(noise)
        if not xp.isdtype(noise.dtype, "real floating"):
            fail("noise", noise, f"expected a real floating-point array, got dtype {noise.dtype}")
        return xp

    # -- discretizations ---------------------------------------------------------------------
    def euler_discretize(
        self, x: Array, t: Array | float, *, dt: float | None = None
    ) -> tuple[Array, Array]:
        """Euler–Maruyama step x_{t+dt} = x + f + G z with f = f(x, t) dt, G = g(t) √dt.

        Parameters
        ----------
        x, t : arrays
            Current state (batch first) and time(s) in [0, T].
        dt : float, optional
            Step length (> 0); default ``T / N``.

        Returns
        -------
        f : array shaped like x
        G : array shaped like t
        """
        dt = float(self.T) / self.N if dt is None else check_real("dt", dt, lo=0.0, lo_open=True)
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def discretize(
        self, x: Array, t: Array | float, *, dt: float | None = None
    ) -> tuple[Array, Array]:
        """Discretization x_{i+1} = x_i + f_i(x_i) + G_i z_i (Song et al. 2021, App. E); Euler by default."""
        return self.euler_discretize(x, t, dt=dt)

    def reverse(
        self, score_fn: Callable[..., Array], *, probability_flow: bool = False
    ) -> ReverseSDE:
        """The reverse-time SDE (Eq. 6) or, with ``probability_flow=True``, the probability-flow ODE (Eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow=probability_flow)

    # -- marginals shared by every family ----------------------------------------------------
    def marginal_std(self, t: Array | float) -> Array:
        """σ_t, the std of the perturbation kernel (the std of :meth:`marginal_prob`)."""
        raise NotImplementedError(f"{type(self).__name__} does not define marginal_std")

    def marginal_alpha(self, t: Array | float) -> Array:
        """Mean coefficient α_t = exp(log α_t) of the perturbation kernel (1 for VE)."""
        lmc = self.marginal_log_mean_coeff(t)
        return array_namespace(lmc).exp(lmc)

    def lambda_(self, t: Array | float) -> Array:
        """Half log-SNR λ_t = log α_t - log σ_t (Lu et al. 2022, DPM-Solver, Sec. 3.1)."""
        return self.log_snr(t) * 0.5

    def marginal_lambda(self, t: Array | float) -> Array:
        """Alias of :meth:`lambda_` (DPM-Solver's ``NoiseScheduleVP.marginal_lambda``)."""
        return self.lambda_(t)

    # -- host coefficients for the samplers' step plans ----------------------------------------
    # Each takes a sequence of host times and returns float64 NumPy arrays, one entry per time,
    # computed by the same array formulas as the methods above (NumPy float64).
    def drift_coefficients(self, ts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(a(t), g(t)) with drift f(x, t) = a(t) x and diffusion g(t) (Eq. 5), for drifts linear in x.

        Raises NotImplementedError for an SDE whose drift is not of that form (the samplers then
        evaluate :meth:`sde` at every step).
        """
        raise NotImplementedError(f"{type(self).__name__} does not give a drift linear in x")

    def reverse_diffusion_coefficients(self, ts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(c, G) of :meth:`discretize` with f_i = c x (Song et al. 2021, Eq. 46's f_i, G_i); Euler here.

        Euler with dt = T/N: c = a(t) T/N, G = g(t) √(T/N).
        """
        a, g = self.drift_coefficients(ts)
        dt = float(self.T) / self.N
        return a * dt, g * math.sqrt(dt)

    def ancestral_coefficients(
        self, ts: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(b, d, std) of ancestral sampling x̄ = (x + b s)/d, x = x̄ + std z (Song et al. 2021, App. F).

        Only the SDEs with a discrete chain (VP: DDPM, VE: SMLD) have one.
        """
        fail(
            "sde",
            self,
            "ancestral sampling needs a VPSDE or VESDE (a discrete chain: DDPM or "
            "SMLD); this SDE has none (score_sde raises NotImplementedError too)",
        )
        raise AssertionError("unreachable: fail() raises")

    def langevin_alpha(self, ts: Sequence[float]) -> np.ndarray:
        """The Langevin step-size factor α_i of score_sde's correctors: 1 (VE; any SDE without a DDPM chain)."""
        return np.ones(len(ts))


@dataclass(frozen=True)
class ReverseSDE:
    """Reverse-time SDE dx = [f - g² s(x, t)] dt + g dw̄ (Song et al. 2021, Eq. 6), or the ODE.

    With ``probability_flow=True`` it is the probability-flow ODE dx = [f - ½ g² s] dt (Eq. 13)
    and the diffusion is 0. Time runs backwards: a solver steps with dt < 0. ``score_fn(x, t)``
    returns ∇_x log p_t(x) shaped like ``x``. The forward SDE is the field ``forward_sde`` (the
    name ``sde`` is the method, as in score_sde's reverse class).
    """

    forward_sde: SDE
    score_fn: Callable[..., Array]
    probability_flow: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.forward_sde, SDE):
            fail("forward_sde", self.forward_sde, "expected an instance of refdiff.sde.SDE")
        if not callable(self.score_fn):
            fail("score_fn", self.score_fn, "expected a callable score_fn(x, t)")
        if not isinstance(self.probability_flow, bool):
            fail("probability_flow", self.probability_flow, "expected True or False")

    @property
    def T(self) -> float:
        """End time of the forward SDE."""
        return self.forward_sde.T

    @property
    def N(self) -> int:
        """Number of discretization steps of the forward SDE."""
        return self.forward_sde.N

    def _factor(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def _score(self, x: Array, t: Array | float) -> Array:
        score = self.score_fn(x, t)
        if tuple(score.shape) != tuple(x.shape):
            raise RefdiffShapeError(
                f"score_fn returned shape {tuple(score.shape)} for x of shape {tuple(x.shape)}; "
                "they must match"
            )
        return score

    def sde(self, x: Array, t: Array | float) -> tuple[Array, Array]:
        """(f - g² s, g), or (f - ½ g² s, 0) for the ODE (Song et al. 2021, Eqs. 6 and 13)."""
        xp = array_namespace(x)
        drift, diffusion = self.forward_sde.sde(x, t)
        score = self._score(x, t)
        drift = drift - append_dims(diffusion * diffusion * self._factor(), x.ndim) * score
        if self.probability_flow:
            diffusion = xp.zeros_like(diffusion)
        return drift, diffusion

    def discretize(
        self, x: Array, t: Array | float, *, dt: float | None = None
    ) -> tuple[Array, Array]:
        """Reverse discretization x_{i-1} = x_i - rev_f + rev_G z: rev_f = f - G² s (½ G² s for the ODE).

        Song et al. 2021, Eq. 46 (reverse diffusion predictor); rev_G = G, or 0 for the ODE.
        ``dt`` is passed to the forward ``discretize`` (only the Euler discretization takes it).
        """
        xp = array_namespace(x)
        f, G = (
            self.forward_sde.discretize(x, t)
            if dt is None
            else self.forward_sde.discretize(x, t, dt=dt)
        )
        score = self._score(x, t)
        rev_f = f - append_dims(G * G * self._factor(), x.ndim) * score
        rev_G = xp.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


def probability_flow_drift(
    sde: SDE, score_fn: Callable[..., Array], x: Array, t: Array | float
) -> Array:
    """Drift f(x, t) - ½ g(t)² ∇ log p_t(x) of the probability-flow ODE (Song et al. 2021, Eq. 13)."""
    return ReverseSDE(sde, score_fn, probability_flow=True).sde(x, t)[0]


@functools.lru_cache(maxsize=32)
def _ddpm_betas(beta_min: float, beta_max: float, N: int) -> np.ndarray:
    """linspace(β_min/N, β_max/N, N) in double-double, rounded once (cached; read-only)."""
    start, stop = _dd.DD(beta_min) / float(N), _dd.DD(beta_max) / float(N)
    out = _dd.linspace(start, stop, N).to_float()
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=32)
def _smld_sigmas(sigma_min: float, sigma_max: float, N: int) -> np.ndarray:
    """exp(linspace(log σ_min, log σ_max, N)) in double-double, rounded once (cached; read-only)."""
    ls = _dd.linspace(_dd.log(_dd.DD(sigma_min)), _dd.log(_dd.DD(sigma_max)), N)
    out = _dd.exp(ls).to_float()
    out.setflags(write=False)
    return out


def _standard_normal_logp(z: Array, scale: float) -> Array:
    """Σ over non-batch axes of log N(z; 0, scale²) (one value per sample)."""
    if not is_array_api_obj(z):
        fail("z", z, "expected an array with a batch axis first")
    xp = array_namespace(z)
    if z.ndim < 1:
        fail("z", z, "expected an array with a batch axis first (ndim >= 1)")
    if not xp.isdtype(z.dtype, "real floating"):
        fail("z", z, f"expected a real floating-point array, got dtype {z.dtype}")
    flat = xp.reshape(z, (z.shape[0], -1))
    d = flat.shape[1]
    quad = xp.sum(flat * flat, axis=1)
    return quad * (-0.5 / (scale * scale)) - 0.5 * d * (_LOG_2PI + 2.0 * math.log(scale))


# --------------------------------------------------------------------------------------------
# VP and sub-VP
# --------------------------------------------------------------------------------------------


def _rationalised_root(L: Array, beta_0: float, delta: float, xp: Namespace) -> Array:
    """The t >= 0 with Δ t²/2 + β0 t = L, as 2L / (β0 + √(β0² + 2ΔL)) (no cancellation)."""
    pos = L > 0
    safe = xp.where(pos, L, xp.ones_like(L))
    t = (2.0 * safe) / (beta_0 + xp.sqrt(beta_0 * beta_0 + (2.0 * delta) * safe))
    return xp.where(pos, t, xp.zeros_like(t))  # L = 0 <=> λ = +inf <=> t = 0 (also when β0 = 0)


class _LinearBeta(SDE):
    """Shared parts of the VP and sub-VP SDEs with β(t) = β0 + t(β1 - β0)."""

    beta_min: float
    beta_max: float
    index_rounding: str

    if TYPE_CHECKING:  # defined by VPSDE and SubVPSDE

        def _std(self, xp: Namespace, lmc: Array) -> Array: ...
        def _diffusion(self, xp: Namespace, t: Array, beta: Array) -> Array: ...
        def _neg2_lmc_from_lambda(self, xp: Namespace, lam: Array) -> Array: ...

    def _validate(self) -> None:
        b0 = check_real("beta_min", self.beta_min, lo=0.0)
        b1 = check_real("beta_max", self.beta_max, lo=0.0)
        if b0 + b1 == 0.0:
            fail(
                "beta_max",
                self.beta_max,
                "beta_min and beta_max cannot both be 0 (β(t) must be positive somewhere on [0, 1])",
            )
        object.__setattr__(self, "beta_min", b0)
        object.__setattr__(self, "beta_max", b1)
        object.__setattr__(self, "N", check_int("N", self.N, minimum=1))
        check_choice("index_rounding", self.index_rounding, INDEX_ROUNDINGS, "index rounding")

    @property
    def T(self) -> float:
        """End time, 1."""
        return 1.0

    @property
    def _delta(self) -> float:
        return self.beta_max - self.beta_min

    def _beta(self, t: Array) -> Array:
        return self.beta_min + t * self._delta

    def _lmc(self, t: Array) -> Array:
        # log mean coeff = -∫_0^t β(s) ds / 2 = -t²(β1-β0)/4 - t β0/2
        return t * (t * self._delta + 2.0 * self.beta_min) * -0.25

    # -- public scalar functions of t ----------------------------------------------------------
    def beta(self, t: Array | float) -> Array:
        """β(t) = β0 + t (β1 - β0) (Song et al. 2021, Eq. 32 / App. B)."""
        _, t = self._time(t)
        return self._beta(t)

    def marginal_log_mean_coeff(self, t: Array | float) -> Array:
        """log α_t = -¼ t² (β1 - β0) - ½ t β0 = -½ ∫_0^t β(s) ds (Song et al. 2021, Eq. 33)."""
        _, t = self._time(t)
        return self._lmc(t)

    def marginal_std(self, t: Array | float) -> Array:
        """σ_t, the std of the perturbation kernel (VP: √(1 - α_t²); sub-VP: 1 - α_t²)."""
        xp, t = self._time(t)
        return self._std(xp, self._lmc(t))

    def t_from_lambda(self, lam: Array | float) -> Array:
        """The t ∈ [0, T] with λ_t = lam (closed form, Lu et al. 2022, App. for the linear VP schedule).

        Solves Δ t²/2 + β0 t = L, L = -2 log α_t, by the cancellation-free root
        t = 2L / (β0 + √(β0² + 2ΔL)). ``lam`` must lie in [λ_T, +∞].
        """
        xp, lam = as_float_array(lam, "lam")
        lam_T = self.lambda_(xp.asarray(self.T, dtype=lam.dtype, device=device_of(lam)))
        ok = (lam >= lam_T) | (lam == math.inf)
        if not bool(xp.all(ok)):
            _range_error("lam", xp, lam, f"[λ(T) = {float(lam_T)!r}, inf] (λ(t) for t in [0, T])")
        L = self._neg2_lmc_from_lambda(xp, lam)
        t = _rationalised_root(L, self.beta_min, self._delta, xp)
        return xp.minimum(t, _full_like(xp, t, float(self.T)))

    # -- the DDPM chain of the same β's (VP: its discretization; both: score_sde's Langevin α_i) --
    def _beta_i(self, i: Array) -> Array:
        """β_i = (β_min + i (β_max - β_min)/(N - 1)) / N, i.e. linspace(β_min/N, β_max/N, N)."""
        if self.N == 1:
            return i * 0.0 + self.beta_min
        return (self.beta_min + i * (self._delta / (self.N - 1))) / self.N

    @property
    def discrete_betas(self) -> np.ndarray:
        """The DDPM β_i = linspace(β_min/N, β_max/N, N) as float64 NumPy (correctly rounded)."""
        return _ddpm_betas(self.beta_min, self.beta_max, self.N).copy()

    @property
    def alphas(self) -> np.ndarray:
        """1 - β_i for the DDPM chain, float64 NumPy."""
        return 1.0 - self.discrete_betas

    def check_ddpm_chain(self, what: str = "DDPM discretization", hint: str = "") -> None:
        """Raise unless the DDPM chain has β_i = β/N < 1, i.e. N > max(β_min, β_max) (Ho et al. 2020)."""
        if max(self.beta_min, self.beta_max) >= self.N:
            fail(
                "N",
                self.N,
                f"the {what} needs β_i = β/N < 1, i.e. N > max(beta_min, beta_max) "
                f"= {max(self.beta_min, self.beta_max)!r}{hint}",
            )

    def _host_times(self, ts: Sequence[float]) -> np.ndarray:
        t = np.asarray([check_real("t", v, lo=0.0, hi=float(self.T)) for v in ts], dtype=np.float64)
        return t

    def drift_coefficients(self, ts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(a, g) = (-½ β(t), g(t)) with f(x, t) = a x (Song et al. 2021, Eqs. 11 and 12)."""
        t = self._host_times(ts)
        beta = self._beta(t)
        return beta * -0.5, self._diffusion(np, t, beta)

    def langevin_alpha(self, ts: Sequence[float]) -> np.ndarray:
        """α_i = 1 - β_i of the DDPM chain of the same β's (score_sde ``LangevinCorrector`` for VP).

        score_sde's corrector reads ``sde.alphas``, which its sub-VP SDE does not define (it fails
        there); refdiff uses the same DDPM chain for sub-VP.
        """
        self.check_ddpm_chain("DDPM chain (N = steps)", "; use more steps")
        betas = _ddpm_betas(self.beta_min, self.beta_max, self.N)
        return 1.0 - betas[[self.chain_index(t) for t in ts]]

    def sde(self, x: Array, t: Array | float) -> tuple[Array, Array]:
        """(-½ β(t) x, g(t)) with g² = β(t) (VP, Eq. 11) or β(t)(1 - e^{-2∫β}) (sub-VP, Eq. 12)."""
        xp, t = self._time(t, like=x)
        beta = self._beta(t)
        drift = append_dims(beta * -0.5, x.ndim) * x
        return drift, self._diffusion(xp, t, beta)

    def marginal_prob(self, x: Array, t: Array | float) -> tuple[Array, Array]:
        """(α_t x, σ_t) with α_t = exp(-½ ∫_0^t β) (Song et al. 2021, Eqs. 29 and 33)."""
        xp, t = self._time(t, like=x)
        lmc = self._lmc(t)
        mean = append_dims(xp.exp(lmc), x.ndim) * x
        return mean, self._std(xp, lmc)

    def prior_sampling(self, shape: Sequence[int], *, noise: Array) -> Array:
        """The prior N(0, I) sample: ``noise`` itself (checked against ``shape``)."""
        self._check_noise(shape, noise)
        return noise

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, I) summed over non-batch axes: -D/2 log 2π - ‖z‖²/2."""
        return _standard_normal_logp(z, 1.0)


@dataclass(frozen=True)
class VPSDE(_LinearBeta):
    """Variance-preserving SDE dx = -½ β(t) x dt + √β(t) dw (Song et al. 2021, Eq. 11).

    β(t) = β0 + t (β1 - β0) with β0 = ``beta_min``, β1 = ``beta_max``; the continuous limit of
    DDPM with β_i = β̄_i / N. Perturbation kernel N(α_t x0, σ_t² I) with
    log α_t = -¼ t² (β1-β0) - ½ t β0 and σ_t = √(1 - α_t²) (computed as √(-expm1(2 log α_t))).
    ``discretize`` is the DDPM chain (Eq. 47 / score_sde ``VPSDE.discretize``).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    index_rounding: str = "round"

    def __post_init__(self) -> None:
        self._validate()

    def _std(self, xp: Namespace, lmc: Array) -> Array:
        return xp.sqrt(-xp.expm1(2.0 * lmc))

    def _diffusion(self, xp: Namespace, t: Array, beta: Array) -> Array:
        return xp.sqrt(beta)

    def log_snr(self, t: Array | float) -> Array:
        """log(α_t²/σ_t²) = -log(expm1(∫_0^t β)) (no cancellation); +∞ at t = 0."""
        xp, t = self._time(t)
        a = self._lmc(t) * -2.0
        pos = a > 0
        safe = xp.where(pos, a, xp.ones_like(a))
        return xp.where(pos, -xp.log(xp.expm1(safe)), _full_like(xp, a, math.inf))

    def _neg2_lmc_from_lambda(self, xp: Namespace, lam: Array) -> Array:
        # α²/σ² = 1/(e^L - 1) = e^{2λ}  =>  L = log(1 + e^{-2λ})
        return xp.logaddexp(xp.zeros_like(lam), lam * -2.0)

    def discretize(
        self, x: Array, t: Array | float, *, dt: float | None = None
    ) -> tuple[Array, Array]:
        """DDPM step x_{i+1} = √(1-β_i) x_i + √β_i z: f = (√(1-β_i) - 1) x, G = √β_i (Eq. 47).

        i = round(t (N-1)/T) (or floor, see ``index_rounding``). √(1-β) - 1 is formed as
        -β / (1 + √(1-β)). ``dt`` is not accepted: the chain's step is fixed by N (use
        :meth:`euler_discretize` for an Euler–Maruyama step).
        """
        if dt is not None:
            fail(
                "dt",
                dt,
                "VPSDE.discretize is the DDPM chain, whose step is fixed by N; "
                "use euler_discretize(x, t, dt=...) for an Euler-Maruyama step",
            )
        self.check_ddpm_chain()
        xp, t = self._time(t, like=x)
        beta = self._beta_i(self._index(xp, t))
        f = append_dims(-beta / (1.0 + xp.sqrt(1.0 - beta)), x.ndim) * x
        return f, xp.sqrt(beta)

    def reverse_diffusion_coefficients(self, ts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(c, G) of the DDPM step (:meth:`discretize`): f_i = c x with c = -β_i/(1 + √(1-β_i)), G = √β_i."""
        self.check_ddpm_chain("DDPM chain (N = steps)", "; use more steps")
        beta = self._beta_i(np.asarray([float(self.chain_index(t)) for t in ts]))
        return -beta / (1.0 + np.sqrt(1.0 - beta)), np.sqrt(beta)

    def ancestral_coefficients(
        self, ts: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DDPM ancestral step x̄ = (x + β_i s)/√(1 - β_i), std √β_i (Ho et al. 2020, Eq. 11; Song et al. 2021, App. F)."""
        self.check_ddpm_chain("DDPM chain (N = steps)", "; use more steps")
        beta = _ddpm_betas(self.beta_min, self.beta_max, self.N)[[self.chain_index(t) for t in ts]]
        return beta, np.sqrt(1.0 - beta), np.sqrt(beta)


@dataclass(frozen=True)
class SubVPSDE(_LinearBeta):
    """Sub-VP SDE dx = -½ β(t) x dt + √(β(t)(1 - e^{-2∫_0^t β})) dw (Song et al. 2021, Eq. 12).

    Perturbation kernel N(α_t x0, σ_t² I) with the same α_t as the VP SDE and
    **σ_t = 1 - α_t²** (the std itself, not a square root: Eq. 29 gives the variance
    (1 - e^{-∫β})²). Its variance is never larger than the VP one. Discretization: Euler.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    index_rounding: str = "round"

    def __post_init__(self) -> None:
        self._validate()

    def _std(self, xp: Namespace, lmc: Array) -> Array:
        return -xp.expm1(2.0 * lmc)

    def _diffusion(self, xp: Namespace, t: Array, beta: Array) -> Array:
        # 1 - exp(-2β0 t - (β1-β0) t²) = -expm1(4 lmc)
        return xp.sqrt(beta * -xp.expm1(4.0 * self._lmc(t)))

    def log_snr(self, t: Array | float) -> Array:
        """log(α_t²/σ_t²) = -2 log(2 sinh(½ ∫_0^t β)) (no cancellation); +∞ at t = 0."""
        xp, t = self._time(t)
        b = self._lmc(t) * -1.0
        pos = b > 0
        safe = xp.where(pos, b, xp.ones_like(b))
        return xp.where(pos, -2.0 * xp.log(2.0 * xp.sinh(safe)), _full_like(xp, b, math.inf))

    def _neg2_lmc_from_lambda(self, xp: Namespace, lam: Array) -> Array:
        # α/σ = 1/(2 sinh(b)) = e^λ with b = -log α  =>  b = asinh(e^{-λ}/2), L = 2b
        return 2.0 * xp.asinh(0.5 * xp.exp(-lam))


# --------------------------------------------------------------------------------------------
# VE
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE dx = σ(t) √(2 log(σ_max/σ_min)) dw (Song et al. 2021, Eq. 9).

    σ(t) = σ_min (σ_max/σ_min)^t, the continuous limit of SMLD/NCSN. Mean coefficient 1.
    The marginal std has two conventions, chosen by name with ``marginal``:

    * ``"score_sde"`` (default): σ_t = σ(t), as score_sde's ``VESDE.marginal_prob`` (exact for
      data already perturbed by N(0, σ_min²); Eq. 30 with σ²(0) absorbed).
    * ``"exact"``: σ_t = √(σ(t)² - σ_min²) = σ_min √(expm1(2 t log(σ_max/σ_min))), the
      perturbation std of the SDE started from x(0) at t = 0 (Eq. 29).

    Prior N(0, σ_max² I) in both. ``discretize`` is the SMLD chain (Eq. 45).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000
    marginal: str = "score_sde"
    index_rounding: str = "round"

    def __post_init__(self) -> None:
        smin = check_real("sigma_min", self.sigma_min, lo=0.0, lo_open=True)
        smax = check_real("sigma_max", self.sigma_max, lo=0.0, lo_open=True)
        if not smax > smin:
            fail("sigma_max", self.sigma_max, f"expected sigma_max > sigma_min = {smin!r}")
        object.__setattr__(self, "sigma_min", smin)
        object.__setattr__(self, "sigma_max", smax)
        object.__setattr__(self, "N", check_int("N", self.N, minimum=1))
        check_choice("marginal", self.marginal, VE_MARGINALS, "VE marginal convention")
        check_choice("index_rounding", self.index_rounding, INDEX_ROUNDINGS, "index rounding")

    @property
    def T(self) -> float:
        """End time, 1."""
        return 1.0

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def _sigma(self, xp: Namespace, t: Array) -> Array:
        ratio = xp.asarray(self.sigma_max / self.sigma_min, dtype=t.dtype, device=device_of(t))
        return self.sigma_min * xp.pow(ratio, t)

    def _std(self, xp: Namespace, t: Array) -> Array:
        if self.marginal == "score_sde":
            return self._sigma(xp, t)
        a = t * (2.0 * self._log_ratio)
        small = a <= 1.0
        via_expm1 = self.sigma_min * xp.sqrt(xp.expm1(xp.where(small, a, xp.zeros_like(a))))
        s = self._sigma(xp, t)
        via_squares = xp.sqrt((s - self.sigma_min) * (s + self.sigma_min))
        return xp.where(small, via_expm1, via_squares)

    def sigma(self, t: Array | float) -> Array:
        """σ(t) = σ_min (σ_max/σ_min)^t (Song et al. 2021, App. C)."""
        xp, t = self._time(t)
        return self._sigma(xp, t)

    def marginal_log_mean_coeff(self, t: Array | float) -> Array:
        """log of the mean coefficient: 0 (VE keeps the mean)."""
        xp, t = self._time(t)
        return xp.zeros_like(t)

    def marginal_std(self, t: Array | float) -> Array:
        """σ_t under the ``marginal`` convention (σ(t), or √(σ(t)² - σ_min²))."""
        xp, t = self._time(t)
        return self._std(xp, t)

    def log_snr(self, t: Array | float) -> Array:
        """log(1/σ_t²): -2 log σ_min - 2 t log(σ_max/σ_min) ("score_sde"), or -log(σ(t)² - σ_min²) ("exact", +∞ at t=0)."""
        xp, t = self._time(t)
        k = self._log_ratio
        if self.marginal == "score_sde":
            return -2.0 * math.log(self.sigma_min) - (2.0 * k) * t
        pos = t > 0
        safe_t = xp.where(pos, t, xp.ones_like(t))
        val = -2.0 * xp.log(self._std(xp, safe_t))
        return xp.where(pos, val, _full_like(xp, t, math.inf))

    def t_from_lambda(self, lam: Array | float) -> Array:
        """The t ∈ [0, T] with λ_t = lam: (-lam - log σ_min)/log(σ_max/σ_min), or for "exact"
        log1p(e^{-2 lam}/σ_min²) / (2 log(σ_max/σ_min)). ``lam`` must lie in [λ_T, λ_0]."""
        xp, lam = as_float_array(lam, "lam")
        k = self._log_ratio
        lam_T = self.lambda_(xp.asarray(self.T, dtype=lam.dtype, device=device_of(lam)))
        lam_0 = self.lambda_(xp.asarray(0.0, dtype=lam.dtype, device=device_of(lam)))
        if not bool(xp.all((lam >= lam_T) & (lam <= lam_0))):
            _range_error("lam", xp, lam, f"[λ(T) = {float(lam_T)!r}, λ(0) = {float(lam_0)!r}]")
        if self.marginal == "score_sde":
            t = (-lam - math.log(self.sigma_min)) * (1.0 / k)
            t = xp.maximum(t, xp.zeros_like(t))
        else:
            t = xp.logaddexp(xp.zeros_like(lam), lam * -2.0 - 2.0 * math.log(self.sigma_min)) * (
                0.5 / k
            )
        return xp.minimum(t, _full_like(xp, t, float(self.T)))

    def sde(self, x: Array, t: Array | float) -> tuple[Array, Array]:
        """(0, σ(t) √(2 log(σ_max/σ_min))) (Song et al. 2021, Eq. 9 with σ(t) geometric)."""
        xp, t = self._time(t, like=x)
        return xp.zeros_like(x), self._sigma(xp, t) * math.sqrt(2.0 * self._log_ratio)

    def marginal_prob(self, x: Array, t: Array | float) -> tuple[Array, Array]:
        """(x, σ_t) with σ_t under the ``marginal`` convention (Eq. 29/30)."""
        xp, t = self._time(t, like=x)
        return x, self._std(xp, t)

    def prior_sampling(self, shape: Sequence[int], *, noise: Array) -> Array:
        """The prior N(0, σ_max² I) sample σ_max · noise."""
        self._check_noise(shape, noise)
        return noise * self.sigma_max

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, σ_max² I) summed over non-batch axes."""
        return _standard_normal_logp(z, self.sigma_max)

    @property
    def discrete_sigmas(self) -> np.ndarray:
        """SMLD noise levels σ_i = exp(linspace(log σ_min, log σ_max, N)), float64 NumPy (correctly rounded)."""
        return _smld_sigmas(self.sigma_min, self.sigma_max, self.N).copy()

    def discretize(
        self, x: Array, t: Array | float, *, dt: float | None = None
    ) -> tuple[Array, Array]:
        """SMLD step x_i = x_{i-1} + √(σ_i² - σ_{i-1}²) z (σ_{-1} = 0): f = 0, G = √(σ_i² - σ_{i-1}²) (Eq. 45).

        σ_i = σ_min (σ_max/σ_min)^{i/(N-1)}; G is formed as σ_i √(-expm1(-2 log(σ_max/σ_min)/(N-1)))
        (no cancellation), and G = σ_0 at i = 0. ``dt`` is not accepted (see :meth:`euler_discretize`).
        """
        if dt is not None:
            fail(
                "dt",
                dt,
                "VESDE.discretize is the SMLD chain, whose step is fixed by N; "
                "use euler_discretize(x, t, dt=...) for an Euler-Maruyama step",
            )
        xp, t = self._time(t, like=x)
        f = xp.zeros_like(x)
        if self.N == 1:
            return f, _full_like(xp, t, self.sigma_min)
        i = self._index(xp, t)
        sigma_i = self._sigma(xp, i / float(self.N - 1))
        step = math.sqrt(-math.expm1(-2.0 * self._log_ratio / (self.N - 1)))
        return f, xp.where(i > 0, sigma_i * step, sigma_i)

    def drift_coefficients(self, ts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(0, σ(t) √(2 log(σ_max/σ_min))): f = 0 (Song et al. 2021, Eq. 9)."""
        t = np.asarray([check_real("t", v, lo=0.0, hi=float(self.T)) for v in ts], dtype=np.float64)
        return np.zeros_like(t), self._sigma(np, t) * math.sqrt(2.0 * self._log_ratio)

    def reverse_diffusion_coefficients(self, ts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(0, G_i) of the SMLD step (:meth:`discretize`)."""
        i = np.asarray([float(self.chain_index(t)) for t in ts])
        if self.N == 1:
            return np.zeros_like(i), np.full(i.shape, self.sigma_min)
        sigma_i = self._sigma(np, i / float(self.N - 1))
        step = math.sqrt(-math.expm1(-2.0 * self._log_ratio / (self.N - 1)))
        return np.zeros_like(i), np.where(i > 0, sigma_i * step, sigma_i)

    def ancestral_coefficients(
        self, ts: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SMLD ancestral step x̄ = x + (σ_i² - σ_{i-1}²) s, std σ_{i-1} √(σ_i² - σ_{i-1}²)/σ_i, σ_{-1} = 0 (Song et al. 2021, App. F)."""
        table = _smld_sigmas(self.sigma_min, self.sigma_max, self.N)
        idx = [self.chain_index(t) for t in ts]
        sigma = table[idx]
        prev = np.asarray([table[i - 1] if i > 0 else 0.0 for i in idx])
        gap = (sigma - prev) * (sigma + prev)  # σ_i² - σ_{i-1}²
        return gap, np.ones_like(gap), prev * np.sqrt(gap) / sigma
