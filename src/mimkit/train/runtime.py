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


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix hardware: `amx` (Intel AMX tiles), `avx512_bf16` (bf16 dot
    products in the vector units), or None (bf16 matmuls emulated in fp32)."""
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return None


def cpu_auto_amp(units: str | None) -> torch.dtype | None:
    """`train.amp=auto` on CPU: bf16 where the CPU has bf16 matrix units (AMX), else fp32.

    AMX runs the demo's bf16 matmuls about 6.5x faster than fp32 (issue 15). AVX512-BF16 alone
    gives less (about 1.7x on the demo's step on a 2-core AMD EPYC, with bf16 attention as
    matmul-softmax), and a default there would change the numbers of every CPU run that
    published results on such machines without a fresh accuracy check: opt in with
    `train.amp=bf16`.
    """
    return torch.bfloat16 if units == "amx" else None


def pick_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it and on CPUs with AMX, fp16 only when asked; weights and
    optimiser state stay fp32 (autocast casts per op)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off; got {amp!r}")
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return cpu_auto_amp(cpu_bf16_units())
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
