"""Experiment trackers beside metrics.jsonl, the gradient norm, and pictures over training."""

import functools
import importlib.util
import json
import sys

import pytest
import torch
from test_cli import assert_one_line_error
from test_train import run_cfg

from mimkit.cli import main
from mimkit.errors import ConfigError
from mimkit.inspect.reconstructions import training_picture
from mimkit.train import trackers as trackers_mod
from mimkit.train.loop import pretrain
from mimkit.train.step import GuardedStep


def _has(module):
    return importlib.util.find_spec(module) is not None


def _train(cfg):
    picture = functools.partial(training_picture, mean=cfg.data.mean, std=cfg.data.std, seed=0)
    return pretrain(cfg, picture=picture)


def test_grad_norm_is_the_norm_of_the_gradients_of_applied_steps():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([w], lr=0.1)
    guard = GuardedStep(opt, torch.amp.GradScaler("cpu", enabled=False), [w], None, w.device)
    norms = []
    for target in (1.0, -2.0):
        loss = ((w - target) ** 2).sum()
        loss.backward()
        norms.append(w.grad.norm().item())
        guard.step(loss.detach())
    guard.step(torch.tensor(float("nan")))  # skipped: not averaged in
    assert guard.read_grad_norm() == pytest.approx(sum(norms) / 2, rel=1e-6)
    assert guard.read_grad_norm() == 0.0  # reset by the read


def test_grad_norm_is_measured_before_clipping():
    w = torch.nn.Parameter(torch.full((4,), 3.0))
    opt = torch.optim.SGD([w], lr=0.0)
    guard = GuardedStep(opt, torch.amp.GradScaler("cpu", enabled=False), [w], 0.5, w.device)
    (w**2).sum().backward()  # grad 6 per entry: norm 12
    guard.step(torch.tensor(1.0))
    assert guard.read_grad_norm() == pytest.approx(12.0)


def test_metrics_lines_carry_grad_norm_and_pictures_land_per_epoch(tmp_path):
    cfg = run_cfg(tmp_path, "pics", "train.epochs=2", "data.limit=16")
    _train(cfg)
    records = [
        json.loads(x) for x in (tmp_path / "pics" / "metrics.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if r["event"] == "train"]
    assert train and all(r["grad_norm"] > 0 for r in train)
    pictures = sorted((tmp_path / "pics" / "reconstructions").glob("step_*.png"))
    assert len(pictures) == 2  # one per saved epoch (the last save is the end's)


@pytest.mark.skipif(
    not _has("tensorboard"), reason="tensorboard not installed (mimkit[tensorboard])"
)
def test_tensorboard_events_are_written_and_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = run_cfg(tmp_path, "tb", "train.epochs=1", "data.limit=16", "train.loggers=[tensorboard]")
    _train(cfg)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for name in ("loss", "lr", "img_per_s", "grad_norm", "nonfinite_skipped"):
        assert f"train/{name}" in tags["scalars"]
    losses = [e.value for e in events.Scalars("train/loss")]
    logged = [
        json.loads(x)["loss"]
        for x in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["event"] == "train"
    ]
    assert losses == pytest.approx(logged)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    (image,) = events.Images("reconstructions")
    assert image.width > 0 and image.encoded_image_string.startswith(b"\x89PNG")


@pytest.mark.slow  # wandb starts its service process: ~5-10 s
@pytest.mark.skipif(not _has("wandb"), reason="wandb not installed (mimkit[wandb])")
def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = run_cfg(tmp_path, "wb", "train.epochs=1", "data.limit=16", "train.loggers=[wandb]")
    _train(cfg)
    (run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))


@pytest.mark.slow  # importing mlflow and its file store: ~5 s
@pytest.mark.skipif(not _has("mlflow"), reason="mlflow not installed (mimkit[mlflow])")
def test_mlflow_local_run_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = run_cfg(tmp_path, "ml", "train.epochs=1", "data.limit=16", "train.loggers=[mlflow]")
    _train(cfg)
    (loss,) = (tmp_path / "ml" / "mlruns").glob("*/*/metrics/loss")
    assert len(loss.read_text().splitlines()) == 2
    (param,) = (tmp_path / "ml" / "mlruns").glob("*/*/params/train.batch_size")
    assert param.read_text().strip() == "8"


def test_unknown_tracker_is_one_line_error(tmp_path, capsys):
    args = ["pretrain", "configs/fmnist_mae_tiny.yaml", f"out_dir={tmp_path}", "data.path=/nowhere"]
    code = main([*args, "train.loggers=[neptune]"])  # refused before the data is read
    assert_one_line_error(capsys, code, "train.loggers: unknown tracker 'neptune'")


def test_missing_tracker_package_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'mimkit\[tensorboard\]'"):
        trackers_mod.Trackers.open(["tensorboard"], tmp_path)
