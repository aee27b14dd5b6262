"""The array_api_strict backend: proof that the reference uses only the standard.

array_api_strict rejects anything outside the Python array API standard (non-standard functions and
keywords, Python scalars in functions, mixed devices). Its arrays live on the non-default fake
device ``Device("device1")`` by default, so any array the reference creates without passing
``device=`` ends up on ``CPU_DEVICE`` and the next operation mixing the two raises: results must
stay on the input's device.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Mapping

import numpy as np

from ._base import Backend

__all__ = ["StrictBackend"]

DEFAULT_DEVICE = "device1"


class StrictBackend(Backend):
    """array_api_strict on ``Device("device1")`` (or any of its fake devices, e.g. "no_float64")."""

    name = "array_api_strict"
    install_hint = "pip install array-api-strict"

    def __init__(
        self,
        device: Any = None,
        *,
        overrides: Mapping[str, Callable] | None = None,
        known_failures: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        import array_api_strict as xp

        dev = _strict_device(xp, DEFAULT_DEVICE if device is None else device)
        super().__init__(
            xp,
            name=name,
            device=dev,
            overrides=overrides,
            known_failures=known_failures,
            specials={"erf": _host_special("erf"), "erfc": _host_special("erfc")},
        )

    def to_numpy(self, x) -> np.ndarray:
        """Copy to the strict CPU device first (strict refuses NumPy conversion elsewhere)."""
        return np.asarray(x.to_device(self.xp.Device("CPU_DEVICE")))

    def is_native(self, x) -> bool:
        """Only array_api_strict arrays are native."""
        return isinstance(x, self.xp._array_object.Array)

    def describe(self) -> dict[str, Any]:
        """Versions plus the strict flags (API version, extensions)."""
        d = super().describe()
        flags = self.xp.get_array_api_strict_flags()
        d["strict_flags"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
        d["erf"] = "scipy.special on a host copy (the standard has no erf)"
        return d


def _strict_device(xp, device):
    """A strict Device from a name or a Device, with the allowed names in the error."""
    if isinstance(device, xp.Device):
        return device
    try:
        return xp.Device(str(device))
    except ValueError:
        from refdiff._errors import fail

        names = [str(d) for d in xp.__array_namespace_info__().devices()]
        fail("device", device, f"array_api_strict devices are {', '.join(names)}")


def _host_special(op: str):
    """``op`` from scipy.special for strict arrays (via a host copy; the result stays on x's device)."""

    def special(x):
        import array_api_strict as xp
        from scipy import special as sp

        host = np.asarray(x.to_device(xp.Device("CPU_DEVICE")))
        return xp.asarray(getattr(sp, op)(host), dtype=x.dtype, device=x.device)

    special.__name__ = f"strict_{op}"
    return special
