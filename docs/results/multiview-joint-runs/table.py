"""The tables of the joint-sensor section of docs/results/multiview.md, from the probe and
reconstruction JSONs beside this file (copied from multiview-joint.sh's res/), or in the
folder given (noise25/: the same run on tiles with pixel noise 25 instead of 100).

    python docs/results/multiview-joint-runs/table.py [FOLDER]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
SIZES = (32, 64, 128)


def probe(run: str, size: int, seed: int) -> dict | None:
    name = f"probe_{run}_s{seed}.json" if size == 32 else f"probe_{run}_{size}_s{seed}.json"
    path = HERE / name
    return json.loads(path.read_text())["subsets"] if path.is_file() else None


def cell(values: list[float]) -> str:
    """mean (min-max) in percent over the pretraining seeds."""
    if not values:
        return ""
    v = [100 * x for x in values]
    return f"{statistics.mean(v):.1f} ({min(v):.1f}-{max(v):.1f})"


def scores(run: str, subset: str, kind: str, size: int) -> tuple[list[float], list[float]]:
    """(kNN per seed, linear per seed: the mean of the probe seeds) of `kind` features."""
    knn, lin = [], []
    for seed in (0, 1):
        found = probe(run, size, seed)
        if found and subset in found and kind in found[subset]:
            knn.append(found[subset][kind]["knn"])
            lin.append(statistics.mean(found[subset][kind]["linear"]))
    return knn, lin


def main() -> None:
    rows = [
        ("CROMA (ALiBi), optical encoder", "croma", "optical"),
        ("CROMA (ALiBi), radar encoder", "croma", "radar"),
        ("CROMA (ALiBi), fusion", "croma", "optical+radar"),
        ("CROMA (sin-cos), optical encoder", "croma_sincos", "optical"),
        ("CROMA (sin-cos), radar encoder", "croma_sincos", "radar"),
        ("CROMA (sin-cos), fusion", "croma_sincos", "optical+radar"),
        ("MAE on all six bands", "mae", "image"),
    ]
    head = " | ".join(f"{s}x{s} kNN | {s}x{s} linear" for s in SIZES)
    print(f"| features | {head} |")
    print("|---" * (1 + 2 * len(SIZES)) + "|")
    for kind, prefix in (("pretrained", ""), ("untrained", "untrained ")):
        for label, run, subset in rows:
            cells = []
            for size in SIZES:
                knn, lin = scores(run, subset, kind, size)
                cells += [cell(knn), cell(lin)]
            print(f"| {prefix}{label} | " + " | ".join(cells) + " |")
    for label, run, subset in (
        ("raw pixels, optical", "croma", "optical"),
        ("raw pixels, radar", "croma", "radar"),
        ("raw pixels, optical + radar", "croma", "optical+radar"),
    ):
        found = probe(run, 32, 0)
        raw = found[subset]["raw_pixels"] if found else None
        if raw:
            lin = 100 * statistics.mean(raw["linear"])
            print(f"| {label} (no seed) | {100 * raw['knn']:.1f} | {lin:.1f} |" + " |" * 4)
    print()
    print_reconstruction()


def print_reconstruction() -> None:
    """The masked-reconstruction losses, seeds 0 / 1, at each size."""
    print("| model | " + " | ".join(f"{s}x{s}" for s in SIZES) + " |")
    print("|---" * (1 + len(SIZES)) + "|")
    for label, run in (("CROMA, ALiBi", "croma"), ("CROMA, sin-cos table", "croma_sincos")):
        for kind in ("pretrained", "untrained"):
            cells = []
            for size in SIZES:
                values = []
                for seed in (0, 1):
                    path = HERE / f"recon_{run}_{size}_s{seed}.json"
                    if path.is_file():
                        values.append(json.loads(path.read_text())["reconstruction_loss"][kind])
                cells.append(" / ".join(f"{v:.3f}" for v in values))
            print(f"| {label}, {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
