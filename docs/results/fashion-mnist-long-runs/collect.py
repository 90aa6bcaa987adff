"""Tables and plot of docs/results/fashion-mnist-long.md from the JSONs beside this file.

    python docs/results/fashion-mnist-long-runs/collect.py      # prints markdown, writes the PNG

Spread over seeds is mean ± sample std where there are 3 seeds, mean ± half the range where
there are 2 (said in each row).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parent.parent.parent
LPFT = HERE.parent / "finetune-recipe-runs" / "lpft"  # the 10k-label runs of the 3-epoch model


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def pct(values: list[float]) -> str:
    """'mean ± spread' in percent, and how the spread was taken."""
    v = [100 * x for x in values]
    if len(v) == 1:
        return f"{v[0]:.2f} (1 seed)"
    if len(v) == 2:
        return f"{statistics.mean(v):.2f} ± {abs(v[0] - v[1]) / 2:.2f} (2 seeds, half-range)"
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} ({len(v)} seeds, std)"


def frozen_rows() -> list[tuple[str, float | None, list[float], list[float], list[float]]]:
    """(label, epochs, kNN, linear test, linear train) per encoder."""
    rows = []
    untrained = [read(HERE / f"untrained_s{p}_{k}.json") for p in (0, 1) for k in ("knn", "linear")]
    rows.append(
        (
            "untrained (random init)",
            0,
            *_scores([untrained[0], untrained[2]], [untrained[1], untrained[3]]),
        )
    )
    rows.append(
        (
            "3-epoch schedule (the demo), seed 0",
            3,
            *_scores([read(HERE / "demo3_knn.json")], [read(HERE / "demo3_linear.json")]),
        )
    )
    for e in (5, 10, 15, 20):
        knn = [read(HERE / f"long_s{p}_ep{e}_knn.json") for p in (0, 1)]
        lin = [read(HERE / f"long_s{p}_ep{e}_linear.json") for p in (0, 1)]
        label = f"20-epoch schedule, after epoch {e}" + ("" if e < 20 else " (end)")
        rows.append((label, e, *_scores(knn, lin)))
    return rows


def _scores(knn: list, lin: list) -> tuple[list[float], list[float], list[float]]:
    knn = [r for r in knn if r]
    lin = [r for r in lin if r]
    return (
        [r["top1"] for r in knn],
        [r["top1"] for r in lin],
        [r["train_top1"] for r in lin if "train_top1" in r],
    )


def finetune_rows() -> list[tuple[str, list[dict]]]:
    def runs(names: list[Path]) -> list[dict]:
        return [r for r in (read(p) for p in names) if r]

    return [
        (
            "10k labels: from scratch",
            runs([LPFT / "scratch_lpft_s0.json", LPFT / "scratch_lpft_s1.json"]),
        ),
        (
            "10k labels: MAE, 3-epoch schedule (demo)",
            runs([LPFT / "demo_lpft.json", LPFT / "demo_lpft_s1.json"]),
        ),
        (
            "10k labels: MAE, 20 epochs (pretraining seeds 0, 1)",
            runs([HERE / f"ft10k_long_s{p}.json" for p in (0, 1)]),
        ),
        ("60k labels: from scratch", runs([HERE / f"ft60k_scratch_s{s}.json" for s in (0, 1, 2)])),
        (
            "60k labels: MAE, 20 epochs (pretraining seed 0)",
            runs([HERE / f"ft60k_mae20_s{s}.json" for s in (0, 1, 2)]),
        ),
    ]


#: The longer 60k-label fine-tunes (bf16): (label, fine-tune epochs, file stem before _sS)
LONGER = [
    ("from scratch, 10 epochs", 10, "ft60k_ep10_scratch"),
    ("MAE 20 epochs, fine-tuned 10 epochs", 10, "ft60k_ep10_mae"),
    ("from scratch, 20 epochs, long-run augmentation", 20, "ft60k_ep20aug_scratch"),
    ("MAE, fine-tuned 20 epochs, long-run augmentation", 20, "ft60k_ep20aug_mae"),
    ("from scratch, 20 epochs, no RandAugment/erasing/drop path", 20, "ft60k_ep20_scratch"),
    ("MAE, fine-tuned 20 epochs, no RandAugment/erasing/drop path", 20, "ft60k_ep20_mae"),
    ("12 blocks, 4x4 patches: from scratch, 10 epochs", 10, "ft60k_vit12_ep10_scratch"),
    ("12 blocks, 4x4 patches: MAE 50 epochs, fine-tuned 10 epochs", 10, "ft60k_vit12_ep10_mae"),
]


def longer_rows() -> list[tuple[str, int, str, list[dict]]]:
    """(label, epochs, file stem, runs found) of each LONGER row with at least one run."""
    found = []
    for label, epochs, stem in LONGER:
        runs = [r for r in (read(HERE / f"{stem}_s{s}.json") for s in (0, 1, 2)) if r]
        if runs:
            found.append((label, epochs, stem, runs))
    return found


def print_longer() -> None:
    print(
        "| 60k labels, bf16 | test top-1 (%) | train top-1, un-augmented (%) | wall per run (s) |"
    )
    print("|---|---|---|---|")
    for label, _epochs, _stem, runs in longer_rows():
        walls = ", ".join(f"{r['seconds']:.0f}" for r in runs)
        test, train = pct([r["top1"] for r in runs]), pct([r["train_top1"] for r in runs])
        print(f"| {label} | {test} | {train} | {walls} |")


def point(epochs: int, stem: str, runs: list) -> tuple[float, list, str]:
    """Where a row of LONGER is drawn: triangles with long-run augmentation, diamonds for the
    12-block model (shifted right so they do not hide the 6-block dots), else dots."""
    if "vit12" in stem:
        return epochs + 0.4, runs, "D"
    return epochs, runs, "^" if "aug" in stem else "o"


def plot_longer(ft: list) -> None:
    """Test and train accuracy against fine-tuning epochs on 60k labels, per arm."""
    three = {"scratch": ft[3][1], "mae": ft[4][1]}  # the 3-epoch fp32 rows
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, colour in (("scratch", "C0"), ("mae", "C1")):
        points = [(3, three[arm], "o")] + [
            point(e, stem, runs) for _label, e, stem, runs in longer_rows() if stem.endswith(arm)
        ]
        for epochs, runs, marker in points:
            for key, fill in (("top1", colour), ("train_top1", "none")):
                values = [100 * r[key] for r in runs]
                ax.plot([epochs] * len(values), values, marker, color=colour, mfc=fill, ms=5)
        light = [  # the line joins the 6-block runs without the long-run augmentation
            (e, statistics.mean(100 * r["top1"] for r in runs)) for e, runs, m in points if m == "o"
        ]
        ax.plot(
            *zip(*light, strict=True),
            "-",
            color=colour,
            label=f"{'MAE' if arm == 'mae' else 'scratch'}: test",
        )
    ax.plot([], [], "ko", mfc="none", label="train, un-augmented (open)")
    ax.plot([], [], "k^", label="20 epochs with RandAugment, erasing, drop path")
    ax.plot([], [], "kD", label="12 blocks, 4x4 patches (MAE: 50-epoch encoder)")
    ax.axhline(93, color="k", ls="--", lw=0.8, label="goal 93%")
    ax.set_xlabel("fine-tuning epochs (60k labels)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(
        "Fine-tuning longer: MAE (6 blocks: 20-epoch encoder) vs scratch (dots: seeds)", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = HERE.parent / "fashion-mnist-long-finetune.png"
    fig.savefig(out, dpi=120)
    print(f"written: {out}")


def print_tables() -> tuple[float, float, list, list]:
    """The two markdown tables; returns what the plot needs."""
    pixels = read(REPO / "benchmarks" / "results" / "fmnist_pixel_baselines.json")["results"]
    px_knn = pixels["mimkit_weighted_cosine_knn_k20_T0.07"]["top1"]
    px_lin = pixels["sklearn_logistic_regression"]["top1"]
    print("| encoder | kNN top-1 (%) | linear top-1 (%) | linear, train (%) |")
    print("|---|---|---|---|")
    frozen = frozen_rows()
    for label, _e, knn, lin, lin_train in frozen:
        print(
            f"| {label} | {pct(knn) if knn else ''} | {pct(lin) if lin else ''} | {pct(lin_train) if lin_train else ''} |"
        )
    print(
        f"| raw pixels (no seed) | {100 * px_knn:.2f} | {100 * px_lin:.2f} (logistic regression) | |"
    )
    print()
    print(
        "| fine-tuning, 3 epochs, no flags | test top-1 (%) | train top-1, un-augmented (%) | wall per run (s) |"
    )
    print("|---|---|---|---|")
    ft = finetune_rows()
    for label, runs in ft:
        if runs:
            walls = ", ".join(f"{r['seconds']:.0f}" for r in runs)
            print(
                f"| {label} | {pct([r['top1'] for r in runs])} | {pct([r['train_top1'] for r in runs])} | {walls} |"
            )
    return px_knn, px_lin, frozen, ft


def plot(px_knn: float, px_lin: float, frozen: list, ft: list) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, colour, name in ((2, "C0", "kNN"), (3, "C1", "linear probe")):
        xs, means, dots = [], [], []
        for row in frozen:
            if row[1] == 3 or not row[key]:
                continue
            xs.append(row[1])
            means.append(100 * statistics.mean(row[key]))
            dots += [(row[1], 100 * v) for v in row[key]]
        left.plot(xs, means, "-o", color=colour, label=f"{name} (20-epoch schedule; 0 = untrained)")
        left.plot(*zip(*dots, strict=True), ".", color="k", markersize=4)
        demo = frozen[1][key]
        if demo:
            left.plot(
                [3], [100 * demo[0]], "s", color=colour, label=f"{name}, 3-epoch schedule (demo)"
            )
    left.axhline(100 * px_knn, color="C0", ls=":", label=f"raw pixels, kNN {100 * px_knn:.1f}")
    left.axhline(100 * px_lin, color="C1", ls=":", label=f"raw pixels, logistic {100 * px_lin:.1f}")
    left.set_xlabel("pretraining epochs")
    left.set_ylabel("top-1 (%)")
    left.set_title("Frozen features (dots: pretraining seeds)")
    left.legend(fontsize=7)
    for x, (_label, runs) in enumerate(ft):
        for key, dx, colour in (("top1", -0.2, "C0"), ("train_top1", 0.2, "C1")):
            values = [100 * r[key] for r in runs]
            if values:
                right.bar(x + dx, statistics.mean(values), width=0.4, color=colour)
                right.plot([x + dx] * len(values), values, "k.", markersize=4)
    right.bar(0, 0, color="C0", label="test")
    right.bar(0, 0, color="C1", label="train (un-augmented)")
    right.axhline(93, color="k", ls="--", lw=0.8, label="goal 93% (60k labels)")
    right.set_xticks(
        range(len(ft)),
        [label.replace(": ", ":\n", 1).replace(" (", "\n(") for label, _ in ft],
        fontsize=6,
    )
    right.set_ylim(70, 95)
    right.set_title("Fine-tuning, 3 epochs, no flags (dots: seeds)")
    right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = HERE.parent / "fashion-mnist-long.png"
    fig.savefig(out, dpi=120)
    print(f"\nwritten: {out}")


def main() -> None:
    tables = print_tables()
    print()
    print_longer()
    plot(*tables)
    plot_longer(tables[3])


if __name__ == "__main__":
    main()
