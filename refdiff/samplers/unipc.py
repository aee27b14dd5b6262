"""UniPC: the unified predictor (UniP) and corrector (UniC) of Zhao et al. for the diffusion ODE in λ.

Zhao, Bai, Rao, Zhou & Lu (2023), "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models" (arXiv:2302.04867, §3: the corrector UniC-p, the predictor UniP-p,
their multistep combination UniPC-p, and the choices B1(h) = h ("bh1") and B2(h) = e^h − 1
("bh2")). With h = λ_t − λ_s, r_i = (λ_{s_i} − λ_s)/h for the earlier points and
D_i = (m_{s_i} − m_s)/r_i, one UniP-p step in the data-prediction form is

    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) m_s − α_t B(h) Σ_{i<p} a_i D_i,

with a = R_{p−1}^{−1} g / B(h) (R the Vandermonde matrix of the r_i, g_k = k!·φ_{k+1}(−h)·h^k
the paper's order conditions) — a = 1/2 at p = 2, the peers' choice — and UniC-p recomputes the same update
with the model value m_t at the predicted x_t as one more point (r = 1), raising the order by one
at no extra model evaluation. The noise-prediction form swaps (σ, −h) for (α, h). Every
coefficient is a host float computed in float64 once per call; the loop only combines arrays.

Family ``"vp"``: ``fn(model, x_T, *, noise_schedule, steps, noise=None, callback=None,
progress=None, **options)``, ``steps`` the number of model evaluations (as DPM-Solver).

Named conventions
-----------------
* ``lower_order_final`` (DPM-Solver's names): ``"always"`` (default; UniPC's code and diffusers:
  order min(p, steps + 1 − i) at step i), ``"dpm_solver"`` (only when steps < 10),
  ``"diffusers"`` (steps < 15), ``"never"``.
* The last step is never corrected (it would need one more model evaluation), as in both peers;
  ``disable_corrector`` lists further steps whose result is not corrected (diffusers' option).
* ``final_sigma="zero"`` ends on clean data (diffusers' ``final_sigmas_type="zero"``): the last
  step returns the data prediction at the last grid time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import check_choice, check_int, fail
from .._typing import Array, Noise
from ..parameterizations import x0_from_prediction
from . import register_sampler
from ._common import StepInfo, step_reporter
from ._vp_levels import Level, phi, prediction_fn, vp_levels
from .dpm_solver import NoiseScheduleVP, multistep_step_orders

if TYPE_CHECKING:
    from .dpm_solver import ModelTime

__all__ = [
    "VARIANTS",
    "ALGORITHM_TYPES",
    "unip_coefficients",
    "unic_coefficients",
    "unipc_update",
    "sample_unipc",
    "sample_unipc_bh1",
    "sample_unipc_bh2",
]

VARIANTS = ("bh1", "bh2")
ALGORITHM_TYPES = ("data_prediction", "noise_prediction")


def _common(
    levels: list[Level], k: int, order: int, variant: str, algorithm_type: str
) -> tuple[float, float, float, list[float], np.ndarray, np.ndarray]:
    """(c_x, K1, K, rks, b, R) of the step from level k to k+1 (Zhao et al. 2023, §3)."""
    s, t = levels[k], levels[k + 1]
    data = algorithm_type == "data_prediction"
    h = t.lam - s.lam
    hh = -h if data else h
    c_x = t.sigma / s.sigma if data else t.alpha / s.alpha
    scale = t.alpha if data else t.sigma
    B = hh if variant == "bh1" else math.expm1(hh)
    rks = [(levels[k - i].lam - s.lam) / h for i in range(1, order)] + [1.0]
    b = np.array([phi(hh, i + 1) * math.factorial(i) / B for i in range(1, order + 1)])
    R = np.array([[r ** (i - 1) for r in rks] for i in range(1, order + 1)])
    return c_x, scale * math.expm1(hh), scale * B, rks, b, R


def _to_clean(levels: list[Level], k: int, algorithm_type: str) -> tuple[float, list[float]]:
    """The step onto σ = 0: x̂0 at level k (the limit h → ∞ of the first-order update)."""
    s = levels[k]
    if algorithm_type == "data_prediction":
        return 0.0, [1.0]
    return 1.0 / s.alpha, [-s.sigma / s.alpha]


def unip_coefficients(
    levels: list[Level],
    k: int,
    order: int,
    *,
    variant: str = "bh2",
    algorithm_type: str = "data_prediction",
) -> tuple[float, list[float]]:
    """(c_x, [w_0, …, w_{p−1}]) of one UniP-p step x_{k+1} = c_x·x_k + Σ_j w_j·m_{k−j} (Zhao et al. 2023, §3, UniP-p).

    ``levels`` are the solver's grid (:func:`refdiff.samplers._vp_levels.vp_levels`); m_{k−j} are
    the data (or noise) predictions at the earlier levels; a = 1/2 at p = 2.
    """
    check_choice("variant", variant, VARIANTS, "UniPC B(h) variant")
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES, "UniPC algorithm")
    order = check_int("order", order, minimum=1)
    if order > 3 or order > k + 1:
        fail("order", order, f"expected 1..3 and at most k + 1 = {k + 1} earlier model values")
    if levels[k + 1].sigma == 0.0:
        return _to_clean(levels, k, algorithm_type)
    c_x, K1, K, rks, b, R = _common(levels, k, order, variant, algorithm_type)
    if order == 1:
        rho = []
    elif order == 2:
        rho = [0.5]
    else:
        rho = [float(v) for v in np.linalg.solve(R[:-1, :-1], b[:-1])]
    w0 = -K1 + K * sum(rho[i] / rks[i] for i in range(order - 1))
    return c_x, [w0] + [-K * rho[i] / rks[i] for i in range(order - 1)]


def unic_coefficients(
    levels: list[Level],
    k: int,
    order: int,
    *,
    variant: str = "bh2",
    algorithm_type: str = "data_prediction",
) -> tuple[float, list[float]]:
    """(c_x, [w_0, …, w_{p−1}, w_t]) of the UniC-p correction of x_{k+1} (Zhao et al. 2023, §3, UniC-p).

    x^c_{k+1} = c_x·x_k + Σ_j w_j·m_{k−j} + w_t·m_{k+1}, with m_{k+1} the model value at the
    predicted x_{k+1}; a_c = R_p^{−1} g/B(h) (a_c = 1/2 at p = 1, the trapezoidal rule).
    """
    check_choice("variant", variant, VARIANTS, "UniPC B(h) variant")
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES, "UniPC algorithm")
    order = check_int("order", order, minimum=1)
    if order > 3 or order > k + 1:
        fail("order", order, f"expected 1..3 and at most k + 1 = {k + 1} earlier model values")
    if levels[k + 1].sigma == 0.0:
        fail("k", k, "the step onto σ = 0 is not corrected (no model evaluation at σ = 0)")
    c_x, K1, K, rks, b, R = _common(levels, k, order, variant, algorithm_type)
    rho = [0.5] if order == 1 else [float(v) for v in np.linalg.solve(R, b)]
    w0 = -K1 + K * (sum(rho[i] / rks[i] for i in range(order - 1)) + rho[-1])
    return c_x, [w0] + [-K * rho[i] / rks[i] for i in range(order - 1)] + [-K * rho[-1]]


def unipc_update(x: Array, c_x: float, weights: list[float], models: list[Array]) -> Array:
    """c_x·x + Σ_j w_j·m_j: one UniP or UniC update from its host-float coefficients (Zhao et al. 2023, §3)."""
    if len(weights) != len(models):
        fail("weights", weights, f"expected one weight per model value ({len(models)})")
    out = x * c_x if c_x != 0.0 else None
    for w, m in zip(weights, models):
        out = m * w if out is None else out + w * m
    return out


def sample_unipc(
    model: Callable[[Array, Array], Array],
    x: Array,
    *,
    noise_schedule: NoiseScheduleVP,
    steps: int,
    order: int = 2,
    variant: str = "bh2",
    algorithm_type: str = "data_prediction",
    model_type: str = "eps",
    skip_type: str = "time_uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    timesteps: Sequence[float] | Array | None = None,
    final_sigma: str = "t_end",
    lower_order_final: str = "always",
    use_corrector: bool = True,
    disable_corrector: Iterable[int] = (),
    model_time: ModelTime = "continuous",
    noise: Noise = None,
    callback: Callable[[StepInfo], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Array:
    """Multistep UniPC-p sampling from t_start to t_end (Zhao et al. 2023, §3; UniP-p predictor, UniC-p corrector).

    Parameters
    ----------
    model : callable
        ``model(x, t) -> prediction`` with t of shape (B,) (see ``model_time``).
    x : array
        The sample at t_start, batch axis first.
    noise_schedule : NoiseScheduleVP
        (``NoiseScheduleVP.from_sde(FlowSchedule())`` for a rectified-flow model.)
    steps : int
        Number of steps = model evaluations.
    order : {1, 2, 3}
        p of UniP-p (UniC-p raises the order of accuracy to p + 1).
    variant : {"bh2", "bh1"}
        B(h) = e^h − 1 or h (Zhao et al. 2023, §3.3).
    algorithm_type : {"data_prediction", "noise_prediction"}
        Work on x̂0 (diffusers' ``predict_x0=True``) or on ε̂.
    model_type : {"eps", "x0", "v", "score", "flow"}
        What the model returns (DPM-Solver's "noise" / "x_start" and diffusers' names are
        aliases).
    skip_type, t_start, t_end
        The DPM-Solver time grid (default T → 1/N, uniform in t); or ``timesteps=``.
    timesteps : sequence of float, optional
        The grid itself: steps + 1 decreasing times (``steps`` with ``final_sigma="zero"``).
    final_sigma : {"t_end", "zero"}
        End at the grid's last time, or step from it onto clean data (the data prediction).
    lower_order_final : {"always", "dpm_solver", "diffusers", "never", "euler_at_final"}
    use_corrector : bool
        False runs UniP alone.
    disable_corrector : sequence of int
        Steps (0-based) whose result is not corrected (diffusers' ``disable_corrector``).
    model_time : {"continuous", "dpm_solver"} or callable
        t, or (t − 1/N)·1000 on a discrete schedule (diffusers' integer timestep).
    noise
        Ignored (deterministic).
    callback, progress
        ``callback(StepInfo)`` before each step (x, x̂0 at x, t, σ/α); ``progress(done, total)``.

    Returns
    -------
    array
        The sample at t_end (or on clean data with ``final_sigma="zero"``).
    """
    if getattr(x, "ndim", 0) < 1:
        fail("x", x, "expected an array with the batch axis first (ndim >= 1)")
    order = check_int("order", order, minimum=1)
    if order > 3:
        fail("order", order, "expected 1, 2 or 3")
    check_choice("variant", variant, VARIANTS, "UniPC B(h) variant")
    check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES, "UniPC algorithm")
    if not isinstance(use_corrector, bool):
        fail("use_corrector", use_corrector, "expected True or False")
    try:
        disabled = {int(i) for i in disable_corrector}
    except (TypeError, ValueError):
        fail("disable_corrector", disable_corrector, "expected a sequence of step indices")
    data = algorithm_type == "data_prediction"
    fn = prediction_fn(model, model_type, "x0" if data else "eps")
    levels = vp_levels(
        noise_schedule,
        steps,
        skip_type=skip_type,
        t_start=t_start,
        t_end=t_end,
        timesteps=timesteps,
        final_sigma=final_sigma,
        model_time=model_time,
    )
    orders = multistep_step_orders(steps, order, lower_order_final)
    if levels[-1].sigma == 0.0:
        orders[-1] = 1  # the step onto σ = 0 is first order (h = ∞)
    kw = {"variant": variant, "algorithm_type": algorithm_type}
    pred = [unip_coefficients(levels, k, orders[k], **kw) for k in range(steps)]
    corr = [
        unic_coefficients(levels, k, orders[k], **kw)
        if use_corrector and k < steps - 1 and k not in disabled
        else None
        for k in range(steps)
    ]
    report = step_reporter(callback, progress)
    models = [fn(x, levels[0])]
    for k in range(steps):
        lv = levels[k]
        if report is not None:
            x0 = (
                models[-1] if data else x0_from_prediction(models[-1], x, lv.alpha, lv.sigma, "eps")
            )
            report(StepInfo(k, steps, x, x0, t=lv.t, sigma=lv.sigma / lv.alpha))
        c_x, w = pred[k]
        recent = models[::-1][: len(w)]
        x_pred = unipc_update(x, c_x, w, recent)
        if k == steps - 1:
            x = x_pred
            break
        m_new = fn(x_pred, levels[k + 1])
        ck = corr[k]
        if ck is not None:
            c_x, w = ck
            x = unipc_update(x, c_x, w, models[::-1][: len(w) - 1] + [m_new])
        else:
            x = x_pred
        models = (models + [m_new])[-order:]
    return x


def _variant_sampler(variant: str) -> Callable[..., Array]:
    def sampler(
        model: Callable[[Array, Array], Array],
        x: Array,
        *,
        noise_schedule: NoiseScheduleVP,
        steps: int,
        noise: Noise = None,
        **options: Any,
    ) -> Array:
        if "variant" in options:
            fail(
                "variant",
                options["variant"],
                f"the sampler 'unipc_{variant}' fixes variant to "
                f"{variant!r}; call sample_unipc for the other",
            )
        return sample_unipc(
            model,
            x,
            noise_schedule=noise_schedule,
            steps=steps,
            variant=variant,
            noise=noise,
            **options,
        )

    sampler.__name__ = sampler.__qualname__ = f"sample_unipc_{variant}"
    sampler.__doc__ = (
        f"Multistep UniPC with B(h) = {'h' if variant == 'bh1' else 'e^h − 1'} "
        f"(Zhao et al. 2023, §3, {variant!r}).\n\nSee :func:`sample_unipc` for the "
        "options (all but variant); default order 2 with UniC."
    )
    return sampler


#: UniPC-2 with B1(h) = h (UniPC's code default; Zhao et al. 2023 recommend it below 10 steps).
sample_unipc_bh1 = register_sampler(
    "unipc_bh1", family="vp", stochastic=False, order=2.0, step=unipc_update
)(_variant_sampler("bh1"))
#: UniPC-2 with B2(h) = e^h − 1 (diffusers' default).
sample_unipc_bh2 = register_sampler(
    "unipc_bh2", family="vp", stochastic=False, order=2.0, step=unipc_update
)(_variant_sampler("bh2"))
