"""`mimkit bench`: one command that says how fast pretraining runs here, and what bounds it.

For a model configuration and batch it reports, side by side in one process: our training
step and transformers' `ViTMAEForPreTraining` at the same configuration (img/s, step time,
peak memory, model FLOP/s and MFU; see `mimkit.bench.flops` for the formula), then the input
pipeline alone. Results go to JSON (with command, machine and date), a markdown table and a PNG.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import tempfile
from pathlib import Path

import torch

from mimkit.config import RunConfig
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.runtime import pick_amp_dtype, pick_device
from mimkit.train.speed import checkpoint_blocks, tune_backends, want_compile

from .flops import mae_flops_per_image, mfu
from .hf import build_hf_mae
from .machine import machine_info
from .pipeline import bench_pipeline
from .step import hf_step, median, mimkit_step, peak_step_memory, time_interleaved

MIB = 2**20


def _summary(seconds: list[float], batch: int, flops: float, peak: float | None) -> dict:
    step_s = median(seconds)
    rate = batch / step_s
    return {
        "median_step_s": round(step_s, 5),
        "img_per_s": round(rate, 1),
        "model_tflops_per_s": round(rate * flops / 1e12, 4),
        "mfu": None if peak is None else round(mfu(rate, flops, peak), 4),
    }


def bench_step(
    cfg: RunConfig,
    batch: int,
    device: torch.device,
    steps: int,
    warmup: int,
    block: int,
    with_hf: bool,
    peak_tflops: float | None,
) -> dict:
    """Our training step and (optionally) transformers', interleaved, at one configuration."""
    tc = cfg.train
    amp_dtype = pick_amp_dtype(tc.amp, device)
    compile_model = want_compile(tc.compile, device)
    tune_backends(device)
    flops = mae_flops_per_image(cfg.model, cfg.masking.ratio)
    peak = peak_tflops * 1e12 if peak_tflops else None
    torch.manual_seed(0)
    images = torch.randn(batch, cfg.model.in_chans, *cfg.model.image_hw, device=device)
    ours = MaskedAutoencoder(cfg.model, cfg.masking, cfg.method).to(device)
    if tc.activation_checkpointing:
        checkpoint_blocks(ours)
    steps_by_name = {"mimkit": mimkit_step(ours, images, amp_dtype, compile_model)}
    for _ in range(warmup):  # compile and warm up before measuring memory
        steps_by_name["mimkit"]()
    memory = {"mimkit": peak_step_memory(steps_by_name["mimkit"], device)}
    params = {"mimkit": sum(p.numel() for p in ours.parameters())}
    if with_hf:
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        theirs = build_hf_mae(cfg.model, cfg.masking, cfg.method).to(device)
        steps_by_name["transformers"] = hf_step(theirs, images, amp_dtype)
        for _ in range(warmup):
            steps_by_name["transformers"]()
        memory["transformers"] = peak_step_memory(steps_by_name["transformers"], device, resident)
        params["transformers"] = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    times = time_interleaved(steps_by_name, device, blocks=steps, block=block, warmup=1)
    results = {}
    for name, seconds in times.items():
        results[name] = dict(
            _summary(seconds, batch, flops["train_step"], peak),
            params=params[name],
            peak_memory_mib=None if memory[name] is None else round(memory[name] / MIB, 1),
        )
    record = {
        "batch": batch,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "compile_mimkit": compile_model,
        "compile_transformers": False,
        "activation_checkpointing": tc.activation_checkpointing,
        "steps_timed": steps * block,
        "flops_per_image": {k: round(v / 1e9, 4) for k, v in flops.items()} | {"unit": "GFLOP"},
        "peak_tflops": peak_tflops,
        "results": results,
    }
    if with_hf:
        record["speedup_vs_transformers"] = round(
            results["transformers"]["median_step_s"] / results["mimkit"]["median_step_s"], 3
        )
    return record


