"""Draw docs/results/fashion-mnist.png from the JSON files the evaluation commands wrote.

Bars: pixel baselines, random-init and MAE-pretrained ViT under kNN, linear probe, 10-shot and
fine-tuning (same budget), with the public Fashion-MNIST reference lines.

    python benchmarks/fmnist_results_plot.py runs/fmnist_mae_tiny/checkpoint
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimkit.eval.cache import find_eval_output  # noqa: E402

PUBLIC = {"HOG+SVM": 0.926, "ResNet18": 0.949, "WRN-28-10": 0.959}


def read(path: Path) -> dict | None:
    """A result by its pre-0.2 path CHECKPOINT/NAME; found in RUN/eval/ where it lives now."""
    path = find_eval_output(path.parent, path.name) or path
    return json.loads(path.read_text()) if path.is_file() else None


def tenshot(record: dict | None) -> float | None:
    if record is None:
        return None
    return next((r["mean"] for r in record["results"] if r["shots"] == 10), None)


def collect(ckpt: Path, pixels: Path) -> dict[str, dict[str, float | None]]:
    rows: dict[str, dict[str, float | None]] = {}
    for suffix, name in (("_random_init", "random init"), ("", "MAE pretrained")):
        knn = read(ckpt / f"eval_knn{suffix}.json")
        lin = read(ckpt / f"eval_linear{suffix}.json")
        # the 5k-label fine-tune of fashion-mnist.sh (its JSON is named by its --train-limit)
        ft = read(ckpt / f"eval_finetune{suffix}.json") or read(
            ckpt / f"eval_finetune{suffix}_train-5000.json"
        )
        rows[name] = {
            "kNN": knn and knn["top1"],
            "linear": lin and lin["top1"],
            "10-shot": tenshot(read(ckpt / f"eval_fewshot{suffix}.json")),
            "fine-tune": ft and ft["top1"],
        }
    px = read(pixels)
    if px:
        r = px["results"]
        rows["raw pixels"] = {
            "kNN": r["mimkit_weighted_cosine_knn_k20_T0.07"]["top1"],
            "linear": r["sklearn_logistic_regression"]["top1"],
            "10-shot": None,
            "fine-tune": None,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "--pixels", type=Path, default=Path("benchmarks/results/fmnist_pixel_baselines.json")
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/fashion-mnist.png"))
    args = parser.parse_args()
    rows = collect(args.checkpoint, args.pixels)
    protocols = ["kNN", "linear", "10-shot", "fine-tune"]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(rows)
    for i, (name, values) in enumerate(rows.items()):
        xs = [p + i * width for p in range(len(protocols)) if values[protocols[p]] is not None]
        ys = [100 * values[p] for p in protocols if values[p] is not None]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    for (label, value), style in zip(PUBLIC.items(), (":", "--", "-."), strict=True):
        ax.axhline(
            100 * value, color="grey", lw=0.9, ls=style, label=f"{label} {value:.3f} (public)"
        )
    ax.set_xticks([p + width * (len(rows) - 1) / 2 for p in range(len(protocols))], protocols)
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("ViT-tiny (depth 6, 7x7 patches) on Fashion-MNIST, 2-core CPU budgets")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
