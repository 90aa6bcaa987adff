"""On-disk feature cache, so a second evaluation of the same encoder on the same data is free.

A cache entry is one safetensors file named by a SHA-256 over everything the features depend
on: the encoder's weights (every tensor's name, dtype, shape and bytes, so a random-init twin and
a trained checkpoint never collide), the exact image bytes, and the settings (pool, block, image
size, normalisation). Changing any of them gives a new key; nothing is ever stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mimkit.data.multi import sample_count
from mimkit.eval.features import check_feature_settings, extract_features
from mimkit.models.vit import VisionTransformer

log = logging.getLogger(__name__)
CACHE_VERSION = 1
EVAL_DIR = "eval"  # evaluation outputs of a run: RUN/eval/, beside RUN/checkpoint/
FEATURE_CACHE_DIR = "features"


def eval_dir(checkpoint: str | Path) -> Path:
    """Where the evaluation outputs of a checkpoint folder live (eval_*.json, features/, tome.*).

    A run's `checkpoint/` is replaced as a whole each time training saves, so its outputs live
    beside it, in `RUN/eval/`; a standalone checkpoint folder (an import, a pruned copy) is never
    replaced, and keeps them in `FOLDER/eval/`. Before 0.2 they were inside the checkpoint folder
    itself: `legacy_eval_dir` (read, never written)."""
    checkpoint = Path(checkpoint)
    if checkpoint.name == "checkpoint":
        return checkpoint.parent / EVAL_DIR
    return checkpoint / EVAL_DIR


def legacy_eval_dir(checkpoint: str | Path) -> Path:
    return Path(checkpoint)


def feature_cache_dir(checkpoint: str | Path) -> Path:
    return eval_dir(checkpoint) / FEATURE_CACHE_DIR


def find_eval_output(checkpoint: str | Path, name: str) -> Path | None:
    """An evaluation output by file name: the current location first, then the pre-0.2 one."""
    for folder in (eval_dir(checkpoint), legacy_eval_dir(checkpoint)):
        if (folder / name).is_file():
            return folder / name
    return None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()


def data_digest(images: torch.Tensor | dict[str, torch.Tensor]) -> str:
    """SHA-256 of an image tensor's shape, dtype and bytes: the data's identity (of several
    inputs: of each, by name)."""
    if isinstance(images, dict):
        parts = "|".join(f"{k}:{data_digest(v)}" for k, v in sorted(images.items()))
        return hashlib.sha256(parts.encode()).hexdigest()
    h = hashlib.sha256(f"{images.dtype}|{tuple(images.shape)}|".encode())
    h.update(_tensor_bytes(images))
    return h.hexdigest()


def _plain(stats: list[float] | dict[str, list[float]]) -> list | dict:
    """Statistics as JSON-ready floats (per input when a dict)."""
    if isinstance(stats, dict):
        return {k: [float(v) for v in values] for k, values in sorted(stats.items())}
    return [float(v) for v in stats]


def feature_key(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    pool: str,
    block: int,
) -> str:
    settings = {
        "version": CACHE_VERSION,
        "weights": weights_digest(encoder),
        "data": data_digest(images),
        "pool": pool,
        "block": block,
        "img_size": list(encoder.cfg.image_hw),
        "patch_size": encoder.cfg.patch_size,
        "mean": _plain(mean),
        "std": _plain(std),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def cached_features(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    cache_dir: str | Path | None,
    pool: str | None = None,
    block: int | None = None,
    also_read: tuple[str | Path, ...] = (),
    **extract_kwargs,
) -> torch.Tensor:
    """`extract_features`, read from `cache_dir` when this exact computation was done before.

    With `cache_dir=None` this is plain extraction. A corrupt cache file is recomputed. Entries
    are also looked up (never written) in the folders `also_read`: older cache locations.
    """
    pool = pool or encoder.cfg.pool
    block = block or len(encoder.blocks)
    check_feature_settings(encoder, pool, block)
    if cache_dir is None:
        return extract_features(
            encoder, images, mean, std, pool=pool, block=block, **extract_kwargs
        )
    folder = Path(cache_dir)
    name = f"{feature_key(encoder, images, mean, std, pool, block)}.safetensors"
    path = folder / name
    for candidate in (path, *(Path(d) / name for d in also_read)):
        if candidate.is_file():
            try:
                features = load_file(candidate)["features"]
                if features.shape[0] == sample_count(images):
                    log.debug("features from cache %s", candidate)
                    return features
            except (SafetensorError, OSError, KeyError, ValueError):
                pass
            log.warning("%s: unreadable feature cache entry; recomputing", candidate)
    features = extract_features(
        encoder, images, mean, std, pool=pool, block=block, **extract_kwargs
    )
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(
            {"features": features.contiguous()}, tmp, metadata={"pool": pool, "block": str(block)}
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return features