def run_benchmark(
    cfg: RunConfig,
    batch: int,
    steps: int = 10,
    warmup: int = 3,
    block: int | None = None,
    with_hf: bool = True,
    pipeline: bool = True,
    workers: int = 2,
    pipeline_items: int | None = None,
    folder: str | None = None,
    peak_tflops: float | None = None,
    command: str = "",
) -> dict:
    device = pick_device(cfg.train.device)
    info = machine_info(device)
    if peak_tflops is None and device.type == "cuda":
        peak_tflops = info.get("gpu_peak_bf16_tflops")
    block = block or (5 if device.type == "cuda" else 1)
    m = cfg.model
    record = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "device": str(device),
        "model": {
            "preset": m.preset,
            "img_size": list(m.image_hw),
            "in_chans": m.in_chans,
            "patch_size": m.patch_size,
            "embed_dim": m.embed_dim,
            "depth": m.depth,
            "num_heads": m.num_heads,
            "decoder": [m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads],
            "mask_ratio": cfg.masking.ratio,
            "norm_pix_loss": cfg.method.norm_pix_loss,
        },
        "step": bench_step(cfg, batch, device, steps, warmup, block, with_hf, peak_tflops),
    }
    if pipeline:
        items = pipeline_items or max(4 * batch, 256)
        with tempfile.TemporaryDirectory(prefix="mimkit-bench-") as tmp:
            record["pipeline"] = bench_pipeline(
                cfg, batch, device, workers, items, Path(tmp), folder
            )
    record["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    record["machine"]["max_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    return record


def markdown(record: dict) -> str:
    """A short table of the record, for humans and the results folder."""
    s = record["step"]
    m = record["model"]
    mach = record["machine"]
    hw = mach.get("gpu") or f"{mach['cpu']} ({mach['torch_threads']} threads)"
    lines = [
        f"# MAE {m['preset']} {m['img_size'][0]}x{m['img_size'][1]}/{m['patch_size']}, "
        f"batch {s['batch']}, {s['amp']}",
        "",
        f"`{record['command']}`  ",
        f"{hw}; torch {mach['torch']}, transformers {mach.get('transformers', '-')}; {record['date']}",
        "",
        "| step | img/s | step (ms) | peak mem (MiB) | model TFLOP/s | MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in s["results"].items():
        mem = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        util = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {name} | {r['img_per_s']:.1f} | {1000 * r['median_step_s']:.1f} | {mem} | "
            f"{r['model_tflops_per_s']:.3g} | {util} |"
        )
    if "speedup_vs_transformers" in s:
        lines += ["", f"mimkit / transformers: **{s['speedup_vs_transformers']:.2f}x**"]
    if "pipeline" in record:
        p = record["pipeline"]
        lines += [
            "",
            "| input pipeline (to augmented device batch) | img/s |",
            "| --- | ---: |",
            f"| in-memory uint8 | {p['in_memory_uint8']['img_per_s']} |",
            f"| image folder, PIL in {p['image_folder']['workers']} workers | "
            f"{p['image_folder']['img_per_s']} |",
        ]
    flops = s["flops_per_image"]
    lines += [
        "",
        f"Model FLOPs per image and training step: {flops['train_step']:.3f} GFLOP "
        "(3 x (encoder on visible tokens + decoder on all tokens); `mimkit.bench.flops`).",
    ]
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> Path | None:
    """Bar chart of img/s: the training steps and the input pipeline paths."""
    try:
        import matplotlib  # optional dependency: mimkit[plot]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional dependency: mimkit[plot]
    except ImportError:
        return None
    names, values, colours = [], [], []
    for name, r in record["step"]["results"].items():
        names.append(f"{name}\ntrain step")
        values.append(r["img_per_s"])
        colours.append("tab:blue" if name == "mimkit" else "tab:orange")
    if "pipeline" in record:
        p = record["pipeline"]
        names += ["in-memory\nuint8", f"image folder\n{p['image_folder']['workers']} workers"]
        values += [p["in_memory_uint8"]["img_per_s"] or 0, p["image_folder"]["img_per_s"] or 0]
        colours += ["tab:green", "tab:green"]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 1, 3.6))
    bars = ax.bar(names, values, color=colours)
    ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values])
    ax.set_yscale("log")  # the pipeline and the step can be orders of magnitude apart
    ax.set_ylabel("images / s (log scale)")
    m, s = record["model"], record["step"]
    ax.set_title(
        f"MAE {m['preset']} {m['img_size'][0]}px, batch {s['batch']}, {s['amp']} on "
        f"{record['machine'].get('gpu') or 'CPU'}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(record: dict, out: Path) -> list[Path]:
    """`out` (.json) plus the same stem as .md and .png."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    written = [out]
    md = out.with_suffix(".md")
    md.write_text(markdown(record))
    written.append(md)
    png = plot(record, out.with_suffix(".png"))
    if png is not None:
        written.append(png)
    return written
