"""`model.init_from`: a new pretraining run that starts from existing weights (issue 16)."""

import json

import numpy as np
import pytest
import torch
from interop_helpers import random_checkpoint, randomise_
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.config import load_config
from mimkit.errors import ConfigError
from mimkit.interop.convert import export_checkpoint
from mimkit.interop.hf import hf_state_to_mimkit
from mimkit.interop.official_mae import mimkit_to_official
from mimkit.train import loop
from mimkit.train.checkpoint import load_model

IMAGENET = ["data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]"]


def image_folder(folder, n, side, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def run_overrides(data, out, *extra):
    return [
        "data.source=folder",
        f"data.path={data}",
        *IMAGENET,
        "train.batch_size=2",
        "train.epochs=1",
        "train.log_every=1",
        "train.progress=false",
        "train.device=cpu",
        "train.compile=false",
        "eval.reconstruction_images=0",
        f"out_dir={out}",
        *extra,
    ]


@pytest.fixture
def recorded(monkeypatch):
    """Every micro-batch's (images, mask, loss) as the loop asks for it, and the weights the
    method held at its first one (before any optimiser step)."""
    calls, first_state = [], {}
    original = loop.MaskedLoss.__call__

    def call(self, x, batch, rows, draw):
        state = self.generator.get_state()
        if not first_state:
            first_state.update({k: v.clone() for k, v in self.model.state_dict().items()})
        mask = loop.draw_mask(self.model, x, self.generator, rows, self.global_batch)
        self.generator.set_state(state)  # the loop's own call draws this same mask again
        loss = original(self, x, batch, rows, draw)
        calls.append((x.detach().clone(), mask, loss.detach().clone()))
        return loss

    monkeypatch.setattr(loop.MaskedLoss, "__call__", call)
    return calls, first_state


def noise_for(mask):
    """transformers' ViTMAE keeps the lowest-noise patches: a noise whose argsort is ours."""
    return mask.ids_restore.float() / mask.num_patches


def test_vit_mae_base_shaped_hf_folder_starts_a_run_with_the_same_first_loss(tmp_path, recorded):
    """vit-mae-base's shapes (768 wide, 12 heads, patch 16 at 224, decoder 512 x 16 heads,
    norm-pix) with random weights; the depth is cut to 1 encoder and 1 decoder block so the
    test stays fast: every block has vit-mae-base's own shapes."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(
        num_hidden_layers=1, decoder_num_hidden_layers=1, norm_pix_loss=True
    )
    assert (config.hidden_size, config.num_attention_heads, config.patch_size) == (768, 12, 16)
    assert (config.decoder_hidden_size, config.decoder_num_attention_heads) == (512, 16)
    hf_model = randomise_(transformers.ViTMAEForPreTraining(config)).eval()
    hf_model.save_pretrained(tmp_path / "vit-mae-base-shaped")
    data = image_folder(tmp_path / "images", 4, 224)
    cfg = load_config(
        None,
        run_overrides(
            data, tmp_path / "run", f"model.init_from={tmp_path / 'vit-mae-base-shaped'}",
            "train.max_steps=1", "method.norm_pix_loss=true", "model.decoder_depth=8",
            "train.amp=off",  # the loss is compared with transformers' fp32 forward to 1e-5
        ),
    )  # fmt: skip
    model = mimkit.pretrain(cfg)
    calls, first_state = recorded
    source = hf_state_to_mimkit(hf_model.state_dict(), "test")
    assert set(first_state) == set(source)  # every weight, encoder and decoder
    for key, value in source.items():
        assert torch.equal(first_state[key], value), key
    x, mask, loss = calls[0]
    with torch.no_grad():
        theirs = hf_model(x, noise=noise_for(mask))
    torch.testing.assert_close(theirs.mask, mask.binary, atol=0, rtol=0)
    torch.testing.assert_close(loss, theirs.loss, atol=1e-5, rtol=1e-5)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["loss"] for r in lines if r.get("event") == "train"]
    assert len(logged) == 1 and logged[0] == pytest.approx(loss.item(), abs=1e-6)
    trained = model.method.state_dict()["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(trained, source["encoder.blocks.0.attn.qkv.weight"])
    m = model.cfg.model
    assert (m.embed_dim, m.depth, m.num_heads, m.decoder_depth) == (768, 1, 12, 1)
    record = json.loads((tmp_path / "run" / "source.json").read_text())
    assert record["format"] == "hf" and record["decoder"] == "imported"
    said = "model.decoder_depth 1 from the source (the run's config said 8)"
    assert said in record["assumptions"]


def tiny_source(folder, **kw):
    model, _ = random_checkpoint(folder, **kw)
    return model


def test_a_new_grid_resamples_the_tables_and_an_encoder_only_source_keeps_a_fresh_decoder(
    tmp_path,
):
    tiny_source(tmp_path / "ck")
    export_checkpoint(tmp_path / "ck", "timm", tmp_path / "timm")  # encoder only
    data = image_folder(tmp_path / "images", 4, 24)
    cfg = load_config(
        None,
        run_overrides(data, tmp_path / "run", f"model.init_from={tmp_path / 'timm'}",
                      "model.img_size=24", "train.max_steps=1", "model.decoder_embed_dim=16",
                      "model.decoder_depth=1", "model.decoder_num_heads=2"),
    )  # fmt: skip
    mimkit.pretrain(cfg)
    record = json.loads((tmp_path / "run" / "source.json").read_text())
    assert record["format"] == "timm"
    assert record["decoder"] == "freshly initialised (source has none)"
    assert record["position_tables"].startswith("resampled from grid [4, 4] to [6, 6]")
    trained, run = load_model(tmp_path / "run")
    assert run.model.grid_shape == (6, 6) and run.model.init_from == str(tmp_path / "timm")
    assert (run.model.decoder_embed_dim, run.model.decoder_depth) == (16, 1)  # the run's own


def test_an_out_dir_with_another_runs_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    tiny_source(tmp_path / "ck")
    tiny_source(tmp_path / "run" / "checkpoint", seed=1)  # a run from scratch lives there
    data = image_folder(tmp_path / "images", 4, 16)
    args = run_overrides(data, tmp_path / "run", f"model.init_from={tmp_path / 'ck'}")
    with pytest.raises(ConfigError, match="already holds a checkpoint of another run"):
        mimkit.pretrain(load_config(None, args + ["model.img_size=16"]))
    (tmp_path / "run.yaml").write_text("model:\n  img_size: 16\n")
    assert main(["pretrain", str(tmp_path / "run.yaml"), *args, "--no-eval"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a checkpoint" in err[0] and "Traceback" not in err[0]
    # --no-resume says which was meant: a new run from the source's weights
    assert main(["pretrain", str(tmp_path / "run.yaml"), *args, "train.max_steps=1",
                 "--no-eval", "--no-resume"]) == 0  # fmt: skip


def test_the_same_command_resumes_its_own_run_and_never_reloads_the_source(tmp_path):
    source = tiny_source(tmp_path / "ck")
    data = image_folder(tmp_path / "images", 4, 16)
    args = run_overrides(data, tmp_path / "run", f"model.init_from={tmp_path / 'ck'}",
                         "model.img_size=16")  # fmt: skip
    first = mimkit.pretrain(load_config(None, [*args, "train.max_steps=1"]))
    assert first.cfg.model.init_from == str(tmp_path / "ck")
    after_one = {k: v.clone() for k, v in first.method.state_dict().items()}
    moved = after_one["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(moved, source.state_dict()["encoder.blocks.0.attn.qkv.weight"])
    again = mimkit.pretrain(load_config(None, [*args, "train.epochs=2"]))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(s).get("event") == "start" for s in lines) == 1  # resumed, not restarted
    assert json.loads(lines[-1])["step"] == 4  # 2 epochs of 2 steps
    assert not torch.equal(again.method.state_dict()["encoder.blocks.0.attn.qkv.weight"],
                           after_one["encoder.blocks.0.attn.qkv.weight"])  # fmt: skip


def test_init_from_needs_its_weights_read_and_a_readable_source(tmp_path):
    tiny_source(tmp_path / "ck")
    data = image_folder(tmp_path / "images", 2, 16)
    cfg = load_config(None, run_overrides(data, tmp_path / "run",
                                          f"model.init_from={tmp_path / 'ck'}"))  # fmt: skip
    with pytest.raises(ConfigError, match="its weights were not read"):
        loop.pretrain(cfg)  # the loop alone cannot read a foreign checkpoint
    with pytest.raises(mimkit.errors.CheckpointError, match="not found"):
        mimkit.pretrain(load_config(None, run_overrides(data, tmp_path / "r2",
                                                        f"model.init_from={tmp_path / 'nope'}")))  # fmt: skip
    with pytest.raises(ConfigError, match="model.init_from is empty"):
        load_config(None, ["model.init_from=''"])


def test_an_official_mae_pth_starts_a_run_with_every_weight_and_its_assumptions(
    tmp_path, recorded
):
    source = tiny_source(tmp_path / "ck", embed_dim=192, num_heads=3, decoder_embed_dim=32)
    torch.save({"model": mimkit_to_official(source.state_dict())}, tmp_path / "mae_visualize.pth")
    data = image_folder(tmp_path / "images", 2, 16)
    cfg = load_config(None, run_overrides(data, tmp_path / "run", "model.img_size=16",
                                          f"model.init_from={tmp_path / 'mae_visualize.pth'}",
                                          "train.max_steps=1"))  # fmt: skip
    mimkit.pretrain(cfg)
    _, first_state = recorded
    assert set(first_state) == set(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(first_state[key], value), key
    record = json.loads((tmp_path / "run" / "source.json").read_text())
    assert record["format"] == "mae" and record["decoder"] == "imported"
    assert any("heads assumed" in note for note in record["assumptions"])
