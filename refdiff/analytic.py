"""Exact oracles for Gaussian and Gaussian-mixture data under any marginal x_t = α·x0 + σ·z.

One implementation serves every noise family: a discrete schedule (α = √ᾱ_t, σ = √(1 − ᾱ_t)),
a continuous SDE (α, σ from ``sde.marginal_alpha(t)`` / ``sde.marginal_std(t)``, i.e. the two
factors of ``sde.marginal_prob``) and the Karras/VE scale (α = 1, σ). For data x0 ~ N(μ, Σ) the
noisy marginal is N(αμ, α²Σ + σ²I) and every model target is affine in x (Tweedie / Gaussian
conditioning); for a mixture Σ_k π_k N(μ_k, Σ_k) each quantity is the responsibility-weighted
combination of the component answers (Song et al. 2021, §3; Karras et al. 2022, App. B.3).

What each function returns (``x`` has shape (B, \\*event) with prod(event) = ``dim``; ``alpha`` and
``sigma`` are Python numbers, 0-d arrays or arrays of shape (B,); results live in x's namespace,
device and dtype; only matmul and elementwise array-API operations run on x, the
eigendecompositions are precomputed on the host in float64):

* ``GaussianData(mean, cov)`` / ``GaussianMixtureData(weights, means, covs)`` — the data law.
  ``data.x0(x, alpha, sigma)`` = E[x0 | x_t = x], the ideal denoiser D(x) (shape of x);
  ``data.eps(x, alpha, sigma)`` = E[z | x_t = x] = (x − α·x0)/σ (needs σ > 0);
  ``data.v(x, alpha, sigma)`` = α·eps − σ·x0 (Salimans & Ho 2022, with α² + σ² = 1 for VP);
  ``data.score(x, alpha, sigma)`` = ∇_x log p_t(x) (needs σ > 0 or a non-singular α²Σ);
  ``data.logpdf(x, alpha, sigma)`` = log p_t(x), shape (B,), the true density of x_t;
  ``data.marginal(alpha, sigma)`` -> (mean (d,), cov (d, d)) NumPy float64 moments of x_t
  (for a mixture, the overall moments); ``data.sample(noise[, u])`` -> x0 draws from standard
  normal ``noise`` of shape (B, \\*event) (a mixture also takes ``u`` ~ U[0, 1) of shape (B,) to pick
  the component). ``GaussianData.posterior_cov(alpha, sigma)`` -> Var[x0 | x_t] (d, d) NumPy
  (independent of x for Gaussian data); ``GaussianData.posterior_var(x, alpha, sigma)`` its
  diagonal broadcast to x's shape in x's namespace; ``GaussianMixtureData.components(alpha,
  sigma)`` -> (weights, means, covs) of x_t's law.
* ``discrete_model(data, schedule, mean_type="eps", *, sampling_schedule=None,
  var_type=None)`` -> ``model(x, t)`` for integer timesteps t of ``schedule`` (original indices):
  the exact ε / x0 / v / score / μ output (μ = posterior mean of ``schedule`` at t). With
  ``var_type="learned"`` the output gets extra channels (B, 2C, ...) holding the exact
  log Var[x_{t'} | x_t] for the previous step t' of ``sampling_schedule`` (default: ``schedule``):
  β̃'_i + c1'_i²·Var[x0 | x_t] (diagonal; exact for diagonal Σ), so DDPM ancestral sampling with
  it reproduces the data law exactly.
* ``karras_denoiser(data)`` -> ``D(x, sigma)`` = E[x0 | x0 + σz = x] (α = 1).
* ``vp_model(data, noise_schedule_or_sde, kind="eps")`` -> ``model(x, t)`` for continuous t,
  kind in {"eps", "x0", "v", "score"}, with α_t, σ_t from the object's ``marginal_alpha(t)`` and
  ``marginal_std(t)`` methods (VPSDE, SubVPSDE, VESDE and DPM-Solver-style noise schedules).
* ``linear_sampler_law(run, mean_T, cov_T, *, dim, n_noise)`` -> ``LinearLaw(mean, cov, M, N, c)``
  (NumPy): for a sampler that is affine in its inputs, x_out = M x_T + N ξ + c with ξ the
  n_noise·dim stacked standard-normal draws, found by running ``run(x_T, noise)`` once on a batch
  of basis vectors (x_T of shape (B, dim), noise of shape (n_noise, B, dim), both NumPy float64
  unless ``xp=`` is given); the output law for x_T ~ N(mean_T, cov_T) is N(M mean_T + c,
  M cov_T Mᵀ + N Nᵀ). An extra random column checks affinity (``check=True``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ._errors import RefdiffShapeError, RefdiffValueError, check_choice, check_int, fail
from ._typing import Array, Device, Namespace
from ._xp import array_namespace, device_of, is_array
from .parameterizations import PREDICTION_TYPES, prediction_type

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = [
    "GaussianData",
    "GaussianMixtureData",
    "discrete_model",
    "karras_denoiser",
    "vp_model",
    "linear_sampler_law",
    "LinearLaw",
    "gaussian_kl",
    "MODEL_KINDS",
]

_LOG_2PI = math.log(2.0 * math.pi)

#: What ``discrete_model`` can predict.
MODEL_KINDS = PREDICTION_TYPES


# --------------------------------------------------------------------------------------------
# Host-side helpers
# --------------------------------------------------------------------------------------------


def _host_mean(mean: npt.ArrayLike, name: str) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float64)
    if m.ndim == 0:
        m = m.reshape(1)
    if m.ndim != 1 or m.size == 0:
        fail(name, mean, "expected a non-empty 1-D vector")
    if not np.all(np.isfinite(m)):
        fail(name, mean, "every entry must be finite")
    return m


def _host_cov(cov: npt.ArrayLike, d: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Σ, eigenvalues λ ≥ 0, orthonormal eigenvectors U) of a symmetric PSD matrix."""
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim == 0:
        c = c * np.eye(d)
    elif c.ndim == 1:
        if c.shape[0] != d:
            fail(name, cov, f"a 1-D cov is the diagonal and needs {d} entries")
        c = np.diag(c)
    if c.shape != (d, d):
        fail(name, cov, f"expected a ({d}, {d}) matrix (or a scalar / diagonal vector)")
    if not np.all(np.isfinite(c)):
        fail(name, cov, "every entry must be finite")
    if not np.allclose(c, c.T, rtol=0, atol=1e-12 * max(1.0, float(np.max(np.abs(c))))):
        fail(name, cov, "must be symmetric")
    lam, U = np.linalg.eigh((c + c.T) / 2.0)
    tol = 1e-12 * max(1.0, float(np.max(np.abs(lam))))
    if np.any(lam < -tol):
        fail(
            name, cov, f"must be positive semi-definite (smallest eigenvalue {float(lam.min())!r})"
        )
    lam = np.maximum(lam, 0.0)
    return c, lam, U


