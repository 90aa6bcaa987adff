"""Reading foreign weight files without trusting them.

safetensors files are read as they are. Anything else (`.pth`, `.pt`, `.bin`, `.ckpt`) is a
pickle, and a pickle can run code when it is loaded, so it goes only through
`torch.load(weights_only=True)`: tensors, plain containers and numbers are rebuilt, any other
object is refused before it is created. The one class allowed beyond torch's own list is
`argparse.Namespace`, which official MAE training checkpoints store as `args` and which only
holds attribute values.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from mimkit.errors import CheckpointError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar")


def load_pickle_safely(path: str | Path) -> Any:
    """`torch.load(weights_only=True)`; a file that needs anything else is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(exc))
        detail = found.group(0) if found else "content outside the weights-only subset"
        raise CheckpointError(
            f"{path}: refused to unpickle: it asks for more than plain weights ({detail}), "
            "which could run code; mimkit loads pickles only with torch.load(weights_only=True)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({exc})") from None


def read_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a safetensors file or a (safely loaded) pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc
    obj = load_pickle_safely(path)
    return unwrap_state_dict(obj, str(path))


def safetensors_keys(path: str | Path) -> list[str]:
    """Tensor names of a safetensors file, read from its header without loading tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc


def unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict inside `{"model": ...}`, `{"state_dict": ...}` or a bare dict of tensors."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where}: expected a dict of tensors (or {{'model': ...}})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(f"{where}: entries that are not tensors: {bad[:5]}")
    return {k.removeprefix("module."): v for k, v in tensors.items()}
