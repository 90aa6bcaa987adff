"""Fine-tuning: resume is exact, pretrained weights arrive (resampled at a new resolution), it learns."""

import json
import logging

import pytest
import torch
from eval_helpers import make_learnable_idx, save_tiny_checkpoint
from safetensors.torch import load_file

from mimkit.errors import ConfigError
from mimkit.eval.finetune import build_classifier, finetune, split_settings
from mimkit.models.pos_embed import position_table
from mimkit.train.checkpoint import load_config_file, read_weights


@pytest.fixture()
def ckpt(tmp_path):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=32)
    folder, cfg, _ = save_tiny_checkpoint(tmp_path, data, seed=1)  # not the seed-0 scratch init
    return folder


def settings(**kw):
    """(train section, fine-tune section) from flat settings, as the command line gives them."""
    base = dict(epochs=2, batch_size=16, progress=False, warmup_epochs=0.5, seed=0)
    return split_settings({**base, **kw})


@pytest.mark.slow
def test_resume_is_bit_exact_with_mixing_and_drop_path(ckpt, tmp_path):
    cfg, weights = load_config_file(ckpt), read_weights(ckpt / "model.safetensors")
    kw = dict(drop_path=0.2, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    straight = finetune(cfg, weights, *settings(**kw), tmp_path / "straight")
    finetune(cfg, weights, *settings(max_steps=5, **kw), tmp_path / "resumed")
    resumed = finetune(cfg, weights, *settings(**kw), tmp_path / "resumed")
    assert straight.steps == resumed.steps == 8 and resumed.epochs == 2
    a = load_file(straight.checkpoint / "model.safetensors")
    b = load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight.top1 == resumed.top1
    with pytest.raises(ConfigError, match="other settings \\(layer_decay\\)"):
        finetune(cfg, weights, *settings(layer_decay=0.5, **kw), tmp_path / "resumed")


def test_pretrained_weights_load_and_pos_embed_is_resampled(ckpt, caplog):
    cfg, weights = load_config_file(ckpt), read_weights(ckpt / "model.safetensors")
    same = build_classifier(cfg.model, weights, 4, settings()[1])
    assert torch.equal(
        same.encoder.blocks[0].attn.qkv.weight, weights["encoder.blocks.0.attn.qkv.weight"]
    )
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        # head "norm" keeps the encoder's final norm (the fc_norm head drops it, as MAE's)
        bigger = build_classifier(
            cfg.model, weights, 4, settings(img_size=42, drop_path=0.1, head="norm")[1]
        )
    assert "resampled" not in caplog.text  # the fixed sin-cos table is regenerated, exactly
    expected = position_table("sincos", 32, (6, 6), cls_token=True)
    assert bigger.encoder.pos_embed.shape == (1, 37, 32)
    assert torch.equal(bigger.encoder.pos_embed, expected)
    assert torch.equal(bigger.encoder.norm.weight, weights["encoder.norm.weight"])
    assert bigger.encoder.blocks[1].drop_path.p == pytest.approx(0.1)
    out = bigger(torch.randn(2, 1, 42, 42))
    assert out.shape == (2, 4)
    scratch = build_classifier(cfg.model, None, 4, settings()[1])
    assert not torch.equal(
        scratch.encoder.blocks[0].attn.qkv.weight, weights["encoder.blocks.0.attn.qkv.weight"]
    )


@pytest.mark.slow
def test_finetune_learns_an_easy_task_at_a_new_resolution(ckpt, tmp_path):
    cfg = load_config_file(ckpt)
    cfg.data.hflip = False
    result = finetune(
        cfg,
        read_weights(ckpt / "model.safetensors"),
        *settings(epochs=6, base_lr=5e-3, img_size=35, layer_decay=0.9, pool="avg"),
        tmp_path / "ft",
    )
    assert result.top1 >= 0.75  # 4 classes: chance is 0.25
    assert (tmp_path / "ft" / "finetune.json").is_file()
    assert (tmp_path / "ft" / "checkpoint" / "trainer_state.json").is_file()


def test_specific_distillation_learns_a_frozen_teachers_classes(ckpt, tmp_path):
    import torch.nn.functional as F

    from mimkit.eval.finetune import load_classifier, specific_distillation_loss
    from mimkit.eval.mixup import soft_cross_entropy

    cfg, weights = load_config_file(ckpt), read_weights(ckpt / "model.safetensors")
    teacher_run = finetune(cfg, weights, *settings(epochs=1), tmp_path / "teacher")
    frozen = load_file(teacher_run.checkpoint / "model.safetensors")
    student_run = finetune(
        cfg, weights, *settings(epochs=1, teacher=str(teacher_run.checkpoint)), tmp_path / "student"
    )
    after = load_file(teacher_run.checkpoint / "model.safetensors")
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    student, _ = load_classifier(student_run.checkpoint)
    assert student.dist_head is not None and 0.0 <= student_run.top1 <= 1.0
    teacher, _ = load_classifier(teacher_run.checkpoint)
    assert teacher.dist_head is None and not any(p.requires_grad for p in teacher.parameters())

    x = torch.randn(4, 1, 28, 28)
    targets = F.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    logits, dist = student.both_heads(x)
    assert torch.allclose(student(x), (logits + dist) / 2)  # DeiT: both heads vote
    expected = 0.5 * soft_cross_entropy(logits, targets) + 0.5 * F.cross_entropy(
        dist, teacher(x).argmax(1)
    )
    assert torch.allclose(specific_distillation_loss(student, teacher, x, targets), expected)
    with pytest.raises(ConfigError, match="not a fine-tuned classifier"):
        load_classifier(ckpt)
    cfg.data.mean = [0.5]
    with pytest.raises(ConfigError, match="normalised with mean"):
        finetune(cfg, weights, *settings(teacher=str(teacher_run.checkpoint)), tmp_path / "bad")


@pytest.mark.parametrize("sync_free", [False, True])
def test_nonfinite_losses_are_skipped_counted_and_halt_like_pretraining(
    ckpt, tmp_path, monkeypatch, sync_free
):
    """A NaN loss must never reach the weights: skipped and counted, halting after max_nonfinite.

    `sync_free` forces the GPU path on the CPU (fused AdamW, the skip decided on the device)."""
    from mimkit.errors import TrainingHalted
    from mimkit.eval.finetune import ViTClassifier

    if sync_free:
        real_adamw = torch.optim.AdamW
        monkeypatch.setattr(
            torch.optim, "AdamW", lambda *a, **k: real_adamw(*a, **{**k, "fused": True})
        )
    cfg, weights = load_config_file(ckpt), read_weights(ckpt / "model.safetensors")
    real_forward = ViTClassifier.forward
    calls = {"n": 0, "bad": {2}}

    def sometimes_nan(self, x):
        calls["n"] += 1
        logits = real_forward(self, x)
        return logits * float("nan") if calls["n"] in calls["bad"] else logits

    monkeypatch.setattr(ViTClassifier, "forward", sometimes_nan)
    result = finetune(cfg, weights, *settings(max_steps=3, log_every=1), tmp_path / "one")
    after = load_file(result.checkpoint / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in after.values())
    assert result.steps == 3 and result.nonfinite_skipped == 1
    start = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0]
    assert json.loads(start)["sync_free_steps"] is sync_free

    calls.update(n=0, bad=set(range(1000)))
    with pytest.raises(TrainingHalted, match="halted after 3 non-finite losses"):
        finetune(cfg, weights, *settings(max_nonfinite=3, log_every=1), tmp_path / "halt")


