"""refdiff: the numerical oracle for diffusion models (float64 reference written against the array API).

Submodules load on first use, so ``import refdiff`` stays light (NumPy and array-api-compat;
never torch or cupy):

* ``refdiff.schedules`` — discrete schedules with improved-diffusion's table names
* ``refdiff.diffusion`` — q(x_t|x0), q(x_{t-1}|x_t,x0), p_θ(x_{t-1}|x_t)
* ``refdiff.parameterizations`` — ε / x0 / v / score / μ conversions
* ``refdiff.kl`` — KL, decoder likelihood, bits/dim; ``refdiff.losses`` — training losses
* ``refdiff.sde``, ``refdiff.edm`` — continuous families, Karras/EDM
* ``refdiff.samplers``, ``refdiff.guidance``, ``refdiff.analytic``, ``refdiff.likelihood``
* ``refdiff.unet`` — the reference UNet; ``refdiff.verify()`` — the conformance runner (a function)

Examples
--------
The forward marginal q(x_t | x0) and one deterministic DDIM run, in float64:

>>> import numpy as np
>>> import refdiff
>>> s = refdiff.schedules.linear(1000)
>>> float(s.alphas_cumprod[0]), float(s.betas[-1])
(0.9999, 0.02)
>>> x0 = np.zeros((2, 3))
>>> x_t = refdiff.diffusion.q_sample(s, x0, np.array([999, 999]), noise=np.ones((2, 3)))
>>> bool(np.allclose(x_t, np.sqrt(1.0 - s.alphas_cumprod[999])))
True

The exact ε of data concentrated at 0.5, sampled with ten DDIM steps, lands on the point:

>>> from refdiff.samplers import sample_ddim
>>> model = refdiff.analytic.discrete_model(refdiff.analytic.GaussianData([0.5] * 3, 0.0), s)
>>> bool(np.allclose(sample_ddim(model, np.ones((2, 3)), schedule=s, steps=10), 0.5))
True
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "schedules",
    "diffusion",
    "parameterizations",
    "kl",
    "losses",
    "sde",
    "edm",
    "samplers",
    "guidance",
    "analytic",
    "likelihood",
    "ddpm",
    "unet",
    "train",
    "backends",
    "conformance",
)
_FUNCTIONS = {
    "verify": ("refdiff._verify", "verify"),
    "VerifyReport": ("refdiff._verify", "VerifyReport"),
    "get_backend": ("refdiff.backends", "get_backend"),
    "list_backends": ("refdiff.backends", "list_backends"),
    "register_backend": ("refdiff.backends", "register_backend"),
}

__all__ = ["__version__", *_SUBMODULES, *_FUNCTIONS]


def __getattr__(name: str) -> object:
    if name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'refdiff' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
