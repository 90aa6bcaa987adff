"""Run-folder logging: one JSON object per line in metrics.jsonl, and pictures as PNG files.

Each line and picture is also handed to the run's experiment trackers (`train.loggers`,
`mimkit.train.trackers`), when it has any.

Console logging and progress-bar pacing live in `mimkit.progress` (layer 0, so that data
readers can use them); they are re-exported here for the modules that still import them from
`mimkit.train.logging`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mimkit.progress import progress_interval, setup_console_logging

__all__ = ["MetricsWriter", "progress_interval", "setup_console_logging"]


class MetricsWriter:
    """Appends JSON lines; each record gets a wall-clock timestamp. `sinks` (a
    `mimkit.train.trackers.Trackers`) receives every record and picture too."""

    def __init__(self, path: str | Path, sinks: Any = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sinks = sinks

    def write(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.sinks is not None:
            self.sinks.record(record)

    def picture(self, name: str, step: int, image: Image.Image) -> Path:
        """`image` as `RUN/<name>/step_<step>.png` (pictures over training), and to the sinks."""
        path = self.path.parent / name / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        if self.sinks is not None:
            self.sinks.image(step, name, np.asarray(image.convert("RGB")))
        return path

    def close(self) -> None:
        if self.sinks is not None:
            self.sinks.close()
