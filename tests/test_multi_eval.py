"""Fine-tuning and segmentation of checkpoints trained on samples with several inputs
(`data.source: multi`: MultiMAE, CroCo, CROMA), through the method's own feature path."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import tiny_model_overrides
from PIL import Image
from test_cli import assert_one_line_error

from mimkit.cli import main
from mimkit.config import load_config
from mimkit.data.config import InputConfig
from mimkit.data.multi_synth import make_tile_groups
from mimkit.eval.finetune import (
    FinetuneConfig,
    build_inputs_classifier,
    inputs_param_groups,
    load_classifier,
)
from mimkit.models.alibi import AlibiViT
from mimkit.train.checkpoint import (
    MODEL_FILE,
    load_model,
    method_from_config,
    read_weights,
    save_checkpoint,
)

CROMA = "configs/synthetic_tiles_croma_tiny.yaml"
MULTIMAE = "configs/fmnist_multimae_tiny.yaml"


def _tiny(preset: str, out, *extra: str):
    overrides = tiny_model_overrides(out) + ["model.img_size=16", "model.patch_size=4"]
    return load_config(preset, overrides + list(extra))


@pytest.fixture(scope="module")
def croma_run(tmp_path_factory):
    """An untrained tiny CROMA (ALiBi, two encoders, a fusion encoder) saved as a checkpoint
    whose data are two-sensor tiles (8 train, 6 test, 16x16)."""
    tmp = tmp_path_factory.mktemp("croma")
    root = make_tile_groups(tmp / "tiles", train=8, test=6, size=16, progress=False)
    cfg = _tiny(CROMA, tmp / "run", f"data.path={root}")
    torch.manual_seed(0)
    method = method_from_config(cfg)
    assert isinstance(method.encoder, AlibiViT)
    return save_checkpoint(tmp / "run" / "checkpoint", method, cfg)


def test_finetune_cli_trains_a_croma_checkpoint_through_its_fusion_features(
    croma_run, tmp_path, capsys
):
    out = tmp_path / "ft"
    args = ["--max-steps", "2", "--batch-size", "4", "--epochs", "1", "--device", "cpu"]
    assert main(["eval", "finetune", str(croma_run), *args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tune top-1 (pretrained, 1 epoch(s), 2 steps, train 8, test 6)" in printed
    record = json.loads((out / "result.json").read_text())
    assert 0.0 <= record["top1"] <= 1.0 and record["head"] == "norm"
    assert record["randaug_ops"] == 0 and record["test_crop"] == 1.0
    before = read_weights(croma_run / MODEL_FILE)
    after = read_weights(out / "checkpoint" / MODEL_FILE)
    assert after["head.weight"].shape == (3, 32)  # three tile classes
    for trained in ("encoder.blocks.0.attn.qkv.weight", "second_encoder.blocks.0.mlp.fc1.weight",
                    "fusion.0.cross.q.weight"):  # fmt: skip
        assert not torch.equal(before[trained], after[f"method.{trained}"]), trained
    # the pretraining-only parts the features do not reach are kept, untouched
    for kept in ("decoder.pred.weight", "heads.0.2.weight", "logit_scale"):
        assert torch.equal(before[kept], after[f"method.{kept}"]), kept
    model, cfg = load_classifier(out / "checkpoint")
    assert cfg.data.source == "multi" and isinstance(model.encoder, AlibiViT)
    both = {"optical": torch.randn(2, 3, 16, 16), "radar": torch.randn(2, 3, 16, 16)}
    assert model(both).shape == (2, 3)


def test_finetune_cli_refuses_single_image_settings_in_one_line(croma_run, tmp_path, capsys):
    out = ["--out", str(tmp_path / "ft"), "--device", "cpu", "--max-steps", "1"]
    code = main(["eval", "finetune", str(croma_run), "--mixup", "0.8", "--pool", "cls", *out])
    assert_one_line_error(
        capsys, code, r"finetune: mixup, pool: not available for a checkpoint trained on "
        r"samples with several inputs \(data.source: multi\)"
    )  # fmt: skip


def _scenes(root, size: int = 24) -> None:
    """root/{images,annotations}/{train,val}: grey scenes with a bright square (class 1)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for k in range(count):
            image = rng.integers(0, 80, (size, size)).astype(np.uint8)
            labels = np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size - 8, 2)
            image[y : y + 8, x : x + 8], labels[y : y + 8, x : x + 8] = 220, 1
            for sub, array in (("images", image), ("annotations", labels)):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / sub / split / f"s{k}.png")
    (root / "classes.txt").write_text("background\nsquare\n")


