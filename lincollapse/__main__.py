"""``python -m lincollapse`` (and the ``lincollapse`` script): see :mod:`lincollapse.cli`."""

from __future__ import annotations

import sys

from lincollapse.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
