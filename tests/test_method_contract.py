"""The method contract (objectives/base.py) and the config by concern, for every method."""

import pytest
import torch
from conftest import needs_fmnist, tiny_model_overrides
from torch import nn

from mimkit.config import build_run_config, config_from_dict, config_to_dict, load_config
from mimkit.errors import ConfigError
from mimkit.objectives import METHODS
from mimkit.objectives.base import EMATeacher, FrozenTeacher, MethodOutput, update_teachers
from mimkit.train.checkpoint import method_from_config

PRESETS = {
    "mae": "configs/fmnist_mae_tiny.yaml",
    "simmim": "configs/fmnist_simmim_tiny.yaml",
    "crossmae": "configs/fmnist_crossmae_tiny.yaml",
    "maskfeat": "configs/fmnist_maskfeat_tiny.yaml",
    "mfm": "configs/fmnist_mfm_tiny.yaml",
}


def tiny(preset, *overrides, out="runs/unused"):
    return load_config(preset, tiny_model_overrides(out) + list(overrides))


def test_every_method_is_composed_not_inherited():
    for name, (settings, method) in METHODS.items():
        assert settings.name == name
        assert method.__bases__ == (nn.Module,), f"{name} subclasses {method.__bases__}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_method_keeps_the_contract(name):
    cfg = tiny(PRESETS[name])
    torch.manual_seed(0)
    model = method_from_config(cfg).train()
    images = torch.randn(4, 1, 28, 28)
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0)).select(slice(1, 3))
    out = model(images[1:3], mask=mask)
    assert isinstance(out, MethodOutput) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    again = model(images[1:3], generator=torch.Generator().manual_seed(0))
    assert isinstance(again, MethodOutput)
    assert model.encode(images).shape == (4, cfg.model.embed_dim)
    assert model.settings == cfg.method and model.cfg == cfg.model


def test_crossmae_reads_predict_fraction_from_the_config():
    """Bug: the builder called CrossMAE(cfg) and the constructor's 0.25 always won."""
    for override in ("method.predict_fraction=0.5", "model.predict_fraction=0.5"):  # new, 0.1
        cfg = tiny(PRESETS["crossmae"], override)
        model = method_from_config(cfg)
        out = model(torch.randn(2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
        patches = out.mask.ids_masked.shape[1] + out.mask.ids_keep.shape[1]
        assert out.predicted.shape == (2, round(patches * 0.5))  # of all patches, as the reference


def test_simmim_without_a_cls_token_trains():
    """Bug: cls_token false + pool avg passed validation, then crashed on a size mismatch."""
    cfg = tiny(PRESETS["simmim"], "model.cls_token=false", "model.pool=avg")
    model = method_from_config(cfg)
    out = model(torch.randn(2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 16, 49) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.mask_token.grad.abs().sum() > 0


def test_frozen_teacher_moves_with_its_method_but_is_not_saved_or_trained():
    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(3, 3)
            self.teacher = FrozenTeacher(nn.Linear(3, 3))

    student = Student().train()
    assert set(student.state_dict()) == {"encoder.weight", "encoder.bias"}
    assert not student.teacher.training and not student.teacher.model.training
    assert not any(p.requires_grad for p in student.teacher.parameters())
    student = student.to(torch.float64)
    assert student.teacher.model.weight.dtype == torch.float64
    student.load_state_dict(Student().to(torch.float64).state_dict())


def test_ema_teacher_follows_its_student_at_the_given_momentum():
    student = nn.Linear(4, 2)
    teacher = EMATeacher(student)
    start = teacher.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)

    class Method(nn.Module):
        def ema_pairs(self, progress):
            return [(teacher, student, 0.9)]

    update_teachers(Method(), 0.5)
    torch.testing.assert_close(teacher.model.weight, 0.9 * start + 0.1 * student.weight)
    assert set(teacher.state_dict()) == {"model.weight", "model.bias"}  # saved: resume needs it
    assert not any(p.requires_grad for p in teacher.parameters())
    update_teachers(nn.Linear(1, 1), 0.5)  # no EMA teacher: nothing happens


def test_config_has_one_section_per_concern_and_round_trips():
    cfg = tiny(PRESETS["crossmae"], "masking.ratio=0.6", "method.mix_layers=false")
    tree = config_to_dict(cfg)
    assert list(tree)[:3] == ["model", "masking", "method"]
    assert "mask_ratio" not in tree["model"] and "method" not in tree["model"]
    assert tree["method"]["name"] == "crossmae" and tree["masking"]["ratio"] == 0.6
    assert config_from_dict(tree) == cfg


def test_0_1_flat_model_sections_migrate_to_their_concerns():
    tree = {"model": {"img_size": 28, "in_chans": 1, "patch_size": 7, "method": "maskfeat",
                      "mask_ratio": 0.6, "masking": "block", "hog_bins": 12,
                      "norm_pix_loss": True, "predict_fraction": 0.25}}  # fmt: skip
    cfg = build_run_config(tree)
    assert cfg.masking.strategy == "block" and cfg.masking.ratio == 0.6
    assert cfg.method.name == "maskfeat" and cfg.method.hog_bins == 12
    with pytest.raises(ConfigError, match="disagree"):
        build_run_config({"model": {"method": "mae"}, "method": {"name": "simmim"}})


def test_method_settings_are_refused_by_their_own_name():
    with pytest.raises(ConfigError, match="method.predict_fraction must be in"):
        tiny(PRESETS["crossmae"], "method.predict_fraction=0")
    with pytest.raises(ConfigError, match="unknown config key 'method.hog_bins'"):
        tiny(PRESETS["mae"], "method.hog_bins=3")
    with pytest.raises(ConfigError, match="masking.ratio must be in"):
        tiny(PRESETS["mae"], "masking.ratio=1.0")
    with pytest.raises(ConfigError, match="masking.strategy must be one of"):
        tiny(PRESETS["mae"], "masking.strategy=checkers")


@needs_fmnist
def test_the_loop_moves_ema_teachers_after_every_optimiser_step(tmp_path, monkeypatch):
    from mimkit.train import loop

    seen = []
    monkeypatch.setattr(loop, "update_teachers", lambda model, progress: seen.append(progress))
    cfg = tiny(PRESETS["mae"], "data.limit=64", "train.batch_size=16", "train.epochs=2",
               "train.max_steps=3", out=tmp_path)  # fmt: skip
    result = loop.pretrain(cfg)
    assert result.steps == 3 and seen == [1 / 8, 2 / 8, 3 / 8]  # 4 steps an epoch, 2 epochs
