"""Point-cloud reconstructions as pictures: a 3-D scatter of visible, hidden and predicted points.

One row per cloud: the visible groups the encoder saw, the hidden groups it did not, and the
decoder's prediction of the hidden groups placed at their centres (`PointMAE.reconstruct_points`).
"""

from __future__ import annotations

from pathlib import Path

import torch

PANELS = (("visible", "tab:blue"), ("hidden", "tab:gray"), ("predicted", "tab:red"))


def render_point_reconstructions(points: dict[str, torch.Tensor], path: str | Path) -> Path | None:
    """Save `points` ({visible, hidden, predicted}: (B, n, 3)) as a B x 3 grid of 3-D scatters;
    None when matplotlib is not installed."""
    try:
        import matplotlib  # optional dependency: mimkit[plot]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional dependency: mimkit[plot]
    except ImportError:
        return None
    rows = len(points["visible"])
    fig = plt.figure(figsize=(7.5, 2.5 * rows))
    for r in range(rows):
        for c, (name, colour) in enumerate(PANELS):
            ax = fig.add_subplot(rows, 3, 3 * r + c + 1, projection="3d")
            xyz = points[name][r].detach().float().cpu().numpy()
            if name == "predicted":  # the visible part beside the prediction, faint
                seen = points["visible"][r].float().cpu().numpy()
                ax.scatter(*seen.T, s=1, c="tab:blue", alpha=0.15)
            ax.scatter(*xyz.T, s=1, c=colour)
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
