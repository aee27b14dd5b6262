"""pytest plugin of refdiff's conformance suite (registered as the ``pytest11`` entry point ``refdiff``).

Inert and cheap: at import it loads only pytest and the standard library, and it does nothing in a
session that collects no refdiff check. Its options live here, not in a conftest, because pytest
does not read a package's conftest options under ``--pyargs`` (pytest-dev/pytest#1596).

Options (each falls back to an environment variable, then a default)::

    --refdiff-backend B[,B2...]   backends: a name, name@device ("torch@cuda"), or pkg.mod:factory
                                  ($REFDIFF_BACKEND; default numpy)
    --refdiff-device D            default device for every backend ($REFDIFF_DEVICE)
    --refdiff-dtypes D[,D2...]    float64,float32 by default; bfloat16/float16 on request
    --refdiff-profile P           refdiff-ci | refdiff-quick (default) | refdiff-thorough
    --refdiff-max-examples N      override the profile's examples per check
    --refdiff-json PATH           write the JSON report
    --refdiff-skips FILE          node ids / check names to skip (one per line, # comments)
    --refdiff-xfails FILE         ... to mark xfail (strict under refdiff-ci)

Fixtures for other projects' own tests: ``refdiff_backend`` (a resolved Backend, parametrized
over ``--refdiff-backend``), ``refdiff_dtype`` (parametrized over the dtypes) and
``refdiff_check`` (runs a conformance Case and records its error ratio).

If pytest plugin autoloading is disabled (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), load it with
``-p refdiff.conformance.plugin``; with autoloading on, do not pass ``-p`` (pytest would register
it twice) — or pass ``-p no:refdiff -p refdiff.conformance.plugin``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest

from . import _options as opts

__all__ = [
    "pytest_addoption",
    "pytest_configure",
    "pytest_report_header",
    "pytest_generate_tests",
    "pytest_collection_modifyitems",
    "pytest_deselected",
    "pytest_runtest_makereport",
    "pytest_terminal_summary",
    "pytest_sessionfinish",
    "refdiff_backend",
    "refdiff_dtype",
    "refdiff_check",
    "STATE_KEY",
]


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
    nodeid: str
    check: str
    backend: str
    dtype: str
    outcome: str = "not run"
    ratio: float | None = None
    worst_output: str | None = None
    examples: int = 0
    duration_s: float = 0.0
    message: str = ""


@dataclass
class _State:
    specs: list[str]
    device: str | None
    dtypes: list[str]
    dtypes_explicit: bool
    profile: str
    max_examples: int | None
    json_path: str | None
    skips_file: str | None
    xfails_file: str | None
    active: bool
    shrink: bool = True
    backends: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    items: dict[str, _Item] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def backend(self, spec: str):
        """The Backend for a spec (resolved once); re-raises the resolution error."""
        if spec in self.errors:
            raise self.errors[spec]
        if spec not in self.backends:
            from refdiff.backends import get_backend

            try:
                self.backends[spec] = get_backend(spec, device=self._device_for(spec))
            except Exception as exc:
                self.errors[spec] = exc
                raise
        return self.backends[spec]

    def _device_for(self, spec: str) -> str | None:
        return None if "@" in spec else self.device


STATE_KEY = pytest.StashKey[_State]()


def _opt(config, name: str, env: str | None = None, default=None):
    value = config.getoption(f"refdiff_{name}", default=None)
    if value is None and env is not None:
        value = os.environ.get(env) or None
    return default if value is None else value


def _make_state(config) -> _State:
    explicit = any(
        config.getoption(f"refdiff_{n}", default=None) is not None
        for n in ("backend", "device", "dtypes", "profile", "json", "max_examples")
    )
    args = [str(a) for a in (config.args or [])] + list(config.invocation_params.args or ())
    active = (
        explicit
        or any("conformance" in a and "refdiff" in a for a in args)
        or any(os.environ.get(v) for v in (opts.ENV["backend"], opts.ENV["dtypes"]))
    )
    dtypes = opts.split_list(_opt(config, "dtypes", opts.ENV["dtypes"]))
    try:
        profile = opts.resolve_profile(_opt(config, "profile", opts.ENV["profile"]))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    max_ex = _opt(config, "max_examples", opts.ENV["max_examples"])
    return _State(
        specs=opts.split_list(_opt(config, "backend", opts.ENV["backend"], "numpy")) or ["numpy"],
        device=_opt(config, "device", opts.ENV["device"]),
        dtypes=dtypes or list(opts.DEFAULT_DTYPES),
        dtypes_explicit=bool(dtypes),
        profile=profile,
        max_examples=int(max_ex) if max_ex is not None else None,
        json_path=_opt(config, "json"),
        skips_file=_opt(config, "skips"),
        xfails_file=_opt(config, "xfails"),
        active=active,
        shrink=not config.getoption("refdiff_no_shrink", default=None),
    )


def _state(config) -> _State:
    return config.stash[STATE_KEY]


# --------------------------------------------------------------------------------------------
# Options, configuration, header
# --------------------------------------------------------------------------------------------


def pytest_addoption(parser) -> None:
    """The --refdiff-* options."""
    g = parser.getgroup("refdiff", "refdiff conformance suite")
    g.addoption(
        "--refdiff-backend",
        dest="refdiff_backend",
        default=None,
        metavar="B[,B...]",
        help="backends to check: name, name@device or pkg.mod:factory "
        "(env REFDIFF_BACKEND; default numpy)",
    )
    g.addoption(
        "--refdiff-device",
        dest="refdiff_device",
        default=None,
        metavar="DEVICE",
        help="device for the backends, e.g. cuda, cuda:1, cpu (env REFDIFF_DEVICE)",
    )
    g.addoption(
        "--refdiff-dtypes",
        dest="refdiff_dtypes",
        default=None,
        metavar="D[,D...]",
        help="float dtypes to check (default float64,float32; bfloat16 opt-in)",
    )
    g.addoption(
        "--refdiff-profile",
        dest="refdiff_profile",
        default=None,
        metavar="PROFILE",
        help="Hypothesis profile: refdiff-ci (derandomized), refdiff-quick (default), "
        "refdiff-thorough (env REFDIFF_PROFILE)",
    )
    g.addoption(
        "--refdiff-max-examples",
        dest="refdiff_max_examples",
        default=None,
        type=int,
        metavar="N",
        help="examples per check (overrides the profile)",
    )
    g.addoption(
        "--refdiff-no-shrink",
        dest="refdiff_no_shrink",
        action="store_true",
        default=None,
        help="report the first failing example without shrinking it "
        "(faster when failures are expected)",
    )
    g.addoption(
        "--refdiff-json",
        dest="refdiff_json",
        default=None,
        metavar="PATH",
        help="write the conformance report as JSON to PATH",
    )
    g.addoption(
        "--refdiff-skips",
        dest="refdiff_skips",
        default=None,
        metavar="FILE",
        help="file of node ids or check names to skip",
    )
    g.addoption(
        "--refdiff-xfails",
        dest="refdiff_xfails",
        default=None,
        metavar="FILE",
        help="file of node ids or check names expected to fail",
    )


def pytest_configure(config) -> None:
    """Record the options; register the marker."""
    config.addinivalue_line("markers", "refdiff_check(name): the check name of a refdiff test")
    config.stash[STATE_KEY] = _make_state(config)


def pytest_report_header(config) -> list[str] | None:
    """refdiff version, backends with device and library versions, dtypes, profile, REFDIFF_* env."""
    st = _state(config)
    if not st.active:
        return None
    try:
        from refdiff import __version__ as version
    except ImportError:
        version = "unknown"
    lines = [
        f"refdiff {version}: conformance profile {st.profile}, dtypes "
        f"{','.join(st.dtypes)}" + ("" if st.dtypes_explicit else " (default)")
    ]
    for spec in st.specs:
        try:
            d = st.backend(spec).describe()
            extra = f", {d['device_name']}" if d.get("device_name") not in (None, "cpu") else ""
            tf32 = f", tf32 {d['tf32']}" if "tf32" in d else ""
            lines.append(
                f"refdiff backend {spec}: {d.get('namespace')} "
                f"{d.get('library_version')} on {d.get('device')}{extra}{tf32}"
            )
        except Exception as exc:  # noqa: BLE001 - reported again at collection
            lines.append(f"refdiff backend {spec}: UNAVAILABLE ({exc})")
    env = {k: v for k, v in os.environ.items() if k.startswith("REFDIFF_")}
    if env:
        lines.append(
            "refdiff environment: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items()))
        )
    return lines


# --------------------------------------------------------------------------------------------
# Parametrization and collection
# --------------------------------------------------------------------------------------------


def pytest_generate_tests(metafunc) -> None:
    """Parametrize refdiff_backend over the requested backends and refdiff_dtype over the dtypes."""
    st = _state(metafunc.config)
    names = metafunc.fixturenames
    if "refdiff_backend" in names:
        metafunc.parametrize("refdiff_backend", st.specs, indirect=True, scope="session")
    if "refdiff_dtype" in names:
        metafunc.parametrize("refdiff_dtype", st.dtypes, scope="session")


def _check_name(item) -> str:
    m = item.get_closest_marker("refdiff_check")
    if m is not None and m.args:
        return str(m.args[0])
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "refdiff_case" in params:
        return str(params["refdiff_case"])
    return getattr(item, "originalname", item.name).removeprefix("test_")


def _short_nodeid(nodeid: str) -> str:
    path, sep, rest = nodeid.partition("::")
    return path.replace("\\", "/").rsplit("/", 1)[-1] + sep + rest


def _read_list(path: str | None, what: str) -> list[str]:
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.split("#", 1)[0].strip() for ln in fh]
    except OSError as exc:
        raise pytest.UsageError(f"--refdiff-{what} {path!r} cannot be read: {exc}") from None
    return [ln for ln in lines if ln]


def _matches(entry: str, it: _Item) -> bool:
    """An entry matches a check name (optionally with [dtype]), a module prefix or a node-id prefix."""
    cid = f"{it.check}[{it.dtype}]"
    short = _short_nodeid(it.nodeid)
    return (
        entry in (it.check, cid)
        or it.check.startswith(entry + ".")
        or short.startswith(entry)
        or it.nodeid.startswith(entry)
        or entry == f"{it.backend}:{it.check}"
        or entry == f"{it.backend}:{cid}"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Resolve backends; name each item's check as a -k keyword; apply skips/xfails from files
    and the backends' known_failures (before -k/-m deselection, which runs after this)."""
    st = _state(config)
    ours = [i for i in items if "refdiff_backend" in getattr(i, "fixturenames", ())]
    if not ours:
        return
    st.active = True
    for spec in st.specs:
        try:
            st.backend(spec)
        except Exception as exc:  # noqa: BLE001 - turned into a usage error with the message
            raise pytest.UsageError(f"refdiff backend {spec!r}: {exc}") from None
    for item in ours:
        params = getattr(item, "callspec", None)
        p = params.params if params else {}
        st.items[item.nodeid] = it = _Item(
            item.nodeid,
            _check_name(item),
            str(p.get("refdiff_backend", "-")),
            str(p.get("refdiff_dtype", "-")),
        )
        item.extra_keyword_matches.add(it.check)
    _apply_lists(st, config, ours)