def test_segment_cli_reads_scenes_with_the_first_inputs_alibi_encoder(croma_run, tmp_path, capsys):
    _scenes(tmp_path / "scenes")  # 24 px: a 6x6 grid, larger than the 4x4 CROMA trained on
    common = ["--data", str(tmp_path / "scenes"), "--epochs", "1", "--head", "linear"]
    assert main(["eval", "segment", str(croma_run), *common, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "croma's encoder of input 'optical' is evaluated (data.inputs.optical" in printed
    assert "segment linear (pretrained, encoder at 24 px / grid 6x6, train 4, val 2" in printed
    record = json.loads((croma_run.parent / "eval" / "eval_segment.json").read_text())
    assert "'optical'" in record["encoder_input"] and 0.0 <= record["linear"]["miou"] <= 1.0


def test_multimae_classifier_trains_the_adapters_of_its_inputs_with_layer_decay(tmp_path):
    cfg = _tiny(MULTIMAE, tmp_path / "run")
    cfg.data.inputs = {"image": InputConfig(), "depth": InputConfig()}  # seg left out
    model = build_inputs_classifier(cfg, None, num_classes=4, ft=FinetuneConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "method.adapters.depth.proj.weight" in trainable
    assert "method.encoder.pos_embed" in trainable  # learn_pos: the table is a parameter
    assert not any(n.startswith(("method.adapters.seg", "method.decoders")) for n in trainable)
    assert "method.mask_token" not in trainable
    scale = {
        id(p): g["lr_scale"] for g in inputs_param_groups(model, 0.05, 0.5) for p in g["params"]
    }
    params = dict(model.named_parameters())
    depth = cfg.model.depth
    assert scale[id(params["method.encoder.patch_embed.proj.weight"])] == 0.5 ** (depth + 1)
    assert scale[id(params["method.adapters.depth.proj.weight"])] == 0.5 ** (depth + 1)
    assert scale[id(params["method.encoder.blocks.0.attn.qkv.weight"])] == 0.5**depth
    assert scale[id(params["head.weight"])] == 1.0
    x = {"image": torch.randn(2, 1, 16, 16), "depth": torch.randn(2, 1, 16, 16)}
    model(x).sum().backward()  # gradients flow (`encode`, the probes' path, keeps none)
    assert model.method.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert torch.allclose(model.pooled(x), model.method.encode(x), atol=1e-5)


def test_croco_classifier_trains_the_shared_encoder_and_freezes_the_decoder(tmp_path):
    cfg = _tiny("configs/fmnist_croco_tiny.yaml", tmp_path / "run")
    model = build_inputs_classifier(cfg, None, num_classes=2, ft=FinetuneConfig(learn_pos=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "method.encoder.blocks.1.mlp.fc2.weight" in trainable and "head.bias" in trainable
    assert not any(n.startswith("method.decoder.") for n in trainable)
    views = {"view1": torch.randn(2, 1, 16, 16), "view2": torch.randn(2, 1, 16, 16)}
    torch.testing.assert_close(model.eval().pooled(views), model.method.encode(views))


@pytest.mark.parametrize("to", ["timm", "hf"])
def test_alibi_encoder_export_to_timm_or_hf_says_why_and_what_works(
    croma_run, tmp_path, capsys, to
):
    code = main(["export", str(croma_run), "--to", to, str(tmp_path / "out")])
    target = "timm's VisionTransformer" if to == "timm" else "transformers' ViTMAE/ViT"
    assert_one_line_error(
        capsys, code, r"this encoder uses ALiBi attention biases for positions \(method "
        r"'croma'\); it has no position table and no class token, which "
        + target + r" needs, and cannot hold the biases; export it with --to safetensors "
        r"\(a mimkit checkpoint\) or --to onnx"
    )  # fmt: skip
    assert "cls_token" not in capsys.readouterr().err


def test_timm_export_of_a_multi_input_encoder_records_its_inputs_statistics(tmp_path):
    cfg = _tiny("configs/fmnist_croco_tiny.yaml", tmp_path / "run", "model.cls_token=true")
    folder = save_checkpoint(tmp_path / "run" / "checkpoint", method_from_config(cfg), cfg)
    assert main(["export", str(folder), "--to", "timm", str(tmp_path / "timm")]) == 0
    pretrained = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]
    view1 = cfg.data.inputs["view1"]  # the masked view: the input CroCo's encoder reads
    assert pretrained["mean"] == view1.mean and pretrained["std"] == view1.std
    assert view1.mean != cfg.data.mean  # (data.mean, the single-image default, is not it)


HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


@pytest.mark.slow  # torch's ONNX exporter takes ~8 s to load and trace on a 2-core CPU
@pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime not installed (mimkit[onnx])")
def test_alibi_encoder_exports_to_onnx_with_its_inputs_statistics(croma_run, tmp_path):
    import onnxruntime  # optional: mimkit[onnx]

    out = tmp_path / "onnx"
    assert main(["export", str(croma_run), "--to", "onnx", str(out)]) == 0
    meta = json.loads((out / "preprocess.json").read_text())
    model, cfg = load_model(croma_run)
    optical = cfg.data.inputs["optical"]
    assert meta["mean"] == optical.mean and meta["std"] == optical.std
    session = onnxruntime.InferenceSession(
        str(out / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    (got,) = session.run(["features"], {"pixels": x.numpy()})
    np.testing.assert_allclose(got, model.encode(x).numpy(), atol=1e-4, rtol=0)
