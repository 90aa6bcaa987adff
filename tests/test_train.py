import json

import pytest
import torch
from conftest import tiny_model_overrides
from safetensors.torch import load_file
from test_data import make_idx_folder

from mimkit.config import load_config
from mimkit.errors import CheckpointError, ConfigError, TrainingHalted
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.checkpoint import load_model, save_checkpoint
from mimkit.train.loop import pretrain


def run_cfg(tmp_path, out, *extra):
    data = make_idx_folder(tmp_path / "idx", n_train=64, n_test=16)
    overrides = tiny_model_overrides(tmp_path / out) + [
        "data.source=idx",
        f"data.path={data}",
        "train.batch_size=8",
        "train.epochs=2",
        "train.log_every=1",
        "eval.knn=false",
        *extra,
    ]
    return load_config("configs/fmnist_mae_tiny.yaml", overrides)


def weights(folder):
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_resume_is_bit_exact(tmp_path, amp):
    """In fp32 and in bf16 autocast (what train.amp=auto picks on CPUs with bf16 hardware)."""
    # 8 steps per epoch, 2 epochs, accumulation 2 -> 8 optimiser steps; stop at 3, resume to the end
    same = ["train.accum_steps=2", "model.drop_path_rate=0.1", f"train.amp={amp}"]
    straight = pretrain(run_cfg(tmp_path, "straight", *same))
    pretrain(run_cfg(tmp_path, "resumed", *same, "train.max_steps=3"))
    resumed = pretrain(run_cfg(tmp_path, "resumed", *same))
    assert straight.steps == resumed.steps == 8
    a, b = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [x["step"] for x in lines if x["event"] == "train"] == list(range(1, 9))


def test_resume_refuses_a_different_model(tmp_path):
    pretrain(run_cfg(tmp_path, "run", "train.max_steps=1"))
    with pytest.raises(ConfigError, match="different model config"):
        pretrain(run_cfg(tmp_path, "run", "model.depth=3"))


def test_nonfinite_losses_skip_then_halt_keeping_last_checkpoint(tmp_path, monkeypatch):
    cfg = run_cfg(tmp_path, "nan", "train.max_nonfinite=3")
    pretrain(run_cfg(tmp_path, "nan", "train.max_steps=2"))
    good = weights(tmp_path / "nan" / "checkpoint")
    real_forward = MaskedAutoencoder.forward

    def nan_forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedAutoencoder, "forward", nan_forward)
    with pytest.raises(TrainingHalted, match="halted after 3 non-finite losses"):
        pretrain(cfg)
    after = weights(tmp_path / "nan" / "checkpoint")
    assert all(torch.equal(good[k], after[k]) for k in good)
    events = [
        json.loads(x)["event"]
        for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()
    ]
    assert events.count("nonfinite") == 3


def test_a_single_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    cfg = run_cfg(tmp_path, "one", "train.max_steps=4")
    real_forward = MaskedAutoencoder.forward
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("inf")
        return out

    monkeypatch.setattr(MaskedAutoencoder, "forward", sometimes_nan)
    result = pretrain(cfg)
    assert result.steps == 4 and result.nonfinite_skipped == 1
    assert all(torch.isfinite(v).all() for v in weights(result.checkpoint).values())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    result = pretrain(run_cfg(tmp_path, "atomic", "train.max_steps=1"))
    before = weights(result.checkpoint)
    import mimkit.train.checkpoint as ck

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(result.checkpoint, result.model, result.cfg)
    after = weights(result.checkpoint)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.name for p in result.checkpoint.parent.iterdir() if ".tmp-" in p.name] == []


def test_load_model_checks_the_architecture(tmp_path):
    result = pretrain(run_cfg(tmp_path, "arch", "train.max_steps=1"))
    model, cfg = load_model(result.checkpoint)
    assert cfg.model.depth == 2 and not model.training
    # a config that claims another depth no longer fits the stored weights
    text = (result.checkpoint / "config.yaml").read_text().replace("depth: 2", "depth: 3")
    (result.checkpoint / "config.yaml").write_text(text)
    with pytest.raises(
        CheckpointError, match=r"missing \d+ key\(s\), e\.g\. \['encoder\.blocks\.2"
    ):
        load_model(result.checkpoint)
    (result.checkpoint / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_model(result.checkpoint)


def test_metrics_and_checkpoint_files(tmp_path):
    result = pretrain(run_cfg(tmp_path, "files", "train.max_steps=2"))
    names = {p.name for p in result.checkpoint.iterdir()}
    assert {
        "model.safetensors",
        "config.yaml",
        "optimizer.safetensors",
        "rng.safetensors",
        "trainer_state.json",
    } <= names
    records = [
        json.loads(x) for x in (tmp_path / "files" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[0]["event"] == "start" and records[-1]["event"] == "end"
    train = [r for r in records if r["event"] == "train"]
    assert all({"loss", "lr", "img_per_s"} <= r.keys() for r in train)
