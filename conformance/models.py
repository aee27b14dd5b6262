"""Small deterministic model functions, in array-API code, for checks that take a model.

They stand in for a trained network: the same code runs on both sides, with parameters drawn on
the host and converted per side by the harness (wrapped in :class:`~.strategies.Bind`). Each
depends on its time/noise-level argument so that a sampler feeding the wrong t is caught.
"""

from __future__ import annotations

from refdiff._xp import append_dims, array_namespace

__all__ = [
    "eps_model",
    "learned_variance_model",
    "score_model",
    "denoiser",
    "raw_network",
    "conditional_model",
    "static_score",
]


def _time_feature(x, t, scale: float):
    """t (integer or float, shape (B,) or 0-d) as a float column shaped to broadcast against x."""
    xp = array_namespace(x)
    if not hasattr(t, "dtype"):
        from refdiff._xp import device_of

        t = xp.asarray(float(t), dtype=x.dtype, device=device_of(x))
    tf = xp.astype(t, x.dtype)
    tf = tf if tf.ndim else xp.reshape(tf, (1,))
    return append_dims(tf * scale, x.ndim)


def eps_model(x, t, *, w: float, bias, tscale: float):
    """A linear "network" w·x + bias·(1 + t·tscale): any output type (ε, x0, v, μ, score)."""
    return w * x + bias * (1.0 + _time_feature(x, t, tscale))


def learned_variance_model(x, t, *, w: float, bias, tscale: float, v):
    """Mean part as :func:`eps_model`, variance part ``v`` (x's shape), concatenated on axis 1."""
    xp = array_namespace(x)
    return xp.concat([eps_model(x, t, w=w, bias=bias, tscale=tscale), v], axis=1)


def score_model(x, t, *, w: float, bias):
    """A linear score −w·x + bias·t (Gaussian-like data), for SDE and score-matching checks."""
    return -w * x + bias * _time_feature(x, t, 1.0)


def denoiser(x, sigma, *, w: float, bias):
    """A denoiser D(x, σ) = x/(1 + w σ²) + bias·σ/(1 + σ) (shrinks toward a mean as σ grows)."""
    s = _time_feature(x, sigma, 1.0)
    return x / (1.0 + w * s * s) + bias * s / (1.0 + s)


def raw_network(x_in, c_noise, *, w: float, bias):
    """A raw network F(c_in x; c_noise) = w·x_in + bias·c_noise (for EDM preconditioning)."""
    return w * x_in + bias * _time_feature(x_in, c_noise, 1.0)


def conditional_model(x, t, c, *, w: float, bias, tscale: float):
    """A class-conditional ε-model w·x + bias·(1 + t·tscale) + c (for classifier-free guidance)."""
    return eps_model(x, t, w=w, bias=bias, tscale=tscale) + c


def static_score(x, *, w: float, bias):
    """A time-independent score −w·(x − bias) (Langevin dynamics on N(bias, 1/w))."""
    return -w * (x - bias)
