"""Bar chart of the LP-FT section of docs/results/finetune-recipe.md (reads the JSON here)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
rows = [  # (label, runs)
    ("3-ep MAE\nnear-zero head", ["demo_default"]),
    ("3-ep MAE\nLP-FT (default)", ["demo_lpft", "demo_lpft_s1"]),
    ("random init\nLP-FT", ["scratch_lpft_s0", "scratch_lpft_s1"]),
    ("1-ep MAE\nnear-zero head", ["default"]),
    ("1-ep MAE\nLP-FT", ["mae1ep_lpft"]),
]
fig, ax = plt.subplots(figsize=(8, 3.6))
for x, (_label, names) in enumerate(rows):
    recs = [
        json.loads((here / f"{n}.json").read_text())
        for n in names
        if (here / f"{n}.json").is_file()
    ]
    for key, dx, colour in (("top1", -0.2, "C0"), ("train_top1", 0.2, "C1")):
        values = [100 * r[key] for r in recs]
        ax.bar(x + dx, sum(values) / len(values), width=0.4, color=colour)
        ax.plot([x + dx] * len(values), values, "k.", markersize=5)
ax.bar(0, 0, color="C0", label="test top-1 (dots: seeds)")
ax.bar(0, 0, color="C1", label="train top-1, un-augmented")
ax.axhline(80, color="k", ls="--", lw=0.8, label="goal 80%")
ax.axhline(82.7, color="C2", ls=":", lw=1, label="raw pixels, linear 82.7%")
ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
ax.set_ylim(70, 86)
ax.set_ylabel("top-1 (%)")
ax.set_title("Fashion-MNIST, 10k labels, 3 epochs: `mimkit eval finetune` with no flags")
ax.legend(fontsize=7, loc="upper right", ncol=2)
fig.tight_layout()
fig.savefig(here.parent.parent / "finetune-lpft.png", dpi=120)
