"""What a long-running command tells the person watching: console log lines and progress bars.

At the bottom of the layers (it imports nothing of mimkit), so data readers, training and
evaluation all pace their bars the same way.
"""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (it may be replaced)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_console_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger("mimkit")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: lively on a terminal, sparse in a log file."""
    return 0.5 if sys.stderr.isatty() else 15.0
