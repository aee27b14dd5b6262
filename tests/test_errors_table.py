"""Every row of docs/ERRORS.md still gets its message: the bad input is run as written and the
message cell must appear in what it raises (library, ``refdiff.verify``) or prints (CLI).

A row's input is a Python expression (library and runner rows) or a ``refdiff ...`` command line
(run in-process through ``refdiff.cli.main``). Upper-case placeholders name files this module
prepares: RUN (a finished tiny training run), NAN_CKPT (its checkpoint with a NaN weight),
FLIPPED_CKPT (one flipped bit), NOSTATE_CKPT (no run state in the metadata), FILE (a text file),
DIR (an empty folder), MISSING (a path that does not exist), NEW (a fresh run folder).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

TABLE = Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md"
PLACEHOLDERS = ("NOSTATE_CKPT", "FLIPPED_CKPT", "NAN_CKPT", "MISSING", "FILE", "DIR", "RUN", "NEW")


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def _code(cell: str) -> str:
    m = re.fullmatch(r"`(.*)`(?: …)?", cell)
    assert m, f"expected a code span, got {cell!r}"
    return m.group(1)


def parse_table(path: Path = TABLE) -> list[tuple[int, str, str, str]]:
    """(number, where, input, message) of every numbered row."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not re.match(r"\|\s*\d+\s*\|", line):
            continue
        num, where, given, message = _cells(line)
        rows.append((int(num), where, _code(given), _code(message)))
    return rows


ROWS = parse_table()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Placeholder name -> path (the files and runs the rows refer to)."""
    from refdiff.train.checkpoint import load_checkpoint, save_checkpoint
    from refdiff.train.driver import TrainConfig, train

    root = tmp_path_factory.mktemp("errors")
    run = root / "run"
    train(TrainConfig(preset="tiny", steps=1, batch=2, T=10, n_samples=0), run, progress=False)
    ck_path = run / "checkpoint.safetensors"
    ck = load_checkpoint(ck_path)
    nan_params = {k: v.copy() for k, v in ck.params.items()}
    first = sorted(nan_params)[0]
    nan_params[first].reshape(-1)[0] = np.nan
    common = dict(optimizer=ck.optimizer, rng=ck.rng, step=ck.step, config=ck.config)
    save_checkpoint(
        root / "nan.safetensors", params=nan_params, ema=nan_params, state=ck.state, **common
    )
    save_checkpoint(root / "nostate.safetensors", params=ck.params, ema=ck.ema, state={}, **common)
    flipped = root / "flipped.safetensors"
    shutil.copy(ck_path, flipped)
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0x10  # one bit in the last tensor's bytes
    flipped.write_bytes(bytes(data))
    (root / "file.txt").write_text("not a checkpoint\n")
    (root / "empty").mkdir()
    return {
        "RUN": str(run),
        "NAN_CKPT": str(root / "nan.safetensors"),
        "NOSTATE_CKPT": str(root / "nostate.safetensors"),
        "FLIPPED_CKPT": str(flipped),
        "FILE": str(root / "file.txt"),
        "DIR": str(root / "empty"),
        "MISSING": str(root / "missing"),
        "NEW": str(root / "new"),
    }


def substitute(text: str, places: dict[str, str]) -> str:
    """Replace each placeholder word by its path."""
    for name in PLACEHOLDERS:
        text = re.sub(rf"\b{name}\b", lambda _m, n=name: places[n], text)
    return text


def _namespace(places: dict[str, str]) -> dict:
    import refdiff
    from refdiff import diffusion, edm, kl, losses, samplers, schedules, sde
    from refdiff.train.checkpoint import load_checkpoint
    from refdiff.train.driver import TrainConfig, train

    s = schedules.linear(10)
    x = np.zeros((2, 1, 4, 4))
    ns = dict(
        np=np,
        refdiff=refdiff,
        schedules=schedules,
        diffusion=diffusion,
        kl=kl,
        losses=losses,
        edm=edm,
        sde=sde,
        samplers=samplers,
        TrainConfig=TrainConfig,
        train=train,
        load_checkpoint=load_checkpoint,
        s=s,
        x=x,
        model=lambda x_t, t: np.zeros_like(x_t),
        nan_model=lambda x_t, t: np.full_like(x_t, np.nan),
    )
    ns.update(places)
    return ns


def run_row(given: str, places: dict[str, str]) -> tuple[bool, str]:
    """(failed as it should, the text it raised or printed)."""
    if given.startswith("refdiff "):
        from refdiff.cli import main

        argv = [substitute(tok, places) for tok in shlex.split(given)[1:]]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse usage errors
                code = exc.code
        return code not in (0, None), out.getvalue() + err.getvalue()
    try:
        eval(given, _namespace(places))  # noqa: S307 - the table's own inputs
    except Exception as exc:  # noqa: BLE001 - any refdiff error
        return True, str(exc)
    return False, "(no exception)"


def test_the_table_has_at_least_80_rows_numbered_in_order():
    assert len(ROWS) >= 80
    assert [r[0] for r in ROWS] == list(range(1, len(ROWS) + 1))
    assert {r[1] for r in ROWS} == {"library", "CLI", "runner"}
    assert len({r[2] for r in ROWS}) == len(ROWS), "duplicate inputs"


@pytest.mark.parametrize("num, where, given, message", ROWS, ids=[f"row{r[0]}" for r in ROWS])
def test_row_gets_its_message(num, where, given, message, places):
    failed, text = run_row(given, places)
    assert failed, f"row {num}: {given!r} was accepted"
    want = substitute(message, places)
    assert want in text, f"row {num}: {given!r}\nwanted: {want}\ngot:    {text}"
