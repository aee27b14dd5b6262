"""The conformance report: per check and dtype the outcome and the worst observed/allowed error ratio.

Standard library only (the plugin imports it at the end of a session). The same dictionary is
written by ``--refdiff-json``, returned by ``refdiff.verify()`` as a :class:`VerifyReport` and
printed as a table by ``refdiff verify`` and the pytest terminal summary.

A *ratio* is max over elements and examples of |backend − oracle| / allowed, where allowed is the
tolerance of the check's class (``tolerances.py``): 0 means bit-identical, 1 is the edge of the
tolerance, ``inf`` a structural mismatch (NaN or inf in the wrong place, wrong shape) or an
inexact value in an "exact" check. Passing checks report their ratio too: a ratio creeping
towards 1 is an early warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

__all__ = ["CheckResult", "VerifyReport", "format_table", "OUTCOMES", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "not run")


def _ratio_out(r: float | None):
    if r is None:
        return None
    return "inf" if math.isinf(r) else r


def _ratio_in(r) -> float | None:
    if r is None:
        return None
    return math.inf if r == "inf" else float(r)


@dataclass
class CheckResult:
    """One check on one backend at one dtype."""

    check: str
    backend: str
    dtype: str
    outcome: str
    ratio: float | None = None  # worst observed/allowed (None: nothing compared)
    worst_output: str | None = None
    examples: int = 0
    duration_s: float = 0.0
    message: str = ""
    nodeid: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (an infinite ratio is the string "inf")."""
        return {
            "check": self.check,
            "backend": self.backend,
            "dtype": self.dtype,
            "outcome": self.outcome,
            "ratio": _ratio_out(self.ratio),
            "worst_output": self.worst_output,
            "examples": self.examples,
            "duration_s": round(self.duration_s, 4),
            "message": self.message,
            "nodeid": self.nodeid,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CheckResult:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["ratio"] = _ratio_in(d.get("ratio"))
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class VerifyReport:
    """What ``refdiff.verify`` returns: ok or not, counts, and per check and dtype the worst error ratio.

    ``bool(report)`` is ``report.ok``. ``report.worst[(check, dtype)]`` is the worst
    observed/allowed ratio over backends; ``to_dict()``/``to_json()`` give the JSON form.
    """

    ok: bool
    backends: dict[str, dict] = field(default_factory=dict)  # spec -> describe()
    dtypes: list[str] = field(default_factory=list)
    profile: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    exit_code: int = 0
    duration_s: float = 0.0
    refdiff_version: str = ""
    errors: list[str] = field(default_factory=list)  # session-level problems
    warnings: list[str] = field(default_factory=list)  # e.g. unmatched xfail entries
    log: str = ""  # pytest's own output

    def __bool__(self) -> bool:
        return self.ok

    @property
    def counts(self) -> dict[str, int]:
        """How many checks ended in each outcome."""
        c = dict.fromkeys(OUTCOMES, 0)
        for r in self.checks:
            c[r.outcome] = c.get(r.outcome, 0) + 1
        return c

    @property
    def passed(self) -> int:
        return self.counts["passed"]

    @property
    def failed(self) -> int:
        return self.counts["failed"] + self.counts["error"]

    @property
    def skipped(self) -> int:
        return self.counts["skipped"]

    @property
    def xfailed(self) -> int:
        return self.counts["xfailed"]

    @property
    def worst(self) -> dict[tuple[str, str], float]:
        """(check, dtype) -> worst observed/allowed ratio over backends (checks that compared)."""
        out: dict[tuple[str, str], float] = {}
        for r in self.checks:
            if r.ratio is not None:
                key = (r.check, r.dtype)
                out[key] = max(out.get(key, 0.0), r.ratio)
        return out

    def failures(self) -> list[CheckResult]:
        """The failed or errored checks."""
        return [r for r in self.checks if r.outcome in ("failed", "error")]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "schema": SCHEMA_VERSION,
            "ok": self.ok,
            "refdiff_version": self.refdiff_version,
            "profile": self.profile,
            "dtypes": list(self.dtypes),
            "backends": self.backends,
            "counts": self.counts,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "checks": [r.to_dict() for r in self.checks],
        }

    def to_json(self, path: str | None = None, *, indent: int = 2) -> str:
        """The JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, default=str)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict, *, log: str = "") -> VerifyReport:
        """Rebuild from :meth:`to_dict` (e.g. a ``--refdiff-json`` file)."""
        return cls(
            ok=bool(d.get("ok")),
            backends=d.get("backends", {}),
            dtypes=list(d.get("dtypes", [])),
            profile=d.get("profile", ""),
            checks=[CheckResult.from_dict(c) for c in d.get("checks", [])],
            exit_code=int(d.get("exit_code", 0)),
            duration_s=float(d.get("duration_s", 0)),
            refdiff_version=d.get("refdiff_version", ""),
            errors=list(d.get("errors", [])),
            warnings=list(d.get("warnings", [])),
            log=log,
        )

    def format(self, *, failures: bool = True) -> str:
        """A readable summary: the table, failure messages, and the verdict."""
        parts = [format_table(self.checks)]
        if failures:
            for r in self.failures():
                parts.append(
                    f"--- {r.backend} {r.check}[{r.dtype}] {r.outcome.upper()}\n{r.message.strip()}"
                )
        parts.extend(f"ERROR: {e}" for e in self.errors)
        parts.extend(f"WARNING: {w}" for w in self.warnings)
        c = self.counts
        verdict = "OK" if self.ok else "FAILED"
        parts.append(
            f"{verdict}: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
            f"{c['skipped']} skipped, {c['xfailed']} xfailed, {c['xpassed']} xpassed "
            f"in {self.duration_s:.1f} s (profile {self.profile})"
        )
        return "\n".join(parts)

    def to_markdown(self) -> str:
        """A Markdown table (backend, check, and per dtype the outcome and worst ratio) and the verdict."""
        checks = self.checks
        dtypes = sorted({r.dtype for r in checks}, key=lambda d: (d != "float64", d))
        lines = [
            "| backend | check | " + " | ".join(dtypes) + " |",
            "|---|---|" + "---|" * len(dtypes),
        ]
        rows: dict[tuple[str, str], dict[str, CheckResult]] = {}
        for r in checks:
            rows.setdefault((r.backend, r.check), {})[r.dtype] = r
        for (b, c), per in rows.items():
            cells = []
            for d in dtypes:
                r = per.get(d)
                cells.append(
                    ""
                    if r is None
                    else f"{r.outcome} {_fmt_ratio(r.ratio)}"
                    if r.ratio is not None
                    else r.outcome
                )
            lines.append(f"| {b} | `{c}` | " + " | ".join(cells) + " |")
        c = self.counts
        lines.append("")
        lines.append(
            f"{'OK' if self.ok else 'FAILED'}: {c['passed']} passed, {c['failed']} failed, "
            f"{c['error']} errors, {c['skipped']} skipped, {c['xfailed']} xfailed "
            f"(profile {self.profile}, {self.duration_s:.0f} s)"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"VerifyReport(ok={self.ok}, passed={c['passed']}, failed={c['failed']}, "
            f"errors={c['error']}, skipped={c['skipped']}, xfailed={c['xfailed']}, "
            f"backends={list(self.backends)})"
        )


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if math.isinf(r):
        return "inf"
    return "0" if r == 0 else f"{r:.3f}"


def format_table(checks: Iterable[CheckResult]) -> str:
    """One row per check: backend, check, one column per dtype with outcome and worst ratio."""
    checks = list(checks)
    if not checks:
        return "(no checks ran)"
    dtypes = sorted({r.dtype for r in checks}, key=lambda d: (d == "-", d != "float64", d))
    rows: dict[tuple[str, str], dict[str, CheckResult]] = {}
    for r in checks:
        rows.setdefault((r.backend, r.check), {})[r.dtype] = r
    mark = {
        "passed": "ok",
        "failed": "FAIL",
        "error": "ERROR",
        "skipped": "skip",
        "xfailed": "xfail",
        "xpassed": "XPASS",
        "not run": "-",
    }
    head = ["backend", "check"] + dtypes
    body = []
    for (b, c), per in rows.items():
        cells = []
        for d in dtypes:
            r = per.get(d)
            if r is None:
                cells.append("")
            elif r.outcome in ("passed", "failed", "xfailed", "xpassed") and r.ratio is not None:
                cells.append(f"{mark[r.outcome]} {_fmt_ratio(r.ratio)}")
            else:
                cells.append(mark.get(r.outcome, r.outcome))
        body.append([b, c] + cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in body]
    out.append(
        "(each cell: outcome and worst observed/allowed error ratio; 0 = bit-identical, > 1 fails)"
    )
    return "\n".join(out)


def main(argv=None) -> int:
    """``python -m refdiff.conformance.report REPORT.json [...] [--markdown]``: print saved reports."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m refdiff.conformance.report")
    p.add_argument("paths", nargs="+", help="JSON reports written by --refdiff-json / --json")
    p.add_argument("--markdown", action="store_true", help="Markdown tables")
    args = p.parse_args(argv)
    ok = True
    for path in args.paths:
        with open(path, encoding="utf-8") as fh:
            rep = VerifyReport.from_dict(json.load(fh))
        backends = ", ".join(
            f"{k} ({v.get('device_name') or v.get('device')}, {v.get('library_version')})"
            for k, v in rep.backends.items()
        )
        print(f"{'### ' if args.markdown else ''}{path}: {backends}\n")
        print(rep.to_markdown() if args.markdown else rep.format(failures=False))
        print()
        ok = ok and rep.ok
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
