"""``python -m pywork``: the ``pywork`` command."""

from __future__ import annotations

import sys

from pywork.cli import main

if __name__ == "__main__":
    sys.exit(main())
