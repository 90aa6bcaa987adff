"""Bar chart of docs/results/finetune-recipe.md (reads the JSON files beside this script)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
runs = {r: json.loads((here / f"{r}.json").read_text()) for r in ("mae_s0", "mae_s1", "scratch_s0")}
pixels = json.loads((here / "pixels_10k.json").read_text())
names = ["MAE s0", "MAE s1", "scratch s0", "pixels linear", "pixels kNN"]
test = [runs["mae_s0"]["top1"], runs["mae_s1"]["top1"], runs["scratch_s0"]["top1"],
        pixels["linear_seed0"][0], pixels["knn"]]  # fmt: skip
train = [runs["mae_s0"]["train_top1"], runs["mae_s1"]["train_top1"],
         runs["scratch_s0"]["train_top1"], None, None]  # fmt: skip
fig, ax = plt.subplots(figsize=(7, 3.5))
xs = range(len(names))
ax.bar([x - 0.2 for x in xs], test, width=0.4, label="test top-1")
ax.bar([x + 0.2 for x in xs[:3]], train[:3], width=0.4, label="train top-1 (un-augmented)")
ax.axhline(0.80, color="k", ls="--", lw=0.8, label="goal 0.80")
ax.set_xticks(list(xs), names)
ax.set_ylim(0.6, 0.9)
ax.set_title("Fashion-MNIST, 10k labels, 3 epochs, `mimkit eval finetune` defaults")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(here.parent / "finetune-recipe.png", dpi=120)
