import os
import sys
from pathlib import Path

import pytest
import torch

# Test the checkout these tests live in, whatever mimkit is installed in site-packages
# (several worktrees can share one interpreter); subprocesses get the same via PYTHONPATH.
SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ.setdefault("TQDM_DISABLE", "1")
from mimkit.data.idx import DEBIAN_FASHION_MNIST  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

HAS_FMNIST = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(
    not HAS_FMNIST, reason="Fashion-MNIST (dataset-fashion-mnist) not installed"
)


def tiny_model_overrides(out_dir) -> list[str]:
    """A 2-block ViT on 28x28 grey images: trains a few steps in about a second."""
    return [
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "model.patch_size=7",
        "model.decoder_embed_dim=16",
        "model.decoder_depth=1",
        "model.decoder_num_heads=2",
        f"out_dir={out_dir}",
        "train.progress=false",
    ]


def pretrain_multi_preset(preset: str, root, run, capsys) -> None:
    """Two steps of a several-input preset on `root` (16x16 samples) with the tiny model, then
    `mimkit eval knn` on it: the CLI path every such preset must take."""
    from mimkit.cli.main import main

    tiny = tiny_model_overrides(run) + ["model.img_size=16", "model.patch_size=4"]
    args = [f"data.path={root}", "train.max_steps=2", "train.batch_size=4", "eval.knn=false"]
    assert main(["pretrain", preset, *tiny, *args]) == 0
    assert main(["eval", "knn", str(run), "--k", "3"]) == 0
    assert "kNN top-1" in capsys.readouterr().out


TINY_MODEL = dict(
    img_size=16,
    in_chans=3,
    patch_size=4,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
)


def tiny_model_config(**kw):
    """A 2-block, 32-wide ViT-MAE config on 16x16 RGB images, overridable field by field."""
    from mimkit.models import ModelConfig

    return ModelConfig(**{**TINY_MODEL, **kw})


def method_parts(**flat):
    """0.1-style flat keywords (geometry, masking and method fields together) ->
    (resolved ModelConfig, MaskingConfig, method settings), as a 0.1 config is migrated."""
    from mimkit.config import build_run_config, resolve_run_config

    run = resolve_run_config(build_run_config({"model": flat}, "test"))
    return run.model, run.masking, run.method


def tiny_method_parts(**kw):
    """`tiny_model_config`'s model, with any masking and method fields, as `method_parts`."""
    return method_parts(**{**TINY_MODEL, **kw})
