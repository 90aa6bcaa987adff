"""MultiMAE: a Dirichlet-shared, fixed visible budget over modalities; loss on hidden patches."""

import pytest
import torch
from conftest import needs_fmnist, pretrain_multi_preset, tiny_model_config
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mimkit.cli.main import main
from mimkit.data.multi_synth import make_fmnist_modal
from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.config import resolve_model_config
from mimkit.objectives.multimae import MultiMAE, MultiMAESettings, dirichlet_counts
from mimkit.train.checkpoint import load_model

INPUTS = ["image", "depth", "seg"]


def build(ratio=0.75, alpha=1.0, channels=(3, 1, 2)):
    cfg = resolve_model_config(tiny_model_config(pool="avg"))
    settings = MultiMAESettings(inputs=dict(zip(INPUTS, channels, strict=True)), alpha=alpha)
    settings.check(cfg)
    torch.manual_seed(0)
    return MultiMAE(cfg, MaskingConfig(ratio=ratio), settings)


def scene(batch=4, channels=(3, 1, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(batch, c, 16, 16, generator=g) for n, c in zip(INPUTS, channels, strict=True)
    }


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 6),
    modalities=st.integers(1, 4),
    per_modality=st.integers(1, 20),
    share=st.floats(0.0, 1.0),
    alpha=st.sampled_from([0.05, 0.5, 1.0, 4.0]),
    seed=st.integers(0, 2**16),
)
# a small alpha once underflowed every float32 Gamma draw of a row to 0: no share, short budget
@example(batch=1, modalities=1, per_modality=2, share=1.0, alpha=0.05, seed=0)
def test_the_visible_budget_is_exact_for_every_sample(
    batch, modalities, per_modality, share, alpha, seed
):
    total = round(share * modalities * per_modality)
    g = torch.Generator().manual_seed(seed)
    counts = dirichlet_counts(batch, modalities, total, per_modality, alpha, "cpu", g)
    assert counts.shape == (batch, modalities)
    assert (counts.sum(dim=1) == total).all()
    assert (counts >= 0).all() and (counts <= per_modality).all()


def test_the_mask_keeps_the_budget_across_modalities_with_dirichlet_shares():
    model = build(ratio=0.75)
    n = model.cfg.num_patches  # 16 per modality, 48 in all: 12 visible
    mask = model.draw_mask(64, "cpu", torch.Generator().manual_seed(1))
    visible = (1 - mask.binary).reshape(64, 3, n).sum(dim=2)
    assert model.visible_tokens == 12
    assert (visible.sum(dim=1) == 12).all() and mask.ids_keep.shape == (64, 12)
    # the shares differ from sample to sample (not a fixed split), and every modality is seen
    assert len({tuple(v.tolist()) for v in visible}) > 10
    assert (visible.sum(dim=0) > 0).all()
    # rows of a global draw are what the loop hands each process
    assert torch.equal(mask.select(slice(2, 5)).ids_keep, mask.ids_keep[2:5])


def test_a_small_alpha_concentrates_the_budget_on_fewer_modalities():
    g = torch.Generator().manual_seed(0)
    sparse = dirichlet_counts(2000, 3, 24, 48, 0.05, "cpu", g)
    even = dirichlet_counts(2000, 3, 24, 48, 50.0, "cpu", g)
    assert (sparse.max(dim=1).values == 24).float().mean() > 0.5  # one modality takes all
    assert (even.max(dim=1).values <= 12).float().mean() > 0.9


def test_the_loss_reads_only_hidden_patches_of_each_modality():
    model = build()
    images = scene()
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    outputs = {}
    for name, decoder in model.decoders.items():
        decoder.register_forward_hook(lambda mod, args, out, name=name: outputs.update({name: out}))
        decoder.register_forward_hook(lambda mod, args, out: out.retain_grad())
    out = model(images, mask=mask)
    out.loss.backward()
    hidden = mask.binary.split(model.cfg.num_patches, dim=1)
    for name, h in zip(INPUTS, hidden, strict=True):
        grad = outputs[name].grad.abs().sum(dim=-1)  # (B, N)
        assert (grad[h == 0] == 0).all(), name  # visible patches cost nothing
        assert (grad[h == 1] > 0).all(), name


def test_evaluation_takes_any_subset_of_the_modalities():
    model = build()
    images = scene()
    everything = model.encode(images)
    without_seg = model.encode({"image": images["image"], "depth": images["depth"]})
    depth_only = model.encode({"depth": images["depth"]})
    assert everything.shape == without_seg.shape == depth_only.shape == (4, 32)
    assert not torch.allclose(everything, without_seg)
    assert torch.allclose(model.encode(images["image"]), model.encode({"image": images["image"]}))
    # the first modality's encoder alone is a plain ViT: its features are the method's
    assert torch.allclose(model.encoder.features(images["image"]), model.encode(images["image"]))
    with pytest.raises(ValueError, match="inputs are"):
        model.encode({"normals": images["depth"]})


def test_training_needs_every_modality_and_takes_seeded_draws():
    model = build()
    images = scene()
    with pytest.raises(ValueError, match="expected a dict"):
        model({"image": images["image"]})
    a = model(images, generator=torch.Generator().manual_seed(3))
    b = model(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask.ids_keep, b.mask.ids_keep) and torch.equal(a.loss, b.loss)
    assert a.pred.shape == (4, 16, 16 * (3 + 1 + 2))


def test_settings_are_checked_against_the_model():
    cfg = resolve_model_config(tiny_model_config(pool="avg"))
    with pytest.raises(ConfigError, match="model.in_chans"):
        MultiMAESettings(inputs={"image": 1, "depth": 1}).check(cfg)
    with pytest.raises(ConfigError, match=">= 1 channel"):
        MultiMAESettings(inputs={"image": 3, "depth": 0}).check(cfg)
    with pytest.raises(ConfigError, match="method.alpha"):
        MultiMAESettings(inputs={"image": 3, "depth": 1}, alpha=0.0).check(cfg)


@needs_fmnist
@pytest.mark.slow  # makes its scenes from the whole of Fashion-MNIST
def test_the_preset_trains_reloads_evaluates_and_exports_through_the_cli(tmp_path, capsys):
    root = make_fmnist_modal(tmp_path / "scenes", train=8, test=6, size=16, progress=False)
    run = tmp_path / "run"
    pretrain_multi_preset("configs/fmnist_multimae_tiny.yaml", root, run, capsys)
    assert main(["export", str(run), "--to", "safetensors", str(tmp_path / "exported")]) == 0
    model, cfg = load_model(tmp_path / "exported")
    assert cfg.method.name == "multimae" and list(cfg.method.inputs) == INPUTS
    assert model.encode({"depth": torch.randn(2, 1, 16, 16)}).shape == (2, 32)
