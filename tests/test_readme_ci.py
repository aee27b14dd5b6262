"""The README's test command is exactly what .ci/run runs (CI must test what the README promises)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b and "pip install" in b).strip()
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_cmd in ci


def test_readme_main_job_is_refdiff_verify():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert blocks[0].strip().endswith("pip install -e . && refdiff verify")


def _training_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Train, sample, bits/dim", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)\n```", section, flags=re.S).group(1)
    return [
        line.split("#")[0].strip() for line in block.splitlines() if line.startswith("refdiff ")
    ]


def test_readme_training_commands_are_valid_before_running():
    """The quick start's commands parse, and the training options pass every check a run makes
    before its first step (so a newcomer's first command cannot fail on an option)."""
    import shlex

    from refdiff.cli import build_parser
    from refdiff.train.cli import _train_config

    cmds = _training_commands()
    assert [c.split()[1] for c in cmds] == ["train", "sample", "bpd"]
    parser = build_parser()
    args = [parser.parse_args(shlex.split(c)[1:]) for c in cmds]
    cfg, _ = _train_config(args[0])
    cfg.validate().check_run()
    # a width-32 small UNet on gray digits, with the EMA warm-up the samples depend on
    assert cfg.preset == "small" and cfg.unet == {"in_channels": 1, "model_channels": 32}
    assert cfg.ema_warmup and cfg.steps <= 3000
    assert args[1].func.__name__ == "run_sample" and args[1].ckpt == args[0].out
    assert args[2].func.__name__ == "run_bpd" and args[2].n * cfg.T <= 32 * 1000
