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
import time
from pathlib import Path

import torch

from mimkit.config import RunConfig
from mimkit.errors import ConfigError
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.runtime import pick_amp_dtype, pick_device
from mimkit.train.speed import checkpoint_blocks, tune_backends, want_compile

from .flops import mae_flops_per_image, mfu
from .hf import build_hf_mae
from .kernels import attention_kernels
from .machine import machine_info
from .peak import measure_matmul_peak, model_matmul_shapes, ratio
from .pipeline import bench_pipeline
from .step import hf_step, median, mimkit_step, peak_step_memory, time_interleaved

MIB = 2**20
AMP_NAMES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_variant(text: str) -> tuple[torch.dtype | None, bool]:
    """`fp32`, `bf16` or `fp16`, optionally `+compile`: (autocast dtype, compile)."""
    amp, _, extra = text.partition("+")
    if amp not in AMP_NAMES or extra not in ("", "compile"):
        raise ConfigError(
            f"--variants: expected fp32, bf16 or fp16, each optionally +compile; got {text!r}"
        )
    return AMP_NAMES[amp], extra == "compile"


def amp_name(dtype: torch.dtype | None) -> str:
    return (
        str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16")
        if dtype
        else "fp32"
    )


def _summary(
    seconds: list[float], cpu_seconds: list[float], batch: int, flops: float, peak: float | None
) -> dict:
    step_s = median(seconds)
    rate = batch / step_s
    return {
        "median_step_s": round(step_s, 5),
        "median_step_cpu_s": round(median(cpu_seconds), 5),
        "img_per_s": float(f"{rate:.4g}"),  # large ViTs on a busy CPU run below 1 img/s
        "model_tflops_per_s": round(rate * flops / 1e12, 4),
        "mfu": None if peak is None else round(mfu(rate, flops, peak), 4),
    }


def _measured_mfu(result: dict, amp: str, batch: int, flops: float, peaks: dict | None) -> dict:
    """MFU against this run's measured matmul peak of the step's dtype, and of bf16; by wall
    time, and by the process's CPU time (step FLOPs per CPU second over the peak's)."""
    if not peaks:
        return {}
    out = {}
    per_cpu_s = batch * flops / result["median_step_cpu_s"] if result["median_step_cpu_s"] else 0
    for label, dtype in (("", amp), ("_bf16", "bf16")):
        peak = peaks.get(dtype) or {}
        wall_peak = peak.get("peak_gflops", 0) * 1e9
        cpu_peak = peak.get("peak_gflops_per_cpu_s", 0) * 1e9
        out[f"mfu_vs_measured{label}_peak"] = _round4(mfu(result["img_per_s"], flops, wall_peak))
        out[f"mfu_cpu_time_vs_measured{label}_peak"] = _round4(
            per_cpu_s / cpu_peak if cpu_peak else None
        )
    return out


def _round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _merge_peaks(before: dict, after: dict) -> dict:
    """The better of two peak measurements per dtype (the machine was shared), both kept."""
    merged = {"before_steps": before, "after_steps": after}
    for name in ("fp32", "bf16"):
        if name in before:
            merged[name] = {
                key: max(before[name][key], after[name][key])
                for key in ("peak_gflops", "peak_gflops_per_cpu_s")
            }
    if "fp32" in merged and "bf16" in merged:
        merged["bf16_over_fp32"] = ratio(
            merged["bf16"]["peak_gflops"], merged["fp32"]["peak_gflops"]
        )
        merged["bf16_over_fp32_cpu_time"] = ratio(
            merged["bf16"]["peak_gflops_per_cpu_s"], merged["fp32"]["peak_gflops_per_cpu_s"]
        )
    return merged


def _build_ours(cfg: RunConfig, images: torch.Tensor, amp_dtype, compile_model: bool):
    model = MaskedAutoencoder(cfg.model, cfg.masking, cfg.method).to(images.device)
    if cfg.train.activation_checkpointing:
        checkpoint_blocks(model)
    return model, mimkit_step(model, images, amp_dtype, compile_model)