def _apply_lists(st: _State, config, items) -> None:
    skips, xfails = _read_list(st.skips_file, "skips"), _read_list(st.xfails_file, "xfails")
    used: set[str] = set()
    as_skip = os.environ.get(opts.ENV["xfail_mark"], "").lower() == "skip"
    strict = st.profile == "refdiff-ci"
    for item in items:
        it = st.items[item.nodeid]
        for e in skips:
            if _matches(e, it):
                used.add(e)
                item.add_marker(pytest.mark.skip(reason=f"listed in --refdiff-skips: {e}"))
        reasons = [f"listed in --refdiff-xfails: {e}" for e in xfails if _matches(e, it)]
        used.update(e for e in xfails if _matches(e, it))
        backend = st.backends.get(it.backend)
        for e, why in getattr(backend, "known_failures", {}).items():
            if _matches(e, it):
                reasons.append(f"known failure of backend {it.backend}: {why}")
        if reasons:
            mark = pytest.mark.skip if as_skip else pytest.mark.xfail
            kw = {} if as_skip else {"strict": strict}
            item.add_marker(mark(reason="; ".join(reasons), **kw))
    unused = [e for e in skips + xfails if e not in used]
    if unused and not _narrowed(config):
        text = (
            f"{len(unused)} refdiff skip/xfail entries match no collected check: "
            + ", ".join(unused)
            + " (a typo, or a check that was renamed or removed?)"
        )
        st.warnings.append(text)
        warnings.warn(pytest.PytestWarning(text), stacklevel=1)


