"""mimkit as a library: load a checkpoint, encode images, pretrain from a config.

    import mimkit
    model = mimkit.load("runs/fmnist_mae_tiny")          # a run folder or a checkpoint folder
    features = model.encode(images)                      # (N, D) float32, the checkpoint's pooling
    features = mimkit.encode(images, "runs/fmnist_mae_tiny", pool="avg", block=6)
    cfg = mimkit.load_config("configs/fmnist_mae_tiny.yaml", ["train.epochs=1", "out_dir=runs/try"])
    run = mimkit.pretrain(cfg)                           # trains (or resumes), returns a Model

`images` are what the data readers produce: uint8 (N, C, H, W) (or (N, C, T, H, W) clips) at the
model's size, as a tensor or numpy array; a single image (C, H, W) or (H, W) is accepted too; as
are PIL images and image file paths, converted to the model's channels and resized (bicubic).
Features are deterministic: no mask, eval mode, normalised with the checkpoint's data.mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mimkit.config import RunConfig, load_config
from mimkit.data.folder import decode_image, to_channels
from mimkit.errors import ConfigError
from mimkit.eval.features import extract_features
from mimkit.objectives.base import MaskedMethod
from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir
from mimkit.train.loop import pretrain as _pretrain_loop
from mimkit.train.runtime import pick_device

__all__ = ["Model", "RunConfig", "encode", "load", "load_config", "pretrain"]

ImageInput = torch.Tensor | np.ndarray | Sequence[Image.Image | str | Path]


@dataclass
class Model:
    """A checkpoint in memory: the whole method (encoder and decoder/head) and its run config."""

    method: MaskedMethod
    cfg: RunConfig
    checkpoint: Path | None  # the folder it was loaded from or written to
    device: torch.device

    @property
    def encoder(self) -> torch.nn.Module:
        return self.method.encoder

    def encode(
        self,
        images: ImageInput,
        pool: str | None = None,
        block: int | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ) -> torch.Tensor:
        """(N, D) float32 features on the CPU; `pool` (cls|avg) and `block` (1..depth) default to
        the checkpoint's model.pool and the last block."""
        x = as_uint8_batch(images, self.cfg)
        return extract_features(
            self.method.encoder,
            x,
            self.cfg.data.mean,
            self.cfg.data.std,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            pool=pool,
            block=block,
        )


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """A run folder, a checkpoint folder or its model.safetensors -> Model (eval mode)."""
    folder = resolve_checkpoint_dir(path)
    dev = pick_device(str(device))
    method, cfg = load_model(folder, dev)
    return Model(method, cfg, folder, dev)


def encode(
    images: ImageInput,
    checkpoint: str | Path | Model,
    pool: str | None = None,
    block: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Features of `images` by the encoder of `checkpoint` (a path or a loaded Model)."""
    model = checkpoint if isinstance(checkpoint, Model) else load(checkpoint, device)
    return model.encode(images, pool=pool, block=block)


def pretrain(
    cfg: RunConfig | str | Path, overrides: Sequence[str] = (), resume: bool = True
) -> Model:
    """Pretrain (or resume, when cfg.out_dir holds a checkpoint) and return the trained model.

    `cfg` is a RunConfig (e.g. from `load_config`) or the path of a YAML preset; `overrides`
    are dotted `key=value` strings applied to a path (use `load_config` for a RunConfig)."""
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg, list(overrides))
    elif overrides:
        raise ConfigError("overrides apply to a config file; pass load_config(path, overrides)")
    result = _pretrain_loop(cfg, resume=resume)
    device = next(result.model.parameters()).device
    return Model(result.model.eval(), result.cfg, result.checkpoint, device)


def as_uint8_batch(images: ImageInput, cfg: RunConfig) -> torch.Tensor:
    """The accepted inputs of `encode` as one uint8 (N, C, *size) tensor, checked against cfg."""
    m = cfg.model
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if isinstance(images, Sequence) and not isinstance(images, (torch.Tensor, np.ndarray)):
        if len(m.input_size) != 2:
            raise ConfigError("encode: files and PIL images are for 2-D image models only")
        x = torch.stack([_one_image(item, m.in_chans, m.image_hw) for item in images])
    else:
        x = torch.as_tensor(images)
        spatial = len(m.input_size)
        if x.ndim == spatial:  # one grey image (H, W)
            x = x[None]
        if x.ndim == spatial + 1:  # one image (C, H, W)
            x = x[None]
    if x.dtype != torch.uint8:
        raise ConfigError(
            f"encode: expected uint8 images (0..255), got {x.dtype}; the checkpoint's "
            "data.mean/std are applied for you"
        )
    expected = (m.in_chans, *m.input_size)
    if tuple(x.shape[1:]) != expected:
        raise ConfigError(
            f"encode: expected images of shape (N, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}"
        )
    return x


def _one_image(
    item: Image.Image | str | Path, channels: int, size: tuple[int, int]
) -> torch.Tensor:
    if isinstance(item, (str, Path)):
        return decode_image(Path(item), channels, size)
    image = item
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    arr = to_channels(image, channels, "PIL image")
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()
