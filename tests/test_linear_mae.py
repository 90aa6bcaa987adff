"""MAE's linear protocol (`eval linear --protocol mae`) and its LARS optimiser."""

import json

import pytest
import torch
from eval_helpers import make_learnable_idx, save_tiny_checkpoint
from test_cli import assert_one_line_error

from mimkit.cli import main
from mimkit.eval import linear_mae
from mimkit.eval.linear_mae import MAEProbeSettings, linear_probe_mae, mae_probe_batch
from mimkit.models import ModelConfig, VisionTransformer
from mimkit.train.lars import LARS


def test_lars_step_is_the_trust_ratio_times_the_gradient_for_matrices_only():
    w = torch.nn.Parameter(torch.full((2, 2), 3.0))  # norm 6
    b = torch.nn.Parameter(torch.zeros(2))
    w.grad, b.grad = torch.full((2, 2), 0.5), torch.ones(2)  # grad norm 1
    LARS([w, b], lr=2.0, momentum=0.0, trust_coefficient=0.01).step()
    # matrix: lr * (0.01 * 6 / 1) * grad = 2 * 0.06 * 0.5; bias: plain SGD, lr * grad
    assert torch.allclose(w, torch.full((2, 2), 3.0 - 0.06))
    assert torch.allclose(b, torch.full((2,), -2.0))


def test_lars_weight_decay_skips_one_dimensional_parameters_and_zero_weights_step_plainly():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.ones(2))
    w.grad, b.grad = torch.ones(2, 2), torch.zeros(2)
    LARS([w, b], lr=1.0, weight_decay=0.5, momentum=0.0).step()
    assert torch.allclose(w, -torch.ones(2, 2))  # ||w|| = 0: no trust ratio, no NaN
    assert torch.equal(b, torch.ones(2))  # no decay on a bias


def test_probe_batch_follows_the_items_within_maes_range():
    assert mae_probe_batch(10_000) == 128
    assert mae_probe_batch(50) == 50
    assert mae_probe_batch(1_281_167) == 16384  # ImageNet: MAE's own batch


def _encoder(cls_token: bool = True) -> VisionTransformer:
    cfg = ModelConfig(img_size=8, in_chans=1, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                      decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2,
                      cls_token=cls_token, pool="cls" if cls_token else "avg")  # fmt: skip
    torch.manual_seed(0)
    return VisionTransformer(cfg)


def _bright_vs_dark(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % 2
    images = torch.where(labels.view(-1, 1, 1, 1) == 1, 220, 30).expand(n, 1, 8, 8)
    return images.to(torch.uint8).contiguous(), labels


def test_probe_crops_every_step_and_learns_an_easy_task(monkeypatch):
    calls = []
    crop = linear_mae.random_resized_crop_flip
    monkeypatch.setattr(
        linear_mae, "random_resized_crop_flip", lambda *a, **k: calls.append(1) or crop(*a, **k)
    )
    settings = MAEProbeSettings(epochs=10, warmup_epochs=1, batch_size=16)
    result = linear_probe_mae(
        _encoder(), _bright_vs_dark(64), _bright_vs_dark(32), [0.5], [0.25], settings
    )
    assert len(calls) == result.steps == 10 * 4  # a fresh augmentation at every step
    assert result.top1 == 1.0 and result.train_top1 == 1.0
    assert result.lr == pytest.approx(6.4) and result.pool == "cls"  # MAE's, not batch-scaled


def test_probe_is_deterministic_per_seed_and_falls_back_to_avg_without_cls(capsys):
    settings = MAEProbeSettings(epochs=2, warmup_epochs=0, batch_size=16, seed=3)
    runs = [
        linear_probe_mae(
            _encoder(False), _bright_vs_dark(64), _bright_vs_dark(8), [0.5], [0.25], settings
        )  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0].top1 == runs[1].top1 and runs[0].pool == "avg"
    assert "no cls token" in capsys.readouterr().out


def test_cli_protocol_mae_writes_its_own_record(tmp_path, capsys):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=16)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data)
    args = ["eval", "linear", str(folder), "--protocol", "mae", "--epochs", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "MAE protocol" in out and "train (un-augmented)" in out
    written = sorted((folder.parent / "eval").glob("eval_linear_mae*.json"))
    record = json.loads(written[0].read_text())
    assert record["protocol"] == "mae" and record["epochs"] == 2 and 0 <= record["top1"] <= 1
    assert not (folder.parent / "eval" / "eval_linear.json").exists()  # the cached probe's name
    assert_one_line_error(capsys, main([*args, "--block", "1"]), "--block")