def _narrowed(config) -> bool:
    """True when explicit node ids narrow the collection (unmatched entries are then expected;
    -k and -m deselect after the lists are applied, so they do not count)."""
    return any("::" in str(a) for a in (config.args or []))


def pytest_deselected(items) -> None:
    """Forget items deselected by -k/-m (they are not part of the report)."""
    for item in items:
        st = item.config.stash.get(STATE_KEY, None)
        if st is not None:
            st.items.pop(item.nodeid, None)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def refdiff_backend(request):
    """The Backend under test (parametrized over --refdiff-backend)."""
    spec = getattr(request, "param", None) or _state(request.config).specs[0]
    return _state(request.config).backend(spec)


@pytest.fixture(scope="session")
def refdiff_dtype(request) -> str:
    """The float dtype under test, by name (parametrized over --refdiff-dtypes)."""
    return getattr(request, "param", None) or _state(request.config).dtypes[0]


class _Checker:
    """Runs conformance cases for one test item and records their error ratios."""

    def __init__(self, state: _State, item, backend, dtype: str):
        self.state, self.item, self.backend, self.dtype = state, item, backend, dtype
        self.rec = state.items.get(item.nodeid)

    def record(self, output: str | None, ratio: float) -> None:
        """Keep the worst observed/allowed ratio and the output it came from."""
        rec = self.rec
        if rec is None:
            return
        if rec.ratio is None or ratio > rec.ratio or (ratio == rec.ratio and not rec.worst_output):
            rec.ratio = ratio
            rec.worst_output = output or rec.worst_output

    def settings(self, budget: float = 1.0):
        """Hypothesis settings of the session's profile, scaled by the case's budget (no
        shrinking for checks expected to fail: shrinking is the expensive part of a failure)."""
        from .profiles import settings_for

        expected_to_fail = self.item.get_closest_marker("xfail") is not None
        return settings_for(
            self.state.profile,
            max_examples=self.state.max_examples,
            budget=budget,
            shrink=self.state.shrink and not expected_to_fail,
        )

    def context(self, check: str):
        """The failure context of ``check``: the backend spec and device exactly as passed."""
        from .check import Context

        spec = self.rec.backend if self.rec is not None else self.backend.name
        st = self.state
        return Context(
            check,
            self.backend.name,
            str(self.backend.device),
            self.dtype,
            st.profile,
            spec=spec,
            device_arg=st._device_for(spec),
            max_examples=st.max_examples,
            instance=_registered_instance(spec),
        )

    def run(self, case) -> None:
        """Run one Case as a Hypothesis property against the oracle."""
        from .check import run_case

        for cap in case.requires:
            if not self.backend.has(cap):
                pytest.skip(f"backend {self.backend.name} lacks {cap!r}")
        ctx = self.context(case.name)
        examples = [0]
        before = time.perf_counter()
        try:
            run_case(
                case,
                self.backend,
                self.dtype,
                settings=self.settings(case.budget),
                record=_Counter(self, examples),
                ctx=ctx,
            )
        finally:
            if self.rec is not None:
                self.rec.examples += examples[0]
                self.rec.duration_s += time.perf_counter() - before


