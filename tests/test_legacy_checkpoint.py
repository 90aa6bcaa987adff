"""Checkpoints written by mimkit 0.1 (flat model config) still load, evaluate and resume."""

import shutil
from pathlib import Path

import torch
from conftest import needs_fmnist
from safetensors.torch import load_file

from mimkit.masking import mask_from_noise
from mimkit.train.checkpoint import load_config_file, load_model

FIXTURE = Path(__file__).parent / "fixtures" / "v0_1_mae"


def fixed_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.sin(torch.arange(4 * 28 * 28, dtype=torch.float32) / 37).reshape(4, 1, 28, 28)
    noise = torch.cos(torch.arange(4 * 16, dtype=torch.float32) * 1.7).reshape(4, 16)
    return x, noise


def test_v0_1_checkpoint_loads_and_gives_the_same_outputs():
    model, cfg = load_model(FIXTURE / "checkpoint")
    expected = load_file(FIXTURE / "expected_outputs.safetensors")
    x, noise = fixed_inputs()
    with torch.no_grad():
        features = model.encode(x)
        out = model(x, mask=mask_from_noise(noise, 0.75))
    torch.testing.assert_close(features, expected["features"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss.reshape(1), expected["loss"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pred, expected["pred"], rtol=0, atol=1e-6)
    assert cfg.model.pool == "avg" and cfg.train.max_steps == 4


@needs_fmnist
def test_v0_1_checkpoint_resumes_to_the_same_weights(tmp_path):
    from mimkit.train.loop import pretrain

    shutil.copytree(FIXTURE / "checkpoint", tmp_path / "checkpoint")
    cfg = load_config_file(tmp_path / "checkpoint")
    cfg.out_dir = str(tmp_path)
    cfg.train.max_steps = 10
    cfg.train.amp = "off"  # the expected weights were written by a run in fp32
    result = pretrain(cfg)
    assert result.steps == 10
    expected = load_file(FIXTURE / "expected_step10_model.safetensors")
    got = load_file(tmp_path / "checkpoint" / "model.safetensors")
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
