"""Issue 15's CPU micro-benchmarks, each interleaved round by round in one process, timed by
process CPU time (the machine is shared) at one torch thread:

    attention   one attention call (forward + backward), SDPA against matmul-softmax, fp32 and
                bf16, at the sequence lengths of the presets
    step        the demo's training step (batch 128) by precision and attention path: SDPA
                (flash), SDPA's math backend, matmul-softmax (mimkit's bf16 CPU choice)
    adamw       AdamW on the demo's parameters, fused against the default (foreach)

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/results/cpu_2026-12-02_micro.py attention
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import mimkit.models.vit as vit
from mimkit.bench.step import mimkit_step
from mimkit.config import load_config
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.optim import param_groups


def cpu_seconds(fn, repeats: int = 1) -> float:
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def matmul_softmax(q, k, v):
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


def attention(rounds: int) -> None:
    shapes = [(5, 3, 64, 256), (17, 4, 32, 256), (50, 6, 64, 16), (65, 3, 64, 64)]
    shapes += [(197, 16, 32, 16), (197, 12, 64, 8), (257, 6, 64, 8), (577, 6, 64, 2)]
    for dtype in (torch.float32, torch.bfloat16):
        for n, h, d, b in shapes:
            qkv = [torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3)]
            kernels = {"sdpa": F.scaled_dot_product_attention, "matmul": matmul_softmax}
            times = {name: [] for name in kernels}

            def run(fn, qkv=qkv):
                fn(*qkv).sum().backward()

            for fn in kernels.values():
                run(fn)
            for _ in range(rounds):
                for name, fn in kernels.items():
                    times[name].append(cpu_seconds(lambda fn=fn: run(fn), 3))
            ratio = statistics.median(times["sdpa"]) / statistics.median(times["matmul"])
            print(f"{dtype} tokens={n} heads={h} d={d} batch={b}: sdpa/matmul {ratio:.2f}")
    print("load", os.getloadavg()[0])


def step(rounds: int) -> None:
    cfg = load_config("configs/fmnist_mae_tiny.yaml", [])
    images = torch.randn(128, 1, 28, 28)
    default = vit.CPU_BF16_MATMUL_MAX_TOKENS
    paths = {  # (matmul threshold, context)
        "sdpa": (0, contextlib.nullcontext),
        "math": (0, lambda: sdpa_kernel(SDPBackend.MATH)),
        "matmul": (default, contextlib.nullcontext),
    }
    steps = {}
    for amp in (None, torch.bfloat16):
        for path in paths:
            torch.manual_seed(0)
            model = MaskedAutoencoder(cfg.model, cfg.masking, cfg.method)
            steps[amp, path] = mimkit_step(model, images, amp)
    times = {key: [] for key in steps}
    for r in range(rounds + 1):
        for (amp, path), fn in steps.items():
            if amp is None and path == "matmul":
                continue  # fp32 always takes SDPA: the same as "sdpa"
            threshold, context = paths[path]
            vit.CPU_BF16_MATMUL_MAX_TOKENS = threshold
            with context():
                seconds = cpu_seconds(fn)
            if r:  # the first round warms up
                times[amp, path].append(seconds)
    vit.CPU_BF16_MATMUL_MAX_TOKENS = default
    for (amp, path), values in times.items():
        if values:
            print(amp, path, f"{128 / statistics.median(values):.0f} img per CPU-second")
    print("load", os.getloadavg()[0])


def adamw(rounds: int) -> None:
    cfg = load_config("configs/fmnist_mae_tiny.yaml", [])
    model = MaskedAutoencoder(cfg.model, cfg.masking, cfg.method)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opts = {f: torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, fused=f) for f in (0, 1)}
    times = {f: [] for f in opts}
    for opt in opts.values():
        opt.step()
    for _ in range(rounds):
        for fused, opt in opts.items():
            times[fused].append(cpu_seconds(opt.step, 5))
    for fused, values in times.items():
        print(f"fused={bool(fused)}: {1000 * statistics.median(values):.2f} ms per step")
    print("params", sum(p.numel() for p in model.parameters()), "load", os.getloadavg()[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["attention", "step", "adamw"])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"attention": attention, "step": step, "adamw": adamw}[args.what](args.rounds)
