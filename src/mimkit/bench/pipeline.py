"""The input pipeline alone: how many images per second reach the model, augmented on the device.

Two paths, both ending where the model starts (uint8 batch -> device -> normalise ->
random-resized-crop/flip), through the loop's own `TrainSource` and `prepare_batch`:

* **image folder**: JPEG files decoded by PIL in DataLoader workers;
* **in memory**: a uint8 tensor indexed per batch (what IDX/NumPy sources do).

Compare these img/s with the training step's: whichever is lower bounds training.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from mimkit.config import RunConfig
from mimkit.data.config import DataConfig
from mimkit.data.sources import TrainSource
from mimkit.errors import ConfigError
from mimkit.train.loop import prepare_batch

from .step import synchronize


def synthetic_images(n: int, channels: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 images (blurred noise: JPEG sizes close to photos', unlike pure noise)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, channels, max(1, hw[0] // 8), max(1, hw[1] // 8), generator=gen)
    big = torch.nn.functional.interpolate(small, size=hw, mode="bicubic", align_corners=False)
    noise = 0.05 * torch.randn(n, channels, *hw, generator=gen)
    return ((big + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def write_image_folder(root: Path, images: torch.Tensor, quality: int = 90) -> Path:
    """Write `images` as JPEG files under `root/0/`, the layout the folder source reads."""
    folder = Path(root) / "0"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        arr = image.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else np.ascontiguousarray(arr))
        pil.save(folder / f"{i:06d}.jpg", quality=quality)
    return Path(root)


def time_source(
    source: TrainSource, cfg: RunConfig, batch: int, device: torch.device, desc: str
) -> dict:
    """Images per second over one epoch of `source`, first batch excluded (worker start-up)."""
    generator = torch.Generator(device).manual_seed(0)
    steps = source.steps_per_epoch(batch)
    done, start = 0, None
    for b in tqdm(source.batches(0, batch), total=steps, desc=desc, leave=False):
        prepare_batch(b.images, cfg, device, generator)
        if start is None:
            synchronize(device)
            start = time.perf_counter()
            continue
        done += b.images.shape[0]
    synchronize(device)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return {
        "images": done,
        "seconds": round(seconds, 3),
        "img_per_s": round(done / seconds, 1) if seconds > 0 else None,
    }


def bench_pipeline(
    cfg: RunConfig,
    batch: int,
    device: torch.device,
    workers: int,
    items: int,
    work_dir: Path,
    folder: str | None = None,
) -> dict:
    """img/s of the in-memory uint8 path and of an image folder decoded by `workers` workers."""
    if workers < 1:
        raise ConfigError(
            "--workers: the image-folder path decodes in DataLoader workers; use >= 1"
        )
    hw, channels = cfg.model.image_hw, cfg.model.in_chans
    images = synthetic_images(items, channels, hw)
    memory = time_source(TrainSource.from_tensors(images), cfg, batch, device, "in-memory")
    if folder is None:
        folder = str(write_image_folder(work_dir / "bench_images", images))
        origin = f"{items} synthetic {hw[0]}x{hw[1]} JPEGs"
    else:
        origin = folder
    if workers < 1:
        raise ConfigError(
            "--workers: the image-folder path decodes in DataLoader workers; use >= 1"
        )
    data = DataConfig(
        source="folder", path=folder, mean=cfg.data.mean, std=cfg.data.std, num_workers=workers
    )
    src = TrainSource(data, channels, hw, seed=0)
    from_folder = time_source(src, cfg, batch, device, f"folder ({workers} workers)")
    return {
        "batch": batch,
        "in_memory_uint8": memory,
        "image_folder": dict(from_folder, workers=workers, files=origin),
    }
