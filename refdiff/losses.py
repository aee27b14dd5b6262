"""Training losses: L_simple, the hybrid and VLB losses, SNR weightings, continuous and multi-σ
denoising score matching, and improved-diffusion's importance sampler for t.

Randomness is explicit: callers pass the noise and the timesteps they drew. Every loss returns a
per-sample array of shape (B,); average it over the batch yourself (with importance weights when
t was importance-sampled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from collections.abc import Callable

import numpy as np

from ._errors import check_choice, check_int, check_real, fail
from ._typing import Array
from ._xp import append_dims, array_namespace, as_timesteps, check_same_shape
from .diffusion import VAR_TYPES, q_posterior_mean_variance, q_sample, split_variance_output
from .kl import mean_flat, vb_terms_bpd
from .parameterizations import coefficient, prediction_type, v_from_x0_eps

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = [
    "LOSS_TYPES",
    "sum_flat",
    "l_simple",
    "training_target",
    "training_losses",
    "snr",
    "min_snr_weight",
    "dsm_loss",
    "t_from_uniform",
    "ncsn_loss",
    "UniformSampler",
    "LossSecondMomentResampler",
]

LOSS_TYPES = ("mse", "rescaled_mse", "hybrid", "kl", "rescaled_kl")
#: The prediction types a network can be trained to regress (the score has no bounded target).
TARGET_TYPES = ("eps", "x0", "v", "mean")


def sum_flat(x: Array) -> Array:
    """Sum over every axis but the first (the batch axis)."""
    xp = array_namespace(x)
    return xp.sum(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def l_simple(pred: Array, target: Array, *, reduction: str = "mean") -> Array:
    """‖target − pred‖² per sample, averaged (``"mean"``) or summed (``"sum"``) over pixels (Ho et al. 2020, Eq. 14).

    The sum form equals the mean form times the number of pixels, so with Adam it only rescales
    the effective learning rate (score_sde's losses sum over C, H, W; Song et al. 2021).
    """
    check_same_shape("pred", pred, "target", target)
    check_choice("reduction", reduction, ("mean", "sum"), "reduction")
    sq = (target - pred) ** 2
    return mean_flat(sq) if reduction == "mean" else sum_flat(sq)


def training_target(
    schedule: Schedule, x0: Array, x_t: Array, t: Array, noise: Array, *, mean_type: str
) -> Array:
    """The regression target of each parameterization: ε, x0, v = √ᾱε − √(1−ᾱ)x0, or μ̃_t(x_t, x0)."""
    mean_type = prediction_type(mean_type, "mean_type", TARGET_TYPES)
    if mean_type == "eps":
        return noise
    if mean_type == "x0":
        return x0
    if mean_type == "v":
        return v_from_x0_eps(schedule, x0, t, noise)
    return q_posterior_mean_variance(schedule, x0, x_t, t)[0]


def training_losses(
    schedule: Schedule,
    model: Callable,
    x0: Array,
    t: Array,
    *,
    noise: Array,
    loss_type: str = "mse",
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    lambda_vlb: float = 0.001,
    reduction: str = "mean",
    t0: str = "clipped",
    cdf: str = "tanh",
    stop_gradient: Callable | None = None,
    map_timesteps: bool = True,
) -> dict[str, Array]:
    """Per-sample training losses (Ho et al. 2020, Eq. 14; Nichol & Dhariwal 2021, Eq. 16).

    Parameters
    ----------
    model : callable
        ``model(x_t, timesteps) -> output`` (twice the channels for learned variances).
        With ``map_timesteps`` the model sees ``schedule.timestep_map[t]``.
    loss_type : {"mse", "rescaled_mse", "hybrid", "kl", "rescaled_kl"}
        "mse": L_simple, plus the VLB term L_t for learned variances (unscaled, improved-diffusion's
        MSE). "hybrid": L_simple + λ·T·L_t, i.e. L_simple + λ L_vlb with L_vlb = Σ_t L_t = T·E_t L_t
        (λ = ``lambda_vlb``, 0.001 by default). "rescaled_mse": the hybrid with λ = 0.001
        (improved-diffusion multiplies L_t by T/1000). "kl": L_t alone (the true VLB term, bits/dim).
        "rescaled_kl": T·L_t.
    stop_gradient : callable, optional
        In the hybrid/MSE losses the VLB term must train only the variance: L_t is evaluated with
        the mean output frozen (Nichol & Dhariwal 2021, §3.1). The array API has no autograd, so
        autograd backends pass their detach (``torch.Tensor.detach``); values are unaffected.

    Returns
    -------
    dict
        ``loss`` (B,), and the parts ``mse`` and/or ``vb`` (B,) that make it up.
    """
    xp = array_namespace(x0)
    check_choice("loss_type", loss_type, LOSS_TYPES, "loss type")
    mean_type = prediction_type(mean_type, "mean_type", TARGET_TYPES)
    check_choice("var_type", var_type, VAR_TYPES, "variance type")
    lam = check_real("lambda_vlb", lambda_vlb, lo=0.0)
    detach = stop_gradient if stop_gradient is not None else (lambda a: a)
    t = as_timesteps(t, schedule.num_timesteps, like=x0)
    x_t = q_sample(schedule, x0, t, noise=noise)
    t_model = xp.take(schedule.timestep_map, t, axis=0) if map_timesteps else t
    output = model(x_t, t_model)
    T = schedule.num_timesteps
    learned = var_type in ("learned", "learned_range")
    terms = {}

    def vb_term(out_for_vb: Any) -> Any:
        return vb_terms_bpd(
            schedule,
            out_for_vb,
            x0,
            x_t,
            t,
            mean_type=mean_type,
            var_type=var_type,
            clip_x0=False,
            t0=t0,
            cdf=cdf,
        )[0]

    if loss_type in ("kl", "rescaled_kl"):
        terms["vb"] = vb_term(output)
        terms["loss"] = terms["vb"] * (T if loss_type == "rescaled_kl" else 1.0)
        return terms
    mean_out = split_variance_output(output, x_t)[0] if learned else output
    target = training_target(schedule, x0, x_t, t, noise, mean_type=mean_type)
    terms["mse"] = l_simple(mean_out, target, reduction=reduction)
    loss = terms["mse"]
    if learned:
        mean_part, var_part = split_variance_output(output, x_t)
        frozen = xp.concat([detach(mean_part), var_part], axis=1)
        vb = vb_term(frozen)
        scale = {"mse": 1.0, "rescaled_mse": T / 1000.0, "hybrid": lam * T}[loss_type]
        terms["vb"] = vb * scale
        loss = loss + terms["vb"]
    terms["loss"] = loss
    return terms


def snr(schedule: Schedule, t: Array, x: Array) -> Array:
    """SNR(t) = ᾱ_t/(1 − ᾱ_t) = exp(log_snr) gathered at t and shaped to broadcast against x (Kingma et al. 2021, Eq. 2)."""
    xp = array_namespace(x)
    return xp.exp(coefficient(schedule, "log_snr", t, x))


def min_snr_weight(
    schedule: Schedule, t: Array, x: Array, *, gamma: float = 5.0, mean_type: str = "eps"
) -> Array:
    """Min-SNR-γ loss weight for the given parameterization (Hang et al. 2023, Eq. 9 and §3.4).

    For an x0-loss the weight is min(SNR, γ); expressed on the ε-loss it is min(SNR, γ)/SNR and
    on the v-loss min(SNR, γ)/(SNR + 1). At zero SNR the ε weight is its limit 1 (taken
    explicitly, not as 0/0).
    """
    xp = array_namespace(x)
    gamma = check_real("gamma", gamma, lo=0.0, lo_open=True)
    mean_type = prediction_type(mean_type, "mean_type", ("eps", "x0", "v"))
    s = snr(schedule, t, x)
    clipped = xp.clip(s, None, gamma)
    if mean_type == "x0":
        return clipped
    if mean_type == "v":
        return clipped / (s + 1.0)
    return xp.where(s > gamma, gamma / xp.where(s > gamma, s, 1.0), xp.ones_like(s))


def t_from_uniform(u: Array, *, eps: float = 1e-5, T: float = 1.0) -> Array:
    """Map uniform draws u ∈ [0, 1) to training times t = eps + u (T − eps) (Song et al. 2021, App. C; score_sde)."""
    eps = check_real("eps", eps, lo=0.0)
    T = check_real("T", T, lo=eps, lo_open=True)
    return eps + u * (T - eps)


def dsm_loss(
    sde: Any,
    score_fn: Callable,
    x0: Array,
    t: Array,
    *,
    noise: Array,
    likelihood_weighting: bool = False,
    reduction: str = "mean",
) -> Array:
    """Continuous denoising score matching per sample (Song et al. 2021, Eq. 7).

    x_t = m(t)x0 + s(t)z; without likelihood weighting λ(t) = s(t)² and the loss is
    ‖s(t)·score + z‖²; with it λ(t) = g(t)² and the loss is g(t)²‖score + z/s(t)‖² (Song et al.
    2021b, "Maximum likelihood training", Thm. 1). ``reduction="sum"`` gives score_sde's
    ½·sum over pixels, "mean" its mean.
    """
    xp = array_namespace(x0)
    check_same_shape("x0", x0, "noise", noise)
    check_choice("reduction", reduction, ("mean", "sum"), "reduction")
    mean, std = sde.marginal_prob(x0, t)
    std = std if getattr(std, "ndim", 0) == x0.ndim else append_dims(std, x0.ndim)
    x_t = mean + std * noise
    score = score_fn(x_t, t)
    check_same_shape("score_fn output", score, "x0", x0)

    def reduce(a: Array) -> Array:
        return mean_flat(a) if reduction == "mean" else 0.5 * sum_flat(a)

    if not likelihood_weighting:
        return reduce((score * std + noise) ** 2)
    _, g = sde.sde(xp.zeros_like(x0), t)
    g2 = g**2
    g2 = xp.reshape(g2, (-1,)) if g2.ndim else g2
    return reduce((score + noise / std) ** 2) * g2


def ncsn_loss(
    score_fn: Callable,
    x0: Array,
    sigmas: Any,
    labels: Any,
    *,
    noise: Array,
    anneal_power: float = 2.0,
) -> Array:
    """NCSN multi-σ denoising score matching with λ(σ) = σ^anneal_power (Song & Ermon 2019, Eqs. 5–6; λ = σ² by default).

    x̃ = x0 + σ_i z, target −z/σ_i; per-sample loss ½‖s_θ(x̃, i) − target‖² σ_i^p.
    """
    xp = array_namespace(x0)
    check_same_shape("x0", x0, "noise", noise)
    p = check_real("anneal_power", anneal_power)
    labels = as_timesteps(labels, sigmas.shape[0], like=x0, name="labels")
    used = append_dims(xp.take(sigmas, labels, axis=0), x0.ndim)
    perturbed = x0 + noise * used
    target = -noise / used
    score = score_fn(perturbed, labels)
    check_same_shape("score_fn output", score, "x0", x0)
    return 0.5 * sum_flat((score - target) ** 2) * xp.reshape(used, (-1,)) ** p


class UniformSampler:
    """Uniform timestep sampling with unit importance weights (host-side NumPy)."""

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = check_int("num_timesteps", num_timesteps, minimum=1)

    def weights(self) -> np.ndarray:
        """p(t) for every t."""
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Any:
        """Draw t ~ p(t) and the importance weights 1/(T·p(t)) that make the loss unbiased."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        w = self.weights()
        t = rng.choice(self.num_timesteps, size=(batch_size,), p=w)
        return t.astype(np.int64), 1.0 / (self.num_timesteps * w[t])


class LossSecondMomentResampler(UniformSampler):
    """p(t) ∝ √E[L_t²] over the last ``history_per_term`` losses, mixed with ``uniform_prob`` of the uniform law (Nichol & Dhariwal 2021, Eq. 18).

    Uniform until every t has a full history; ``update(ts, losses)`` records per-sample losses.
    """

    def __init__(
        self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001
    ) -> None:
        super().__init__(num_timesteps)
        self.history_per_term = check_int("history_per_term", history_per_term, minimum=1)
        self.uniform_prob = check_real("uniform_prob", uniform_prob, lo=0.0, hi=1.0)
        self._history = np.zeros((self.num_timesteps, self.history_per_term), dtype=np.float64)
        self._count = np.zeros(self.num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        """True once every timestep has a full loss history."""
        return bool((self._count == self.history_per_term).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return super().weights()
        w = np.sqrt(np.mean(self._history**2, axis=-1))
        w = w / w.sum()
        return w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, ts: Any, losses: Array) -> None:
        """Record the losses observed at timesteps ``ts`` (host arrays)."""
        ts = np.asarray(ts)
        losses = np.asarray(losses, dtype=np.float64)
        if ts.shape != losses.shape:
            fail("losses", losses, f"must have the shape of ts {ts.shape}")
        for t, loss in zip(ts.tolist(), losses.tolist()):
            if not 0 <= t < self.num_timesteps:
                fail("ts", t, f"timesteps must lie in [0, {self.num_timesteps})")
            if self._count[t] == self.history_per_term:
                self._history[t, :-1] = self._history[t, 1:]
                self._history[t, -1] = loss
            else:
                self._history[t, self._count[t]] = loss
                self._count[t] += 1

    def state_dict(self) -> dict:
        """History and counts, for checkpoints."""
        return {"history": self._history.copy(), "count": self._count.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self._history = np.array(state["history"], dtype=np.float64)
        self._count = np.array(state["count"], dtype=np.int64)
