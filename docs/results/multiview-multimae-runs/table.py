"""The table of multiview.md's "30 and 300 epochs" MultiMAE section, from the probe JSONs in
epochs30/ and epochs300/ beside this file (copied from multiview-multimae-long.sh's res/).

    python docs/results/multiview-multimae-runs/table.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
ROWS = [  # (label, run, subset, kind)
    ("MultiMAE, image only", "multimae", "image", "pretrained"),
    ("MultiMAE, depth only", "multimae", "depth", "pretrained"),
    ("MultiMAE, image + depth + seg", "multimae", "image+depth+seg", "pretrained"),
    ("MAE on the image alone, same budget", "mae_image", "image", "pretrained"),
    ("untrained (floor), image only", "multimae", "image", "untrained"),
    ("untrained MultiMAE, image + depth + seg", "multimae", "image+depth+seg", "untrained"),
    ("raw pixels, image (no seed)", "multimae", "image", "raw_pixels"),
    ("raw pixels, image + depth + seg", "multimae", "image+depth+seg", "raw_pixels"),
]


def cell(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def scores(epochs: int, run: str, subset: str, kind: str) -> tuple[list[float], list[float]]:
    knn, lin = [], []
    for seed in (0, 1):
        path = HERE / f"epochs{epochs}" / f"probe_{run}_s{seed}.json"
        if not path.is_file():
            continue
        found = json.loads(path.read_text())["subsets"].get(subset, {}).get(kind)
        if found:
            knn.append(100 * found["knn"])
            lin.append(100 * statistics.mean(found["linear"]))
    return knn, lin


def main() -> None:
    print("| features | 30 ep kNN | 30 ep linear | 300 ep kNN | 300 ep linear |")
    print("| --- | --- | --- | --- | --- |")
    for label, run, subset, kind in ROWS:
        cells = []
        for epochs in (30, 300):
            knn, lin = scores(epochs, run, subset, kind)
            cells += [cell(knn), cell(lin)]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
