"""Each synthetic-data preset pretrains and reports end to end on data generated here."""

import json
from pathlib import Path

import pytest

from mimkit.cli import main
from mimkit.config import load_config
from mimkit.data.synthetic import make_spectrograms, make_tiles, make_volumes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {
    "synthetic_volumes_mae_tiny.yaml": lambda root: make_volumes(root, 8, 4, progress=False),
    "synthetic_tiles_mae_tiny.yaml": lambda root: make_tiles(root, 8, 4, size=64, progress=False),
    "synthetic_spectrograms_mae_tiny.yaml": lambda root: make_spectrograms(
        root, 8, 4, progress=False
    ),
}
TINY = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "train.batch_size=4",
    "train.progress=false",
    "eval.knn_k=3",
    "eval.reconstruction_images=2",
]


def test_every_modal_preset_loads_with_its_grid():
    grids = {
        "synthetic_volumes_mae_tiny.yaml": (4, 4, 4),
        "synthetic_tiles_mae_tiny.yaml": (4, 4),
        "synthetic_spectrograms_mae_tiny.yaml": (2, 8),
        "moving_fmnist_videomae_tiny.yaml": (4, 4, 4),
    }
    for name, grid in grids.items():
        cfg = load_config(CONFIGS / name)
        assert cfg.model.grid_shape == grid, name
        assert len(cfg.data.mean) == cfg.model.in_chans


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_modal_preset_pretrains_and_reports(tmp_path, name):
    PRESETS[name](tmp_path / "data")
    out = tmp_path / "run"
    args = [f"data.path={tmp_path / 'data'}", f"out_dir={out}", "train.epochs=1", *TINY]
    assert main(["pretrain", str(CONFIGS / name), *args]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["knn_pretrained"] <= 1
    assert (out / "reconstruction.png").stat().st_size > 0
