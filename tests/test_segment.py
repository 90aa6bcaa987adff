"""Segmentation transfer: the metric, the data format, the scenes and `mimkit eval segment`."""

import json

import numpy as np
import pytest
import torch
from eval_helpers import make_learnable_idx, save_tiny_checkpoint
from PIL import Image
from test_cli import assert_one_line_error

from mimkit.cli import main
from mimkit.data.scenes import SCENE_CLASSES, make_fmnist_scenes
from mimkit.data.segmentation import load_segmentation_split
from mimkit.errors import DataError
from mimkit.eval import segment
from mimkit.eval.segment_settings import SegmentSettings
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.pos_embed import position_table
from mimkit.models.vit import VisionTransformer


def test_constant_predictor_scores_its_known_value():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 16, 16), generator=gen)
    target[:, :2] = 255  # ignored rows count for nothing
    valid = target != 255
    share = (target[valid] == 2).double().mean().item()
    scores = segment.scores_from_confusion(
        segment.confusion_matrix(torch.full_like(target, 2), target, 4, 255)
    )
    # class 2: IoU = its pixels / all valid pixels; classes 0, 1, 3: IoU 0; all four present
    assert scores.pixel_acc == pytest.approx(share)
    assert scores.miou == pytest.approx(share / 4)
    assert scores.per_class_iou[2] == pytest.approx(share) and scores.per_class_iou[0] == 0.0


def test_metric_by_hand_and_absent_classes():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    s = segment.scores_from_confusion(segment.confusion_matrix(pred, target, 3, 255))
    # class 0: 1 / 2, class 1: 2 / 3, class 2 absent everywhere: left out of the mean
    assert s.per_class_iou == [pytest.approx(0.5), pytest.approx(2 / 3), None]
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2) and s.pixel_acc == pytest.approx(0.75)


