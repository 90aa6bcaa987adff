"""The command line end to end, and one clear line (no traceback) for every kind of bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import needs_fmnist, tiny_model_overrides
from PIL import Image
from test_data import make_idx_folder

from mimkit.cli import main


def run_cli(*args, cwd=None):
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run(
        [sys.executable, "-m", "mimkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


def assert_one_line_error(capsys, code, pattern):
    import re

    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("mimkit: error: ")
    assert re.search(pattern, err[-1]), err[-1]


@needs_fmnist
@pytest.mark.slow
def test_pretrain_then_eval_knn_on_fashion_mnist_subset(tmp_path):
    out = tmp_path / "run"
    overrides = tiny_model_overrides(out) + [
        "data.limit=512",
        "train.batch_size=64",
        "train.epochs=2",
        "eval.knn_train_limit=2000",
    ]
    done = run_cli("pretrain", "configs/fmnist_mae_tiny.yaml", *overrides)
    assert done.returncode == 0, done.stderr
    assert "kNN top-1 pretrained:" in done.stdout and "kNN top-1 random init:" in done.stdout
    ckpt = out / "checkpoint"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.yaml").is_file()
    assert (out / "metrics.jsonl").is_file()
    png = Image.open(out / "reconstruction.png")
    assert png.size[0] > png.size[1] / 8 * 4 * 0.9  # four columns
    results = json.loads((out / "results.json").read_text())
    assert 0.1 < results["knn_pretrained"] <= 1.0
    done = run_cli("eval", "knn", out, "--train-limit", "2000")
    assert done.returncode == 0, done.stderr
    assert "kNN top-1 (pretrained, k=20" in done.stdout
    assert json.loads((out / "eval" / "eval_knn_train-2000.json").read_text())["top1"] == pytest.approx(
        results["knn_pretrained"], abs=1e-6
    )


def test_data_info_on_idx_and_image_folders(tmp_path, capsys):
    make_idx_folder(tmp_path / "idx")
    assert main(["data", "info", str(tmp_path / "idx")]) == 0
    out = capsys.readouterr().out
    assert "train-images-idx3-ubyte.gz: shape (40, 28, 28)" in out
    (tmp_path / "img" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "img" / "cat" / "a.png")
    (tmp_path / "img" / "cat" / "b.png").write_bytes(b"broken")
    assert main(["data", "info", str(tmp_path / "img")]) == 0
    out = capsys.readouterr().out
    assert (
        "2 images, 1 classes" in out and "5x7 x1" in out and "corrupt (would be skipped): 1" in out
    )


def test_unknown_key(capsys):
    assert_one_line_error(
        capsys,
        main(["pretrain", "configs/fmnist_mae_tiny.yaml", "train.epoch=1"]),
        r"unknown config key 'train\.epoch'",
    )


def test_wrong_type(capsys):
    assert_one_line_error(
        capsys,
        main(["pretrain", "configs/fmnist_mae_tiny.yaml", "train.batch_size=big"]),
        r"train\.batch_size: expected int, got 'big'",
    )


def test_missing_data(tmp_path, capsys):
    code = main(
        [
            "pretrain",
            "configs/fmnist_mae_tiny.yaml",
            f"data.path={tmp_path / 'nowhere'}",
            f"out_dir={tmp_path}",
        ]
    )
    assert_one_line_error(capsys, code, r"nowhere: expected the four Fashion-MNIST IDX files")


def test_unexpected_channel_count(tmp_path, capsys):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "imgs" / "a" / f"{i}.png")
    code = main(
        [
            "pretrain",
            "configs/fmnist_mae_tiny.yaml",
            "data.source=folder",
            f"data.path={tmp_path / 'imgs'}",
            f"out_dir={tmp_path / 'o'}",
        ]
    )
    assert_one_line_error(
        capsys, code, r"0\.png: image has 3 channel\(s\) \(mode RGB\) but 1 are expected"
    )


def test_corrupt_image_is_skipped_not_fatal(tmp_path, capsys):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((28, 28), i * 9, np.uint8)).save(
            tmp_path / "imgs" / "a" / f"{i}.png"
        )
    (tmp_path / "imgs" / "a" / "zz.png").write_bytes(b"\x89PNG broken")
    code = main(
        [
            "pretrain",
            "configs/fmnist_mae_tiny.yaml",
            "data.source=folder",
            f"data.path={tmp_path / 'imgs'}",
            "train.batch_size=4",
            "train.epochs=1",
            "eval.knn=false",
            *tiny_model_overrides(tmp_path / "o"),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "1 corrupt image(s) were skipped during training" in captured.err
    assert (tmp_path / "o" / "reconstruction.png").is_file()
    end = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "end" and end["corrupt_skipped"] == 1


def test_checkpoint_from_another_model(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    data = make_idx_folder(tmp_path / "idx", n_train=16, n_test=8)
    overrides = tiny_model_overrides(tmp_path / "run") + [
        "data.source=idx",
        f"data.path={data}",
        "train.batch_size=8",
        "train.epochs=1",
        "eval.knn=false",
    ]
    assert main(["pretrain", "configs/fmnist_mae_tiny.yaml", *overrides]) == 0
    save_file(
        {"head.weight": torch.zeros(3, 3)}, tmp_path / "run" / "checkpoint" / "model.safetensors"
    )
    capsys.readouterr()
    code = main(["eval", "knn", str(tmp_path / "run")])
    assert_one_line_error(
        capsys, code, r"model\.safetensors: weights do not fit this model: missing"
    )


def test_not_a_checkpoint(tmp_path, capsys):
    assert_one_line_error(capsys, main(["eval", "knn", str(tmp_path)]), r"not a mimkit checkpoint")


def test_subprocess_error_has_no_traceback():
    done = run_cli("pretrain", "configs/fmnist_mae_tiny.yaml", "model.preset=vit_gigantic")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "mimkit: error: configs/fmnist_mae_tiny.yaml: model.preset: unknown preset 'vit_gigantic'; expected one of "
        "['vit_base', 'vit_huge', 'vit_large', 'vit_small', 'vit_tiny']"
    )


def test_overrides_may_follow_options(tmp_path, capsys):
    data = make_idx_folder(tmp_path / "idx", n_train=16, n_test=8)
    args = [
        "pretrain",
        "configs/fmnist_mae_tiny.yaml",
        "--no-eval",
        *tiny_model_overrides(tmp_path / "run"),
    ]
    args += ["data.source=idx", f"data.path={data}", "train.batch_size=8", "train.epochs=1"]
    assert main(args) == 0
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    with pytest.raises(SystemExit):
        main(["pretrain", "configs/fmnist_mae_tiny.yaml", "--bogus"])
