"""The machine's own matmul peak, measured at the model's shapes, for an MFU that means something
on any machine.

Vendors publish GPU peaks; a CPU's depends on its cores, clocks, vector units (AVX-512,
AVX512-BF16, AMX) and on whoever else shares it, so the benchmark measures it in the same run as
the training step: the big linear layers of the benchmarked model (tokens x width x 3·width for
qkv, x 4·width and back for the MLP, in encoder and decoder), as plain fp32 and bf16 matmuls,
dtypes alternating round by round so the same machine load hits both. The peak of a dtype is the
best median over the shapes: what this machine's matmul library reaches at this model's sizes.
Each rate is also given per CPU-second of this process: on a CPU shared with other jobs, wall
time counts their share too, CPU time much less, so an MFU of CPU times (step FLOPs per CPU
second over the peak's FLOPs per CPU second) stays near what an idle machine would show.
"""

from __future__ import annotations

import statistics
import time

import torch

from mimkit.masking import num_kept
from mimkit.models.config import ModelConfig, resolve_model_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def model_matmul_shapes(
    cfg: ModelConfig, batch: int, mask_ratio: float
) -> list[tuple[int, int, int]]:
    """(rows, in, out) of the encoder's and decoder's qkv, MLP-in and MLP-out layers at `batch`.

    Rows are the tokens of the batch: visible patches + cls in the encoder, all + cls in the
    decoder. Duplicates are dropped, order kept.
    """
    cfg = resolve_model_config(cfg)
    n = cfg.num_patches
    shapes = []
    for rows, width in (
        (batch * (num_kept(n, mask_ratio) + 1), cfg.embed_dim),
        (batch * (n + 1), cfg.decoder_embed_dim),
    ):
        hidden = int(width * cfg.mlp_ratio)
        for shape in ((rows, width, 3 * width), (rows, width, hidden), (rows, hidden, width)):
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(
    shapes: list[tuple[int, int, int]],
    device: torch.device,
    dtypes: tuple[str, ...] = ("fp32", "bf16"),
    rounds: int = 5,
    min_seconds: float = 0.02,
) -> dict:
    """GFLOP/s of `a @ b` per dtype and shape (median of `rounds`), and each dtype's peak.

    Each timing repeats the matmul until `min_seconds` have passed, so small shapes are not
    dominated by the clock. Rounds alternate the dtypes shape by shape.
    """
    operands = {}
    for shape in shapes:
        m, k, n = shape
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        for name in dtypes:
            operands[shape, name] = (a.to(DTYPES[name]), b.to(DTYPES[name]))
    repeats = {}
    for key, (a, b) in operands.items():  # warm up, and size the repeats
        _sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        repeats[key] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    rates: dict[tuple, list[float]] = {key: [] for key in operands}
    cpu_rates: dict[tuple, list[float]] = {key: [] for key in operands}
    for _ in range(rounds):
        for key, (a, b) in operands.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(repeats[key]):
                torch.matmul(a, b)
            _sync(device)
            seconds = (time.perf_counter() - start) / repeats[key]
            cpu_seconds = (time.process_time() - start_cpu) / repeats[key]
            m, k, n = key[0]
            rates[key].append(2 * m * k * n / seconds / 1e9)
            cpu_rates[key].append(2 * m * k * n / max(cpu_seconds, 1e-9) / 1e9)
    result = {}
    for name in dtypes:
        by_shape = [
            {
                "shape": list(shape),
                "gflops": _round(statistics.median(rates[shape, name])),
                "gflops_per_cpu_s": _round(statistics.median(cpu_rates[shape, name])),
            }
            for shape in shapes
        ]
        result[name] = {
            "peak_gflops": max(s["gflops"] for s in by_shape),
            "peak_gflops_per_cpu_s": max(s["gflops_per_cpu_s"] for s in by_shape),
            "by_shape": by_shape,
        }
    if "fp32" in result and "bf16" in result:
        result["bf16_over_fp32"] = ratio(
            result["bf16"]["peak_gflops"], result["fp32"]["peak_gflops"]
        )
    return result


def _round(value: float) -> float:
    """Four significant digits: tiny shapes on a busy machine can run below 0.1 GFLOP/s."""
    return float(f"{value:.4g}")


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None
