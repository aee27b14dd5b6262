"""Optimiser steps as pure functions over dicts of arrays: Adam, AdamW, EMA, gradient clipping, warm-up.

Each function returns new dicts and never modifies its inputs. The arithmetic follows PyTorch's
``torch.optim.Adam``/``AdamW`` (single-tensor path) and ``clip_grad_norm_`` term by term, so a
backend that trains with those matches the reference to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import RefdiffValueError, check_int, check_real, fail
from .._typing import Array
from .._xp import array_namespace

__all__ = [
    "init_adam_state",
    "adam_step",
    "adamw_step",
    "ema_update",
    "clip_grad_norm",
    "warmup_lr",
]


def init_adam_state(params: Mapping[str, Array]) -> dict[str, Any]:
    """Zero first and second moments and step 0: ``{"step": 0, "m": {...}, "v": {...}}``."""
    m = {}
    for k, p in params.items():
        xp = array_namespace(p)
        m[k] = xp.zeros_like(p)
    return {"step": 0, "m": m, "v": {k: array_namespace(a).zeros_like(a) for k, a in m.items()}}


def _check_same_keys(params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
    if list(params) != list(grads) and set(params) != set(grads):
        missing = [k for k in params if k not in grads]
        extra = [k for k in grads if k not in params]
        raise RefdiffValueError(
            f"grads do not match params: missing {missing[:5]}, unexpected {extra[:5]}"
        )


def _adam(
    params: Mapping[str, Array],
    grads: Mapping[str, Array],
    state: Mapping[str, Any] | None,
    *,
    lr: float,
    betas: Sequence[float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> tuple[dict[str, Array], dict[str, Any]]:
    lr = check_real("lr", lr, lo=0.0)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        fail("betas", betas, "expected a pair (beta1, beta2)")
    b1 = check_real("betas[0]", betas[0], lo=0.0, hi=1.0, hi_open=True)
    b2 = check_real("betas[1]", betas[1], lo=0.0, hi=1.0, hi_open=True)
    eps = check_real("eps", eps, lo=0.0)
    wd = check_real("weight_decay", weight_decay, lo=0.0)
    _check_same_keys(params, grads)
    if state is None:
        state = init_adam_state(params)
    step = check_int("state['step']", state["step"], minimum=0) + 1
    bc1 = 1.0 - b1**step
    bc2_sqrt = math.sqrt(1.0 - b2**step)
    step_size = lr / bc1
    new_p, new_m, new_v = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        if decoupled:
            p = p * (1.0 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * state["m"][k] + (1.0 - b1) * g
        v = b2 * state["v"][k] + (1.0 - b2) * (g * g)
        xp = array_namespace(p)
        denom = xp.sqrt(v) / bc2_sqrt + eps
        new_p[k] = p - step_size * (m / denom)
        new_m[k], new_v[k] = m, v
    return new_p, {"step": step, "m": new_m, "v": new_v}


def adam_step(
    params: Mapping[str, Array],
    grads: Mapping[str, Array],
    state: Mapping[str, Any] | None,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[dict[str, Array], dict[str, Any]]:
    """One Adam update with bias correction (Kingma & Ba 2015, Alg. 1); weight decay as an L2 term in g.

    Parameters
    ----------
    params, grads : dict[str, array]
        Same keys.
    state : dict or None
        ``{"step": int, "m": dict, "v": dict}`` from :func:`init_adam_state` or a previous step;
        None starts from zero moments.
    lr, betas, eps, weight_decay
        As ``torch.optim.Adam``.

    Returns
    -------
    (params, state) : new dicts.
    """
    return _adam(
        params,
        grads,
        state,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        decoupled=False,
    )


def adamw_step(
    params: Mapping[str, Array],
    grads: Mapping[str, Array],
    state: Mapping[str, Any] | None,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[dict[str, Array], dict[str, Any]]:
    """One AdamW update: θ ← θ(1 − lr·λ), then Adam without L2 (Loshchilov & Hutter 2019, Alg. 2)."""
    return _adam(
        params, grads, state, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=True
    )


def ema_update(
    ema: Mapping[str, Array], params: Mapping[str, Array], decay: float
) -> dict[str, Array]:
    """Exponential moving average θ̄ ← decay·θ̄ + (1 − decay)·θ (Ho et al. 2020, App. B: decay 0.9999)."""
    decay = check_real("decay", decay, lo=0.0, hi=1.0)
    _check_same_keys(ema, params)
    return {k: decay * ema[k] + (1.0 - decay) * params[k] for k in ema}


def clip_grad_norm(grads: Mapping[str, Array], max_norm: float) -> tuple[dict[str, Array], Array]:
    """Scale all gradients by min(1, max_norm/(‖g‖₂ + 1e-6)), ‖g‖₂ over all entries (as torch's ``clip_grad_norm_``).

    Returns
    -------
    grads : dict[str, array]
    total_norm : 0-d array
        The global norm before clipping.
    """
    max_norm = check_real("max_norm", max_norm, lo=0.0, lo_open=True)
    if not grads:
        fail("grads", grads, "expected a non-empty dict of gradient arrays")
    xp = array_namespace(*grads.values())
    sq = None
    for g in grads.values():
        s = xp.sum(g * g)
        sq = s if sq is None else sq + s
    total = xp.sqrt(sq)
    coef = max_norm / (total + 1e-6)
    coef = xp.where(coef < 1.0, coef, xp.ones_like(coef))
    return {k: g * coef for k, g in grads.items()}, total


def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up lr = base_lr·min(step/warmup_steps, 1) (Ho et al. 2020, App. B: 5000 steps).

    ``step`` counts updates from 1 for the first one. Ho et al.'s TensorFlow code evaluates the
    same formula at the global step counted from 0 (so its first update has lr 0); pass that
    count to reproduce it. ``warmup_steps=0`` means no warm-up.
    """
    step = check_int("step", step, minimum=0)
    base_lr = check_real("base_lr", base_lr, lo=0.0)
    warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
    if warmup_steps == 0:
        return base_lr
    return base_lr * min(step / warmup_steps, 1.0)
