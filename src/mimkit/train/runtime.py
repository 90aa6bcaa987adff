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
    """`train.amp=auto` on CPU: bf16 where the CPU computes bf16 in hardware (AMX tiles or
    AVX512-BF16 dot products), else fp32 (bf16 there is emulated, and slower).

    Measured (benchmarks/results/cpu_2026-12-03.md): on a 2-core AMD EPYC with AVX512-BF16 and
    no AMX the demo's training step is 2.4x faster in bf16 and the demo reaches the same kNN
    top-1 (5 seeds each, 79.67% against 79.70%); fine-tuning is 2.3x faster at the same top-1.
    AMX runs bf16 matmuls about 6.5x faster than fp32 (issue 15). Weights and optimiser state
    stay fp32.
    """
    return torch.bfloat16 if units in ("amx", "avx512_bf16") else None


def pick_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it and on CPUs with bf16 hardware, fp16 only when asked;
    weights and optimiser state stay fp32 (autocast casts per op)."""
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


def describe_amp(amp: str, device: torch.device, dtype: torch.dtype | None) -> str:
    """One line saying which precision a run trains in and why, printed at its start."""
    chosen = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    if amp != "auto":
        return f"precision: {chosen} (train.amp={amp})"
    if device.type != "cpu":
        return f"precision: {chosen} (train.amp=auto on {device.type})"
    if dtype is None:
        return "precision: fp32 (train.amp=auto: this CPU has no bf16 hardware)"
    units = cpu_bf16_units()
    return (
        f"precision: {chosen}, fp32 weights (train.amp=auto: this CPU has {units}; "
        "train.amp=off trains in fp32)"
    )


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
