"""Likelihoods: the probability-flow ODE log-likelihood (exact divergence or Hutchinson), bits/dim conventions.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations"
(arXiv:2011.13456v2), §4.3 and App. D.2: with the probability-flow drift F(x, t) = f - ½ g² s,

    log p_eps(x(eps)) = log p_T(x(T)) + ∫_eps^T ∇·F(x(t), t) dt,

integrated forwards from the data point with ``scipy.integrate.solve_ivp`` (oracle-side: NumPy
arrays only). The divergence is either exact — the trace of the Jacobian from ``d`` directional
derivatives, for small dimensions — or Hutchinson's estimator vᵀ (∂F/∂x) v with one probe v per
sample held fixed along the path (Hutchinson 1989; Grathwohl et al. 2019, FFJORD, §3.1; score_sde draws
Rademacher probes), unbiased because E[v vᵀ] = I. Directional derivatives come from a user ``jvp`` of the
score (e.g. torch.func.jvp or an analytic Jacobian) or from central differences (exact up to
rounding for affine scores; error O(h²) otherwise, h ≈ ε_mach^{1/3}).

Bits/dim conventions (named): ``"score_sde"`` — -log p/(d ln 2) + 7 for data scaled to [-1, 1]
(``centered=True``) or + 8 for [0, 1] (score_sde's offset ``7 - inverse_scaler(-1)``, evaluated
on uniformly dequantized data (x·255 + u)/256, see :func:`uniform_dequantize`); ``"none"`` — the
continuous -log p/(d ln 2) with no dequantization offset. k-diffusion's ``log_likelihood``
reports the log-likelihood in nats with no offset: that is ``ode_log_likelihood(...).log_likelihood``.
The discrete VLB bits/dim of Ho et al. (2020) is :func:`calc_bpd_loop` (re-exported from
refdiff.kl).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._errors import RefdiffShapeError, check_choice, check_int, check_real, fail
from ._typing import Array
from .kl import calc_bpd_loop
from .sde import SDE

__all__ = [
    "ODELikelihood",
    "DIVERGENCES",
    "PROBES",
    "BPD_OFFSETS",
    "drift_jvp",
    "exact_divergence",
    "hutchinson_divergence",
    "draw_probes",
    "ode_log_likelihood",
    "bits_per_dim",
    "bpd_offset",
    "uniform_dequantize",
    "calc_bpd_loop",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
BPD_OFFSETS = ("score_sde", "none")


class ODELikelihood(NamedTuple):
    """Result of :func:`ode_log_likelihood` (NumPy float64; per-sample arrays have shape (B,))."""

    log_likelihood: np.ndarray  # log p_eps(x) in nats = prior_logp + delta_logp
    prior_logp: np.ndarray  # log p_T(z)
    delta_logp: np.ndarray  # ∫_eps^T ∇·F dt
    z: np.ndarray  # x(T), shape of x
    nfe: int  # number of drift evaluations (each includes its divergence)


def _check_numpy(name: str, x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        fail(
            name,
            type(x).__name__,
            "the ODE likelihood is oracle-side: expected a NumPy array "
            "(SciPy integrates on the host)",
        )
    if x.ndim < 1:
        fail(name, x, "expected an array with the batch axis first (ndim >= 1)")
    return np.asarray(x, dtype=np.float64)


def _t_vec(x: np.ndarray, t: float) -> np.ndarray:
    return np.full((x.shape[0],), float(t))


def _drift(sde: SDE, score_fn: Callable[..., Array], x: np.ndarray, t: float) -> np.ndarray:
    """F(x, t) = f - ½ g² s (Song et al. 2021, Eq. 13)."""
    s = score_fn(x, _t_vec(x, t))
    if tuple(np.shape(s)) != x.shape:
        raise RefdiffShapeError(
            f"score_fn returned shape {tuple(np.shape(s))} for x of shape "
            f"{x.shape}; they must match"
        )
    f, g = sde.sde(x, _t_vec(x, t))
    g2 = (np.asarray(g, dtype=np.float64) ** 2).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.asarray(f) - 0.5 * g2 * np.asarray(s)


def _fd_step(x: np.ndarray) -> float:
    return float(np.finfo(np.float64).eps ** (1.0 / 3.0)) * max(1.0, float(np.max(np.abs(x))))


def drift_jvp(
    sde: SDE,
    score_fn: Callable[..., Array],
    x: np.ndarray,
    t: float,
    v: np.ndarray,
    *,
    jvp: Callable[..., Array] | None = None,
    fd_step: float | None = None,
) -> np.ndarray:
    """(∂F/∂x) v: from ``jvp(x, t, v) -> (∂s/∂x) v`` of the score, or by central differences of F.

    The drift's linear part f(x, t) = a(t) x (VP, sub-VP, VE) is applied exactly as f(v, t) when
    ``jvp`` is given.
    """
    if jvp is not None:
        f_v, g = sde.sde(v, _t_vec(x, t))
        g2 = (np.asarray(g, dtype=np.float64) ** 2).reshape((-1,) + (1,) * (x.ndim - 1))
        js = np.asarray(jvp(x, _t_vec(x, t), v), dtype=np.float64)
        if js.shape != x.shape:
            raise RefdiffShapeError(f"jvp returned shape {js.shape} for x of shape {x.shape}")
        return np.asarray(f_v) - 0.5 * g2 * js
    h = _fd_step(x) if fd_step is None else check_real("fd_step", fd_step, lo=0.0, lo_open=True)
    return (_drift(sde, score_fn, x + h * v, t) - _drift(sde, score_fn, x - h * v, t)) / (2.0 * h)


def exact_divergence(
    sde: SDE,
    score_fn: Callable[..., Array],
    x: np.ndarray,
    t: float,
    *,
    jvp: Callable[..., Array] | None = None,
    fd_step: float | None = None,
) -> np.ndarray:
    """∇·F(x, t) = Σ_i e_iᵀ (∂F/∂x) e_i from d directional derivatives (batched), shape (B,)."""
    b = x.shape[0]
    d = int(np.prod(x.shape[1:], dtype=np.int64))
    eye = np.eye(d).reshape((d,) + x.shape[1:])
    xs = np.repeat(x, d, axis=0)  # (B·d, ...) sample-major
    vs = np.tile(eye, (b,) + (1,) * (x.ndim - 1))
    jv = drift_jvp(sde, score_fn, xs, t, vs, jvp=jvp, fd_step=fd_step)
    return np.sum((jv * vs).reshape(b, d, d), axis=(1, 2))


def hutchinson_divergence(
    sde: SDE,
    score_fn: Callable[..., Array],
    x: np.ndarray,
    t: float,
    probe: np.ndarray,
    *,
    jvp: Callable[..., Array] | None = None,
    fd_step: float | None = None,
) -> np.ndarray:
    """Hutchinson's estimate vᵀ (∂F/∂x) v of ∇·F, unbiased for E[v vᵀ] = I (Hutchinson 1989; Grathwohl et al. 2019, §3.1)."""
    jv = drift_jvp(sde, score_fn, x, t, probe, jvp=jvp, fd_step=fd_step)
    return np.sum((jv * probe).reshape(x.shape[0], -1), axis=1)


