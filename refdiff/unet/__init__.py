"""The reference UNet (Ho et al. 2020's CIFAR-10 network with the ADM options), forward and backward in array-API code.

On NumPy float64 this is the oracle for the backends' losses and gradients. Parameters are a flat,
stably named dict of arrays shared by every backend (``backends/torch/unet.py`` loads the same dict).
"""

from __future__ import annotations

from .config import PRESETS, UNetConfig, get_preset
from .model import (
    check_params,
    dropout_masks,
    dropout_shapes,
    loss_and_grad,
    unet_apply,
    unet_backward,
    unet_forward,
    unet_vjp,
)
from .optim import adam_step, adamw_step, clip_grad_norm, ema_update, init_adam_state, warmup_lr
from .params import count_params, init_params, layout, param_shapes, random_params

__all__ = [
    "UNetConfig",
    "PRESETS",
    "get_preset",
    "param_shapes",
    "count_params",
    "init_params",
    "random_params",
    "layout",
    "unet_forward",
    "unet_backward",
    "unet_vjp",
    "unet_apply",
    "loss_and_grad",
    "dropout_masks",
    "dropout_shapes",
    "check_params",
    "adam_step",
    "adamw_step",
    "init_adam_state",
    "ema_update",
    "clip_grad_norm",
    "warmup_lr",
]
