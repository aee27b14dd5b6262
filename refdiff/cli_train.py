"""Deprecated alias of :mod:`refdiff.train.cli` (the training CLI), kept for one release.

``python -m refdiff.cli_train train ...`` still runs ``refdiff train``; use
``python -m refdiff.train.cli`` (or the ``refdiff`` command) instead.
"""

from __future__ import annotations

import sys

from .train.cli import build_parser, main, register, run_bpd, run_sample, run_train

__all__ = ["register", "main", "run_train", "run_sample", "run_bpd", "build_parser"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