def draw_probes(kind: str, *, noise: np.ndarray) -> np.ndarray:
    """Hutchinson probes from standard-normal ``noise``: itself ("gaussian") or its sign ("rademacher", ±1)."""
    check_choice("probe", kind, PROBES, "Hutchinson probe")
    noise = np.asarray(noise, dtype=np.float64)
    if kind == "gaussian":
        return noise
    return np.where(noise >= 0, 1.0, -1.0)


def ode_log_likelihood(
    score_fn: Callable[..., Array],
    x: np.ndarray,
    *,
    sde: SDE,
    divergence: str = "exact",
    probe: str = "rademacher",
    probe_noise: npt.ArrayLike | None = None,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    jvp: Callable[..., Array] | None = None,
    fd_step: float | None = None,
    prior_logp: Callable[[np.ndarray], Array] | None = None,
) -> ODELikelihood:
    """log p_eps(x) through the probability-flow ODE (Song et al. 2021, §4.3, App. D.2; score_sde likelihood.py).

    Parameters
    ----------
    score_fn : callable
        ``score_fn(x, t) -> ∇ log p_t(x)`` on NumPy arrays, t of shape (B,).
    x : numpy.ndarray
        Data at t = eps (batch axis first), e.g. uniformly dequantized and scaled images.
    sde : refdiff.sde.SDE
    divergence : {"exact", "hutchinson"}
        Exact trace (d directional derivatives per evaluation) or Hutchinson's estimator.
    probe : {"rademacher", "gaussian"}
        Hutchinson probe distribution (score_sde's default is Rademacher).
    probe_noise : numpy.ndarray
        Standard-normal draws of x's shape for the probes (one fixed probe per sample along the
        whole path); required for ``divergence="hutchinson"``.
    eps : float
        Start time (score_sde: 1e-5).
    rtol, atol, method
        solve_ivp settings (score_sde: 1e-5, 1e-5, "RK45").
    jvp : callable, optional
        ``jvp(x, t, v) -> (∂s/∂x) v`` of the score; default central differences.
    fd_step : float, optional
        Central-difference step (default ε_mach^{1/3}·max(1, max|x|)).
    prior_logp : callable, optional
        ``prior_logp(z) -> (B,)``; default ``sde.prior_logp`` (N(0, I) for VP, N(0, σ_max² I) for
        VE — not the exact marginal at T, see Notes).

    Returns
    -------
    ODELikelihood
        ``log_likelihood`` in nats per sample (k-diffusion's convention; see :func:`bits_per_dim`).

    Notes
    -----
    The identity log p_eps(x) = log p_T(z) + ∫ ∇·F is exact when p_T is the true marginal at T;
    with the default prior the result is off by log prior(z) - log p_T(z), which is what score_sde
    and k-diffusion report.
    """
    import scipy.integrate

    if not isinstance(sde, SDE):
        fail("sde", sde, "expected a refdiff.sde SDE (VPSDE, SubVPSDE or VESDE)")
    x = _check_numpy("x", x)
    check_choice("divergence", divergence, DIVERGENCES, "divergence method")
    T = float(sde.T)
    eps = check_real("eps", eps, lo=0.0, hi=T, hi_open=True)
    rtol = check_real("rtol", rtol, lo=0.0, lo_open=True)
    atol = check_real("atol", atol, lo=0.0, lo_open=True)
    v = None
    if divergence == "hutchinson":
        if probe_noise is None:
            fail(
                "probe_noise",
                probe_noise,
                "Hutchinson's estimator needs standard-normal draws of x's shape for its probes",
            )
        pn = np.asarray(probe_noise, dtype=np.float64)
        if pn.shape != x.shape:
            raise RefdiffShapeError(
                f"probe_noise has shape {pn.shape} but x has shape {x.shape}; they must match"
            )
        v = draw_probes(probe, noise=pn)
    shape, b = x.shape, x.shape[0]
    n = x.size
    nfe = [0]

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        nfe[0] += 1
        xt = y[:n].reshape(shape)
        dx = _drift(sde, score_fn, xt, t)
        if v is None:
            div = exact_divergence(sde, score_fn, xt, t, jvp=jvp, fd_step=fd_step)
        else:
            div = hutchinson_divergence(sde, score_fn, xt, t, v, jvp=jvp, fd_step=fd_step)
        return np.concatenate([dx.reshape(-1), div])

    y0 = np.concatenate([x.reshape(-1), np.zeros(b)])
    sol = scipy.integrate.solve_ivp(rhs, (eps, T), y0, rtol=rtol, atol=atol, method=method)
    if not sol.success:
        raise RuntimeError(f"solve_ivp did not reach t = {T!r}: {sol.message}")
    z = sol.y[:n, -1].reshape(shape)
    delta = sol.y[n:, -1]
    prior = np.asarray((sde.prior_logp if prior_logp is None else prior_logp)(z), dtype=np.float64)
    if prior.shape != (b,):
        raise RefdiffShapeError(f"prior_logp returned shape {prior.shape}; expected ({b},)")
    return ODELikelihood(prior + delta, prior, delta, z, nfe[0])


