"""Every method preset trains through the one loop and reloads as the same kind of model."""

import pytest
import torch
from conftest import tiny_model_overrides
from test_data import make_idx_folder

from mimkit.config import load_config
from mimkit.errors import ConfigError
from mimkit.objectives.crossmae import CrossMAE
from mimkit.objectives.g2sd import G2SD
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.objectives.maskalign import MaskAlign
from mimkit.objectives.maskfeat import MaskFeat
from mimkit.objectives.mfm import MaskedFrequencyModel
from mimkit.objectives.simmim import SimMIM
from mimkit.train.checkpoint import load_model
from mimkit.train.loop import pretrain

PRESETS = {
    "configs/fmnist_mae_tiny.yaml": MaskedAutoencoder,
    "configs/fmnist_mae_block_tiny.yaml": MaskedAutoencoder,
    "configs/fmnist_colormae_green_tiny.yaml": MaskedAutoencoder,
    "configs/fmnist_simmim_tiny.yaml": SimMIM,
    "configs/fmnist_crossmae_tiny.yaml": CrossMAE,
    "configs/fmnist_maskfeat_tiny.yaml": MaskFeat,
    "configs/fmnist_mfm_tiny.yaml": MaskedFrequencyModel,
}


def short_run(tmp_path, preset, out, *extra):
    data = make_idx_folder(tmp_path / "idx", n_train=32, n_test=8)
    overrides = tiny_model_overrides(tmp_path / out) + [
        "data.source=idx", f"data.path={data}", "train.batch_size=8", "train.epochs=1",
        "train.max_steps=2", "eval.knn=false", *extra,
    ]  # fmt: skip
    return pretrain(load_config(preset, overrides))


@pytest.mark.parametrize("preset, kind", list(PRESETS.items()))
def test_preset_trains_and_reloads(tmp_path, preset, kind):
    result = short_run(tmp_path, preset, "run")
    assert type(result.model) is kind
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    model, cfg = load_model(result.checkpoint)
    assert type(model) is kind and cfg.method.name == result.cfg.method.name


def test_maskalign_preset_learns_from_a_frozen_teacher(tmp_path):
    teacher = short_run(tmp_path, "configs/fmnist_mae_tiny.yaml", "teacher")
    result = short_run(
        tmp_path,
        "configs/fmnist_maskalign_tiny.yaml",
        "student",
        f"method.teacher={teacher.checkpoint}",
    )
    assert isinstance(result.model, MaskAlign)
    reference = teacher.model.encoder.state_dict()
    teacher_state = result.model.teacher.model.state_dict()
    assert set(teacher_state) == set(reference)
    assert all(torch.equal(reference[k], v) for k, v in teacher_state.items())


def test_g2sd_preset_distils_a_teacher_and_reloads_without_it(tmp_path):
    teacher = short_run(tmp_path, "configs/fmnist_mae_vit12.yaml", "teacher", "model.patch_size=4")
    reference = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    result = short_run(
        tmp_path,
        "configs/fmnist_g2sd_student.yaml",
        "student",
        "model.patch_size=4",
        "model.embed_dim=16",
        "model.decoder_embed_dim=8",
        f"method.teacher={teacher.checkpoint}",
    )
    assert isinstance(result.model, G2SD)
    assert result.cfg.method.teacher_dim == 16  # the teacher's decoder width, saved with the run
    teacher_state = result.model.teacher.model.state_dict()
    assert set(teacher_state) == set(reference)
    assert all(torch.equal(reference[k], v) for k, v in teacher_state.items())
    for path in teacher.checkpoint.iterdir():
        path.unlink()
    teacher.checkpoint.rmdir()
    student, _ = load_model(result.checkpoint)  # the teacher is gone; the student still loads
    assert isinstance(student, G2SD) and student.teacher is None


def test_method_settings_are_checked():
    with pytest.raises(ConfigError, match="method.name must be one of"):
        load_config("configs/fmnist_mae_tiny.yaml", ["method.name=beit"])
    with pytest.raises(ConfigError, match="needs the checkpoint of a teacher"):
        load_config("configs/fmnist_mae_tiny.yaml", ["method.name=maskalign"])
    with pytest.raises(ConfigError, match="masking.mask_patch 3 must divide the patch grid 4x4"):
        load_config("configs/fmnist_simmim_tiny.yaml", ["masking.mask_patch=3"])
