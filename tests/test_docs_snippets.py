"""The documentation's Python examples run against the current API, and its links name real objects.

Every ```python block of the pages below runs, in page order, in one namespace per page (a later
block may use names an earlier one defined). A block that cannot run here (it needs a GPU, a
dataset or a user's own network) opts out with the HTML comment ``<!-- snippet: not run (why) -->``
on the line before its fence; the comment is invisible in the rendered page.

The MyST cross-references ({py:func}`refdiff...`) of the narrative pages must name an object that
exists and that the generated reference documents (a module's ``__all__`` member), so a renamed or
removed function breaks this test instead of leaving a dead link.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Pages whose Python blocks are examples that must run (the UNet page trains no network but
#: runs a few forwards and the torch twin's comparison: seconds, so it is marked slow).
RUNNABLE_PAGES = [
    "README.md",
    "docs/api/core.md",
    "docs/api/samplers_discrete.md",
    "docs/api/sde.md",
    pytest.param("docs/api/unet.md", marks=pytest.mark.slow),
]
#: Narrative pages whose cross-references must resolve.
LINKED_PAGES = [
    "docs/index.md",
    "docs/API.md",
    "docs/api/core.md",
    "docs/api/samplers_discrete.md",
    "docs/api/sde.md",
    "docs/api/unet.md",
]

NOT_RUN = "<!-- snippet: not run"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_ROLE = re.compile(r"\{py:(func|class|meth|data|mod|attr|obj|exc)\}`([^`]+)`")
#: Reference pages conf.py leaves out (their modules import a GPU framework).
_UNDOCUMENTED = (
    "refdiff.backends.torch",
    "refdiff.backends.cupy",
    "refdiff.backends.jax",
    "refdiff.backends.dask",
)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, runs) of each ```python block; runs is False after a not-run comment."""
    blocks = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append((line, m.group(1), not before.startswith(NOT_RUN)))
    return blocks


def role_targets(text: str) -> list[tuple[str, str]]:
    """(role, dotted target) of each MyST py-domain role, with ``~`` and ``title <target>`` resolved."""
    out = []
    for role, body in _ROLE.findall(text):
        m = re.search(r"<([^>]+)>\s*$", body)
        target = (m.group(1) if m else body).strip().lstrip("~")
        out.append((role, target))
    return out


def resolve_documented(target: str):
    """The object ``target`` names, checking that the generated reference documents it."""
    parts = target.split(".")
    assert parts[0] == "refdiff", f"{target}: cross-references name refdiff objects"
    assert not any(p.startswith("_") for p in parts), f"{target}: private names are not documented"
    module, k = None, len(parts)
    while k > 0:
        try:
            module = importlib.import_module(".".join(parts[:k]))
            break
        except ModuleNotFoundError:
            k -= 1
    assert module is not None, f"{target}: no importable module"
    assert not module.__name__.startswith(_UNDOCUMENTED), (
        f"{target}: {module.__name__} has no generated reference page (it imports a GPU framework)"
    )
    rest = parts[k:]
    if not rest:
        return module
    assert rest[0] in getattr(module, "__all__", ()), (
        f"{target}: {rest[0]} is not in {module.__name__}.__all__, so the reference does not document it"
    )
    obj = module
    for name in rest:
        assert hasattr(obj, name), f"{target}: {name} does not exist"
        obj = getattr(obj, name)
    return obj


def test_block_extraction_honours_the_not_run_comment():
    text = (
        "```python\na = 1\n```\n\n<!-- snippet: not run (needs a GPU) -->\n```python\nb = 2\n```\n"
        "```bash\nc\n```\n"
    )
    assert python_blocks(text) == [(1, "a = 1\n", True), (6, "b = 2\n", False)]
    assert role_targets("{py:func}`~refdiff.a.b` and {py:meth}`x <refdiff.c.D.e>`") == [
        ("func", "refdiff.a.b"),
        ("meth", "refdiff.c.D.e"),
    ]


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / page).read_text(encoding="utf-8"))
    runnable = [(line, code) for line, code, runs in blocks if runs]
    assert runnable, f"{page} has no runnable python block"
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    namespace: dict = {"__name__": f"snippets_{Path(page).stem}"}
    without_torch = []
    for line, code in runnable:
        if re.search(r"^\s*import torch\b|^\s*from torch\b", code, re.M) and not _has_torch():
            without_torch.append(line)  # the blocks after it do not use its names
            continue
        exec(compile(code, f"{page}:{line}", "exec"), namespace)
    if without_torch:
        pytest.skip(f"{page}: the blocks at lines {without_torch} need PyTorch; the others ran")


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def test_readme_runs_most_of_its_python():
    """Opting out is the exception: the README's oracle, backend and sampler examples all run."""
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert sum(runs for _, _, runs in blocks) >= 3
    assert sum(not runs for _, _, runs in blocks) <= 1


@pytest.mark.parametrize("page", LINKED_PAGES)
def test_cross_references_name_documented_objects(page):
    targets = role_targets((ROOT / page).read_text(encoding="utf-8"))
    for role, target in targets:
        obj = resolve_documented(target)
        if role == "mod":
            assert type(obj).__name__ == "module", f"{target}: {{py:mod}} of a non-module"
        elif role in ("func", "meth"):
            assert callable(obj), f"{target}: {{py:{role}}} of a non-callable"
        elif role in ("class", "exc"):
            assert isinstance(obj, type), f"{target}: {{py:{role}}} of a non-class"


def test_resolver_rejects_missing_and_undocumented_names():
    with pytest.raises(AssertionError, match="does not exist|not in"):
        resolve_documented("refdiff.schedules.no_such_schedule")
    with pytest.raises(AssertionError, match="private"):
        resolve_documented("refdiff._typing.Array")
    with pytest.raises(AssertionError, match="not in"):
        resolve_documented("refdiff.samplers.discrete.math")  # imported, not documented
    assert resolve_documented("refdiff.schedules.Schedule.to") is not None
