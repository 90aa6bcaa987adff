"""What a benchmark ran on, and the peak FLOP/s that MFU divides by."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from mimkit.train.runtime import cpu_bf16_units

# Dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
GPU_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
}


def gpu_peak_tflops(name: str) -> float | None:
    """Peak of the first table entry whose key occurs in the device name, longest key first."""
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return GPU_PEAK_TFLOPS[key]
    return None


CPUINFO = Path("/proc/cpuinfo")


def first_core_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (empty where there is none)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for key, _, value in (line.partition(":") for line in lines):
        if not key.strip() and fields:  # the blank line that ends the first processor
            break
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    return first_core_fields().get("model name") or platform.processor() or platform.machine()


def cpu_family_model(cpuinfo: Path = CPUINFO) -> str | None:
    """`family F, model M` from /proc/cpuinfo: vendors reuse one model name across generations
    (a KVM guest's "AMD EPYC" was family 25 one day and family 26 the next)."""
    fields = first_core_fields(cpuinfo)
    if "cpu family" not in fields:
        return None
    return f"family {fields['cpu family']}, model {fields.get('model', '?')}"


def machine_info(device: torch.device | None = None) -> dict:
    info = {
        "cpu": cpu_name(),
        "cpu_family_model": cpu_family_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m_before": round(os.getloadavg()[0], 2),  # other work on the machine
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # vector ISA torch uses
        "cpu_bf16_units": cpu_bf16_units(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    try:
        import transformers  # optional dependency: mimkit[hf]; its version is reported if present

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpu_peak_bf16_tflops"] = gpu_peak_tflops(info["gpu"])
    return info
