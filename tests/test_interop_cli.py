"""`mimkit export` / `mimkit import` end to end, loading at another image size, bad input."""

import json

import pytest
import torch
from interop_helpers import random_checkpoint
from test_cli import assert_one_line_error

from mimkit.cli import main
from mimkit.models.pos_embed import resample_pos_embed
from mimkit.train.checkpoint import load_model


@pytest.mark.parametrize("to", ["hf", "timm", "safetensors"])
def test_export_then_import_detects_the_format(tmp_path, capsys, to):
    model, _ = random_checkpoint(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), "--to", to, str(tmp_path / "out")]) == 0
    assert main(["import", str(tmp_path / "out"), str(tmp_path / "back")]) == 0
    printed = capsys.readouterr().out
    expected_format = {"hf": "hf", "timm": "timm", "safetensors": "mimkit"}[to]
    assert f"({expected_format})" in printed
    back, _ = load_model(tmp_path / "back")
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(back.encoder.state_dict()[key], value), key
    source = json.loads((tmp_path / "back" / "source.json").read_text())
    assert source["format"] == expected_format
    assert (source["decoder"] == "imported") == (to != "timm")


def test_import_at_another_image_size_interpolates_loudly(tmp_path, capsys):
    model, _ = random_checkpoint(tmp_path / "ck")  # 16x16 images, 4x4 patches: 4x4 grid
    code = main(["import", str(tmp_path / "ck"), str(tmp_path / "big"), "model.img_size=32"])
    assert code == 0
    err = capsys.readouterr().err
    assert "interpolating position embeddings from grid (4, 4) to (8, 8)" in err
    back, run = load_model(tmp_path / "big")
    assert run.model.image_hw == (32, 32)
    for part in ("encoder", "decoder"):
        old = getattr(model, part).pos_embed
        new = getattr(back, part).pos_embed
        assert new.shape == (1, 1 + 64, old.shape[-1])
        torch.testing.assert_close(new, resample_pos_embed(old, (8, 8), (4, 4)))
    for key, value in model.encoder.blocks.state_dict().items():
        assert torch.equal(back.encoder.blocks.state_dict()[key], value)
    with torch.no_grad():
        assert back(torch.randn(2, 3, 32, 32)).pred.shape == (2, 64, 4 * 4 * 3)
    source = json.loads((tmp_path / "big" / "source.json").read_text())
    assert source["source_image_size"] == [16, 16] and source["image_size"] == [32, 32]


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    random_checkpoint(tmp_path / "ck")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    cases = [
        (["import", str(tmp_path / "notes.txt"), str(tmp_path / "o")], r"unknown file type"),
        (["import", str(tmp_path / "empty"), str(tmp_path / "o")], r"cannot tell the format"),
        (["import", str(tmp_path / "ck"), str(tmp_path / "o"), "model.nope=1"], r"nope"),
        (["import", str(tmp_path / "ck"), str(tmp_path / "o"), "train.epochs=1"], r"model\.\*"),
        (
            ["import", str(tmp_path / "ck"), str(tmp_path / "o"), "model.embed_dim=64"],
            r"do not fit this model",
        ),
        (["export", str(tmp_path / "missing"), "--to", "hf", str(tmp_path / "o")], r"not found"),
        (["import", str(tmp_path / "ck"), str(tmp_path / "o"), "--from", "hf"], r"config\.json"),
        (["import", str(tmp_path / "ck"), str(tmp_path / "ck")], r"already exists"),
        (["export", str(tmp_path / "ck"), "--to", "hf", str(tmp_path / "ck")], r"already exists"),
    ]
    for argv, pattern in cases:
        assert_one_line_error(capsys, main(argv), pattern)


def test_load_foreign_in_memory_keeps_global_rng(tmp_path):
    from mimkit.interop.convert import load_foreign

    model, _ = random_checkpoint(tmp_path / "ck")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    loaded = load_foreign(tmp_path / "ck", overrides=["model.img_size=[16,32]"])
    assert torch.equal(torch.rand(1), expected_next)  # import does not reseed the caller's RNG
    assert loaded.fmt == "mimkit" and loaded.source_image_hw == (16, 16)
    assert loaded.model.encoder.pos_embed.shape[1] == 1 + 4 * 8
    assert not (tmp_path / "ck" / "source.json").exists()


def test_only_pixel_mae_exports_as_hf_pretraining_other_methods_as_encoders(tmp_path, capsys):
    from conftest import tiny_method_parts

    from mimkit.config import RunConfig
    from mimkit.train.checkpoint import method_from_config, save_checkpoint

    model_cfg, masking, settings = tiny_method_parts(method="maskfeat")
    cfg = RunConfig(model=model_cfg, masking=masking, method=settings)
    save_checkpoint(tmp_path / "mf", method_from_config(cfg), cfg)
    code = main(["export", str(tmp_path / "mf"), "--to", "hf", str(tmp_path / "o")])
    assert code == 2
    assert "no ViTMAEForPreTraining counterpart" in capsys.readouterr().err
    args = ["export", str(tmp_path / "mf"), "--to", "hf", "--hf-arch", "vit", str(tmp_path / "v")]
    assert main(args) == 0
