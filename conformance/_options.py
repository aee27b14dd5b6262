"""Names and defaults shared by the plugin, the profiles and ``refdiff.verify`` (standard library only)."""

from __future__ import annotations

__all__ = [
    "PROFILES",
    "PROFILE_ALIASES",
    "DEFAULT_PROFILE",
    "ENV",
    "resolve_profile",
    "DEFAULT_DTYPES",
    "split_list",
]

#: Hypothesis settings of the three profiles (health checks by name; database None = off).
PROFILES: dict[str, dict] = {
    # CI: derandomized (the same examples every run, so xfail lists are stable and strict),
    # no deadline (first GPU calls compile kernels), no example database written.
    "refdiff-ci": {
        "max_examples": 12,
        "derandomize": True,
        "database": None,
        "deadline": None,
        "print_blob": True,
    },
    # The quick default under plain pytest: random examples, few of them.
    "refdiff-quick": {
        "max_examples": 8,
        "derandomize": False,
        "deadline": None,
        "print_blob": True,
    },
    # Thorough: many random examples (minutes per backend).
    "refdiff-thorough": {
        "max_examples": 300,
        "derandomize": False,
        "deadline": None,
        "print_blob": True,
    },
}
PROFILE_ALIASES = {
    "ci": "refdiff-ci",
    "quick": "refdiff-quick",
    "dev": "refdiff-quick",
    "thorough": "refdiff-thorough",
}
DEFAULT_PROFILE = "refdiff-quick"  # plain `pytest --pyargs refdiff.conformance`
VERIFY_PROFILE = "refdiff-ci"  # refdiff.verify() and `refdiff verify`
DEFAULT_DTYPES = ("float64", "float32")  # bfloat16/float16 are opt-in

#: Environment variables read when the matching option is not given.
ENV = {
    "backend": "REFDIFF_BACKEND",
    "device": "REFDIFF_DEVICE",
    "dtypes": "REFDIFF_DTYPES",
    "profile": "REFDIFF_PROFILE",
    "max_examples": "REFDIFF_MAX_EXAMPLES",
    "xfail_mark": "REFDIFF_XFAIL_MARK",
}


def resolve_profile(name: str | None) -> str:
    """The full profile name for a name or alias; ValueError listing the profiles otherwise."""
    name = DEFAULT_PROFILE if not name else PROFILE_ALIASES.get(name, name)
    if name not in PROFILES:
        raise ValueError(
            f"profile={name!r} is not a refdiff profile; allowed: "
            f"{', '.join(PROFILES)} (or {', '.join(PROFILE_ALIASES)})"
        )
    return name


def split_list(text: str | None) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]
