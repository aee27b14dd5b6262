"""refdiff: the numerical oracle for diffusion models (float64 reference written against the array API)."""

from __future__ import annotations

__version__ = "0.1.0"

from . import schedules  # noqa: E402  (light: NumPy only)
