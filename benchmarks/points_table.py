"""The table of docs/results/points.md from the run folders of points_pretrain/eval.sh.

python benchmarks/points_table.py runs/points
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METHODS = {"point_mae": "Point-MAE", "point_cmae": "Point-CMAE"}


def cell(values: list[float]) -> str:
    """mean ± half the range, in %, and the values per seed."""
    pct = [100 * v for v in values]
    spread = (max(pct) - min(pct)) / 2
    return f"{statistics.mean(pct):.1f} ± {spread:.1f} ({', '.join(f'{v:.1f}' for v in pct)})"


def main(root: Path) -> None:
    rows = []
    for name, title in METHODS.items():
        runs = sorted(root.glob(f"{name}_s*"))
        for init, label in (("", title), ("_random_init", f"{title} architecture, untrained")):
            knn = [
                json.loads((r / "checkpoint" / f"eval_knn{init}.json").read_text())["top1"]
                for r in runs
            ]
            lin = [
                json.loads((r / "checkpoint" / f"eval_linear{init}.json").read_text())["top1"]
                for r in runs
            ]
            rows.append((label, cell(knn), cell(lin), len(runs)))
    raw = json.loads((root / "raw_baseline.json").read_text())
    lin = list(raw["linear_top1"].values())
    rows.append(("raw: distance histograms (no encoder)", cell([raw["knn_top1"]]), cell(lin), "-"))
    print("| features | kNN top-1 % | linear probe top-1 % | pretraining seeds |")
    print("|---|---|---|---|")
    for label, knn, linear, seeds in rows:
        print(f"| {label} | {knn} | {linear} | {seeds} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/points"))
