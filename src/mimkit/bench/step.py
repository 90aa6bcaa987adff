"""Timed MAE training steps, ours and transformers', interleaved so machine noise hits both.

A step is what training repeats: forward (masking included), backward, optimiser. Ours is the
loop's own step: masks drawn outside the compiled model, autocast, fused AdamW on GPU and the
non-finite guard; transformers' gets the same autocast and optimiser. Inputs are float images
already on the device, so the input pipeline is measured separately (`mimkit.bench.pipeline`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.optim import param_groups
from mimkit.train.runtime import autocast
from mimkit.train.step import GuardedStep

Step = Callable[[], None]


def _adamw(params, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")


def mimkit_step(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    amp_dtype: torch.dtype | None,
    compile_model: bool = False,
) -> Step:
    device = images.device
    optimizer = _adamw(param_groups(model, 0.05), device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    guard = GuardedStep(optimizer, scaler, list(model.parameters()), None, device)
    forward = torch.compile(model) if compile_model else model
    generator = torch.Generator(device).manual_seed(0)
    model.train()

    def step() -> None:
        mask = model.draw_mask(len(images), device, generator)
        with autocast(device, amp_dtype):
            loss = forward(images, mask=mask).loss
        scaler.scale(loss).backward()
        guard.step(loss.detach())

    return step


def hf_step(
    model: nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None, compile_model=False
) -> Step:
    device = images.device
    optimizer = _adamw(model.parameters(), device)
    forward = torch.compile(model) if compile_model else model
    model.train()

    def step() -> None:
        with autocast(device, amp_dtype):
            loss = forward(pixel_values=images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: dict[str, Step],
    device: torch.device,
    blocks: int,
    block: int,
    warmup: int,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per step of each block of `block` steps, alternating between the named steps.

    On GPU one block is timed between two synchronisations, so the host runs ahead inside
    it as it does in training; on CPU a block of 1 is a single step. `cpu_times`, when given,
    receives the process's CPU seconds per step of each block too: on a CPU shared with other
    work, wall time counts their share as well, CPU time much less.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in tqdm(range(blocks), desc="timing " + " vs ".join(steps), leave=False):
        for name, step in steps.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(block):
                step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / block)
            cpu[name].append((time.process_time() - start_cpu) / block)
    if cpu_times is not None:
        cpu_times.update(cpu)
    return times


def peak_step_memory(step: Step, device: torch.device, resident_elsewhere: int = 0) -> int | None:
    """Peak bytes allocated while `step` runs (its weights, optimiser state and activations),
    minus `resident_elsewhere` bytes that other models hold; None off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - resident_elsewhere


def median(values: list[float]) -> float:
    return statistics.median(values)