def _ns_const(xp: Namespace, a: np.ndarray, like: Array) -> Array:
    """A host constant as an array next to ``like`` (same namespace, device, dtype)."""
    return xp.asarray(a, dtype=like.dtype, device=device_of(like))


def _flat(x: Array, d: int) -> Array:
    """x (B, \\*event) -> (B, d), with an error naming the shape when prod(event) != d."""
    xp = array_namespace(x)
    if not is_array(x) or x.ndim < 2 or math.prod(tuple(x.shape[1:])) != d:
        raise RefdiffShapeError(
            f"x has shape {tuple(getattr(x, 'shape', ()))} but the data are {d}-dimensional: "
            f"expected (B, *event) with prod(event) = {d}"
        )
    if not xp.isdtype(x.dtype, "real floating"):
        fail("x", x, f"expected a real floating-point array, got dtype {x.dtype}")
    return xp.reshape(x, (x.shape[0], d))


def _coef(value: Array, name: str, x: Array) -> Array:
    """alpha / sigma as an array of shape (B, 1) or (1, 1) in x's namespace and dtype."""
    xp = array_namespace(x)
    b = x.shape[0]
    if is_array(value):
        a = xp.astype(value, x.dtype) if value.dtype != x.dtype else value
        if a.ndim == 0:
            a = xp.reshape(a, (1, 1))
        else:
            if math.prod(tuple(a.shape)) != b and math.prod(tuple(a.shape)) != 1:
                raise RefdiffShapeError(
                    f"{name} has shape {tuple(a.shape)} but x has batch size {b}; expected a "
                    f"scalar or {b} values"
                )
            a = xp.reshape(a, (-1, 1))
    else:
        try:
            v = float(value)
        except (TypeError, ValueError):
            fail(name, value, "expected a real number or an array of shape (B,)")
        if not math.isfinite(v):
            fail(name, value, "expected a finite real number")
        a = xp.reshape(xp.asarray(v, dtype=x.dtype, device=device_of(x)), (1, 1))
    if bool(xp.any(a < 0)):
        fail(name, value, "must be >= 0")
    return a


