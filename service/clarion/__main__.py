"""``python -m clarion``: the ``clarion`` command (cli.py)."""

import sys

from .cli import main

sys.exit(main())
