"""``refdiff verify`` / ``refdiff backends`` / ``python -m refdiff``: output, JSON and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refdiff.backends import register_backend, unregister_backend
from refdiff.cli import main

from .test_verify import broken_backend


def test_verify_prints_progress_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "out.json"
    code = main(
        ["verify", "-k", "schedules.linear or q_sample", "--max-examples", "2", "--json", str(path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "refdiff 0.1.0 verify: backends numpy; profile refdiff-ci" in out
    assert "backend numpy: array_api_compat.numpy" in out
    assert "[1/4] numpy " in out and "[4/4] numpy " in out
    assert "numpy    diffusion.q_sample" in out and "OK: 4 passed, 0 failed" in out
    assert json.loads(path.read_text())["ok"] is True


def test_verify_unknown_backend_exits_2(capsys):
    assert main(["verify", "--backend", "nope"]) == 2
    err = capsys.readouterr().err
    assert "refdiff verify: error: backend='nope' is not a known backend; available: 'numpy'" in err


def test_verify_failure_exits_1_with_the_mismatch(capsys):
    register_backend("cli_broken", broken_backend("cli_broken"))
    try:
        code = main(
            [
                "verify",
                "--backend",
                "cli_broken",
                "-k",
                "diffusion.q_sample",
                "--dtypes",
                "float64",
                "--max-examples",
                "2",
                "-q",
                "--no-shrink",
            ]
        )
    finally:
        unregister_backend("cli_broken")
    out = capsys.readouterr().out
    assert code == 1
    assert "--- cli_broken diffusion.q_sample[float64] FAILED" in out
    assert "mismatches the oracle" in out and "FAILED: 0 passed, 1 failed" in out
    assert "[1/1]" not in out  # -q: no progress lines


def test_backends_lists_every_backend(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "array_api_strict", "torch", "cupy"):
        assert name in out
    assert "installed" in out


def test_bare_refdiff_prints_help(capsys):
    assert main([]) == 2
    assert "verify" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["-m", "refdiff", "--version"]])
def test_python_m_refdiff(argv):
    res = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "refdiff 0.1.0"


def test_verify_all_checks_every_installed_backend():
    import os

    env = {**os.environ, "JAX_ENABLE_X64": "1"}  # the jax backend checks float64 in 64-bit mode
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "refdiff",
            "verify",
            "--all",
            "-k",
            "schedules.linear",
            "--max-examples",
            "1",
            "--dtypes",
            "float64",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    from refdiff.backends import list_backends

    for info in list_backends():
        if info.available and info.name != "cupy":
            assert f"{info.name} schedules.linear[float64] ok" in res.stdout, res.stdout
    assert "OK:" in res.stdout


def test_verify_that_skips_everything_fails(tmp_path, capsys):
    path = tmp_path / "r.json"
    code = main(
        ["verify", "--dtypes", "float16", "-k", "schedules.linear", "-q", "--json", str(path)]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "ERROR: nothing was checked on backend 'numpy': all 1 checks were skipped" in out
    assert "FAILED: 0 passed" in out
    assert json.loads(path.read_text())["ok"] is False


def test_verify_that_skips_one_requested_dtype_fails(capsys):
    code = main(["verify", "--dtypes", "float64,float16", "-k", "schedules.linear", "-q"])
    out = capsys.readouterr().out
    assert code == 1
    assert "ERROR: nothing was checked at dtype 'float16': all 1 checks were skipped" in out


@pytest.mark.parametrize("n", ["0", "-3"])
def test_verify_rejects_non_positive_max_examples(n, capsys):
    assert main(["verify", "--max-examples", n, "-k", "schedules.linear"]) == 2
    err = capsys.readouterr().err
    assert f"refdiff verify: error: --max-examples={n} is invalid: expected an integer >= 1" in err


@pytest.mark.parametrize(
    "where, message",
    [
        ("missing/r.json", "is invalid: expected a file in an existing folder"),
        (".", "is invalid: expected a file path; this is a folder"),
    ],
)
def test_verify_json_path_checked_before_the_run(tmp_path, where, message, capsys):
    assert main(["verify", "--json", str(tmp_path / where), "-k", "schedules.linear"]) == 2
    captured = capsys.readouterr()
    assert "refdiff verify: error: --json=" in captured.err and message in captured.err
    assert "[1/" not in captured.out  # nothing ran