def _host_coef(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        fail(name, value, "expected a real number")
    if not math.isfinite(v) or v < 0:
        fail(name, value, "expected a finite real number >= 0")
    return v


# --------------------------------------------------------------------------------------------
# Gaussian data
# --------------------------------------------------------------------------------------------


class _Data:
    """What every analytic data law derives from its x0, ε and score: the velocity v."""

    dim: int

    if TYPE_CHECKING:  # given by every data law

        def x0(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array: ...
        def eps(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array: ...

    def v(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """v = α·ε − σ·x0 (Salimans & Ho 2022, §4)."""
        xp = array_namespace(x)
        xf = _flat(x, self.dim)
        a = xp.reshape(_coef(alpha, "alpha", xf), (-1,) + (1,) * (x.ndim - 1))
        s = xp.reshape(_coef(sigma, "sigma", xf), (-1,) + (1,) * (x.ndim - 1))
        return a * self.eps(x, alpha, sigma) - s * self.x0(x, alpha, sigma)


class GaussianData(_Data):
    """Data x0 ~ N(μ, Σ); exact denoiser, ε, v, score and log-density of x_t = α x0 + σ z.

    Parameters
    ----------
    mean : array_like, shape (d,)
        μ.
    cov : array_like
        Σ as a (d, d) symmetric positive semi-definite matrix, a length-d diagonal or a scalar
        (times the identity). Σ = 0 is a point mass, for which x0(x) = μ at every σ > 0.
    """

    def __init__(self, mean: npt.ArrayLike, cov: npt.ArrayLike) -> None:
        self.mean = _host_mean(mean, "mean")
        self.dim = int(self.mean.size)
        self.cov, self.eigvals, self.eigvecs = _host_cov(cov, self.dim, "cov")

    def __repr__(self) -> str:
        return f"GaussianData(dim={self.dim})"

    # -- array-API pieces --------------------------------------------------------------------
    def _parts(
        self, x: Array, alpha: Array | float, sigma: Array | float
    ) -> tuple[Namespace, Array, Array, Array, Array, Array, Array, Array, Array]:
        xp = array_namespace(x)
        xf = _flat(x, self.dim)
        a = _coef(alpha, "alpha", xf)
        s = _coef(sigma, "sigma", xf)
        mu = xp.reshape(_ns_const(xp, self.mean, xf), (1, self.dim))
        U = _ns_const(xp, self.eigvecs, xf)
        lam = xp.reshape(_ns_const(xp, self.eigvals, xf), (1, self.dim))
        denom = a * a * lam + s * s  # eigenvalues of α²Σ + σ²I, (B|1, d)
        z = (xf - a * mu) @ U  # coordinates of x − αμ in the eigenbasis
        return xp, xf, a, s, mu, U, lam, denom, z

    def x0(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """E[x0 | x_t = x] = μ + αΣ(α²Σ + σ²I)⁻¹(x − αμ) (Gaussian conditioning; the ideal denoiser)."""
        xp, xf, a, s, mu, U, lam, denom, z = self._parts(x, alpha, sigma)
        pos = denom > 0
        safe = xp.where(pos, denom, xp.ones_like(denom))
        inv_a = 1.0 / xp.where(a > 0, a, xp.ones_like(a))
        # σ = 0 and λ = 0: x_t = αμ on that axis, so x/α is exact there.
        gain = xp.where(pos, a * lam / safe, inv_a * xp.ones_like(denom))
        out = mu + (gain * z) @ xp.matrix_transpose(U)
        return xp.reshape(out, tuple(x.shape))

    def score(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """∇ log p_t(x) = −(α²Σ + σ²I)⁻¹(x − αμ) (Song et al. 2021, §3.3)."""
        xp, xf, a, s, mu, U, lam, denom, z = self._parts(x, alpha, sigma)
        if bool(xp.any(denom <= 0)):
            fail(
                "sigma",
                sigma,
                "the score needs a non-singular α²Σ + σ²I (σ > 0 or Σ positive definite)",
            )
        out = -(z / denom) @ xp.matrix_transpose(U)
        return xp.reshape(out, tuple(x.shape))

    def eps(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """E[z | x_t = x] = (x − α·E[x0|x])/σ = −σ·score (Ho et al. 2020, Eq. 4; Tweedie)."""
        xp, xf, a, s, mu, U, lam, denom, z = self._parts(x, alpha, sigma)
        if bool(xp.any(s <= 0)):
            fail("sigma", sigma, "ε is undefined at σ = 0; expected σ > 0")
        out = (s * z / denom) @ xp.matrix_transpose(U)
        return xp.reshape(out, tuple(x.shape))

    def logpdf(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """log N(x; αμ, α²Σ + σ²I) per sample, shape (B,)."""
        xp, xf, a, s, mu, U, lam, denom, z = self._parts(x, alpha, sigma)
        if bool(xp.any(denom <= 0)):
            fail(
                "sigma",
                sigma,
                "the density needs a non-singular α²Σ + σ²I (σ > 0 or Σ positive definite)",
            )
        quad = xp.sum(z * z / denom, axis=1)
        logdet = xp.sum(xp.log(denom), axis=1)
        return -0.5 * (quad + logdet + self.dim * _LOG_2PI)

    def posterior_var(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """diag Var[x0 | x_t] = diag(U diag(λσ²/(α²λ + σ²)) Uᵀ), broadcast to x's shape."""
        xp, xf, a, s, mu, U, lam, denom, z = self._parts(x, alpha, sigma)
        pos = denom > 0
        safe = xp.where(pos, denom, xp.ones_like(denom))
        g = xp.where(pos, lam * s * s / safe, xp.zeros_like(denom))
        diag = g @ xp.matrix_transpose(U * U)  # (B|1, d)
        diag = diag + xp.zeros_like(xf)
        return xp.reshape(diag, tuple(x.shape))

    def sample(self, noise: Array) -> Array:
        """x0 = μ + Σ^{1/2}·noise with the symmetric root Σ^{1/2} = U diag(√λ) Uᵀ (noise: (B, \\*event))."""
        xp = array_namespace(noise)
        nf = _flat(noise, self.dim)
        root = (self.eigvecs * np.sqrt(self.eigvals)) @ self.eigvecs.T  # symmetric square root
        out = xp.reshape(_ns_const(xp, self.mean, nf), (1, self.dim)) + nf @ _ns_const(
            xp, root.T, nf
        )
        return xp.reshape(out, tuple(noise.shape))

    # -- host-side moments -------------------------------------------------------------------
    def marginal(self, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(αμ, α²Σ + σ²I) of x_t as NumPy float64 (Ho et al. 2020, Eq. 4)."""
        a, s = _host_coef(alpha, "alpha"), _host_coef(sigma, "sigma")
        return a * self.mean, a * a * self.cov + s * s * np.eye(self.dim)

    def posterior_cov(self, alpha: float, sigma: float) -> np.ndarray:
        """Var[x0 | x_t] = Σ − α²Σ(α²Σ + σ²I)⁻¹Σ = U diag(λσ²/(α²λ + σ²)) Uᵀ, NumPy (d, d)."""
        a, s = _host_coef(alpha, "alpha"), _host_coef(sigma, "sigma")
        lam = self.eigvals
        denom = a * a * lam + s * s
        g = np.where(denom > 0, lam * s * s / np.where(denom > 0, denom, 1.0), 0.0)
        return (self.eigvecs * g) @ self.eigvecs.T

    def denoiser_matrix(self, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with E[x0 | x_t = x] = A x + b, NumPy."""
        a, s = _host_coef(alpha, "alpha"), _host_coef(sigma, "sigma")
        lam = self.eigvals
        denom = a * a * lam + s * s
        g = np.where(
            denom > 0, a * lam / np.where(denom > 0, denom, 1.0), 1.0 / a if a > 0 else 0.0
        )
        A = (self.eigvecs * g) @ self.eigvecs.T
        return A, self.mean - a * (A @ self.mean)


# --------------------------------------------------------------------------------------------
# Gaussian mixtures
# --------------------------------------------------------------------------------------------


class GaussianMixtureData(_Data):
    """Data x0 ~ Σ_k π_k N(μ_k, Σ_k); exact denoiser, ε, v, score and log-density of x_t.

    Parameters
    ----------
    weights : array_like, shape (K,)
        Mixture weights π_k > 0 (normalised here).
    means : array_like, shape (K, d)
    covs : array_like
        (K, d, d) matrices, (K, d) diagonals, (K,) scalars, one entry shared by all components
        ((d, d), (d,) or a scalar), or a list of K per-component entries of any of the GaussianData
        forms. A 2-D array with K = d is ambiguous and rejected.
    """

    def __init__(self, weights: npt.ArrayLike, means: npt.ArrayLike, covs: Any) -> None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
            fail("weights", weights, "expected positive finite mixture weights")
        self.weights = w / w.sum()
        m = np.asarray(means, dtype=np.float64)
        if m.ndim == 1:
            m = m.reshape(-1, 1) if w.size > 1 and m.size == w.size else m.reshape(1, -1)
        if m.ndim != 2 or m.shape[0] != w.size:
            fail("means", means, f"expected shape (K, d) with K = {w.size} components")
        self.means = m
        self.K, self.dim = m.shape
        K, d = self.K, self.dim
        if (
            isinstance(covs, (list, tuple))
            and len(covs) == K
            and len({np.shape(v) for v in covs}) > 1
        ):
            self.components_ = [GaussianData(m[k], covs[k]) for k in range(K)]
            self.log_weights = np.log(self.weights)
            return
        c = np.asarray(covs, dtype=np.float64)
        if c.ndim == 2 and K == d:
            fail(
                "covs",
                covs,
                f"a 2-D covs is ambiguous when K = d = {d} ((K, d) diagonals or one "
                "shared (d, d) matrix); pass a (K, d, d) stack or a list of K entries",
            )
        if (
            c.ndim == 0
            or (c.ndim == 1 and c.shape[0] == d and K != d)
            or (c.ndim == 2 and c.shape == (d, d) and c.shape != (K, d))
        ):
            c = np.broadcast_to(c, (K,) + c.shape)  # one covariance shared by every component
        if c.shape[0] != K or c.ndim > 3:
            fail(
                "covs",
                covs,
                f"expected (K, d, d), (K, d), (K,) or a shared (d, d) / (d,) / "
                f"scalar with K = {K}, d = {d}",
            )
        self.components_ = [GaussianData(m[k], c[k]) for k in range(self.K)]
        self.log_weights = np.log(self.weights)

    def __repr__(self) -> str:
        return f"GaussianMixtureData(K={self.K}, dim={self.dim})"

    def _resp(self, x: Array, alpha: Array | float, sigma: Array | float) -> tuple[Array, Array]:
        """(log p_t(x) shape (B,), responsibilities r (B, K)) via a stable log-sum-exp."""
        xp = array_namespace(x)
        xf = _flat(x, self.dim)
        logs = [
            comp.logpdf(xf, alpha, sigma) + float(lw)
            for comp, lw in zip(self.components_, self.log_weights)
        ]
        L = xp.stack(logs, axis=1)  # (B, K)
        mx = xp.max(L, axis=1, keepdims=True)
        e = xp.exp(L - mx)
        tot = xp.sum(e, axis=1, keepdims=True)
        return xp.reshape(mx, (-1,)) + xp.log(xp.reshape(tot, (-1,))), e / tot

    def _combine(self, x: Array, alpha: Array | float, sigma: Array | float, what: str) -> Array:
        xp = array_namespace(x)
        xf = _flat(x, self.dim)
        _, r = self._resp(xf, alpha, sigma)
        out = xp.zeros_like(xf)
        for k, comp in enumerate(self.components_):
            out = out + r[:, k : k + 1] * getattr(comp, what)(xf, alpha, sigma)
        return xp.reshape(out, tuple(x.shape))

    def x0(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """E[x0 | x_t = x] = Σ_k r_k(x) E_k[x0 | x] with responsibilities r_k ∝ π_k N_k(x)."""
        return self._combine(x, alpha, sigma, "x0")

    def score(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """∇ log p_t(x) = Σ_k r_k(x) ∇ log N_k(x) (Song et al. 2021, §3.3)."""
        return self._combine(x, alpha, sigma, "score")

    def eps(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """E[z | x_t = x] = Σ_k r_k(x) E_k[z | x] = −σ·score."""
        return self._combine(x, alpha, sigma, "eps")

    def logpdf(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """log Σ_k π_k N(x; αμ_k, α²Σ_k + σ²I) per sample, shape (B,)."""
        return self._resp(x, alpha, sigma)[0]

    def responsibilities(self, x: Array, alpha: Array | float, sigma: Array | float) -> Array:
        """r_k(x) = P(component k | x_t = x), shape (B, K)."""
        return self._resp(x, alpha, sigma)[1]

    def components(self, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(π, αμ_k, α²Σ_k + σ²I) of x_t's mixture law, NumPy."""
        mc = [c.marginal(alpha, sigma) for c in self.components_]
        return self.weights.copy(), np.stack([m for m, _ in mc]), np.stack([c for _, c in mc])

    def marginal(self, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Overall (mean, covariance) of x_t (law of total variance), NumPy."""
        w, m, c = self.components(alpha, sigma)
        mean = w @ m
        dm = m - mean
        return mean, np.einsum("k,kij->ij", w, c) + np.einsum("k,ki,kj->ij", w, dm, dm)

    def sample(self, noise: Array, u: Array) -> Array:
        """x0 draws: component k = #{j < K-1 : u ≥ cumsum(π)_j}, then μ_k + Σ_k^{1/2}·noise."""
        xp = array_namespace(noise, u)
        nf = _flat(noise, self.dim)
        if tuple(u.shape) != (nf.shape[0],):
            raise RefdiffShapeError(
                f"u has shape {tuple(u.shape)} but noise has batch size "
                f"{nf.shape[0]}; expected shape ({nf.shape[0]},)"
            )
        cum = np.cumsum(self.weights)[:-1]
        idx = xp.zeros_like(u)
        for j in range(self.K - 1):
            idx = idx + xp.astype(u >= float(cum[j]), u.dtype)
        out = xp.zeros_like(nf)
        for k, comp in enumerate(self.components_):
            sel = xp.astype(idx == float(k), nf.dtype)
            out = out + xp.reshape(sel, (-1, 1)) * comp.sample(nf)
        return xp.reshape(out, tuple(noise.shape))


class _Marginals(Protocol):
    """A continuous family with α_t and σ_t (an SDE of refdiff.sde or a VP noise schedule)."""

    def marginal_alpha(self, t: Array) -> Array: ...
    def marginal_std(self, t: Array) -> Array: ...


# --------------------------------------------------------------------------------------------
# Adapters: exact models in each family's calling convention
# --------------------------------------------------------------------------------------------


def _take(table: np.ndarray, t: Array, x: Array) -> Array:
    """table[t] as a (B,) or 0-d array next to x (t: int, or an integer array)."""
    xp = array_namespace(x)
    tab = _ns_const(xp, np.array(table, dtype=np.float64), x)
    if is_array(t):
        if not xp.isdtype(t.dtype, "integral"):
            fail("t", t, "expected integer timesteps")
        n = table.shape[0]
        if bool(xp.any(t < 0)) or bool(xp.any(t >= n)):
            fail("t", t, f"timesteps must lie in [0, {n})")
        flat = xp.reshape(t, (-1,))
        return xp.take(tab, flat, axis=0)
    ti = check_int("t", t, minimum=0)
    if ti >= table.shape[0]:
        fail("t", t, f"timesteps must lie in [0, {table.shape[0]})")
    return tab[ti]


def _bcast(c: Array, x: Array) -> Array:
    xp = array_namespace(x)
    if c.ndim == 0:
        return c
    return xp.reshape(c, (-1,) + (1,) * (x.ndim - 1))


def discrete_model(
    data: GaussianData | GaussianMixtureData,
    schedule: Schedule,
    mean_type: str = "eps",
    *,
    sampling_schedule: Schedule | None = None,
    var_type: str | None = None,
) -> Callable[[Array, Array], Array]:
    """The exact ``model(x, t)`` of a discrete schedule: ε, x0, v, score or μ at original index t (Ho et al. 2020, Eq. 4).

    Parameters
    ----------
    data : GaussianData or GaussianMixtureData
    schedule : refdiff.schedules.Schedule
        The training schedule whose indices ``t`` the model receives (samplers map respaced
        indices through ``timestep_map`` before calling).
    mean_type : {"eps", "x0", "v", "score", "mean"}
        What the output predicts (aliases accepted); "mean" is the posterior mean μ̃_t(x_t, E[x0|x_t]) of ``schedule``.
    sampling_schedule : Schedule, optional
        The (respaced) schedule the sampler steps on; only used by ``var_type="learned"``.
    var_type : {None, "learned"}
        "learned" appends the exact log Var[x_{t'} | x_t] (t' = the previous step of
        ``sampling_schedule``) as extra channels along axis 1 (needs GaussianData; exact for a
        diagonal Σ, otherwise the diagonal of the true covariance).
    """
    mean_type = prediction_type(mean_type, "mean_type")
    if var_type is not None:
        check_choice("var_type", var_type, ("learned",), "analytic variance output")
        if not isinstance(data, GaussianData):
            fail(
                "data",
                data,
                "an exact learned variance needs GaussianData (a mixture's "
                "reverse kernel is not Gaussian)",
            )
    sa = np.asarray(schedule.sqrt_alphas_cumprod, dtype=np.float64)
    so = np.asarray(schedule.sqrt_one_minus_alphas_cumprod, dtype=np.float64)
    c1 = np.asarray(schedule.posterior_mean_coef1, dtype=np.float64)
    c2 = np.asarray(schedule.posterior_mean_coef2, dtype=np.float64)
    T = sa.shape[0]
    if var_type is not None:
        ss = schedule if sampling_schedule is None else sampling_schedule
        tmap = np.asarray(ss.timestep_map, dtype=np.int64)
        if np.any(tmap >= T):
            fail(
                "sampling_schedule", ss, f"its timestep_map leaves [0, {T}) of the model's schedule"
            )
        pv = np.full(T, np.nan)
        pc1 = np.full(T, np.nan)
        pv[tmap] = np.asarray(ss.posterior_variance, dtype=np.float64)
        pc1[tmap] = np.asarray(ss.posterior_mean_coef1, dtype=np.float64)

    def model(x: Array, t: Array | int) -> Array:
        xp = array_namespace(x)
        a = _take(sa, t, x)
        s = _take(so, t, x)
        if mean_type == "eps":
            out = data.eps(x, a, s)
        elif mean_type == "x0":
            out = data.x0(x, a, s)
        elif mean_type == "v":
            out = data.v(x, a, s)
        elif mean_type == "score":
            out = data.score(x, a, s)
        else:
            out = _bcast(_take(c1, t, x), x) * data.x0(x, a, s) + _bcast(_take(c2, t, x), x) * x
        if var_type is None:
            return out
        bt = _bcast(_take(pv, t, x), x)
        ct = _bcast(_take(pc1, t, x), x)
        if bool(xp.any(xp.isnan(bt))):
            fail("t", t, "is not a step of sampling_schedule (its timestep_map)")
        assert isinstance(data, GaussianData)  # checked above: var_type needs GaussianData
        var = bt + ct * ct * data.posterior_var(x, a, s)
        if bool(xp.any(var <= 0)):
            fail(
                "data",
                data,
                "the exact reverse variance is 0 here (degenerate Σ at the final "
                "step); its log is undefined",
            )
        return xp.concat([out, xp.log(var)], axis=1)

    return model


def karras_denoiser(
    data: GaussianData | GaussianMixtureData,
) -> Callable[[Array, Array | float], Array]:
    """The ideal denoiser D(x, σ) = E[x0 | x0 + σz = x] (Karras et al. 2022, Eq. 3 minimiser)."""

    def denoiser(x: Array, sigma: Array | float) -> Array:
        return data.x0(x, 1.0, sigma)

    return denoiser


def vp_model(
    data: GaussianData | GaussianMixtureData, noise_schedule_or_sde: _Marginals, kind: str = "eps"
) -> Callable[[Array, Array | float], Array]:
    """The exact continuous-time ``model(x, t)``: ε, x0, v or score with α_t, σ_t of an SDE / VP noise schedule (Song et al. 2021, Eq. 29)."""
    kind = prediction_type(kind, "kind", PREDICTION_TYPES[:4])
    ns = noise_schedule_or_sde
    if not (hasattr(ns, "marginal_alpha") and hasattr(ns, "marginal_std")):
        fail(
            "noise_schedule_or_sde",
            ns,
            "expected an object with marginal_alpha(t) and "
            "marginal_std(t) (refdiff.sde.VPSDE/SubVPSDE/VESDE or a VP noise schedule)",
        )

    def model(x: Array, t: Array | float) -> Array:
        xp = array_namespace(x)
        if not is_array(t):
            t = xp.asarray(float(t), dtype=x.dtype, device=device_of(x))
        a = ns.marginal_alpha(t)
        s = ns.marginal_std(t)
        return getattr(data, kind)(x, a, s)

    return model


# --------------------------------------------------------------------------------------------
# Exact law of an affine sampler
# --------------------------------------------------------------------------------------------


class LinearLaw(NamedTuple):
    """Output law N(mean, cov) of an affine sampler x_out = M x_T + N ξ + c (NumPy float64)."""

    mean: np.ndarray
    cov: np.ndarray
    M: np.ndarray
    N: np.ndarray
    c: np.ndarray


def _to_host(a: Array) -> np.ndarray:
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, RuntimeError, ValueError):
        return np.asarray(np.from_dlpack(a), dtype=np.float64)


def linear_sampler_law(
    run: Callable[[Array, Array], Array],
    mean_T: npt.ArrayLike,
    cov_T: npt.ArrayLike,
    *,
    dim: int,
    n_noise: int,
    check: bool = True,
    rtol: float = 1e-9,
    xp: Namespace | None = None,
    device: Device | None = None,
) -> LinearLaw:
    """Exact output law of a sampler affine in (x_T, noise), found by running it on basis vectors.

    Parameters
    ----------
    run : callable
        ``run(x_T, noise) -> x_out`` with x_T of shape (B, dim) and noise of shape
        (n_noise, B, dim) (the stacked standard-normal draws); each batch row must be processed
        independently. Called once with B = dim·(1 + n_noise) + 2.
    mean_T, cov_T : array_like
        The law N(mean_T, cov_T) of x_T (e.g. ``data.marginal(alpha_T, sigma_T)``, or zeros/I).
    dim, n_noise : int
        Data dimension and number of noise draws the sampler consumes (0 for deterministic ones).
    check : bool
        Also run one random combination and raise RefdiffValueError if the output is not the
        affine prediction (relative tolerance ``rtol``): catches a sampler or model that is not
        affine (e.g. mixture data, clipping, batch-coupled step sizes).
    xp, device : optional
        Build the inputs in this namespace (default NumPy); outputs are copied to the host.

    Returns
    -------
    LinearLaw
        mean = M mean_T + c, cov = M cov_T Mᵀ + N Nᵀ, with M (dim, dim), N (dim, n_noise·dim)
        and c (dim,).
    """
    d = check_int("dim", dim, minimum=1)
    k = check_int("n_noise", n_noise, minimum=0)
    mean_T = _host_mean(mean_T, "mean_T")
    if mean_T.size != d:
        fail("mean_T", mean_T, f"expected {d} entries")
    cov_T, _, _ = _host_cov(cov_T, d, "cov_T")
    rng = np.random.default_rng(12345)
    B = 1 + d + k * d + (1 if check else 0)
    xT = np.zeros((B, d))
    nz = np.zeros((k, B, d))
    xT[1 : 1 + d] = np.eye(d)
    for j in range(k):
        nz[j, 1 + d + j * d : 1 + d + (j + 1) * d] = np.eye(d)
    if check:
        xT[-1] = rng.standard_normal(d)
        nz[:, -1] = rng.standard_normal((k, d))
    if xp is not None:
        xT_in = xp.asarray(xT, dtype=xp.float64, device=device)
        nz_in = xp.asarray(nz, dtype=xp.float64, device=device)
    else:
        xT_in, nz_in = xT, nz
    out = _to_host(run(xT_in, nz_in))
    if out.shape != (B, d):
        raise RefdiffShapeError(
            f"run returned shape {out.shape}; expected {(B, d)} (x_T of shape (B, dim))"
        )
    c = out[0]
    M = (out[1 : 1 + d] - c).T
    N = (out[1 + d : 1 + d + k * d] - c).T if k else np.zeros((d, 0))
    if check:
        pred = M @ xT[-1] + N @ nz[:, -1].reshape(-1) + c
        scale = max(1.0, float(np.max(np.abs(out))))
        err = float(np.max(np.abs(pred - out[-1])))
        if err > rtol * scale * (1 + d * (1 + k)):
            raise RefdiffValueError(
                f"run is not affine in (x_T, noise): a random input differs from the affine "
                f"prediction by {err:.3g} (allowed {rtol:g} relative); linear_sampler_law needs a "
                f"sampler and model that are affine in x (Gaussian data, no clipping)"
            )
    mean = M @ mean_T + c
    cov = M @ cov_T @ M.T + N @ N.T
    return LinearLaw(mean, (cov + cov.T) / 2.0, M, N, c)


def gaussian_kl(
    mean0: npt.ArrayLike, cov0: npt.ArrayLike, mean1: npt.ArrayLike, cov1: npt.ArrayLike
) -> float:
    """KL(N(m0, S0) ‖ N(m1, S1)) in nats, NumPy (for comparing an exact sampler law with the data law)."""
    m0, m1 = np.asarray(mean0, float), np.asarray(mean1, float)
    S0, S1 = np.asarray(cov0, float), np.asarray(cov1, float)
    d = m0.size
    L1 = np.linalg.cholesky(S1)
    sol = np.linalg.solve(L1, S0)
    tr = float(np.trace(np.linalg.solve(L1.T, sol)))
    dm = np.linalg.solve(L1, m1 - m0)
    _, ld0 = np.linalg.slogdet(S0)
    ld1 = 2.0 * float(np.sum(np.log(np.diag(L1))))
    return 0.5 * (tr + float(dm @ dm) - d + ld1 - ld0)
