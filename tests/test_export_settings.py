"""Export then import keeps every setting that changes features; what a target cannot hold is
refused in one line."""

import json

import pytest
import torch
from interop_helpers import random_checkpoint
from test_cli import assert_one_line_error

from mimkit.cli import main
from mimkit.eval.features import extract_features
from mimkit.train.checkpoint import load_model


def _features(encoder, images):
    return extract_features(encoder, images, [0.5] * 3, [0.25] * 3, progress=False)


@pytest.mark.parametrize("to", ["hf", "timm", "safetensors"])
@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_feature_pooling_survives_export_and_import(tmp_path, capsys, to, pool):
    model, _ = random_checkpoint(tmp_path / "ck", pool=pool)
    assert main(["export", str(tmp_path / "ck"), "--to", to, str(tmp_path / "out")]) == 0
    assert main(["import", str(tmp_path / "out"), str(tmp_path / "back")]) == 0
    back, run = load_model(tmp_path / "back")
    assert run.model.pool == pool
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(_features(back.encoder, images), _features(model.encoder, images))
    printed = capsys.readouterr().out
    if to == "timm":
        config = json.loads((tmp_path / "out" / "config.json").read_text())
        expected = "avg" if pool == "avg" else "token"
        assert config["global_pool"] == config["model_args"]["global_pool"] == expected
        assert config["model_args"].get("fc_norm", None) is (False if pool == "avg" else None)
    if to == "hf":
        assert f"model.pool={pool}" in printed


def test_hf_export_with_avg_pooling_still_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    random_checkpoint(tmp_path / "ck", pool="avg")
    assert main(["export", str(tmp_path / "ck"), "--to", "hf", str(tmp_path / "out")]) == 0
    hf = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "out")
    assert hf.config.mimkit_features == {"pool": "avg"}
    hf.save_pretrained(tmp_path / "again")  # transformers keeps the entry on its own saves
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["mimkit_features"] == {"pool": "avg"}


@pytest.mark.parametrize("to", ["hf", "timm"])
def test_video_and_volume_encoders_are_refused_in_one_line(tmp_path, capsys, to):
    random_checkpoint(tmp_path / "ck", img_size=[4, 16, 16], tubelet_size=2, in_chans=1)
    code = main(["export", str(tmp_path / "ck"), "--to", to, str(tmp_path / "out")])
    assert_one_line_error(
        capsys, code, r"model.img_size \[4, 16, 16\].*2-D only; use --to safetensors"
    )
    assert not (tmp_path / "out").exists()
    assert main(["export", str(tmp_path / "ck"), "--to", "safetensors", str(tmp_path / "o2")]) == 0


@pytest.mark.parametrize("to", ["hf", "timm"])
def test_encoders_without_a_class_token_are_refused_in_one_line(tmp_path, capsys, to):
    random_checkpoint(tmp_path / "ck", cls_token=False, pool="avg")
    code = main(["export", str(tmp_path / "ck"), "--to", to, str(tmp_path / "out")])
    assert_one_line_error(capsys, code, r"cls_token is false")
