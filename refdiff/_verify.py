"""``refdiff.verify()``: run the conformance suite on a backend from Python and get a report back.

>>> import refdiff
>>> report = refdiff.verify(backend="array_api_strict")       # doctest: +SKIP
>>> report.ok, report.counts["failed"], report.worst[("diffusion.q_sample", "float32")]  # doctest: +SKIP

It runs pytest in-process on ``--pyargs refdiff.conformance`` with the plugin loaded explicitly,
captures pytest's output into ``report.log`` and never exits the process. The suite is the same
one ``pytest --pyargs refdiff.conformance --refdiff-backend B`` and ``refdiff verify`` run.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO
from collections.abc import Callable, Iterable, Iterator, Sequence

from .conformance._options import VERIFY_PROFILE, resolve_profile, split_list
from .conformance.report import CheckResult, VerifyReport

if TYPE_CHECKING:
    import pytest

    from ._typing import Device
    from .backends import Backend

__all__ = ["verify", "VerifyReport", "CheckResult", "resolve_backends"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, (list, tuple)):
        out: list[Any] = []
        for v in value:
            out.extend(_as_list(v) if isinstance(v, str) else [v])
        return out
    return [value]


def resolve_backends(backend: Any, device: Device = None) -> list[tuple[str, Backend, bool]]:
    """(spec, Backend, registered_here) for each requested backend; raises before anything runs.

    Strings are names, "name@device" or import strings; Backend instances are registered for
    the run under their name (or "name-N" if that name is a built-in's) and unregistered after.
    """
    from .backends import Backend, get_backend
    from .backends._registry import _BUILTINS, register_backend

    out: list[tuple[str, Backend, bool]] = []
    for i, b in enumerate(_as_list(backend) or ["numpy"]):
        if isinstance(b, Backend):
            spec = b.name if b.name not in _BUILTINS else f"{b.name}-{i + 1}"
            register_backend(spec, b)
            out.append((spec, b, True))
        else:
            spec = str(b)
            out.append((spec, get_backend(spec, device=None if "@" in spec else device), False))
    return out


class _Collector:
    """A pytest plugin object: progress callbacks and the final report of the inner session."""

    def __init__(
        self,
        progress: Callable[[CheckResult, int, int], None] | None,
        stdout: TextIO | None = None,
    ) -> None:
        self.progress = progress
        self.stdout = stdout or sys.stdout  # the caller's stdout, outside the capture
        self.report: VerifyReport | None = None
        self.total = 0
        self.done = 0

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from .conformance.plugin import STATE_KEY

        st = session.config.stash.get(STATE_KEY, None)
        self.total = len(st.items) if st is not None else 0

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        from .conformance.plugin import STATE_KEY, _short_nodeid

        if self.progress is None or self._config is None:
            return
        st = self._config.stash.get(STATE_KEY, None)
        it = st.items.get(nodeid) if st is not None else None
        if it is None:
            return
        self.done += 1
        with contextlib.redirect_stdout(self.stdout):
            self.progress(
                CheckResult(
                    it.check,
                    it.backend,
                    it.dtype,
                    it.outcome,
                    it.ratio,
                    it.worst_output,
                    it.examples,
                    it.duration_s,
                    it.message,
                    _short_nodeid(nodeid),
                ),
                self.done,
                self.total,
            )

    _config: pytest.Config | None = None

    def pytest_configure(self, config: pytest.Config) -> None:
        self._config = config

    def pytest_sessionfinish(
        self, session: pytest.Session, exitstatus: int | pytest.ExitCode
    ) -> None:
        from .conformance.plugin import build_report

        self.report = build_report(session.config, int(exitstatus))


@contextlib.contextmanager
def _isolated_env(disable_autoload: bool) -> Iterator[None]:
    """PYTEST_DISABLE_PLUGIN_AUTOLOAD for the inner session only (restored after)."""
    key = "PYTEST_DISABLE_PLUGIN_AUTOLOAD"
    old = os.environ.get(key)
    if disable_autoload:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _pytest_args(
    specs: list[str],
    dtypes: list[str],
    device: Device,
    profile: str,
    max_examples: int | None,
    skips: str | None,
    xfails: str | None,
    ini: str,
    extra_args: Sequence[str],
) -> list[str]:
    import refdiff.conformance as conf

    args = [
        "--pyargs",
        "refdiff.conformance",
        "-p",
        "no:refdiff",
        "-p",
        "refdiff.conformance.plugin",
        "-p",
        "no:cacheprovider",
        "-c",
        ini,
        "--rootdir",
        str(Path(conf.__file__).parent),
        "-q",
        "-rN",
        "--refdiff-backend",
        ",".join(specs),
        "--refdiff-profile",
        profile,
    ]
    if dtypes:
        args += ["--refdiff-dtypes", ",".join(dtypes)]
    if device is not None:
        args += ["--refdiff-device", str(device)]
    if max_examples is not None:
        args += ["--refdiff-max-examples", str(int(max_examples))]
    if skips:
        args += ["--refdiff-skips", str(skips)]
    if xfails:
        args += ["--refdiff-xfails", str(xfails)]
    return args + [str(a) for a in extra_args]


def verify(
    backend: Any = "numpy",
    dtypes: str | Iterable[str] | None = None,
    device: Any = None,
    profile: str = VERIFY_PROFILE,
    max_examples: int | None = None,
    json_path: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
    *,
    skips: str | None = None,
    xfails: str | None = None,
    progress: Callable[[CheckResult, int, int], None] | None = None,
    shrink: bool = True,
    capture: bool = True,
    autoload_plugins: bool = False,
) -> VerifyReport:
    """Run the conformance suite on one or more backends and return the report.

    Parameters
    ----------
    backend : str, Backend or list
        "numpy" (default), "array_api_strict", "torch", "cupy", "name@device", an import string
        "pkg.mod:factory", a comma-separated list, or Backend objects (e.g. from
        :func:`refdiff.backends.from_namespace`).
    dtypes : str or list of str, optional
        Float dtypes to check (default: float64 and float32; bfloat16/float16 on request).
    device : optional
        Device for the backends (e.g. "cuda", "cuda:1"); each backend's default otherwise.
    profile : str
        Hypothesis profile: "refdiff-ci" (default; derandomized, reproducible),
        "refdiff-quick" or "refdiff-thorough".
    max_examples : int, optional
        Examples per check (overrides the profile's).
    json_path : path, optional
        Also write the report as JSON here.
    extra_args : sequence of str
        More pytest arguments, e.g. ``["-k", "q_sample"]`` to select checks.
    skips, xfails : path, optional
        Files of check names / node ids to skip or to expect to fail (``#`` comments).
    progress : callable, optional
        ``progress(result, done, total)`` after each check.
    shrink : bool
        Shrink failing examples to a minimal one (default); False reports the first failing
        example found, which is much faster when failures are expected.
    capture : bool
        Keep pytest's own output out of stdout (it is in ``report.log``); False prints it.
    autoload_plugins : bool
        Let pytest load every installed plugin (off by default: the suite runs isolated from
        plugins such as pytest-randomly; pass ``["-p", "name"]`` in extra_args to add one).

    Returns
    -------
    VerifyReport
        ``ok`` (also its truth value), ``counts``, ``checks`` (per check, backend and dtype:
        outcome and worst observed/allowed error ratio), ``worst``, ``to_json()``.

    Raises
    ------
    refdiff.backends.UnknownBackendError
        An unknown backend name (the message lists the available ones).
    refdiff.backends.BackendUnavailableError
        A backend whose library or device is missing (the message says how to install it).
    ValueError
        An unknown profile or dtype.
    """
    pytest = _require_test_tools()
    from .backends._registry import unregister_backend
    from .conformance.tolerances import EPS
    from ._errors import check_int

    profile = resolve_profile(profile)
    dts = _as_list(dtypes)
    for d in dts:
        if d not in EPS:
            raise ValueError(
                f"dtypes: {d!r} is not a float dtype the suite knows; allowed: {', '.join(EPS)}"
            )
    if max_examples is not None:
        max_examples = check_int("max_examples", max_examples, minimum=1)
    if json_path is not None:
        _check_writable("json_path", json_path)
    resolved = resolve_backends(backend, device)
    specs = [s for s, _, _ in resolved]
    collector = _Collector(progress, sys.stdout)
    started = time.time()
    out = io.StringIO()
    code: int = -1
    with tempfile.TemporaryDirectory(prefix="refdiff-verify-") as tmp:
        ini = os.path.join(tmp, "pytest.ini")
        with open(ini, "w", encoding="utf-8") as fh:
            fh.write("[pytest]\n")
        args = _pytest_args(
            specs, dts, device, profile, max_examples, skips, xfails, ini, extra_args
        ) + ([] if shrink else ["--refdiff-no-shrink"])
        redirect = contextlib.redirect_stdout(out) if capture else contextlib.nullcontext()
        try:
            with _isolated_env(not autoload_plugins), redirect:
                code = int(pytest.main(args, plugins=[collector]))
        except SystemExit as exc:  # a plugin calling sys.exit must not end the caller
            code = int(exc.code) if isinstance(exc.code, int) else 3
        finally:
            for s, _, registered in resolved:
                if registered:
                    unregister_backend(s)
    report = collector.report
    if report is None:  # the session never started (e.g. a usage error)
        report = VerifyReport(ok=False, profile=profile, dtypes=dts, errors=[_tail(out.getvalue())])
    report.exit_code = code
    report.log = out.getvalue()
    report.duration_s = time.time() - started
    if collector.report is not None:
        report.errors.extend(_unchecked(report, specs, dts))
    report.ok = code == 0 and not report.failures() and bool(report.checks) and not report.errors
    if code != 0 and not report.failures() and not report.errors:
        report.errors.append(f"pytest exited with status {code}: {_tail(report.log)}")
    if json_path is not None:
        report.to_json(os.fspath(json_path))
    return report


_RAN = ("passed", "failed", "error", "xfailed", "xpassed")


def _unchecked(report: VerifyReport, specs: list[str], dtypes: list[str]) -> list[str]:
    """Session errors for a run that compared nothing: per backend, and per dtype asked for."""
    errors: list[str] = []
    if not report.checks:
        return [f"nothing was checked: no check was collected for backends {', '.join(specs)}"]
    for spec in specs:
        mine = [r for r in report.checks if r.backend == spec]
        if mine and not any(r.outcome in _RAN for r in mine):
            why = sorted({r.message.strip().splitlines()[0] for r in mine if r.message.strip()})
            errors.append(
                f"nothing was checked on backend {spec!r}: all {len(mine)} checks were "
                "skipped" + (f" ({'; '.join(why[:3])})" if why else "")
            )
    for d in dtypes:
        mine = [r for r in report.checks if r.dtype == d]
        if not any(r.outcome in _RAN for r in mine) and not any(
            e.startswith("nothing was checked on backend") for e in errors
        ):
            errors.append(
                f"nothing was checked at dtype {d!r}: "
                + (f"all {len(mine)} checks were skipped" if mine else "no check ran at this dtype")
                + "; drop it from dtypes or use a "
                "backend that supports it"
            )
    return errors


def _check_writable(name: str, path: str | os.PathLike) -> None:
    """Raise before a long run if a report could not be written to ``path``."""
    from ._errors import fail

    p = Path(os.fspath(path))
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        fail(name, os.fspath(path), "expected a file path; this is a folder")
    if not parent.is_dir():
        fail(
            name,
            os.fspath(path),
            f"expected a file in an existing folder; {str(parent)!r} does not exist",
        )
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        fail(name, os.fspath(path), "expected a writable file path; permission denied")


def _require_test_tools() -> ModuleType:
    """pytest (and hypothesis), or an ImportError that says how to install them."""
    try:
        import hypothesis
        import pytest
    except ImportError as exc:
        raise ImportError(
            f"refdiff.verify runs the conformance suite with pytest and hypothesis, "
            f"and {exc.name!r} is not installed: pip install pytest hypothesis "
            "(or pip install 'refdiff[test]')"
        ) from exc
    del hypothesis
    return pytest


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