TORCHRUN_FINETUNE = """
import sys
from pathlib import Path

from mimkit.eval.finetune import finetune, split_settings
from mimkit.train.checkpoint import load_config_file, read_weights

ckpt, out, parallel = sys.argv[1:4]
train, ft = split_settings(
    dict(
        epochs=1, batch_size=8, drop_path=0.0, warmup_epochs=0.5, progress=False, log_every=1,
        amp="off",
    )
)
train.parallel = parallel
finetune(load_config_file(Path(ckpt)), read_weights(Path(ckpt) / "model.safetensors"), train, ft, out)
"""


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_fine_tune_like_one_with_the_same_global_batch(ckpt, tmp_path, parallel):
    import subprocess
    import sys

    cfg, weights = load_config_file(ckpt), read_weights(ckpt / "model.safetensors")
    kw = dict(epochs=1, batch_size=16, drop_path=0.0, log_every=1)  # drop-path draws per rank
    # fp32 in both: the ranks differ from one process only in summation order, which bf16
    # (amp=auto on CPUs with bf16 hardware) would round far above 1e-5
    kw["amp"] = "off"
    one = finetune(cfg, weights, *settings(**kw), tmp_path / "one")
    script = tmp_path / "ft.py"
    script.write_text(TORCHRUN_FINETUNE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*cmd, str(script), str(ckpt), str(tmp_path / "two"), parallel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if json.loads(x)["event"] == "train"]

    start = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2 and start["parallel"] == parallel
    assert len(losses("one")) == one.steps == 4
    assert losses("two") == pytest.approx(losses("one"), rel=1e-5)
    a = load_file(one.checkpoint / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        x, y = b[key], a[key]
        if key.endswith("attn.qkv.bias"):
            # the key bias adds the same q.b_k to every logit of a row, which softmax ignores:
            # its gradient is rounding noise, and AdamW turns noise into lr-sized steps that
            # differ with the reduction order (this showed once the head started as a probe)
            third = len(x) // 3
            x, y = torch.cat([x[:third], x[2 * third :]]), torch.cat([y[:third], y[2 * third :]])
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=key)
