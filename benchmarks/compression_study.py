"""The compression study behind docs/results/compression.md, rerunnable on any checkpoint.

For a pretrained encoder it measures, with weighted kNN (k=20, T=0.07) on frozen features as
the probe everywhere (no fine-tuning after pruning; see the results page for why):
1. block importance by each data-free method and by the oracle (remove one block, measure the
   top-1 drop), and the Spearman correlation of each data-free ranking with the oracle's;
2. top-1 after one-shot pruning to 75%, 50%, 25% and 1 block of the depth, for every method;
3. token merging: img/s and top-1 for several r.
Writes JSON, a markdown table and PNG plots to --out.

    python benchmarks/compression_study.py runs/vit12/checkpoint --out docs/results/compression
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from mimkit.compress.importance import block_scores, blocks_to_keep
from mimkit.compress.oracle import knn_probe, oracle_sensitivity
from mimkit.compress.prune import prune_blocks
from mimkit.compress.tradeoff import plot_tradeoff, rows_as_dicts, tome_tradeoff
from mimkit.data.sources import load_labelled_splits
from mimkit.train.checkpoint import load_model

DATA_FREE = ("entropy", "norm", "first", "last", "random")


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def plot_pruning(table: dict[str, dict[int, float]], full: float, depth: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, row in table.items():
        keeps = sorted(row)
        ax.plot(keeps, [100 * row[k] for k in keeps], "o-", label=method)
    ax.axhline(100 * full, color="grey", linestyle="--", label=f"all {depth} blocks")
    ax.set_xlabel("blocks kept")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("One-shot block pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scores(scores: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    blocks = range(len(scores["oracle"]))
    axes[0].bar(blocks, scores["entropy"])
    axes[0].set_title("weight-number entropy per block (nats)")
    axes[0].set_ylim(min(scores["entropy"]) * 0.98, max(scores["entropy"]) * 1.01)
    axes[1].bar(blocks, [100 * s for s in scores["oracle"]], color="tab:orange")
    axes[1].set_title("oracle: kNN top-1 drop when removed (points)")
    for ax in axes:
        ax.set_xlabel("block")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default="docs/results/compression")
    parser.add_argument("--train-limit", type=int, default=10000, help="kNN bank size")
    parser.add_argument("--test-limit", type=int, default=None, help="test items (default all)")
    parser.add_argument("--tome-r", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    model, cfg = load_model(args.checkpoint)
    splits = load_labelled_splits(
        cfg.data, cfg.model.in_chans, cfg.model.image_hw, args.train_limit
    )
    if args.test_limit:
        splits = (*splits[:2], splits[2][: args.test_limit], splits[3][: args.test_limit])
    probe = knn_probe(splits, cfg.data.mean, cfg.data.std)
    depth = len(model.encoder.blocks)

    t0 = time.perf_counter()
    full, drops = oracle_sensitivity(model, probe)
    oracle_s = time.perf_counter() - t0
    scores = {m: block_scores(model.encoder.blocks, m, seed=args.seed) for m in DATA_FREE}
    scores["oracle"] = drops
    correlation = {m: spearman(scores[m], drops) for m in DATA_FREE}

    keeps = sorted({max(1, round(depth * f)) for f in (0.75, 0.5, 0.25)} | {1}, reverse=True)
    pruning: dict[str, dict[int, float]] = {}
    kept_blocks: dict[str, dict[int, list[int]]] = {}
    for method in (*DATA_FREE, "oracle"):
        pruning[method], kept_blocks[method] = {}, {}
        for keep in keeps:
            kept = blocks_to_keep(scores[method], keep)
            kept_blocks[method][keep] = kept
            pruning[method][keep] = probe(prune_blocks(model, kept))

    rows = tome_tradeoff(model.encoder, splits, cfg.data.mean, cfg.data.std, args.tome_r)

    record = {
        "command": "python benchmarks/compression_study.py "
        + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "checkpoint": str(args.checkpoint),
        "model": {"depth": depth, "embed_dim": cfg.model.embed_dim, "patch": cfg.model.patch_size},
        "probe": f"weighted kNN k=20 T=0.07, bank {len(splits[1])}, test {len(splits[3])}",
        "full_top1": full,
        "scores": scores,
        "spearman_vs_oracle": correlation,
        "pruning_top1": pruning,
        "kept_blocks": kept_blocks,
        "tome": rows_as_dicts(rows),
        "oracle_seconds": round(oracle_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "compression.json").write_text(json.dumps(record, indent=1))
    plot_pruning(pruning, full, depth, out / "pruning.png")
    plot_scores(scores, out / "block_scores.png")
    plot_tradeoff(rows, out / "tome.png")

    lines = [f"full model ({depth} blocks): kNN top-1 {100 * full:.2f}%", "",
             "| method | Spearman vs oracle | " + " | ".join(f"keep {k}" for k in keeps) + " |",
             "|---|---|" + "---|" * len(keeps)]  # fmt: skip
    for method in (*DATA_FREE, "oracle"):
        rho = f"{correlation[method]:+.2f}" if method in correlation else "1 (reference)"
        cells = " | ".join(f"{100 * pruning[method][k]:.2f}" for k in keeps)
        lines.append(f"| {method} | {rho} | {cells} |")
    lines += ["", "| r | tokens out | img/s | kNN top-1 |", "|---|---|---|---|"]
    lines += [
        f"| {r.r} | {r.tokens_out} | {r.img_per_s:.0f} | {100 * r.knn_top1:.2f} |" for r in rows
    ]
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/compression.json, tables.md, pruning.png, block_scores.png, tome.png")


if __name__ == "__main__":
    main()
