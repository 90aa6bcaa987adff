"""Official MAE .pth files (synthetic, official key names) and refusing malicious pickles."""

import argparse
import pickle
import subprocess
import sys

import pytest
import torch
from interop_helpers import random_checkpoint
from safetensors.torch import save_file

from mimkit.errors import CheckpointError
from mimkit.interop.convert import detect_format, import_checkpoint
from mimkit.interop.official_mae import mimkit_to_official
from mimkit.interop.safe_load import load_pickle_safely
from mimkit.train.checkpoint import load_model

OFFICIAL_DECODER_KEYS = {
    "mask_token",
    "decoder_embed.weight",
    "decoder_pos_embed",
    "decoder_blocks.0.attn.qkv.weight",
    "decoder_norm.weight",
    "decoder_pred.weight",
}


def official_state(model) -> dict[str, torch.Tensor]:
    state = mimkit_to_official(model.state_dict())
    assert set(state) >= OFFICIAL_DECODER_KEYS and "blocks.0.attn.qkv.weight" in state
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_full_visualize_layout_imports_exactly(tmp_path, suffix):
    model, _ = random_checkpoint(tmp_path / "ck", embed_dim=192, num_heads=3, decoder_embed_dim=32)
    path = tmp_path / f"mae_visualize{suffix}"
    if suffix == ".pth":
        torch.save({"model": official_state(model)}, path)
    else:
        save_file({k: v.contiguous() for k, v in official_state(model).items()}, path)
    assert detect_format(path) == "mae"
    result = import_checkpoint(path, tmp_path / "ours")
    assert result.has_decoder
    back, run = load_model(tmp_path / "ours")
    assert run.model.num_heads == 3 and run.model.decoder_num_heads == 16  # assumed, and noted
    assert run.method.norm_pix_loss is False and run.model.layer_norm_eps == 1e-6
    assert any("norm_pix_loss" in n for n in result.notes)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_training_checkpoint_with_args_namespace(tmp_path):
    model, _ = random_checkpoint(tmp_path / "ck", embed_dim=192, num_heads=3, decoder_embed_dim=32)
    args = argparse.Namespace(norm_pix_loss=True, mask_ratio=0.6, model="mae_vit_tiny")
    torch.save({"model": official_state(model), "epoch": 3, "args": args}, tmp_path / "ckpt.pth")
    import_checkpoint(tmp_path / "ckpt.pth", tmp_path / "ours")
    _, run = load_model(tmp_path / "ours")
    assert run.method.norm_pix_loss is True and run.masking.ratio == 0.6


def test_encoder_only_pretrain_layout(tmp_path):
    model, _ = random_checkpoint(tmp_path / "ck", embed_dim=192, num_heads=3)
    encoder = {k: v for k, v in official_state(model).items() if k in model.encoder.state_dict()}
    torch.save({"model": encoder}, tmp_path / "mae_pretrain.pth")
    result = import_checkpoint(tmp_path / "mae_pretrain.pth", tmp_path / "ours")
    assert result.fmt == "mae" and not result.has_decoder
    back, _ = load_model(tmp_path / "ours")
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(back.encoder.state_dict()[key], value), key


class WritesAFile:
    """Unpickling this would call open(marker, 'w'): the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"model": {"w": torch.zeros(2)}, "extra": WritesAFile(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_pickle_safely(path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        import_checkpoint(path, tmp_path / "out", fmt="mae")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_malicious_pickle_cli_says_one_line_and_exits_2(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"model": WritesAFile(marker)}, tmp_path / "evil.pth")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mimkit.cli",
            "import",
            str(tmp_path / "evil.pth"),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mimkit: error:")]
    assert len(errors) == 1 and "refused to unpickle" in errors[0] and "io.open" in errors[0]
    assert not marker.exists()


def test_non_tensor_entries_are_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1), "note": "hello"}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not tensors"):
        import_checkpoint(tmp_path / "odd.pth", tmp_path / "out", fmt="mae")
