"""``python -m refdiff ...`` is the ``refdiff`` command (see :mod:`refdiff.cli`)."""

import sys

from .cli import main

sys.exit(main())
