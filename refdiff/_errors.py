"""Input validation: every check raises an exception naming the argument, the value and what is allowed."""

from __future__ import annotations

import math
from typing import Any, NoReturn
from collections.abc import Iterable

import numpy as np


class RefdiffError(Exception):
    """Base class of refdiff's own exceptions."""


class RefdiffValueError(RefdiffError, ValueError):
    """An argument has a value outside what the function allows."""


class RefdiffShapeError(RefdiffValueError):
    """Arrays whose shapes do not fit together."""


class UnknownNameError(RefdiffError, KeyError):
    """A name (schedule, sampler, spacing, backend, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def _show(value: Any) -> str:
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - any object: fall back to repr
        return repr(value)
    if arr.dtype.kind not in "biufc":
        return repr(value)
    if arr.ndim == 0:
        return repr(arr.item()) if arr.dtype.kind in "biuf" else repr(value)
    flat = arr.reshape(-1)
    head = ", ".join(repr(v.item()) for v in flat[:6])
    return f"array of shape {arr.shape} [{head}{', ...' if flat.size > 6 else ''}]"


def fail(name: str, value: Any, allowed: str, cls: type[Exception] = RefdiffValueError) -> NoReturn:
    """Raise ``cls`` with the uniform message: argument, value, what is allowed."""
    raise cls(f"{name}={_show(value)} is invalid: {allowed}")


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer (bools rejected) or below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(name, value, "expected an integer" + (f" >= {minimum}" if minimum is not None else ""))
    value = int(value)
    if minimum is not None and value < minimum:
        fail(name, value, f"expected an integer >= {minimum}")
    return value


def check_real(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``value`` as a finite float inside the stated interval, or raise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        fail(name, value, "expected a real number")
    interval = (
        ("(" if lo_open else "[")
        + ("-inf" if lo is None else repr(lo))
        + ", "
        + ("inf" if hi is None else repr(hi))
        + (")" if hi_open else "]")
    )
    if not math.isfinite(v):
        fail(name, value, f"expected a finite real number in {interval}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        fail(name, value, f"expected a value in {interval}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        fail(name, value, f"expected a value in {interval}")
    return v


def check_choice(name: str, value: Any, choices: Iterable[str], what: str = "value") -> str:
    """Return ``value`` if it is one of ``choices``, else raise UnknownNameError listing them."""
    choices = list(choices)
    if value not in choices:
        raise UnknownNameError(
            f"{name}={value!r} is not a known {what}; allowed: {', '.join(map(repr, choices))}"
        )
    return value
