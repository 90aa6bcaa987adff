"""The tables of multiview.md's CROMA sections, from the probe and reconstruction JSONs of
multiview-joint.sh (copied beside this file; noise25/: the same run on tiles with pixel noise
25 instead of 100) or of multiview-croma-modal.sh (`--modal`: fmnist-modal's image and depth as
the two sensors, copied to ../multiview-croma-modal-runs/).

    python docs/results/multiview-joint-runs/table.py [FOLDER]
    python docs/results/multiview-joint-runs/table.py --modal [FOLDER]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

MODAL = "--modal" in sys.argv
ARGS = [a for a in sys.argv[1:] if a != "--modal"]
DEFAULT = (
    Path(__file__).parent.parent / "multiview-croma-modal-runs" if MODAL else Path(__file__).parent
)
HERE = Path(ARGS[0]) if ARGS else DEFAULT
SIZES = (32, 64) if MODAL else (32, 64, 128)
# (run-name prefix of the ALiBi model, first input, second input, the MAE baseline's run and label)
ALIBI, FIRST, SECOND, MAE, MAE_LABEL = (
    ("croma_alibi", "image", "depth", "mae_image", "MAE on the image alone")
    if MODAL
    else ("croma", "optical", "radar", "mae", "MAE on all six bands")
)


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
    both = f"{FIRST}+{SECOND}"
    rows = [
        (f"CROMA ({pos}), {name}", run, subset)
        for pos, run in (("ALiBi", ALIBI), ("sin-cos", "croma_sincos"))
        for name, subset in (
            (f"{FIRST} encoder", FIRST),
            (f"{SECOND} encoder", SECOND),
            ("fusion", both),
        )
    ] + [(MAE_LABEL, MAE, "image")]
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
        (f"raw pixels, {FIRST}", ALIBI, FIRST),
        (f"raw pixels, {SECOND}", ALIBI, SECOND),
        (f"raw pixels, {FIRST} + {SECOND}", ALIBI, both),
    ):
        found = probe(run, 32, 0)
        raw = found[subset]["raw_pixels"] if found else None
        if raw:
            lin = 100 * statistics.mean(raw["linear"])
            print(
                f"| {label} (no seed) | {100 * raw['knn']:.1f} | {lin:.1f} |"
                + " |" * (2 * len(SIZES) - 2)
            )
    print()
    print_reconstruction()


def print_reconstruction() -> None:
    """The masked-reconstruction losses, seeds 0 / 1, at each size (and with `--modal`, on
    mosaics of 2x2 and 4x4 test scenes at the trained resolution)."""
    columns = [(str(s), f"{s}x{s}") for s in SIZES]
    if MODAL:
        columns += [("mosaic2", "2x2 scenes, 64x64"), ("mosaic4", "4x4 scenes, 128x128")]
    print("| model | " + " | ".join(label for _, label in columns) + " |")
    print("|---" * (1 + len(columns)) + "|")
    for label, run in (("CROMA, ALiBi", ALIBI), ("CROMA, sin-cos table", "croma_sincos")):
        for kind in ("pretrained", "untrained"):
            cells = []
            for size, _ in columns:
                values = []
                for seed in (0, 1):
                    path = HERE / f"recon_{run}_{size}_s{seed}.json"
                    if path.is_file():
                        values.append(json.loads(path.read_text())["reconstruction_loss"][kind])
                cells.append(" / ".join(f"{v:.3f}" for v in values))
            print(f"| {label}, {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
