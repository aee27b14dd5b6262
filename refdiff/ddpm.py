"""A labml-style DDPM object: one object holding the schedule and the ε-model, with
``q_xt_x0``, ``q_sample``, ``p_sample``, ``loss`` and ``sample`` (Ho et al. 2020).

The defaults reproduce labml's ``DenoiseDiffusion`` (labml_nn/diffusion/ddpm): β linear from
1e-4 to 0.02 over ``n_steps`` with no 1000/T rescale, σ_t² = β_t, and noise added at every reverse
step including the last (``final_noise="always"``). Other conventions are named arguments:
``var_type="fixed_small"`` (σ_t² = β̃_t) and ``final_noise="none"`` give improved-diffusion's
``p_sample``. Randomness is explicit: every method that samples takes ``noise=`` (and ``loss``
takes the timesteps ``t=``). Index convention: t = 0..n_steps-1, index 0 = one diffusion step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ._errors import check_choice, check_int, fail
from ._typing import Array, DType, Device, Namespace, Noise
from ._xp import append_dims, array_namespace, as_timesteps, check_same_shape, device_of
from .diffusion import p_mean_variance, q_mean_variance
from .diffusion import q_sample as _q_sample
from .losses import l_simple
from .schedules import Schedule, linear

__all__ = ["DenoiseDiffusion"]


@dataclasses.dataclass(frozen=True)
class DenoiseDiffusion:
    """DDPM with an ε-model on one object (Ho et al. 2020, Algorithms 1 and 2; labml's DenoiseDiffusion).

    Parameters
    ----------
    eps_model : callable
        ε_θ(x_t, t) with integer timesteps t of shape (B,).
    n_steps : int
        T, the number of diffusion steps (ignored when ``schedule`` is given).
    schedule : Schedule, optional
        Defaults to ``refdiff.schedules.linear(n_steps, 1e-4, 0.02)``. Move it to another array
        namespace with :meth:`to` before using arrays of that namespace.
    var_type : {"fixed_large", "fixed_small"}
        σ_t² = β_t (labml, default) or β̃_t.
    t0 : {"clamped", "clipped"}
        t = 0 variance convention (see :mod:`refdiff.diffusion`); "clamped" keeps σ_0² = β_0.
    final_noise : {"always", "none"}
        Whether ``p_sample`` adds noise at t = 0 (labml: always).
    """

    eps_model: Callable[[Array, Array], Array]
    n_steps: int = 1000
    schedule: Schedule | None = None
    var_type: str = "fixed_large"
    t0: str = "clamped"
    final_noise: str = "always"

    def __post_init__(self) -> None:
        if not callable(self.eps_model):
            fail("eps_model", self.eps_model, "expected a callable eps_model(x_t, t)")
        check_choice("var_type", self.var_type, ("fixed_large", "fixed_small"), "variance type")
        check_choice("t0", self.t0, ("clamped", "clipped"), "t=0 convention")
        check_choice(
            "final_noise", self.final_noise, ("always", "none"), "final-step noise convention"
        )
        if self.schedule is None:
            n = check_int("n_steps", self.n_steps, minimum=1)
            object.__setattr__(self, "schedule", linear(n, 1e-4, 0.02))
        elif not isinstance(self.schedule, Schedule):
            fail("schedule", self.schedule, "expected a refdiff.schedules.Schedule")
        assert self.schedule is not None  # set just above
        object.__setattr__(self, "n_steps", self.schedule.num_timesteps)

    # labml's attribute names -------------------------------------------------------------
    @property
    def beta(self) -> Array:
        """β_t."""
        assert self.schedule is not None  # set by __post_init__
        return self.schedule.betas

    @property
    def alpha(self) -> Array:
        """α_t = 1 − β_t."""
        assert self.schedule is not None  # set by __post_init__
        return self.schedule.alphas

    @property
    def alpha_bar(self) -> Array:
        """ᾱ_t = Π_{s≤t} α_s."""
        assert self.schedule is not None  # set by __post_init__
        return self.schedule.alphas_cumprod

    @property
    def sigma2(self) -> Array:
        """σ_t² of the reverse step: β_t ("fixed_large"; β̃_1 at t = 0 with t0="clipped") or β̃_t ("fixed_small")."""
        sch = self.schedule
        assert sch is not None  # set by __post_init__
        if self.var_type == "fixed_small":
            return sch.posterior_variance
        if self.t0 == "clamped" or self.n_steps < 2:
            return sch.betas
        xp = array_namespace(sch.betas)
        return xp.concat([sch.posterior_variance[1:2], sch.betas[1:]])

    def to(
        self, xp: Namespace, *, device: Device | None = None, dtype: DType | None = None
    ) -> DenoiseDiffusion:
        """The same object with its schedule moved to namespace ``xp`` (see Schedule.to)."""
        assert self.schedule is not None  # set by __post_init__
        return dataclasses.replace(self, schedule=self.schedule.to(xp, device=device, dtype=dtype))

    # the forward process -----------------------------------------------------------------
    def q_xt_x0(self, x0: Array, t: Array | int) -> tuple[Array, Array]:
        """(√ᾱ_t·x0, 1 − ᾱ_t) of q(x_t | x0) (Ho et al. 2020, Eq. 4)."""
        assert self.schedule is not None  # set by __post_init__
        mean, var, _ = q_mean_variance(self.schedule, x0, t)
        return mean, var

    def q_sample(self, x0: Array, t: Array | int, *, noise: Array) -> Array:
        """x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε (Ho et al. 2020, Eq. 4)."""
        assert self.schedule is not None  # set by __post_init__
        return _q_sample(self.schedule, x0, t, noise=noise)

    # the reverse process -----------------------------------------------------------------
    def p_mean_var(self, xt: Array, t: Array | int) -> tuple[Array, Array]:
        """(μ_θ, σ_t²) of p_θ(x_{t−1}|x_t) for the ε-model (Ho et al. 2020, Eq. 11): :func:`refdiff.diffusion.p_mean_variance`."""
        eps = self.eps_model(xt, self._t(t, xt))
        check_same_shape("eps_model output", eps, "x_t", xt)
        assert self.schedule is not None  # set by __post_init__
        out = p_mean_variance(
            self.schedule, eps, xt, t, mean_type="eps", var_type=self.var_type, t0=self.t0
        )
        return out.mean, out.variance

    def p_sample(self, xt: Array, t: Array | int, *, noise: Array) -> Array:
        """x_{t−1} = μ_θ(x_t, t) + σ_t·z (Ho et al. 2020, Algorithm 2, line 4); no noise at t = 0 if final_noise="none"."""
        xp = array_namespace(xt)
        check_same_shape("noise", noise, "x_t", xt)
        mean, var = self.p_mean_var(xt, t)
        std = xp.sqrt(var)
        if self.final_noise == "none":
            tt = as_timesteps(t, self.n_steps, like=xt)
            std = xp.where(append_dims(tt == 0, xt.ndim), xp.zeros_like(std), std)
        return mean + std * noise

    def loss(self, x0: Array, *, t: Array | int, noise: Array) -> Array:
        """L_simple = mean ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖² over all elements (Ho et al. 2020, Eq. 14): :func:`refdiff.losses.l_simple` averaged over the batch."""
        xp = array_namespace(x0)
        xt = self.q_sample(x0, t, noise=noise)
        eps = self.eps_model(xt, self._t(t, x0))
        check_same_shape("eps_model output", eps, "x_t", xt)
        return xp.mean(l_simple(eps, noise))

    def sample(self, x_T: Array, *, noise: Noise) -> Array:
        """Run p_sample from t = T−1 down to 0 (labml's sampling loop); noise: (T,) + x_T.shape or a callable."""
        from .samplers._common import draw_noise

        x = x_T
        for k, i in enumerate(range(self.n_steps - 1, -1, -1)):
            x = self.p_sample(x, i, noise=draw_noise(noise, k, x))
        return x

    def _t(self, t: Array | int, like: Array) -> Array:
        xp = array_namespace(like)
        tt = as_timesteps(t, self.n_steps, like=like)
        if tt.ndim == 0:
            tt = xp.full((like.shape[0],), int(tt), dtype=xp.int64, device=device_of(like))
        return tt
