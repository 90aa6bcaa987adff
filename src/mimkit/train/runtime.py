"""Device and precision choices, made once per run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mimkit.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available")
    return device


def pick_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it, fp16 only when asked, nothing on CPU unless asked."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off; got {amp!r}")
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
