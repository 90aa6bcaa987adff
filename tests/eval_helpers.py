"""Small learnable data sets and checkpoints for the evaluation tests."""

import numpy as np
import torch
from conftest import tiny_model_overrides
from test_data import write_idx

from mimkit.config import load_config
from mimkit.objectives.mae import build_mae
from mimkit.train.checkpoint import save_checkpoint


def make_learnable_idx(folder, n_train=96, n_test=32, classes=4, seed=0):
    """28x28 images whose class is which quadrant is bright (plus noise): easy to learn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, r * 14 : (r + 1) * 14, q * 14 : (q + 1) * 14] += 180
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, gz=True)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def save_tiny_checkpoint(tmp_path, data_folder, seed=0):
    """A tiny untrained MAE saved as a checkpoint whose data config points at `data_folder`."""
    cfg = load_config(
        "configs/fmnist_mae_tiny.yaml",
        tiny_model_overrides(tmp_path / "run") + ["data.source=idx", f"data.path={data_folder}"],
    )
    torch.manual_seed(seed)
    model = build_mae(cfg.model, cfg.masking, cfg.method)
    return save_checkpoint(tmp_path / "run" / "checkpoint", model, cfg), cfg, model


def clustered_features(n_per_class=60, classes=4, dim=16, seed=0, spread=0.5, centres_seed=0):
    """Gaussian clusters around fixed class centres (one set per `centres_seed`); `seed` draws
    the samples, so two seeds give a train and a test set of the same problem."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(centres_seed)) * 3
    gen = torch.Generator().manual_seed(seed + 1000)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return feats[order], labels[order]
