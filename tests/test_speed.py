"""The speed options: sync-free non-finite skipping, activation checkpointing, compile choice."""

import json

import pytest
import torch
from conftest import tiny_model_config, tiny_model_overrides
from test_data import make_idx_folder

from mimkit.config import load_config
from mimkit.errors import ConfigError
from mimkit.objectives.mae import MaskedAutoencoder, build_mae
from mimkit.train.speed import checkpoint_blocks, to_device_async, want_compile
from mimkit.train.step import GuardedStep, supports_sync_free

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_mae():
    cfg = tiny_model_config(img_size=28, in_chans=1, patch_size=7)
    torch.manual_seed(0)
    return build_mae(cfg)


def fused_guard(model, clip=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return GuardedStep(opt, scaler, list(model.parameters()), clip, torch.device("cpu")), opt


def test_sync_free_step_skips_a_nonfinite_loss_without_reading_it_back(monkeypatch):
    model = tiny_mae()
    guard, opt = fused_guard(model, clip=1.0)
    assert guard.sync_free and supports_sync_free(opt, guard.scaler)
    x = torch.randn(4, 1, 28, 28)
    gen = torch.Generator().manual_seed(0)

    def item_is_a_host_sync(self):
        raise AssertionError("sync-free step read a tensor back")

    # a good step moves the weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(x, generator=gen).loss
    loss.backward()
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", item_is_a_host_sync)
        assert guard.step(loss) is None
    assert not torch.equal(before["encoder.cls_token"], model.state_dict()["encoder.cls_token"])
    # a non-finite step leaves weights and optimiser moments exactly as they were
    good = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    bad = model(x, generator=gen).loss * float("nan")
    bad.backward()
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", item_is_a_host_sync)
        guard.step(bad)
    for key, value in model.state_dict().items():
        assert torch.equal(value, good[key]), key
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, moments[id(p)][k]), k
    skipped, loss_sum, applied = guard.read_back()
    assert (skipped, applied) == (1, 1)
    assert loss_sum == pytest.approx(loss.item())
    assert guard.read_back() == (0, 0.0, 0)


def test_checked_step_is_used_without_a_fused_optimiser():
    model = tiny_mae()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    guard = GuardedStep(opt, scaler, list(model.parameters()), None, torch.device("cpu"))
    assert not guard.sync_free
    with pytest.raises(ValueError, match="fused"):
        GuardedStep(opt, scaler, [], None, torch.device("cpu"), sync_free=True)
    loss = model(torch.randn(2, 1, 28, 28)).loss * float("inf")
    loss.backward()
    assert guard.step(loss) is False
    assert all(p.grad is None for p in model.parameters())


def test_activation_checkpointing_recomputes_blocks_with_the_same_gradients():
    x = torch.randn(3, 1, 28, 28)
    plain, ckpt = tiny_mae(), tiny_mae()
    assert checkpoint_blocks(ckpt) == 3  # 2 encoder blocks + 1 decoder block
    assert checkpoint_blocks(ckpt) == 0  # idempotent
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    calls = {"n": 0}
    ckpt.encoder.blocks[0].attn.register_forward_hook(
        lambda *a: calls.__setitem__("n", calls["n"] + 1)
    )
    losses = []
    for model in (plain, ckpt):
        loss = model(x, generator=torch.Generator().manual_seed(1)).loss
        loss.backward()
        losses.append(loss)
    assert calls["n"] == 2  # forward, then again in backward
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_compile_choice_and_copies():
    assert want_compile("auto", torch.device("cuda")) and not want_compile(
        "auto", torch.device("cpu")
    )
    assert want_compile(True, torch.device("cpu")) and not want_compile(False, torch.device("cuda"))
    with pytest.raises(ConfigError, match="train.compile must be auto, true or false"):
        want_compile("yes", torch.device("cpu"))
    images = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_device_async(images, torch.device("cpu")), images)


@needs_cuda
@pytest.mark.gpu
def test_pinned_async_copy_on_gpu():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = to_device_async(images, torch.device("cuda"))
    torch.cuda.synchronize()
    assert out.is_cuda and out.dtype == torch.uint8 and torch.equal(out.cpu(), images)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_pretrain_uses_bf16_fused_sync_free_steps_and_compile(tmp_path):
    from mimkit.train.loop import pretrain

    data = make_idx_folder(tmp_path / "idx", n_train=64, n_test=16)
    cfg = load_config(
        "configs/fmnist_mae_tiny.yaml",
        tiny_model_overrides(tmp_path / "gpu")
        + ["data.source=idx", f"data.path={data}", "train.batch_size=16", "train.epochs=1"]
        + ["train.log_every=1", "eval.knn=false", "train.compile=true"],
    )
    result = pretrain(cfg)
    start = json.loads((tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["sync_free_steps"] and start["compile"] and "bfloat16" in start["amp"]
    assert result.steps == 4 and result.nonfinite_skipped == 0


def test_loop_with_sync_free_steps_skips_counts_and_halts(tmp_path, monkeypatch):
    """The GPU path of the loop (fused AdamW, device-side skip), forced on the CPU."""
    from mimkit.errors import TrainingHalted
    from mimkit.train import loop

    real_adamw, real_forward = torch.optim.AdamW, MaskedAutoencoder.forward
    monkeypatch.setattr(
        torch.optim, "AdamW", lambda *a, **k: real_adamw(*a, **{**k, "fused": True})
    )
    calls = {"n": 0, "bad": {2}}

    def sometimes_nan(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in calls["bad"]:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedAutoencoder, "forward", sometimes_nan)
    data = make_idx_folder(tmp_path / "idx", n_train=64, n_test=16)

    def cfg(out, *extra):
        return load_config(
            "configs/fmnist_mae_tiny.yaml",
            tiny_model_overrides(tmp_path / out)
            + ["data.source=idx", f"data.path={data}", "train.batch_size=8", "eval.knn=false"]
            + ["train.log_every=2", *extra],
        )

    result = loop.pretrain(cfg("one", "train.max_steps=4"))
    records = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["sync_free_steps"] is True
    # the skipped step keeps its number on this path: 4 steps, one of them skipped
    assert result.steps == 4 and result.nonfinite_skipped == 1
    assert [r["count"] for r in records if r["event"] == "nonfinite"] == [1]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

    calls.update(n=0, bad=set(range(100)))
    with pytest.raises(TrainingHalted, match="halted after 4 non-finite losses"):
        loop.pretrain(cfg("halt", "train.max_nonfinite=3"))
