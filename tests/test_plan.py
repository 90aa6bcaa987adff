"""Zero-config pretraining: the survey, the folder's own statistics, the plan for a budget."""

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.cli.main import main
from mimkit.data.config import DataConfig
from mimkit.errors import ConfigError
from mimkit.plan import (
    Speed,
    folder_stats,
    model_geometry,
    parse_budget,
    plan_run,
    planned_config,
    survey_folder,
)
from mimkit.report import one_per_class


def grey_folder(root, per_class=12, classes=2, size=16, test=4):
    """Class folders of grey PNGs whose brightness depends on the class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


def test_survey_counts_classes_channels_and_sizes(tmp_path):
    survey = survey_folder(grey_folder(tmp_path / "d"))
    assert (survey.train_items, survey.test_items) == (24, 8)
    assert survey.classes == ["c0", "c1"] and survey.channels == 1 and survey.side == 16


def test_geometry_for_small_and_larger_images():
    assert model_geometry(28) == (28, 7)  # the demo's 4x4 grid of 7-pixel patches
    assert model_geometry(64) == (64, 8)
    assert model_geometry(500) == (128, 16)


def test_folder_statistics_are_the_folders_own_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    root = grey_folder(tmp_path / "d")
    data = DataConfig(source="folder", path=str(root), channels=1)
    stats, cached = folder_stats(data, 1, (16, 16))
    assert not cached
    again, cached = folder_stats(data, 1, (16, 16))
    assert cached and again == stats
    # half the items near 40/255, half near 160/255: nothing like Fashion-MNIST's 0.286
    assert stats["mean"][0] == pytest.approx(100 / 255, abs=0.03)


def test_plan_fills_the_budget_at_the_measured_speed(tmp_path):
    survey = survey_folder(grey_folder(tmp_path / "d"))
    cfg = planned_config(survey, {"mean": [0.4], "std": [0.3]}, str(tmp_path / "run"))
    slow = plan_run(survey, cfg, 300, Speed(train_img_per_s=100, features_img_per_s=1000))
    cfg = planned_config(survey, {"mean": [0.4], "std": [0.3]}, str(tmp_path / "run"))
    fast = plan_run(survey, cfg, 300, Speed(train_img_per_s=200, features_img_per_s=1000))
    assert fast.steps == pytest.approx(2 * slow.steps, rel=0.01)
    b = slow.cfg.train.batch_size
    assert slow.train_seconds + slow.eval_seconds <= 300
    assert slow.cfg.train.max_steps == slow.steps and slow.epochs * (24 // b) >= slow.steps
    with pytest.raises(ConfigError, match="budget"):
        plan_run(survey, cfg, 5, Speed(train_img_per_s=100, features_img_per_s=10))


def test_an_unlabelled_folder_trains_for_the_whole_budget(tmp_path):
    """No class folders means no report, so no share of the budget is kept for one."""
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (16, 16)).astype(np.uint8), mode="L").save(
            flat / f"{i}.png"
        )
    survey = survey_folder(flat)
    assert survey.classes == []
    cfg = planned_config(survey, {"mean": [0.5], "std": [0.3]}, str(tmp_path / "run"))
    plan = plan_run(survey, cfg, 60, Speed(train_img_per_s=100, features_img_per_s=1000))
    assert plan.eval_seconds == 0 and plan.eval_items == (0, 0)
    assert plan.train_seconds == pytest.approx(60, rel=0.05)
    assert "no evaluation" in plan.lines()[1]


def test_budget_parsing():
    assert parse_budget("5m") == 300 and parse_budget("90s") == 90 and parse_budget("1h") == 3600
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget("soon")


def test_reconstruction_items_are_one_per_class_first():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert one_per_class(torch.arange(8), labels, 4).tolist() == [0, 3, 5, 1]


def test_yaml_run_on_a_folder_without_statistics_computes_its_own(tmp_path, monkeypatch, capsys):
    from mimkit.cli.pretrain import fill_folder_stats
    from mimkit.config import load_config

    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    root = grey_folder(tmp_path / "d", size=28)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "model: {img_size: 28, in_chans: 1, patch_size: 7, depth: 1, embed_dim: 16, "
        "num_heads: 2, decoder_embed_dim: 16, decoder_depth: 1, decoder_num_heads: 2}\n"
        f"data: {{source: folder, path: {root}}}\n"
    )
    cfg = load_config(yaml_file)
    assert cfg.data.mean == [0.2860]  # the silent default this guards against
    fill_folder_stats(cfg, str(yaml_file), [])
    assert cfg.data.mean[0] == pytest.approx(100 / 255, abs=0.03)
    assert "data.mean/std: not in" in capsys.readouterr().out
    given = load_config(yaml_file, ["data.mean=[0.5]", "data.std=[0.5]"])
    fill_folder_stats(given, str(yaml_file), ["data.mean=[0.5]", "data.std=[0.5]"])
    assert given.data.mean == [0.5]


@pytest.mark.slow
def test_pretrain_on_a_folder_with_no_yaml_plans_runs_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    root = grey_folder(tmp_path / "d", per_class=40, size=16, test=10)
    out = tmp_path / "run"
    assert main(["pretrain", str(root), "--budget", "3m", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plan: MAE" in text and "pretrained" in text and "pixels" in text
    assert (out / "zero_config.json").is_file() and (out / "reconstruction.png").is_file()
