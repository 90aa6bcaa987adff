"""Run-folder logging: one JSON object per line in metrics.jsonl.

Console logging and progress-bar pacing live in `mimkit.progress` (layer 0, so that data
readers can use them); they are re-exported here for the modules that still import them from
`mimkit.train.logging`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mimkit.progress import progress_interval, setup_console_logging

__all__ = ["MetricsWriter", "progress_interval", "setup_console_logging"]


class MetricsWriter:
    """Appends JSON lines; each record gets a wall-clock timestamp."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
