"""The tables of multiview.md's CROMA sections, from the probe and reconstruction JSONs of
multiview-joint.sh (copied beside this file; noise25/: the same run on tiles with pixel noise
25 instead of 100) or of multiview-croma-modal.sh (`--modal`: fmnist-modal's image and depth as

the two sensors, copied to ../multiview-croma-modal-runs/) or of multiview-croma-field.sh
(`--field`: the same sensors on fmnist-modal's position-independent `field` scenes, copied to
../multiview-croma-field-runs/; `--plot` also draws multiview_croma_field.png beside them).

    python docs/results/multiview-joint-runs/table.py [FOLDER]
    python docs/results/multiview-joint-runs/table.py --modal [FOLDER]
    python docs/results/multiview-joint-runs/table.py --field [--plot] [FOLDER]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

MODAL, FIELD, PLOT = ("--modal" in sys.argv), ("--field" in sys.argv), ("--plot" in sys.argv)
ARGS = [a for a in sys.argv[1:] if a not in ("--modal", "--field", "--plot")]
RESULTS = Path(__file__).parent.parent
DEFAULT = (
    RESULTS / "multiview-croma-field-runs"
    if FIELD
    else RESULTS / "multiview-croma-modal-runs"
    if MODAL
    else Path(__file__).parent
)
HERE = Path(ARGS[0]) if ARGS else DEFAULT
SIZES = (32, 64) if MODAL else (32, 64, 128)
# (run-name prefix of the ALiBi model, first input, second input, the MAE baseline's run and label)
ALIBI, FIRST, SECOND, MAE, MAE_LABEL = (
    ("croma_alibi", "image", "depth", "mae_image", "MAE on the image alone")
    if MODAL or FIELD
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
    for label, subset in (
        (f"raw pixels, {FIRST}", FIRST),
        (f"raw pixels, {SECOND}", SECOND),
        (f"raw pixels, {FIRST} + {SECOND}", both),
    ):
        cells = []
        for size in SIZES:
            raw = raw_pixels(subset, size)
            cells += [f"{100 * raw[0]:.1f}", f"{100 * raw[1]:.1f}"] if raw else ["", ""]
        if any(cells):
            print(f"| {label} (no seed) | " + " | ".join(cells) + " |")
    print()
    print_reconstruction()
    if PLOT:
        plot()


def raw_pixels(subset: str, size: int) -> tuple[float, float] | None:
    """(kNN, linear) on raw pixels of `subset` at `size`, from the ALiBi run's seed-0 probe."""
    found = probe(ALIBI, size, 0)
    raw = found[subset].get("raw_pixels") if found and subset in found else None
    return (raw["knn"], statistics.mean(raw["linear"])) if raw else None


def plot() -> None:
    """kNN and linear probe of the first input's features against the side they are scored
    at (trained at 32): what CROMA's extrapolation claim predicts is ALiBi holding up."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [
        ("CROMA, ALiBi", ALIBI, "pretrained", "C0", "-"),
        ("CROMA, sin-cos", "croma_sincos", "pretrained", "C1", "-"),
        (MAE_LABEL, MAE, "pretrained", "C2", "-"),
        ("untrained CROMA, ALiBi", ALIBI, "untrained", "C0", ":"),
        ("untrained CROMA, sin-cos", "croma_sincos", "untrained", "C1", ":"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, index, title in ((axes[0], 0, "kNN"), (axes[1], 1, "linear probe")):
        for label, run, kind, color, style in curves:
            subset = "image" if run == MAE else FIRST
            means, lows, highs = [], [], []
            for size in SIZES:
                values = [100 * v for v in scores(run, subset, kind, size)[index]]
                means.append(statistics.mean(values))
                lows.append(min(values))
                highs.append(max(values))
            ax.plot(SIZES, means, style, color=color, marker="o", label=label)
            ax.fill_between(SIZES, lows, highs, color=color, alpha=0.12)
        raw = [raw_pixels(FIRST, size) for size in SIZES]
        if all(raw):
            ax.plot(SIZES, [100 * r[index] for r in raw], "--", color="grey", label="raw pixels")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(xticks=SIZES, xticklabels=[f"{s}x{s}" for s in SIZES],
               xlabel="scored at (trained at 32x32)", title=f"{FIRST} features, {title}")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    fig.suptitle("mean and min-max over pretraining seeds 0 and 1", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    out = HERE / "multiview_croma_field.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


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
