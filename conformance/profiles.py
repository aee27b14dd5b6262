"""Hypothesis profiles of the conformance suite: refdiff-ci, refdiff-quick, refdiff-thorough.

The profiles are registered with Hypothesis under their names (so ``--hypothesis-profile`` users
can load them), but the suite never *loads* a profile globally: each check runs with
``settings(parent=<profile>, max_examples=...)``, leaving the host project's own Hypothesis
settings untouched.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings

from ._options import PROFILES, resolve_profile

__all__ = ["register_profiles", "settings_for"]

_SUPPRESS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]


def register_profiles() -> None:
    """Register the three profiles with Hypothesis (idempotent)."""
    for name, kw in PROFILES.items():
        settings.register_profile(name, suppress_health_check=_SUPPRESS, **kw)


def settings_for(
    profile: str, *, max_examples: int | None = None, budget: float = 1.0, shrink: bool = True
) -> settings:
    """The settings of ``profile`` with ``max_examples`` (or the profile's) scaled by ``budget``."""
    from hypothesis import Phase

    name = resolve_profile(profile)
    register_profiles()
    parent = settings.get_profile(name)
    n = parent.max_examples if max_examples is None else int(max_examples)
    extra = {} if shrink else {"phases": [p for p in parent.phases if p != Phase.shrink]}
    return settings(parent=parent, max_examples=max(1, math.ceil(n * budget)), **extra)
