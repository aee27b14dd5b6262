"""Sphinx configuration: the API reference is generated from the docstrings (numpydoc); the
hand-written Markdown pages beside this file are its narrative parts (MyST)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

project = "refdiff"
author = "refdiff developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "numpydoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "reference/_template.rst"]
root_doc = "index"
html_theme = "alabaster"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
myst_heading_anchors = 3
# "ref.python": a class re-exported by its package (refdiff.unet.UNetConfig and
# refdiff.unet.config.UNetConfig) is one object under two documented names.
suppress_warnings = ["myst.header", "myst.xref_missing", "misc.highlighting_failure", "ref.python"]
nitpicky = False

#: Modules whose public API (``__all__``) is documented, one page each, in reading order.
_TOP = list(importlib.import_module("refdiff")._SUBMODULES)


def _modules() -> list[str]:
    out = []
    for name in _TOP:
        mod = importlib.import_module(f"refdiff.{name}")
        out.append(mod.__name__)
        for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
            if not info.name.startswith("_") and not info.name.startswith("test_"):
                out.append(f"{mod.__name__}.{info.name}")
    return out


def _write_reference() -> None:
    """One page per module under reference/ (regenerated on every build, not kept in git)."""
    ref = Path(__file__).parent / "reference"
    ref.mkdir(exist_ok=True)
    names = [n for n in _modules() if not _skip(n)]
    for name in names:
        title = f"``{name}``"
        (ref / f"{name}.rst").write_text(f"{title}\n{'=' * len(title)}\n\n.. automodule:: {name}\n")
    (ref / "refdiff.verify.rst").write_text(
        "``refdiff.verify``\n==================\n\n.. autofunction:: refdiff.verify\n\n"
        ".. autoclass:: refdiff.VerifyReport\n   :members:\n"
    )
    (ref / "refdiff._typing.rst").write_text(
        "Types (``refdiff._typing``)\n===========================\n\n.. automodule:: refdiff._typing\n"
        "   :members:\n   :undoc-members:\n"
    )
    names = ["refdiff.verify", "refdiff._typing", *names]
    index = [
        "API reference",
        "=============",
        "",
        "Generated from the docstrings.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ] + [f"   {n}" for n in names]
    (ref / "index.rst").write_text("\n".join(index) + "\n")


def _skip(name: str) -> bool:
    """Modules that need a GPU framework to import are documented in their narrative pages."""
    return name.split(".")[2:3] in (["torch"], ["cupy"], ["jax"], ["dask"]) and name.startswith(
        "refdiff.backends"
    )


_write_reference()


def _plain_text_math(app, what, name, obj, options, lines) -> None:
    """Docstrings write absolute values and norms as |x| (plain-text math): keep them literal in RST."""
    for k, line in enumerate(lines):
        stripped = line.strip()
        table_row = stripped.startswith("|") and stripped.endswith("|") and stripped.count("|") >= 3
        if "|" in line and not table_row and not stripped.startswith("+"):
            parts = line.split("``")
            parts[::2] = [p.replace("|", r"\|") for p in parts[::2]]
            lines[k] = "``".join(parts)


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _plain_text_math)
