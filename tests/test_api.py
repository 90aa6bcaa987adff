"""The public Python API: `import mimkit` stays light; load, encode and pretrain work end to end."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_model_overrides
from eval_helpers import make_learnable_idx, save_tiny_checkpoint
from PIL import Image

import mimkit
from mimkit.errors import ConfigError
from mimkit.eval.features import extract_features


def test_import_mimkit_loads_no_torch_until_the_api_is_used():
    code = (
        "import sys, mimkit; assert 'torch' not in sys.modules; "
        "assert callable(mimkit.load); assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_and_encode_match_the_evaluation_features(tmp_path):
    data = make_learnable_idx(tmp_path / "data")
    folder, cfg, _ = save_tiny_checkpoint(tmp_path, data)
    model = mimkit.load(tmp_path / "run")  # the run folder holding checkpoint/
    assert model.checkpoint == folder and model.cfg.model.depth == 2
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    feats = model.encode(images)
    expected = extract_features(
        model.encoder, images, cfg.data.mean, cfg.data.std, progress=False
    )
    assert feats.shape == (5, cfg.model.embed_dim) and torch.equal(feats, expected)
    # numpy, one image, PIL images and files: the same features for the same pixels
    assert torch.equal(mimkit.encode(images.numpy(), model), feats)
    assert torch.equal(model.encode(images[0]), feats[:1])
    assert torch.equal(model.encode(images[0, 0]), feats[:1])
    pil = [Image.fromarray(im[0].numpy()) for im in images[:2]]
    assert torch.equal(model.encode(pil), feats[:2])
    pil[0].save(tmp_path / "a.png")
    assert torch.equal(mimkit.encode(tmp_path / "a.png", folder), feats[:1])
    # pooling and block as in `mimkit eval`
    avg = model.encode(images, pool="avg", block=1)
    assert not torch.equal(avg, feats)


def test_encode_refuses_what_it_cannot_read(tmp_path):
    data = make_learnable_idx(tmp_path / "data")
    save_tiny_checkpoint(tmp_path, data)
    model = mimkit.load(tmp_path / "run")
    with pytest.raises(ConfigError, match="uint8"):
        model.encode(torch.rand(2, 1, 28, 28))
    with pytest.raises(ConfigError, match=r"shape \(N, 1, 28, 28\)"):
        model.encode(np.zeros((2, 3, 28, 28), np.uint8))


def test_pretrain_from_a_config_object_returns_a_loadable_model(tmp_path):
    data = make_learnable_idx(tmp_path / "data")
    cfg = mimkit.load_config(
        "configs/fmnist_mae_tiny.yaml",
        tiny_model_overrides(tmp_path / "run")
        + ["data.source=idx", f"data.path={data}", "train.epochs=1", "train.batch_size=32"],
    )
    model = mimkit.pretrain(cfg)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    again = mimkit.load(model.checkpoint)
    assert torch.allclose(model.encode(images), again.encode(images))
