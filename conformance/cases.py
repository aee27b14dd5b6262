"""The case registry: every conformance check is a :class:`Case`, and the suite is parametrized from it.

A case names the operation (``"diffusion.q_sample"``; the same name keys a backend's
``overrides``), how to get the function (an import string, resolved lazily), a Hypothesis strategy
of host inputs (:class:`~refdiff.conformance.strategies.Call`), and the tolerance class of its
outputs. Adding a case adds a check, with no new test code:

>>> from refdiff.conformance.cases import Case, register_case
>>> from refdiff.conformance import strategies as rs
>>> register_case(Case("mylib.double", "mylib.ops:double",             # doctest: +SKIP
...                    inputs=lambda dtype: rs.data((2, 3)).map(rs.call)))

Families of cases are generated from refdiff's own registries (every registered schedule, every
registered sampler), so a newly registered schedule or sampler is checked automatically:
:func:`register_family` takes a callable returning cases, evaluated when the suite is collected.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterable, Mapping

import numpy as np

__all__ = [
    "Case",
    "register_case",
    "register_family",
    "all_cases",
    "case_names",
    "get_case",
    "covered_names",
]

ScaleFn = Callable[[tuple, np.ndarray, list], Any]


@dataclass(frozen=True)
class Case:
    """One conformance check.

    Parameters
    ----------
    name : str
        "module.function" (or "module.Class.method", "module.function[variant]"); the key of the
        backend's ``overrides`` for this operation and the name in reports.
    target : str or callable
        "package.module:attr.path" resolved lazily, or the callable itself.
    inputs : callable
        ``inputs(dtype) -> SearchStrategy[Call]`` of host (NumPy float64) arguments.
    tol : str or mapping
        The tolerance class of every output, or ``{output name: class, "*": default}``.
    requires : tuple of str
        Backend capabilities needed ("erf", "erfc", "float64"); skipped without them.
    budget : float
        Fraction of the profile's ``max_examples`` to run (expensive checks take fewer).
    scale : callable or mapping, optional
        ``scale(oracle_call, ref, float_inputs) -> array`` — the magnitude of the terms behind each
        output element, used for atol. Default: elementwise max of |ref| and the sensitivity of
        the oracle to rounding-level perturbations of every input, Σ_k |x_k·∂f/∂x_k| (the
        condition number times |ref|; :func:`~refdiff.conformance.check.default_scale`).
    sizes : callable, optional
        ``sizes(oracle_call, ref) -> (n, steps)``: reduction size and trajectory length.
    covers : tuple of str
        Further public names ("module.name") this case exercises, for the coverage meta-test.
    domain : callable, optional
        ``domain(oracle_call, output, ref, dtype) -> bool array``: the elements to compare.
        Elements outside are documented ill-posed regions (e.g. probabilities that underflow to
        subnormals, where libraries legitimately differ); everything else is compared.
    boundary_rejects : bool
        In reduced precision, an input the backend refuses (a RefdiffError) while the float64
        oracle accepts it is outside the domain, not a failure (validity decided in the dtype).
        (The converse — the oracle refuses, the backend accepts — is always treated so below
        float64.)
    quantise_ref : bool
        Round the float64 oracle result to the dtype under test before comparing: for host
        table builders called with ``dtype=DTYPE``, whose result is the float64 table cast once.
    """

    name: str
    target: str | Callable
    inputs: Callable[[str], Any]
    tol: str | Mapping[str, str] = "elementwise"
    requires: tuple[str, ...] = ()
    budget: float = 1.0
    scale: ScaleFn | Mapping[str, ScaleFn] | None = None
    sizes_fn: Callable[[tuple, np.ndarray], tuple[int, int]] | None = None
    covers: tuple[str, ...] = ()
    domain: Callable[[tuple, str, np.ndarray, str], Any] | None = None
    quantise_ref: bool = False
    boundary_rejects: bool = False
    doc: str = ""
    _fn: list = field(default_factory=list, repr=False, compare=False)

    def function(self) -> Callable:
        """The operation under test (imported on first use)."""
        if not self._fn:
            t = self.target
            if isinstance(t, str):
                module, _, attr = t.partition(":")
                obj: Any = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
                t = obj
            self._fn.append(t)
        return self._fn[0]

    def tol_class(self, output: str) -> str:
        """The tolerance class of one output."""
        if isinstance(self.tol, str):
            return self.tol
        return self.tol.get(output, self.tol.get("*", "elementwise"))

    def sizes(self, oracle_call: tuple, ref: np.ndarray) -> tuple[int, int]:
        """(reduction size n, trajectory steps) for growing tolerance classes."""
        return self.sizes_fn(oracle_call, ref) if self.sizes_fn else (1, 1)

    def scale_for(
        self,
        output: str,
        oracle_call: tuple,
        ref: np.ndarray,
        inputs: list,
        sensitivity: Callable[[str], Any] | None = None,
    ):
        """The atol scale of one output (default: |ref|, the inputs and the sensitivity estimate)."""
        fn = self.scale
        if isinstance(fn, Mapping):
            fn = fn.get(output, fn.get("*"))
        if fn is None:
            from .check import default_scale

            sens = sensitivity(output) if sensitivity is not None else None
            return default_scale(inputs, ref, sens)
        return fn(oracle_call, ref, inputs)

    @property
    def module(self) -> str:
        """The refdiff module the case belongs to ("diffusion", "schedules", ...)."""
        return self.name.split(".")[0]


_CASES: dict[str, Case] = {}
_FAMILIES: list[Callable[[], Iterable[Case]]] = []
_BUILTIN_MODULES = ("case_tables", "case_core", "case_sde", "case_guidance", "case_samplers")
_LOADED: list[bool] = []


def register_case(case: Case, *, replace: bool = False) -> Case:
    """Add a case to the suite (an existing name needs ``replace=True``)."""
    if case.name in _CASES and not replace and _CASES[case.name] is not case:
        raise ValueError(f"a conformance case named {case.name!r} is already registered")
    _CASES[case.name] = case
    return case


def register_family(fn: Callable[[], Iterable[Case]]) -> Callable[[], Iterable[Case]]:
    """Register a generator of cases, evaluated at collection (for registries such as samplers)."""
    _FAMILIES.append(fn)
    return fn


def _load_builtin() -> None:
    if _LOADED:
        return
    _LOADED.append(True)
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{mod}")


def all_cases() -> dict[str, Case]:
    """Every registered case (families expanded), by name, sorted."""
    _load_builtin()
    out = dict(_CASES)
    for fam in _FAMILIES:
        for c in fam():
            out.setdefault(c.name, c)
    return dict(sorted(out.items()))


def case_names() -> list[str]:
    """Names of every case, sorted."""
    return list(all_cases())


def get_case(name: str) -> Case:
    """A case by name."""
    cases = all_cases()
    if name not in cases:
        raise KeyError(f"no conformance case {name!r}; known: {', '.join(cases)}")
    return cases[name]


def covered_names() -> set[str]:
    """Public names ("module.name") that some case exercises (for the coverage meta-test)."""
    names = set()
    for c in all_cases().values():
        base = c.name.split("[")[0]
        names.add(base)
        parts = base.split(".")
        for i in range(2, len(parts)):
            names.add(".".join(parts[:i]))
        names.update(c.covers)
    return names
