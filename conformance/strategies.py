"""Hypothesis strategies of the conformance suite: everything is drawn on the host in NumPy float64.

Inputs are generated in the oracle's domain and quantised to the dtype under test by the harness
(:mod:`refdiff.conformance.check`) before either side sees them. Noise is drawn from a seed, so
generation stays cheap and shrinking works through the seed. No third-party module is patched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from refdiff import schedules as _schedules

__all__ = [
    "Sched",
    "describe_schedule",
    "Call",
    "Bind",
    "Build",
    "Raw",
    "XP",
    "DEVICE",
    "DTYPE",
    "HostArray",
    "NoiseSource",
    "schedules",
    "schedule_variants",
    "timesteps",
    "batch_shapes",
    "data",
    "noise",
    "seeded_normal",
    "grid_data",
    "log_uniform",
    "build_schedule",
    "call",
]

MAX_T = 40  # longest T of schedules built from random betas


class _Marker:
    """Stands for the side's namespace, device or dtype (for functions that create arrays)."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return self.what.upper()


#: Converted to the side's namespace (oracle: array_api_compat.numpy), device and float dtype
#: (oracle: float64) — for host table builders called with ``xp=XP, device=DEVICE, dtype=DTYPE``.
XP, DEVICE, DTYPE = _Marker("xp"), _Marker("device"), _Marker("dtype")


@dataclass(frozen=True)
class Raw:
    """A value passed unchanged to both sides (strings, flags, ints)."""

    value: Any


@dataclass(frozen=True)
class HostArray:
    """A float array that stays a host NumPy array on both sides (a σ grid, host β values),
    rounded to the dtype under test like every other input."""

    value: np.ndarray

    def __repr__(self) -> str:
        return f"HostArray({_short(self.value)})"


@dataclass(frozen=True)
class NoiseSource:
    """A sampler's ``noise`` callable: draw i is N(0, 1) of ``shape`` from (seed, i), drawn on the
    host and converted per side, so both sides see the same draws however many they take."""

    seed: int
    shape: tuple

    def draw(self, i: int) -> np.ndarray:
        return np.random.default_rng([self.seed, int(i)]).standard_normal(self.shape)


@dataclass(frozen=True)
class Bind:
    """``functools.partial(fn, **kwargs)`` with the array/float kwargs converted per side (models)."""

    fn: Callable
    kwargs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Bind({getattr(self.fn, '__name__', self.fn)}, {_short(self.kwargs)})"


@dataclass(frozen=True)
class Build:
    """``factory(*args, **kwargs)`` evaluated per side after conversion (an SDE from quantised floats)."""

    factory: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        name = getattr(self.factory, "__name__", self.factory)
        return f"Build({name}, {_short(self.args)}, {_short(self.kwargs)})"


