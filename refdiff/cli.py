"""The ``refdiff`` command line: ``refdiff verify``, ``refdiff backends`` (and the training commands).

``refdiff verify`` with no arguments checks the NumPy reference itself; ``--backend torch`` (or
``torch@cuda``, ``cupy``, ``array_api_strict``, ``pkg.mod:factory``) checks another backend, and
``--all`` every installed one. It prints progress, a table of every check with its worst
observed/allowed error ratio, the failures in full, and exits 1 if any check failed (2 on a usage
error such as an unknown backend).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ._verify import CheckResult

__all__ = ["main", "build_parser"]

#: Modules that add subcommands through ``register(subparsers)`` (loaded when present).
EXTENSIONS = ("refdiff.train.cli",)


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="run the conformance suite on a backend",
        description="Check a backend against the float64 NumPy oracle with refdiff's Hypothesis "
        "conformance suite. With no --backend, checks the numpy reference itself.",
    )
    p.add_argument(
        "--backend",
        "-b",
        action="append",
        default=None,
        metavar="B",
        help="backend: numpy (default), array_api_strict, torch, cupy, name@device, "
        "or pkg.mod:factory; repeat or comma-separate for several",
    )
    p.add_argument("--all", action="store_true", help="every installed backend")
    p.add_argument(
        "--dtypes",
        default=None,
        metavar="D[,D...]",
        help="float dtypes (default float64,float32; bfloat16 opt-in for torch)",
    )
    p.add_argument("--device", default=None, help="device, e.g. cuda, cuda:1, cpu")
    p.add_argument(
        "--profile",
        default="refdiff-ci",
        help="refdiff-ci (default, derandomized), refdiff-quick, refdiff-thorough",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=None,
        metavar="N",
        help="examples per check (overrides the profile)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the JSON report")
    p.add_argument("--skips", default=None, metavar="FILE", help="checks to skip")
    p.add_argument("--xfails", default=None, metavar="FILE", help="checks expected to fail")
    p.add_argument(
        "--no-shrink",
        action="store_true",
        help="report first failing examples without shrinking them (faster)",
    )
    p.add_argument(
        "-k",
        dest="select",
        default=None,
        metavar="EXPR",
        help="only checks matching this pytest -k expression",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="also print pytest's output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run_verify)


def _add_backends(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backends", help="list the backends and whether they are installed")
    p.set_defaults(func=run_backends)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``refdiff``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="refdiff", description="refdiff: the numerical oracle for diffusion models"
    )
    parser.add_argument("--version", action="version", version=f"refdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_verify(sub)
    _add_backends(sub)
    for name in EXTENSIONS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        mod.register(sub)
    return parser


def _all_backends(out: TextIO) -> list[str]:
    from .backends import BackendUnavailableError, get_backend, list_backends

    specs = []
    for info in list_backends():
        if not info.available:
            print(f"skipping {info.name}: not installed ({info.hint})", file=out)
            continue
        try:
            get_backend(info.name)
        except BackendUnavailableError as exc:
            print(f"skipping {info.name}: {exc}", file=out)
            continue
        specs.append(info.name)
    return specs


def _progress(out: TextIO) -> Callable[[CheckResult, int, int], None]:
    mark = {
        "passed": "ok",
        "failed": "FAIL",
        "error": "ERROR",
        "skipped": "skip",
        "xfailed": "xfail",
        "xpassed": "XPASS",
    }

    def show(result: CheckResult, done: int, total: int) -> None:
        ratio = "" if result.ratio is None else f"  worst error/allowed {result.ratio:.3g}"
        width = len(str(total))
        print(
            f"[{done:>{width}}/{total}] {result.backend} {result.check}[{result.dtype}] "
            f"{mark.get(result.outcome, result.outcome)}{ratio}",
            file=out,
            flush=True,
        )

    return show


def _header(specs: list[str], device: str | None, out: TextIO) -> None:
    from .backends import get_backend

    for spec in specs:
        d = get_backend(spec, device=None if "@" in spec else device).describe()
        name = d.get("device_name")
        extra = f" ({name})" if name and name != "cpu" else ""
        print(
            f"backend {spec}: {d['namespace']} {d['library_version']} on {d['device']}{extra}",
            file=out,
        )
        if "tf32" in d:
            print(f"  TF32 flags outside checks: {d['tf32']} (checks run with TF32 off)", file=out)


def run_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``refdiff verify``: exit 0 if every check passed, 1 if any failed, 2 on usage errors."""
    from . import __version__
    from .backends import BackendUnavailableError, UnknownBackendError
    from ._verify import verify

    out = out or sys.stdout
    specs = (
        _all_backends(out)
        if args.all
        else [s for b in (args.backend or ["numpy"]) for s in b.split(",") if s.strip()]
    )
    extra = ["-k", args.select] if args.select else []
    print(
        f"refdiff {__version__} verify: backends {', '.join(specs)}; profile {args.profile}",
        file=out,
    )
    try:
        from ._errors import check_int
        from ._verify import _check_writable

        if args.max_examples is not None:
            check_int("--max-examples", args.max_examples, minimum=1)
        if args.json:
            _check_writable("--json", args.json)
        _header(specs, args.device, out)
        report = verify(
            backend=specs,
            dtypes=args.dtypes,
            device=args.device,
            profile=args.profile,
            max_examples=args.max_examples,
            json_path=args.json,
            extra_args=extra,
            skips=args.skips,
            xfails=args.xfails,
            progress=None if args.quiet else _progress(out),
            shrink=not args.no_shrink,
            capture=not args.verbose,
        )
    except (UnknownBackendError, BackendUnavailableError, ValueError, ImportError, OSError) as exc:
        print(f"refdiff verify: error: {exc}", file=sys.stderr)
        return 2
    print(report.format(), file=out)
    if args.json:
        print(f"JSON report: {args.json}", file=out)
    return 0 if report.ok else 1


def run_backends(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``refdiff backends``: one line per backend with its availability or install hint."""
    from .backends import list_backends

    out = out or sys.stdout
    for info in list_backends():
        state = "installed" if info.available else f"not installed: {info.hint}"
        print(f"{info.name:<18} {info.source:<12} {state}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refdiff`` console script and ``python -m refdiff``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