def _truth_features(n, classes, side, seed):
    """Blobby label maps and, as features, their own one-hot pixels (zero where ignored)."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, classes, (n, side // 4, side // 4), generator=gen)
    labels = cells.repeat_interleave(4, 1).repeat_interleave(4, 2)
    labels[:, :, 0] = 255  # an ignored column in each
    feats = torch.nn.functional.one_hot(labels.clamp(max=classes), classes + 1)[..., :classes]
    return [feats.permute(0, 3, 1, 2).float()], labels


def test_head_on_ground_truth_features_reaches_the_ceiling():
    classes, side = 4, 16
    train_maps, train_labels = _truth_features(32, classes, side, seed=0)
    val_maps, val_labels = _truth_features(8, classes, side, seed=1)
    torch.manual_seed(0)
    head = segment.LinearSegHead(classes, classes)
    settings = SegmentSettings(epochs=10, batch_size=8, lr=0.1, weight_decay=0.0)
    segment.train_on_maps(head, train_maps, train_labels, 255, settings, torch.device("cpu"))
    preds = segment.predict_maps(head, val_maps, (side, side), torch.device("cpu"))
    scores = segment.scores_from_confusion(
        segment.confusion_matrix(preds, val_labels, classes, 255)
    )
    assert scores.miou > 0.99 and scores.pixel_acc > 0.99


def _write_pair(root, split, name, image, labels):
    for sub, arr in (("images", image), ("annotations", labels)):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / sub / split / f"{name}.png")


def test_reader_skips_bad_pairs_with_one_line_each(tmp_path):
    root = tmp_path / "seg"
    good = np.zeros((8, 8), np.uint8)
    _write_pair(root, "train", "a_good", good, good)
    _write_pair(root, "train", "b_good", good + 50, np.full((8, 8), 255, np.uint8))
    _write_pair(root, "train", "c_bad_label", good, np.full((8, 8), 7, np.uint8))
    _write_pair(root, "train", "d_bad_size", good, np.zeros((4, 8), np.uint8))
    _write_pair(root, "train", "e_rgb_label", good, np.zeros((8, 8, 3), np.uint8))
    Image.fromarray(good).save(root / "images" / "train" / "f_no_label.png")
    (root / "images" / "train" / "g_corrupt.png").write_bytes(b"not a png")
    (root / "annotations" / "train" / "g_corrupt.png").write_bytes(b"not a png")
    (root / "classes.txt").write_text("background\nthing\n")
    split = load_segmentation_split(root, "train", 1)
    assert split.names == ["a_good", "b_good"] and split.labels.shape == (2, 8, 8)
    assert split.images.dtype == torch.uint8 and split.ignore_index == 255
    assert len(split.skipped) == 5
    for name, what in [
        ("c_bad_label", "label 7 is not a class"),
        ("d_bad_size", "annotation is (4, 8)"),
        ("e_rgb_label", "single-channel"),
        ("f_no_label", "no annotation"),
        ("g_corrupt", "cannot decode"),
    ]:
        assert any(name in m and what in m and "\n" not in m for m in split.skipped), name


def test_reader_refuses_a_broken_layout(tmp_path):
    root = tmp_path / "seg"
    _write_pair(root, "train", "a", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="classes.txt: class-name file not found"):
        load_segmentation_split(root, "train", 1)
    (root / "classes.txt").write_text("background\nthing\n")
    (root / "dataset.json").write_text('{"ignore_index": "none"}')
    with pytest.raises(DataError, match="ignore_index must be a non-negative integer"):
        load_segmentation_split(root, "train", 1)
    (root / "dataset.json").write_text('{"ignore_index": 0}')
    with pytest.raises(DataError, match=r"val: folder not found"):
        load_segmentation_split(root, "val", 1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scenes")
    fmnist = make_learnable_idx(tmp / "idx", n_train=40, n_test=20)
    return make_fmnist_scenes(
        tmp / "scenes", train=24, test=8, size=32, seed=3, fmnist_path=str(fmnist), progress=False
    )


def test_scenes_layout_labels_and_seed(scenes, tmp_path):
    train = load_segmentation_split(scenes, "train", 1)
    val = load_segmentation_split(scenes, "val", 1)
    assert train.class_names == list(SCENE_CLASSES) and len(SCENE_CLASSES) == 11
    assert train.images.shape == (24, 1, 32, 32) and val.labels.shape == (8, 32, 32)
    values = set(train.labels.unique().tolist())
    assert 0 in values and values <= set(range(11)) | {255} and values - {0, 255}
    assert not train.skipped and json.loads((scenes / "dataset.json").read_text())["seed"] == 3
    again = make_fmnist_scenes(
        tmp_path / "again", train=24, test=8, size=32, seed=3,
        fmnist_path=str(scenes.parent / "idx"), progress=False,
    )  # fmt: skip
    for sub in ("images/train", "annotations/val"):
        for f in sorted((scenes / sub).iterdir()):
            assert f.read_bytes() == (again / sub / f.name).read_bytes()


def test_encoder_is_rebuilt_at_the_scene_grid(tmp_path):
    data = make_learnable_idx(tmp_path / "idx", n_train=8, n_test=8)
    folder, cfg, model = save_tiny_checkpoint(tmp_path, data)
    encoder = segment.build_encoder(cfg.model, model.state_dict(), (32, 32), "test")
    assert encoder.cfg.image_hw == (35, 35) and encoder.grid_hw == (5, 5)  # 32 px -> 5 patches of 7
    table = position_table("sincos", cfg.model.embed_dim, (5, 5), cls_token=True)
    torch.testing.assert_close(encoder.pos_embed, table)
    torch.testing.assert_close(
        encoder.blocks[0].attn.qkv.weight, model.encoder.blocks[0].attn.qkv.weight
    )


def test_finetuning_trains_the_encoder_with_layer_decay(scenes):
    torch.manual_seed(0)
    cfg = resolve_model_config(
        ModelConfig(img_size=35, in_chans=1, patch_size=7, embed_dim=32, depth=2, num_heads=2)
    )
    encoder = VisionTransformer(cfg)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train = load_segmentation_split(scenes, "train", 1)
    val = load_segmentation_split(scenes, "val", 1)
    settings = SegmentSettings(epochs=1, batch_size=12, width=8)
    result = segment.evaluate_heads(
        encoder, ("fpn",), (train.images, train.labels), (val.images, val.labels), 11, 255,
        [0.3], [0.3], settings, torch.device("cpu"), finetune=True,
    )["fpn"]  # fmt: skip
    assert result.steps == 2 and result.predictions.shape == (8, 32, 32)
    tuned = result.encoder.state_dict()
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], tuned["blocks.0.attn.qkv.weight"])
    assert torch.equal(before["blocks.0.attn.qkv.weight"], encoder.blocks[0].attn.qkv.weight)


def test_cli_segment_pretrained_and_random_init(scenes, tmp_path, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=8, n_test=8)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data)
    common = ["--data", str(scenes), "--epochs", "1", "--width", "8", "--device", "cpu"]
    assert main(["eval", "segment", str(folder), *common, "--predictions", "3"]) == 0
    assert main(["eval", "segment", str(folder), *common, "--random-init", "--head", "linear"]) == 0
    out = capsys.readouterr().out
    for name in ("linear (pretrained", "fpn (pretrained", "linear (random-init"):
        assert f"segment {name}, encoder at 35 px / grid 5x5, train 24, val 8" in out
    assert out.count("mIoU ") == 3
    results = folder.parent / "eval"  # evaluation outputs live beside the checkpoint
    record = json.loads((results / "eval_segment.json").read_text())
    assert 0 <= record["fpn"]["miou"] <= 1 and len(record["linear"]["per_class_iou"]) == 11
    assert json.loads((results / "eval_segment_random_init.json").read_text())["random_init"]
    for path in (results / "segment" / "fpn.png", results / "segment_random_init" / "linear.png"):
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.width > 3 * 32
    with Image.open(results / "segment" / "linear.png") as im:
        assert im.height == 2 * (3 * 32 + 2 * 2)  # three scenes, 2 px gaps, drawn twice as large


def test_cli_segment_bad_data_is_one_line(tmp_path, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=8, n_test=8)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data)
    code = main(["eval", "segment", str(folder), "--data", str(tmp_path / "nowhere")])
    assert_one_line_error(capsys, code, "nowhere: segmentation data folder not found")
