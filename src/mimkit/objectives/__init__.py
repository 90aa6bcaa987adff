"""Masked-modelling methods: one file each, one line each in `METHODS`.

A method is built from three config sections: the model's geometry (`model:`), what is hidden
(`masking:`) and the method's own settings (`method:`, a `MethodSettings` of the method's file).
The contract every method keeps is in `base.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.objectives.base import MethodOutput, MethodSettings
from mimkit.objectives.cae import CAESettings, ContextAutoencoder
from mimkit.objectives.croco import CroCo, CroCoSettings
from mimkit.objectives.croma import CROMA, CROMASettings
from mimkit.objectives.crossmae import CrossMAE, CrossMAESettings
from mimkit.objectives.dmae import DistilledMAE, DMAESettings
from mimkit.objectives.droppos import DropPos, DropPosSettings
from mimkit.objectives.g2sd import G2SD, G2SDSettings
from mimkit.objectives.hpm import HardPatchesMining, HPMSettings
from mimkit.objectives.ibot import IBOT, IBOTSettings
from mimkit.objectives.mae import MAESettings, MaskedAutoencoder, build_mae
from mimkit.objectives.maskalign import MaskAlign, MaskAlignSettings
from mimkit.objectives.maskfeat import MaskFeat, MaskFeatSettings
from mimkit.objectives.mfm import MaskedFrequencyModel, MFMSettings
from mimkit.objectives.mrmae import MimicReconstructMAE, MRMAESettings
from mimkit.objectives.multimae import MultiMAE, MultiMAESettings
from mimkit.objectives.point_cmae import PointCMAE, PointCMAESettings
from mimkit.objectives.point_mae import PointMAE, PointMAESettings
from mimkit.objectives.simmim import SimMIM, SimMIMSettings

# name -> (its settings section, the method); a method with a `teacher` setting takes the
# loaded teacher as a fourth argument
METHODS: dict[str, tuple[type[MethodSettings], Callable[..., nn.Module]]] = {
    "mae": (MAESettings, MaskedAutoencoder),
    "simmim": (SimMIMSettings, SimMIM),
    "crossmae": (CrossMAESettings, CrossMAE),
    "maskfeat": (MaskFeatSettings, MaskFeat),
    "maskalign": (MaskAlignSettings, MaskAlign),
    "mfm": (MFMSettings, MaskedFrequencyModel),
    "g2sd": (G2SDSettings, G2SD),
    "ibot": (IBOTSettings, IBOT),
    "hpm": (HPMSettings, HardPatchesMining),
    "cae": (CAESettings, ContextAutoencoder),
    "mrmae": (MRMAESettings, MimicReconstructMAE),
    "dmae": (DMAESettings, DistilledMAE),
    "droppos": (DropPosSettings, DropPos),
    "point_mae": (PointMAESettings, PointMAE),
    "point_cmae": (PointCMAESettings, PointCMAE),
    "croco": (CroCoSettings, CroCo),
    "multimae": (MultiMAESettings, MultiMAE),
    "croma": (CROMASettings, CROMA),
}

TeacherLoader = Callable[[str], nn.Module]


def settings_class(name: str) -> type[MethodSettings]:
    if name not in METHODS:
        raise ConfigError(f"method.name must be one of {list(METHODS)}, got {name!r}")
    return METHODS[name][0]


def build_method(
    model: ModelConfig,
    masking: MaskingConfig,
    settings: MethodSettings,
    load_teacher: TeacherLoader | None = None,
) -> nn.Module:
    """The method `settings.name` for a resolved model config.

    A teacher is loaded (by `load_teacher`, which reads checkpoints: the caller's layer) when
    its checkpoint exists; without it the method still builds from the recorded teacher width,
    so a student checkpoint loads, evaluates and exports alone.
    """
    _, method = METHODS[settings.name]
    if not hasattr(settings, "teacher"):
        return method(model, masking, settings)
    path = settings.teacher
    found = path is not None and load_teacher is not None and Path(path).exists()
    return method(model, masking, settings, load_teacher(path) if found else None)


__all__ = [
    "METHODS",
    "MAESettings",
    "MaskedAutoencoder",
    "MethodOutput",
    "MethodSettings",
    "build_mae",
    "build_method",
    "settings_class",
]