def bpd_offset(offset: str = "score_sde", *, centered: bool = True) -> float:
    """The dequantization offset in bits/dim: score_sde's 7 - inverse_scaler(-1) (7 centered, 8 for [0, 1]) or 0."""
    check_choice("offset", offset, BPD_OFFSETS, "bits/dim offset convention")
    if not isinstance(centered, bool):
        fail("centered", centered, "expected True ([-1, 1] data) or False ([0, 1] data)")
    if offset == "none":
        return 0.0
    inverse_scaler_at_minus_one = 0.0 if centered else -1.0  # (x+1)/2 at -1, or the identity
    return 7.0 - inverse_scaler_at_minus_one


def bits_per_dim(
    log_likelihood: npt.ArrayLike,
    *,
    num_dims: int,
    offset: str = "score_sde",
    centered: bool = True,
) -> np.ndarray:
    """-log p/(d ln 2) + offset (score_sde likelihood evaluation; Theis et al. 2016 for dequantization).

    Parameters
    ----------
    log_likelihood : array
        log p(x) in nats per sample (continuous density of the scaled data).
    num_dims : int
        d, the number of data dimensions (e.g. 3·32·32).
    offset : {"score_sde", "none"}
        "score_sde": + 7 for data scaled to [-1, 1] (``centered=True``), + 8 for [0, 1] — the
        change of variables from 256 uniform bins per dimension; "none": continuous bits/dim.
    centered : bool
        Whether the data were scaled to [-1, 1] (score_sde's ``config.data.centered``).
    """
    d = check_int("num_dims", num_dims, minimum=1)
    return -np.asarray(log_likelihood, dtype=np.float64) / (d * math.log(2.0)) + bpd_offset(
        offset, centered=centered
    )


def uniform_dequantize(x01: npt.ArrayLike, *, noise: npt.ArrayLike) -> np.ndarray:
    """(x·255 + u)/256 for x ∈ {0, 1/255, ..., 1} and u ~ U[0, 1) (score_sde's likelihood evaluation data)."""
    x = np.asarray(x01, dtype=np.float64)
    u = np.asarray(noise, dtype=np.float64)
    if u.shape != x.shape:
        raise RefdiffShapeError(
            f"noise has shape {u.shape} but x has shape {x.shape}; they must match"
        )
    if np.any((u < 0) | (u >= 1)):
        fail("noise", noise, "expected uniform draws in [0, 1)")
    return (x * 255.0 + u) / 256.0
