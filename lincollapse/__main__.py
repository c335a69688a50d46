"""``python -m lincollapse`` (and the ``lincollapse`` script): see :mod:`lincollapse.cli`.

The thread policy (:mod:`lincollapse.threads`) is applied first: its variables must be set
before numpy and torch load their libraries.
"""

from __future__ import annotations

import sys

from lincollapse import threads

threads.apply()

from lincollapse.cli import main  # noqa: E402 - after the thread policy, on purpose

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
