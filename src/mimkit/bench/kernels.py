"""Which attention kernel a training step actually ran, read from the profiler's op names.

`F.scaled_dot_product_attention` picks its backend at run time (flash, memory-efficient, cuDNN,
math) from the device, dtype, shapes and flags, and mimkit's attention may bypass it (bf16 on
CPU runs matmul-softmax, `mimkit.models.vit.attention_kernel`); torch.compile may fuse either.
Asking the profiler which ops ran is the one answer that holds on every path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile

# aten op -> the kernel's name; the CPU flash kernel has its own op
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "sdpa-flash-cpu",
    "aten::_scaled_dot_product_flash_attention": "sdpa-flash",
    "aten::_scaled_dot_product_efficient_attention": "sdpa-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "sdpa-cudnn",
    "aten::_scaled_dot_product_attention_math": "sdpa-math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "sdpa-overrideable",
}


def attention_kernels_from_ops(names: Iterable[str]) -> list[str]:
    """The attention kernels that a set of profiled op names shows, sorted.

    An SDPA backend op names its kernel. Without one, a softmax op means attention ran as
    separate matmuls and softmax (`matmul-softmax`; the math backend's softmax does not count), and a compiled kernel whose name holds
    `softmax` means inductor fused it (`compiled-softmax`), as does a compiled region with no
    attention op at all (`compiled-fused`). An empty list: no attention seen.
    """
    names = set(names)
    found = {kernel for op, kernel in SDPA_OPS.items() if op in names}
    softmax = "aten::_softmax" in names or "aten::softmax" in names
    if softmax and "sdpa-math" not in found:  # the math backend's own softmax is not another
        found.add("matmul-softmax")
    if any("softmax" in n and not n.startswith("aten::") for n in names):
        found.add("compiled-softmax")
    if not found and any("Compiled" in n for n in names):
        # inductor's CPU kernels are not profiled by name: a compiled region with no SDPA or
        # softmax op ran attention inside its own generated kernels
        found.add("compiled-fused")
    return sorted(found)


def profiled_op_names(step: Callable[[], None], device: torch.device) -> set[str]:
    """The names of every op and kernel that one call of `step` ran."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
    return {event.key for event in prof.key_averages()}


def attention_kernels(step: Callable[[], None], device: torch.device) -> list[str]:
    """The attention kernels one call of `step` ran (forward and backward)."""
    return attention_kernels_from_ops(profiled_op_names(step, device))
