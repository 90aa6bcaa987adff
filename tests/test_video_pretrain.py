"""End to end on generated videos: `mimkit pretrain` a VideoMAE, then `mimkit eval knn`."""

import json

import numpy as np
import pytest

from mimkit.cli import main

PRESET = "configs/moving_fmnist_videomae_tiny.yaml"


def write_labelled_clips(root, per_class=4):
    """Two classes that differ in motion: a square moving right vs moving down."""
    from mimkit.data.video import write_video

    for split in ("train", "test"):
        for n in range(per_class * 2):
            label = n % 2
            clip = np.zeros((8, 32, 32), np.uint8)
            for t in range(8):
                y, x = (4, 2 + 3 * t) if label == 0 else (2 + 3 * t, 4)
                clip[t, y : y + 8, x : x + 8] = 220
            write_video(root / split / f"c{label}" / f"{n}.mp4", clip)


@pytest.mark.slow
def test_videomae_pretrain_and_knn_from_the_cli(tmp_path, capsys):
    pytest.importorskip("av")
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / PRESET
    write_labelled_clips(tmp_path / "clips")
    out = tmp_path / "run"
    overrides = [
        f"data.path={tmp_path / 'clips'}",
        f"out_dir={out}",
        "model.img_size=[4,32,32]",
        "model.patch_size=8",
        "model.embed_dim=32",
        "model.depth=1",
        "model.num_heads=2",
        "model.decoder_embed_dim=16",
        "model.decoder_depth=1",
        "model.decoder_num_heads=2",
        "model.decoder_mask_ratio=0.5",
        "train.batch_size=4",
        "train.epochs=2",
        "train.progress=false",
        "eval.knn_k=3",
        "eval.reconstruction_images=2",
    ]
    assert main(["pretrain", str(preset), *overrides]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["knn_pretrained"] <= 1 and 0 <= results["knn_random_init"] <= 1
    assert (out / "reconstruction.png").stat().st_size > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "end" and lines[-1]["step"] == 4
    capsys.readouterr()
    assert main(["eval", "knn", str(out), "-k", "3"]) == 0
    assert "kNN top-1 (pretrained" in capsys.readouterr().out
    saved = json.loads((out / "eval" / "eval_knn_k-3.json").read_text())
    assert saved["test_items"] == 8 and saved["train_items"] == 8


def test_video_config_with_missing_folder_is_one_line_error(tmp_path, capsys):
    rc = main(["pretrain", PRESET, f"data.path={tmp_path / 'none'}", f"out_dir={tmp_path}/r"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("mimkit: error:") and str(tmp_path / "none") in err
