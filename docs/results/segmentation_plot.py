"""Bar chart of docs/results/segmentation.md's family table (linear and FPN mIoU, seeds as dots).

python3 docs/results/segmentation_plot.py RUNS_ROOT   (writes docs/results/segmentation.png)
"""

import json
import statistics as st
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(sys.argv[1])
rows = [("floor", "mae", "eval_segment_random_init.json")] + [
    (r, r, "eval_segment.json")
    for r in ("mae", "mae_block", "colormae_green", "colormae_red", "colormae_blue",
              "colormae_purple", "simmim", "crossmae", "maskfeat", "mfm", "maskalign", "hpm",
              "cae", "droppos", "mrmae", "ibot")
]  # fmt: skip
fig, ax = plt.subplots(figsize=(9, 3.6))
for x, (label, run, name) in enumerate(rows):
    recs = [json.loads(p.read_text()) for s in (0, 1)
            if (p := root / f"{run}_seed{s}" / "eval" / name).is_file()]  # fmt: skip
    for head, dx, colour in (("linear", -0.2, "C0"), ("fpn", 0.2, "C1")):
        values = [100 * r[head]["miou"] for r in recs]
        if values:
            ax.bar(x + dx, st.mean(values), width=0.4, color="grey" if label == "floor" else colour)
            ax.plot([x + dx] * len(values), values, "k.", markersize=4)
ax.axhline(11.4, color="C2", ls=":", lw=1, label="raw patch pixels, linear (11.4)")
ax.bar(0, 0, color="C0", label="linear head")
ax.bar(0, 0, color="C1", label="FPN head (floor in grey)")
ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=30, ha="right", fontsize=8)
ax.set_ylim(10, 19)
ax.set_ylabel("mIoU (%)")
ax.set_title("Fashion-MNIST scenes, frozen encoders after 234 pretraining steps (dots: seeds)")
ax.legend(fontsize=7, loc="upper right", ncol=3)
fig.tight_layout()
fig.savefig(Path(__file__).parent / "segmentation.png", dpi=120)
