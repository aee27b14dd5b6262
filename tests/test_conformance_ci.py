"""CI runs the conformance suite on numpy, array_api_strict and torch (CPU), float64 and float32.

Each backend runs every check of the suite with the derandomized refdiff-ci profile at
``EXAMPLES`` examples per check (``refdiff verify`` uses the profile's 12); the expected failures
of refdiff's own open bugs are listed, with reasons, in ``conformance-xfails.txt`` (strict: a fixed
bug makes CI fail until its line is removed). The usability of a failure is checked here too: the
reproduce command repeats the ``--backend`` argument as given and reruns the failure when pasted,
and an expected-failure entry that matches nothing is a warning in the normal output.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import refdiff

EXAMPLES = 4
XFAILS = str(Path(__file__).with_name("conformance-xfails.txt"))


@pytest.mark.parametrize(
    "backend",
    [
        "numpy",
        "array_api_strict",
        pytest.param(
            "torch",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("torch") is None, reason="torch is not installed"
            ),
        ),
    ],
)
def test_conformance_suite_passes(backend):
    rep = refdiff.verify(
        backend=backend, dtypes="float64,float32", max_examples=EXAMPLES, xfails=XFAILS
    )
    assert rep.ok, rep.format()
    assert rep.counts["passed"] > 250 and not rep.counts["skipped"], rep.counts
    assert {r.dtype for r in rep.checks} == {"float64", "float32"}
    assert all(r.ratio is None or r.ratio <= 1.0 for r in rep.checks if r.outcome == "passed")
    checks = {r.check for r in rep.checks}
    assert {"rng.normal", "rng.uniform", "edges.exp", "edges.logaddexp"} <= checks, checks
    assert not rep.warnings, rep.warnings


_BROKEN_MODULE = """
from refdiff.backends.numpy import NumpyBackend


def _q_sample_without_noise(schedule, x0, t, *, noise):
    from refdiff.diffusion import q_sample
    return q_sample(schedule, x0, t, noise=noise * 0.0)


def broken(device=None):
    return NumpyBackend(device=device, name="internal_name",
                        overrides={"diffusion.q_sample": _q_sample_without_noise})
"""


def _refdiff(args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=f"{cwd}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return subprocess.run(
        args, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _reproduce_line(text: str) -> str:
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("reproduce: "))
    return line.strip().removeprefix("reproduce: ").split("   (or:")[0]


def test_the_reproduce_command_is_what_was_run_and_reruns_the_failure(tmp_path):
    (tmp_path / "planted_mod.py").write_text(textwrap.dedent(_BROKEN_MODULE))
    exe = shlex.quote(sys.executable)
    first = _refdiff(
        f"{exe} -m refdiff verify --backend planted_mod:broken --dtypes float64 "
        "--max-examples 3 --no-shrink -k diffusion.q_sample",
        tmp_path,
    )
    assert first.returncode == 1, first.stdout + first.stderr
    cmd = _reproduce_line(first.stdout)
    assert "--backend planted_mod:broken" in cmd and "internal_name" not in cmd, cmd
    assert "--max-examples 3" in cmd and "-k diffusion.q_sample" in cmd, cmd
    assert cmd.startswith("refdiff verify "), cmd
    again = _refdiff(cmd, tmp_path)  # pasted as printed
    assert again.returncode == 1, again.stdout + again.stderr
    assert "diffusion.q_sample[float64] output 'out'" in again.stdout, again.stdout
    assert _reproduce_line(again.stdout) == cmd


def test_the_reproduce_command_of_a_device_names_the_argument_not_the_object():
    from refdiff.conformance.check import Context

    c = Context(
        "edges.exp",
        "array_api_strict",
        "array_api_strict.Device('device1')",
        "float32",
        spec="array_api_strict",
    )
    assert c.reproducer().startswith(
        "refdiff verify --backend array_api_strict --dtypes float32 --profile refdiff-ci "
        "-k edges.exp"
    )
    assert "Device(" not in c.reproducer()
    c = Context("samplers.ddim", "torch", "cuda:1", "float64", spec="torch@cuda:1")
    assert "--backend torch@cuda:1 " in c.reproducer()
    c = Context("samplers.ddim", "torch", "cuda:1", "float64", spec="torch", device_arg="cuda:1")
    assert "--backend torch --device cuda:1 " in c.reproducer()
    assert "--refdiff-backend torch --refdiff-device cuda:1 " in c.reproducer()


def test_an_unmatched_xfail_entry_is_a_warning_in_the_normal_output(tmp_path):
    xf = tmp_path / "xfails.txt"
    xf.write_text("diffusion.q_sampel[float32]   # a typo\n")
    rep = refdiff.verify(
        backend="numpy",
        dtypes="float64",
        max_examples=1,
        xfails=str(xf),
        extra_args=["-k", "diffusion.q_sample"],
    )
    assert rep.ok, rep.format()
    assert any("diffusion.q_sampel[float32]" in w for w in rep.warnings), rep.warnings
    assert "WARNING: 1 refdiff skip/xfail entries match no collected check" in rep.format()
    assert rep.to_dict()["warnings"] == rep.warnings