def _build_theirs(
    cfg: RunConfig, images: torch.Tensor, amp_dtype, compile_model: bool, attn: str = "sdpa"
):
    model = build_hf_mae(cfg.model, cfg.masking, cfg.method, attn_implementation=attn)
    return model.to(images.device), hf_step(model, images, amp_dtype, compile_model)


def _step_plan(suffix: str, hf_attention: list[str]) -> dict:
    """The steps of one variant: ours, then transformers' with each attention implementation
    asked for (named after it when there is more than one)."""
    plan = {"mimkit" + suffix: (_build_ours, {})}
    for attn in hf_attention:
        name = "transformers" + suffix + (f" {attn}" if len(hf_attention) > 1 else "")
        plan[name] = (_build_theirs, {"attn": attn})
    return plan


def _speedup(results: dict, slow: str, fast: str, key: str) -> float | None:
    """How many times faster `fast` ran than `slow` by `key` (wall or CPU seconds per step)."""
    return ratio(results[slow][key], results[fast][key]) if results[fast][key] else None


def _best_vs_best(results: dict, key: str) -> dict:
    """Our fastest variant against transformers' fastest, each named, by `key`."""
    best = {
        who: min((n for n in results if n.startswith(who)), key=lambda n: results[n][key])
        for who in ("mimkit", "transformers")
    }
    return best | {"speedup": _speedup(results, best["transformers"], best["mimkit"], key)}


def _fastest_theirs(results: dict, variant: str, key: str) -> str:
    """transformers' fastest step of one variant (over its attention implementations)."""
    theirs = [
        n for n, r in results.items() if n.startswith("transformers") and r["variant"] == variant
    ]
    return min(theirs, key=lambda n: results[n][key])


def _comparisons(results: dict, suffixes: list[str], named: bool, with_hf: bool) -> dict:
    """Speed-ups by wall and CPU time: ours over transformers' fastest per variant, best over
    best, and each of our variants over our first (`named`: variants were asked for)."""
    out: dict = {}
    if with_hf:
        for key, label in (("median_step_s", ""), ("median_step_cpu_s", "_cpu_time")):
            ratios = {
                suffix.strip(): _speedup(
                    results, _fastest_theirs(results, suffix.strip(), key), "mimkit" + suffix, key
                )
                for suffix in suffixes
            }
            out["speedup_vs_transformers" + label] = ratios if named else ratios[""]
            if named:
                out["best_vs_best" + label] = _best_vs_best(results, key)
    if named and len(suffixes) > 1:
        first = "mimkit" + suffixes[0]
        out["mimkit_vs_first_variant"] = {
            suffix.strip(): {
                key: _speedup(results, first, "mimkit" + suffix, key)
                for key in ("median_step_s", "median_step_cpu_s")
            }
            for suffix in suffixes
        }
    return out


