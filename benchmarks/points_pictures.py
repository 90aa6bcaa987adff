"""Reconstruction pictures of docs/results/points.md: test clouds of a Point-MAE checkpoint.

python benchmarks/points_pictures.py runs/points/point_mae_s0 docs/results/points.png
"""

from __future__ import annotations

import sys

import torch

from mimkit.data.points import load_point_split
from mimkit.inspect.points import render_point_reconstructions
from mimkit.train.checkpoint import load_model


def main(run: str, out: str, count: int = 4) -> None:
    model, cfg = load_model(run)
    model.eval()
    clouds, labels = load_point_split(cfg.data, "test")
    per_class = len(clouds) // (int(labels.max()) + 1)
    pick = clouds[torch.arange(count) * per_class * 3 % len(clouds)]  # a few different classes
    mask = model.draw_mask(count, "cpu", torch.Generator().manual_seed(0))
    print(render_point_reconstructions(model.reconstruct_points(pick, mask), out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
