"""Gardener's entropy ranking against the oracle over MAE pretraining: the tables and plots of
compression.md's section on it, from the compression_study.py records beside this file (copied
from the run folders of gardener.sh). `--set demo` (default): the 6-block demo architecture
after 3, 5, 10, 15 and 20 epochs; `--set vit12`: the 12-block preset after 2, 10, 25 and 50.

    python docs/results/compression/gardener-long/table.py [--set vit12] [--plot]
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
SETS = {  # (record, pretraining epochs, pretraining seed), and the plot's file
    "demo": (
        [("ep3_demo", 3, 0), ("ep5_s0", 5, 0), ("ep10_s0", 10, 0), ("ep15_s0", 15, 0),
         ("ep20_s0", 20, 0), ("ep20_s1", 20, 1)],
        "gardener_long.png",
    ),
    "vit12": (
        [("vit12_ep2", 2, 0), ("vit12_ep10", 10, 0), ("vit12_ep25", 25, 0), ("vit12_ep50", 50, 0)],
        "gardener_vit12.png",
    ),
}  # fmt: skip
METHODS = ("entropy", "norm", "first", "last", "random")


def main() -> int:
    name = sys.argv[sys.argv.index("--set") + 1] if "--set" in sys.argv else "demo"
    runs, picture = SETS[name]
    rows = [(json.loads((HERE / f"{rec}.json").read_text()), ep, seed) for rec, ep, seed in runs]
    head = "| epochs | seed | full kNN | " + " | ".join(f"{m} ρ" for m in METHODS)
    head += " | oracle's 3 blocks | entropy's 3 blocks | entropy keep 3 | first keep 3 |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for d, ep, seed in rows:
        rho = [f"{d['spearman_vs_oracle'][m]:+.2f}" for m in METHODS]
        kept = d["kept_blocks"]
        cells = [str(ep), str(seed), f"{100 * d['full_top1']:.2f}", *rho,
                 str(kept["oracle"]["3"]), str(kept["entropy"]["3"]),
                 f"{100 * d['pruning_top1']['entropy']['3']:.2f}",
                 f"{100 * d['pruning_top1']['first']['3']:.2f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    if "--plot" in sys.argv:
        plot(rows, HERE.parent / picture)
    return 0


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in METHODS:
        pts = [(ep, d["spearman_vs_oracle"][m]) for d, ep, seed in rows if seed == 0]
        axes[0].plot(*zip(*pts, strict=True), "o-", label=m)
    for d, ep, seed in rows:
        if seed == 1:
            axes[0].plot([ep], [d["spearman_vs_oracle"]["entropy"]], "x", color="C0", ms=9)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_xlabel("MAE pretraining epochs")
    axes[0].set_ylabel("Spearman ρ with the oracle")
    seed1 = " (x: entropy, seed 1)" if any(seed == 1 for _, _, seed in rows) else ""
    axes[0].set_title("block ranking vs oracle" + seed1)
    axes[0].legend(fontsize=8)
    longest = max(ep for _, ep, seed in rows if seed == 0)
    last = [d for d, ep, seed in rows if ep == longest and seed == 0][0]
    blocks = range(len(last["scores"]["oracle"]))
    axes[1].bar([b - 0.2 for b in blocks], [100 * s for s in last["scores"]["oracle"]], 0.4,
                label="oracle: kNN drop when removed (points)")  # fmt: skip
    ent = last["scores"]["entropy"]
    lo, hi = min(ent), max(ent)
    axes[1].bar([b + 0.2 for b in blocks], [(e - lo) / (hi - lo) * 10 for e in ent], 0.4,
                label="entropy, rescaled to 0-10")  # fmt: skip
    axes[1].set_xlabel("block")
    axes[1].set_title(f"{longest} epochs, seed 0")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