def bench_step(
    cfg: RunConfig,
    batch: int,
    device: torch.device,
    steps: int,
    warmup: int,
    block: int,
    with_hf: bool,
    peak_tflops: float | None,
    variants: list[str] | None = None,
    measure_peak: bool = True,
    hf_attention: list[str] | None = None,
) -> dict:
    """Our training step and (optionally) transformers', interleaved, at one configuration.

    Without `variants` the configuration's own amp and compile choices run, named `mimkit`
    and `transformers`; with them (`fp32`, `bf16+compile`, ...) each variant of both runs,
    named `mimkit <variant>` and `transformers <variant>`, all interleaved in one timing.
    `hf_attention` (default sdpa) lists transformers' attention implementations to time; with
    more than one, each is its own step (`transformers bf16 eager`), so the comparison is
    against transformers' fastest setting, not its default.
    """
    hf_attention = hf_attention or ["sdpa"]
    tc = cfg.train
    if variants is None:
        plan = {"": (pick_amp_dtype(tc.amp, device), want_compile(tc.compile, device))}
    else:
        plan = {" " + v: parse_variant(v) for v in variants}
    tune_backends(device)
    flops = mae_flops_per_image(cfg.model, cfg.masking.ratio)
    peak = peak_tflops * 1e12 if peak_tflops else None
    shapes = model_matmul_shapes(cfg.model, batch, cfg.masking.ratio)
    peaks_before = measure_matmul_peak(shapes, device) if measure_peak else None
    torch.manual_seed(0)
    images = torch.randn(batch, cfg.model.in_chans, *cfg.model.image_hw, device=device)
    steps_by_name, memory, params, settings = {}, {}, {}, {}
    for suffix, (amp_dtype, compile_model) in plan.items():
        builders = _step_plan(suffix, hf_attention if with_hf else [])
        for name, (build, extra) in builders.items():
            # without variants transformers' model runs uncompiled, as it always has
            compiled = compile_model and (variants is not None or build is _build_ours)
            resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            torch.manual_seed(0)
            model, step = build(cfg, images, amp_dtype, compiled, **extra)
            start = time.perf_counter()
            for _ in range(warmup):  # compile and warm up before measuring memory
                step()
            warm = time.perf_counter() - start
            memory[name] = peak_step_memory(step, device, resident)
            params[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            settings[name] = {
                "variant": suffix.strip(),
                "amp": amp_name(amp_dtype),
                "compile": compiled,
                "warmup_s": round(warm, 2),
            } | ({"attn_implementation": extra["attn"]} if extra else {})
            steps_by_name[name] = step
    cpu_times: dict[str, list[float]] = {}
    load_before = round(os.getloadavg()[0], 2)
    times = time_interleaved(
        steps_by_name, device, blocks=steps, block=block, warmup=1, cpu_times=cpu_times
    )
    load_after = round(os.getloadavg()[0], 2)
    peaks = None
    if measure_peak:
        peaks = _merge_peaks(peaks_before, measure_matmul_peak(shapes, device))
    results = {}
    for name, seconds in times.items():
        summary = _summary(seconds, cpu_times[name], batch, flops["train_step"], peak)
        results[name] = dict(
            summary,
            **_measured_mfu(summary, settings[name]["amp"], batch, flops["train_step"], peaks),
            **settings[name],
            attention=attention_kernels(steps_by_name[name], device),
            params=params[name],
            peak_memory_mib=None if memory[name] is None else round(memory[name] / MIB, 1),
        )
    first = next(iter(plan.values()))
    record = {
        "batch": batch,
        "amp": amp_name(first[0]),
        "compile_mimkit": first[1],
        "compile_transformers": first[1] if variants is not None else False,
        "activation_checkpointing": tc.activation_checkpointing,
        "steps_timed": steps * block,
        "load_avg_1m_timing": [load_before, load_after],
        "flops_per_image": {k: round(v / 1e9, 4) for k, v in flops.items()} | {"unit": "GFLOP"},
        "peak_tflops": peak_tflops,
        "matmul_peak": peaks,
        "matmul_shapes": [list(s) for s in shapes],
        "results": results,
    }
    record.update(_comparisons(results, list(plan), variants is not None, with_hf))
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
    variants: list[str] | None = None,
    measure_peak: bool = True,
    hf_attention: list[str] | None = None,
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
        "step": bench_step(
            cfg,
            batch,
            device,
            steps,
            warmup,
            block,
            with_hf,
            peak_tflops,
            variants,
            measure_peak,
            hf_attention,
        ),
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _variants(step: dict) -> str:
    """The precisions (and compile) the timed steps ran in, in order."""
    names = [
        r.get("amp", step["amp"]) + ("+compile" if r.get("compile") else "")
        for r in step["results"].values()
    ]
    return ", ".join(dict.fromkeys(names))


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(record: dict) -> str:
    """A short table of the record, for humans and the results folder."""
    s = record["step"]
    m = record["model"]
    mach = record["machine"]
    family = f", {mach['cpu_family_model']}" if mach.get("cpu_family_model") else ""
    hw = mach.get("gpu") or f"{mach['cpu']}{family} ({mach['torch_threads']} threads)"
    units = mach.get("cpu_bf16_units")
    lines = [
        f"# MAE {m['preset']} {m['img_size'][0]}x{m['img_size'][1]}/{m['patch_size']}, "
        f"batch {s['batch']}, {_variants(s)}",
        "",
        f"`{record['command']}`  ",
        f"{hw}; torch {mach['torch']}, transformers {mach.get('transformers', '-')}; {record['date']}",
        f"CPU capability {mach.get('cpu_capability', '-')}, bf16 units {units or 'none'}; "
        f"load average (1 min) {mach['load_avg_1m_before']} before, "
        f"{s.get('load_avg_1m_timing', ['-'])[-1]} after timing",
        "",
        "| step | amp | compile | attention | img/s | step (ms) | CPU s/step | peak mem (MiB) "
        "| model TFLOP/s | MFU (measured peak) | MFU (bf16 peak) | MFU, CPU time (own peak) "
        "| MFU, CPU time (bf16 peak) | MFU (nominal) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for name, r in s["results"].items():
        mem = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        lines.append(
            f"| {name} | {r.get('amp', s['amp'])} | {'yes' if r.get('compile') else 'no'} | "
            f"{', '.join(r.get('attention', [])) or '-'} | {r['img_per_s']:.4g} | "
            f"{1000 * r['median_step_s']:.1f} | {r.get('median_step_cpu_s', float('nan')):.3f} | "
            f"{mem} | {r['model_tflops_per_s']:.3g} | {_pct(r.get('mfu_vs_measured_peak'))} | "
            f"{_pct(r.get('mfu_vs_measured_bf16_peak'))} | "
            f"{_pct(r.get('mfu_cpu_time_vs_measured_peak'))} | "
            f"{_pct(r.get('mfu_cpu_time_vs_measured_bf16_peak'))} | {_pct(r['mfu'])} |"
        )
    speedup = s.get("speedup_vs_transformers")
    if isinstance(speedup, dict):
        for label, by in (("", "wall time"), ("_cpu_time", "CPU time")):
            pairs = ", ".join(
                f"{k} **{_times(v)}**" for k, v in s[f"speedup_vs_transformers{label}"].items()
            )
            b = s[f"best_vs_best{label}"]
            lines += [
                "",
                f"By {by}: mimkit / transformers (its fastest), same variant: {pairs}; best mimkit "
                f"({b['mimkit']}) / best transformers ({b['transformers']}): "
                f"**{_times(b['speedup'])}**",
            ]
    elif speedup is not None:
        lines += ["", f"mimkit / transformers: **{speedup:.2f}x**"]
    if "mimkit_vs_first_variant" in s:
        first = next(iter(s["mimkit_vs_first_variant"]))
        pairs = ", ".join(
            f"{k} {_times(v['median_step_s'])} (CPU time {_times(v['median_step_cpu_s'])})"
            for k, v in s["mimkit_vs_first_variant"].items()
        )
        lines += ["", f"mimkit variants against mimkit {first}, by wall time: {pairs}"]
    peaks = s.get("matmul_peak")
    if peaks:
        shapes = ", ".join("x".join(map(str, shape)) for shape in s["matmul_shapes"])
        lines += [
            "",
            f"Matmul peak measured in this run at the model's shapes ({shapes}; best of a "
            f"measurement before and after the steps): fp32 {peaks['fp32']['peak_gflops']:.0f} "
            f"GFLOP/s, bf16 {peaks['bf16']['peak_gflops']:.0f} GFLOP/s "
            f"({_times(peaks['bf16_over_fp32'])}); per CPU second of this process fp32 "
            f"{peaks['fp32']['peak_gflops_per_cpu_s']:.0f}, bf16 "
            f"{peaks['bf16']['peak_gflops_per_cpu_s']:.0f} "
            f"({_times(peaks['bf16_over_fp32_cpu_time'])}). MFU (measured peak) divides by the peak "
            "of the step's own dtype; the CPU-time columns divide FLOPs per CPU second by the "
            "peak's, which other jobs on a shared machine distort far less than wall time.",
        ]
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
        colours.append("tab:blue" if name.startswith("mimkit") else "tab:orange")
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
