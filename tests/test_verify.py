"""refdiff.verify, the report, the pytest plugin (options, header, skip/xfail files, JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import refdiff
from refdiff.backends import UnknownBackendError
from refdiff.backends.numpy import NumpyBackend
from refdiff.conformance.report import VerifyReport

SELECT = ["-k", "schedules.linear or diffusion.q_sample or backend.asarray"]


def _broken_q_sample(schedule, x0, t, *, noise):
    from refdiff.diffusion import q_sample

    return q_sample(schedule, x0, t, noise=noise) * (1.0 + 1e-3)


def broken_backend(name="numpy_broken", **kw):
    """NumPy with a q_sample that is 0.1 % off (a factory for the import-string tests too)."""
    return NumpyBackend(name=name, overrides={"diffusion.q_sample": _broken_q_sample}, **kw)


def test_verify_strict_reports_ok_with_ratios_and_json(tmp_path):
    path = tmp_path / "report.json"
    rep = refdiff.verify(
        backend="array_api_strict", extra_args=SELECT, max_examples=3, json_path=path
    )
    assert rep.ok and bool(rep) and rep.exit_code == 0
    assert rep.counts["passed"] == 6 and rep.counts["failed"] == 0
    assert set(rep.worst) == {
        (c, d)
        for c in ("schedules.linear", "diffusion.q_sample", "backend.asarray")
        for d in ("float64", "float32")
    }
    assert rep.worst[("schedules.linear", "float32")] == 0.0  # exact: bit-identical tables
    assert 0.0 < rep.worst[("diffusion.q_sample", "float32")] <= 1.0
    assert rep.backends["array_api_strict"]["device"] == "array_api_strict.Device('device1')"
    data = json.loads(path.read_text())
    assert data["ok"] is True and data["counts"]["passed"] == 6 and data["profile"] == "refdiff-ci"
    again = VerifyReport.from_dict(data)
    assert again.counts == rep.counts and again.worst == rep.worst
    assert "schedules.linear" in rep.format() and "OK: 6 passed" in rep.format()


def test_unknown_backend_raises_listing_the_available_ones():
    with pytest.raises(UnknownBackendError, match=r"backend='nope'.*available: 'numpy'"):
        refdiff.verify(backend="nope")


def test_bad_profile_and_dtype_raise():
    with pytest.raises(
        ValueError,
        match=r"profile='fast' is not a refdiff profile; allowed: "
        r"refdiff-ci, refdiff-quick, refdiff-thorough",
    ):
        refdiff.verify(profile="fast")
    with pytest.raises(ValueError, match=r"dtypes: 'float8' is not a float dtype"):
        refdiff.verify(dtypes="float8")


def test_a_failing_backend_returns_a_report_and_never_exits():
    rep = refdiff.verify(
        backend=broken_backend(),
        extra_args=["-k", "diffusion.q_sample"],
        max_examples=3,
        dtypes="float64",
        shrink=False,
    )
    assert not rep.ok and not bool(rep) and rep.exit_code == 1
    (fail,) = rep.failures()
    assert fail.check == "diffusion.q_sample" and fail.dtype == "float64" and fail.ratio > 1
    for text in (
        "mismatches the oracle",
        "max abs err",
        "at (",
        "max ulp err",
        "tolerance: elementwise: rtol 8·eps",
        "reproduce: refdiff.verify(backend=<the Backend object 'numpy_broken'>",
    ):
        assert text in fail.message, (text, fail.message)
    # Hypothesis's own example (its wording changed across versions)
    assert "Falsifying example" in fail.message or "Failing test case" in fail.message, fail.message


def test_backend_objects_are_registered_only_for_the_run():
    from refdiff.backends import get_backend

    refdiff.verify(
        backend=broken_backend("tmp_broken"), extra_args=["-k", "schedules.linear"], max_examples=1
    )
    with pytest.raises(UnknownBackendError):
        get_backend("tmp_broken")


def test_refdiff_verify_is_a_plain_function():
    import importlib
    import types

    from refdiff._verify import VerifyReport, verify

    assert refdiff.verify is verify and isinstance(refdiff.verify, types.FunctionType)
    assert refdiff.VerifyReport is VerifyReport
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("refdiff.verify")
    rep = refdiff.verify(extra_args=["-k", "schedules.linear"], max_examples=1)
    assert rep.ok and isinstance(rep, refdiff.VerifyReport)


def test_xfail_and_skip_files(tmp_path):
    xf = tmp_path / "xfails.txt"
    xf.write_text(
        "# comment\ndiffusion.q_sample[float64]   # broken on purpose\n"
        "numpy_broken:schedules.linear\nno.such.check\n"
    )
    sk = tmp_path / "skips.txt"
    sk.write_text("diffusion.q_sample[float32]\n")
    rep = refdiff.verify(
        backend=broken_backend(),
        extra_args=["-k", "q_sample or schedules.linear"],
        max_examples=2,
        xfails=str(xf),
        skips=str(sk),
    )
    out = {(r.check, r.dtype): r.outcome for r in rep.checks}
    assert out[("diffusion.q_sample", "float64")] == "xfailed"
    assert out[("diffusion.q_sample", "float32")] == "skipped"
    # a strict xfail that passes (the tables are fine) fails under refdiff-ci...
    assert out[("schedules.linear", "float64")] == "failed"
    assert (
        "XPASS(strict)"
        in rep.checks[[r.check for r in rep.checks].index("schedules.linear")].message
    )
    assert "1 refdiff skip/xfail entries match no collected check: no.such.check" in rep.log
    # ...and is only reported as xpassed under the non-strict quick profile
    rep2 = refdiff.verify(
        backend=broken_backend(),
        extra_args=["-k", "schedules.linear"],
        max_examples=2,
        xfails=str(xf),
        profile="quick",
    )
    assert {r.outcome for r in rep2.checks} == {"xpassed"} and rep2.ok


def test_backend_known_failures_are_xfailed():
    b = broken_backend(known_failures={"diffusion.q_sample": "fused kernel is 0.1% off (#123)"})
    rep = refdiff.verify(backend=b, extra_args=["-k", "diffusion.q_sample"], max_examples=2)
    assert rep.ok and {r.outcome for r in rep.checks} == {"xfailed"}
    assert (
        "known failure of backend numpy_broken: fused kernel is 0.1% off (#123)"
        in rep.checks[0].message
    )


def _pytest(args, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


def test_pytest_pyargs_with_header_and_json(tmp_path):
    path = tmp_path / "r.json"
    res = _pytest(
        [
            "--pyargs",
            "refdiff.conformance",
            "--refdiff-backend",
            "numpy",
            "--refdiff-dtypes",
            "float32",
            "--refdiff-profile",
            "ci",
            "--refdiff-max-examples",
            "2",
            "-k",
            "schedules.linear or q_sample",
            "--refdiff-json",
            str(path),
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "refdiff 0.1.0: conformance profile refdiff-ci, dtypes float32" in res.stdout
    assert "refdiff backend numpy: array_api_compat.numpy" in res.stdout
    assert "refdiff conformance" in res.stdout and "diffusion.q_sample" in res.stdout
    data = json.loads(path.read_text())
    assert data["ok"] and {c["dtype"] for c in data["checks"]} == {"float32"}


def test_pytest_env_vars_and_explicit_plugin_without_autoload(tmp_path):
    res = _pytest(
        [
            "-p",
            "refdiff.conformance.plugin",
            "--pyargs",
            "refdiff.conformance",
            "-k",
            "schedules.linear",
            "-q",
        ],
        cwd=tmp_path,
        env_extra={
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "REFDIFF_BACKEND": "array_api_strict",
            "REFDIFF_DTYPES": "float64",
            "REFDIFF_MAX_EXAMPLES": "1",
        },
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "array_api_strict  schedules.linear" in res.stdout


def test_plugin_is_inert_in_other_projects(tmp_path):
    (tmp_path / "test_other.py").write_text("def test_x():\n    assert 1\n")
    res = _pytest(["test_other.py"], cwd=tmp_path)
    assert res.returncode == 0
    assert "refdiff backend" not in res.stdout and "refdiff conformance" not in res.stdout
    assert "conformance profile" not in res.stdout


def test_pytest_unknown_backend_is_a_usage_error(tmp_path):
    res = _pytest(
        ["--pyargs", "refdiff.conformance", "--refdiff-backend", "nope", "-k", "schedules.linear"],
        cwd=tmp_path,
    )
    assert res.returncode == 4, res.stdout + res.stderr
    assert "refdiff backend 'nope': backend='nope' is not a known backend" in res.stderr


def test_other_projects_can_use_the_fixtures(tmp_path):
    (tmp_path / "test_mine.py").write_text(
        "import numpy as np\n"
        "from refdiff.backends import quantise\n"
        "def test_roundtrip(refdiff_backend, refdiff_dtype):\n"
        "    h = quantise(np.linspace(0, 1, 5), refdiff_dtype)\n"
        "    x = refdiff_backend.asarray(h, refdiff_dtype)\n"
        "    assert (refdiff_backend.to_numpy(x) == h).all()\n"
    )
    res = _pytest(
        ["test_mine.py", "--refdiff-backend", "numpy,array_api_strict", "-q"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout


def test_report_ratio_json_handles_infinity():
    from refdiff.conformance.report import CheckResult

    r = CheckResult("x", "numpy", "float64", "failed", ratio=np.inf)
    assert r.to_dict()["ratio"] == "inf" and CheckResult.from_dict(r.to_dict()).ratio == np.inf


def test_progress_reaches_the_callers_stdout(capsys):
    rep = refdiff.verify(
        extra_args=["-k", "schedules.linear"],
        max_examples=1,
        progress=lambda r, done, total: print(f"{done}/{total} {r.check}"),
    )
    out = capsys.readouterr().out
    assert rep.ok and "1/2 schedules.linear" in out and "2/2 schedules.linear" in out
    assert "refdiff conformance" not in out and "refdiff conformance" in rep.log


def test_verify_function_rejects_bad_max_examples_and_reports_empty_runs(tmp_path):
    from refdiff._errors import RefdiffValueError

    with pytest.raises(
        RefdiffValueError, match=r"max_examples=0 is invalid: expected an integer >= 1"
    ):
        refdiff.verify(max_examples=0)
    with pytest.raises(RefdiffValueError, match=r"json_path=.* is invalid: expected a file path"):
        refdiff.verify(json_path=tmp_path)
    rep = refdiff.verify(dtypes="float16", extra_args=["-k", "schedules.linear"])
    assert not rep.ok and rep.counts["skipped"] == 1
    assert rep.errors[0].startswith("nothing was checked on backend 'numpy'")
    rep = refdiff.verify(extra_args=["-k", "no_such_check_anywhere"])
    assert not rep.ok