@dataclass(frozen=True)
class Call:
    """The arguments of one check example: host values converted per side by the harness."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Call(args={_short(self.args)}, kwargs={_short(self.kwargs)})"


def call(*args, **kwargs) -> Call:
    """Shorthand for :class:`Call`."""
    return Call(tuple(args), dict(kwargs))


def _short(v: Any) -> str:
    """A compact repr: arrays by shape, dtype and first values."""
    if isinstance(v, np.ndarray):
        flat = v.reshape(-1)[:4]
        head = ", ".join(f"{x:.6g}" if v.dtype.kind == "f" else str(x) for x in flat.tolist())
        return f"array{tuple(v.shape)}:{v.dtype}[{head}{', ...' if v.size > 4 else ''}]"
    if isinstance(v, tuple):
        return "(" + ", ".join(_short(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, Raw):
        return repr(v.value)
    return repr(v)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def build_schedule(
    name: str, T: int, variant: str = "plain", n: int = 0, spacing: str = "trailing"
):
    """A host schedule (cached): registry ``name`` at ``T``, optionally zero-SNR or respaced to n steps."""
    s = _schedules.get_schedule(name, T)
    if variant == "zero_snr":
        return _schedules.zero_terminal_snr(s)
    if variant == "respaced":
        return _schedules.respace(s, n, spacing=spacing)
    return s


class Sched:
    """A drawn host schedule with a short repr (how it was built), for readable failure reports.

    Attribute access goes to the Schedule; the harness converts it like a Schedule.
    """

    __slots__ = ("schedule", "desc")

    def __init__(self, schedule, desc: str):
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "desc", desc)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "schedule"), name)

    def __repr__(self) -> str:
        return self.desc


def describe_schedule(
    name: str, T: int, variant: str = "plain", n: int = 0, spacing: str = "trailing"
) -> str:
    """The code that builds a drawn schedule (e.g. "zero_terminal_snr(get_schedule('cosine', 10))")."""
    base = f"get_schedule({name!r}, {T})"
    if variant == "zero_snr":
        return f"zero_terminal_snr({base})"
    if variant == "respaced":
        return f"respace({base}, {n}, spacing={spacing!r})"
    return base


VARIANTS = ("plain", "zero_snr", "respaced")
#: The lengths drawn: the ends (1, 2), small, and a production length. Fixed menus keep the
#: number of distinct tables built per process small (each build is exact double-double work).
T_MENU = (1, 2, 3, 10, 40, 1000)
ZERO_SNR_T_MENU = (3, 10, 1000)
#: (T, steps, spacing) of the respaced schedules drawn.
RESPACE_MENU = (
    (3, 1, "trailing"),
    (10, 3, "leading"),
    (10, 10, "linspace"),
    (40, 13, "linspace"),
    (1000, 50, "trailing"),
    (1000, 333, "leading"),
)


@st.composite
def schedules(draw, names=None, *, variants=VARIANTS, max_T: int | None = None):
    """A host float64 Schedule: a registered constructor, T (at most ``max_T``), and plain /
    zero-SNR / respaced (T is the length after respacing)."""
    names = tuple(names) if names is not None else tuple(_schedules.list_schedules())
    cap = max_T or max(T_MENU)
    name = draw(st.sampled_from(names), label="schedule")
    variant = draw(st.sampled_from(tuple(variants)), label="variant")
    if variant == "respaced":
        menu = tuple(m for m in RESPACE_MENU if m[1] <= cap)
        T, n, spacing = draw(st.sampled_from(menu), label="T, steps, spacing")
        return Sched(
            build_schedule(name, T, variant, n, spacing),
            describe_schedule(name, T, variant, n, spacing),
        )
    menu = tuple(T for T in (T_MENU if variant == "plain" else ZERO_SNR_T_MENU) if T <= cap)
    T = draw(st.sampled_from(menu), label="T")
    return Sched(build_schedule(name, T, variant), describe_schedule(name, T, variant))


def schedule_variants(name: str, variant: str):
    """Schedules of one constructor and one variant."""
    return schedules((name,), variants=(variant,))


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------

#: Whether :func:`batch_shapes` draws from the short shape menu (set per backend by the plugin,
#: for libraries that compile once per shape; see ``Backend.shape_menu``).
_SHAPE_MENU = False


def use_shape_menu(on: bool) -> None:
    """Draw array shapes from the short menu (batch 1 or 2, other axes 3) from now on, or not."""
    global _SHAPE_MENU
    _SHAPE_MENU = bool(on)


@st.composite
def batch_shapes(
    draw, *, min_dims: int = 1, max_dims: int = 4, max_batch: int = 3, max_side: int = 4
):
    """(B, ...) with B in [1, max_batch] and up to max_dims axes in all (image-like when 4)."""
    ndim = draw(st.integers(min_dims, max_dims), label="ndim")
    if _SHAPE_MENU:
        b = draw(st.sampled_from(sorted({1, min(2, max_batch)})), label="batch")
        return (b,) + (min(3, max_side),) * (ndim - 1)
    b = draw(st.integers(1, max_batch), label="batch")
    rest = tuple(draw(st.integers(1, max_side), label=f"axis {i + 1}") for i in range(ndim - 1))
    return (b,) + rest


@st.composite
def timesteps(draw, T: int, batch: int):
    """Integer timesteps of shape (batch,) in [0, T), with the ends 0 and T−1 drawn often."""
    one = st.one_of(st.just(0), st.just(T - 1), st.integers(0, T - 1))
    return np.asarray([draw(one, label="t") for _ in range(batch)], dtype=np.int64)


def seeded_normal(shape, *, scale: float = 1.0):
    """N(0, scale²) values of ``shape`` from a drawn seed (cheap; shrinks through the seed)."""
    shape = tuple(shape)
    return st.integers(0, 2**32 - 1).map(
        lambda s: scale * np.random.default_rng(s).standard_normal(shape)
    )


def noise(shape):
    """Standard normal noise of ``shape``, drawn on the host from a seed and shared by both sides."""
    return seeded_normal(shape)


@st.composite
def data(draw, shape, *, bound: float = 3.0):
    """Finite float64 data of ``shape``: seeded Gaussian at a drawn scale, or small special values."""
    kind = draw(st.sampled_from(("gaussian", "special")), label="data kind")
    if kind == "special":
        vals = st.sampled_from((0.0, 1.0, -1.0, 0.5, -0.25, bound, -bound, 1e-3))
        flat = [draw(vals) for _ in range(int(np.prod(shape)))]
        return np.asarray(flat, dtype=np.float64).reshape(shape)
    scale = draw(st.sampled_from((1e-3, 0.1, 1.0, bound)), label="data scale")
    return np.clip(draw(seeded_normal(shape, scale=scale), label="data"), -10 * bound, 10 * bound)


@st.composite
def grid_data(draw, shape, *, num_bits: int = 8):
    """Image data on the 2**num_bits grid in [-1, 1] (ends included), from a seed."""
    levels = 2**num_bits - 1
    seed = draw(st.integers(0, 2**32 - 1), label="grid seed")
    k = np.random.default_rng(seed).integers(0, levels + 1, size=tuple(shape))
    k.flat[0] = draw(st.sampled_from((0, levels, int(k.flat[0]))), label="edge bin")
    return 2.0 * k / levels - 1.0


def log_uniform(lo: float, hi: float):
    """Floats log-uniform in [lo, hi]."""
    return st.floats(np.log(lo), np.log(hi)).map(lambda v: float(np.exp(v)))
