"""The LP-FT head alone: the probe `mimkit eval finetune` starts from, scored on the test set.

PYTHONPATH=src python3 docs/results/finetune-recipe-runs/lpft/probe_only.py CHECKPOINT_FOLDER
"""

import sys
from pathlib import Path

from mimkit.data.sources import load_split
from mimkit.data.transforms import normalize
from mimkit.eval.finetune import FinetuneConfig, build_classifier
from mimkit.eval.head_init import fit_linear_head, pooled_features
from mimkit.models.config import resolve_model_config
from mimkit.train.checkpoint import load_config_file, read_weights

folder = Path(sys.argv[1])
cfg = load_config_file(folder)
base = resolve_model_config(cfg.model)
settings = FinetuneConfig(head="fc_norm", layer_decay=0.75, drop_path=0.0)
model = build_classifier(base, read_weights(folder / "model.safetensors"), 10, settings, 0)
x, y = load_split(cfg.data, "train", 1, base.image_hw)
x, y = x[:10000], y[:10000]
xt, yt = load_split(cfg.data, "test", 1, base.image_hw)


def prepare(batch):
    return normalize(batch, cfg.data.mean, cfg.data.std)


f = pooled_features(model, x, prepare, "cpu")
ft = pooled_features(model, xt, prepare, "cpu")
w, b = fit_linear_head(f, y, 10)
train = ((f @ w.T + b).argmax(1) == y).float().mean().item()
test = ((ft @ w.T + b).argmax(1) == yt).float().mean().item()
print(f"probe head alone: train {100 * train:.2f}%  test {100 * test:.2f}%")