def _registered_instance(spec: str) -> bool:
    """True if ``spec`` names a Backend object registered at runtime (e.g. by refdiff.verify)."""
    from refdiff.backends import Backend, parse_spec
    from refdiff.backends._registry import _RUNTIME

    return isinstance(_RUNTIME.get(parse_spec(spec)[0]), Backend)


class _Counter:
    """record(output, ratio) that also counts examples (each records None or its first output)."""

    def __init__(self, checker: _Checker, examples: list):
        self.checker, self.examples, self.first = checker, examples, None

    def __call__(self, output, ratio) -> None:
        if self.first is None:
            self.first = output
        if output is None or output == self.first:
            self.examples[0] += 1
        self.checker.record(output, ratio)


@pytest.fixture
def refdiff_check(request, refdiff_backend, refdiff_dtype):
    """A checker bound to this test's backend and dtype: ``refdiff_check.run(case)``."""
    if not refdiff_backend.supports(refdiff_dtype):
        pytest.skip(refdiff_backend.unsupported_reason(refdiff_dtype))
    from .strategies import use_shape_menu

    use_shape_menu(getattr(refdiff_backend, "shape_menu", False))
    return _Checker(_state(request.config), request.node, refdiff_backend, refdiff_dtype)


# --------------------------------------------------------------------------------------------
# Outcomes, summary, JSON
# --------------------------------------------------------------------------------------------


def _crash_message(report) -> str:
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or getattr(report, "longreprtext", "") or str(longrepr)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    return text[:4000]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Track each refdiff item's outcome (after pytest's own xfail handling)."""
    report = yield
    st = item.config.stash.get(STATE_KEY, None)
    if st is not None and item.nodeid in st.items:
        _track(st.items[item.nodeid], report)
    return report


def _track(it: _Item, report) -> None:
    wasx = hasattr(report, "wasxfail")
    if report.when == "setup":
        if report.skipped:
            it.outcome = "xfailed" if wasx else "skipped"
            it.message = _crash_message(report)
        elif report.failed:
            it.outcome, it.message = "error", _crash_message(report)
    elif report.when == "call":
        if not it.duration_s:  # checks that do not run a Case (rng.*, edges.*, backend.*)
            it.duration_s = float(getattr(report, "duration", 0.0) or 0.0)
        if wasx:
            it.outcome = "xfailed" if report.skipped else "xpassed"
            it.message = str(report.wasxfail)
        elif report.passed:
            it.outcome = "passed"
        elif report.failed:
            it.outcome, it.message = "failed", _crash_message(report)
        else:
            it.outcome, it.message = "skipped", _crash_message(report)
    elif report.when == "teardown" and report.failed and it.outcome == "passed":
        it.outcome, it.message = "error", _crash_message(report)


def build_report(config, exit_code: int = 0):
    """The session's VerifyReport (also what --refdiff-json writes)."""
    from .report import CheckResult, VerifyReport

    st = _state(config)
    try:
        from refdiff import __version__ as version
    except ImportError:
        version = "unknown"
    checks = [
        CheckResult(
            i.check,
            i.backend,
            i.dtype,
            i.outcome,
            i.ratio,
            i.worst_output,
            i.examples,
            i.duration_s,
            i.message,
            _short_nodeid(i.nodeid),
        )
        for i in st.items.values()
    ]
    backends = {}
    for spec, b in st.backends.items():
        try:
            backends[spec] = b.describe()
        except Exception as exc:  # noqa: BLE001 - reporting must not fail
            backends[spec] = {"error": repr(exc)}
    errors = [f"{s}: {e}" for s, e in st.errors.items()]
    bad = any(c.outcome in ("failed", "error") for c in checks)
    ok = exit_code == 0 and not bad and bool(checks) and not errors
    return VerifyReport(
        ok=ok,
        backends=backends,
        dtypes=list(st.dtypes),
        profile=st.profile,
        checks=checks,
        exit_code=int(exit_code),
        duration_s=time.time() - st.started,
        refdiff_version=version,
        errors=errors,
        warnings=list(st.warnings),
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The table of checks with their worst error ratios."""
    st = _state(config)
    if not st.items:
        return
    from .report import format_table

    rep = build_report(config, int(exitstatus))
    terminalreporter.write_sep("=", "refdiff conformance")
    for line in format_table(rep.checks).splitlines():
        terminalreporter.write_line(line)
    worst = max(
        (c.ratio for c in rep.checks if c.ratio is not None and not math.isinf(c.ratio)),
        default=0.0,
    )
    terminalreporter.write_line(f"worst finite error ratio: {worst:.3f}")
    for w in rep.warnings:
        terminalreporter.write_line(f"WARNING: {w}")
    if st.json_path:
        terminalreporter.write_line(f"refdiff JSON report: {st.json_path}")


def pytest_sessionfinish(session, exitstatus) -> None:
    """Write --refdiff-json."""
    st = session.config.stash.get(STATE_KEY, None)
    if st is None or not st.items:
        return
    if st.json_path:
        build_report(session.config, int(exitstatus)).to_json(st.json_path)
