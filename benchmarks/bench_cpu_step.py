"""Time one MAE training step (forward, backward, AdamW) of mimkit against Hugging Face
`ViTMAEForPreTraining` at the same configuration, side by side in one process.

Both models get the same widths, depths, heads, patch, decoder, batch, mask ratio and
norm-pix loss; HF runs with its SDPA attention. Steps are interleaved (ours, theirs, ours, ...)
so machine noise hits both alike; we report the median step time of each and the ratio.
The pieces live in `mimkit.bench` (the general benchmark is `mimkit bench`); this script keeps
the fixed CPU configurations of issue 2.

    python benchmarks/bench_cpu_step.py                 # all configurations, CPU
    python benchmarks/bench_cpu_step.py --config fmnist_tiny --steps 20
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from mimkit.bench.hf import build_hf_mae
from mimkit.bench.machine import machine_info
from mimkit.bench.step import hf_step, median, mimkit_step, time_interleaved
from mimkit.models import ModelConfig
from mimkit.objectives.mae import build_mae

CONFIGS = {
    # the README demo's input and widths (28x28 grey, 7x7 patches, ViT-tiny width, small decoder)
    # at the full vit_tiny depth of 12 blocks (the demo itself uses 6)
    "fmnist_tiny": dict(
        img=28,
        chans=1,
        patch=7,
        dim=192,
        depth=12,
        heads=3,
        ddim=128,
        ddepth=2,
        dheads=4,
        batch=256,
    ),
    # ViT-S/16 at 224 with the paper's 512x8 decoder
    "vit_small_224": dict(
        img=224,
        chans=3,
        patch=16,
        dim=384,
        depth=12,
        heads=6,
        ddim=512,
        ddepth=8,
        dheads=16,
        batch=16,
    ),
}


def model_config(c: dict) -> ModelConfig:
    return ModelConfig(
        img_size=c["img"],
        in_chans=c["chans"],
        patch_size=c["patch"],
        embed_dim=c["dim"],
        depth=c["depth"],
        num_heads=c["heads"],
        decoder_embed_dim=c["ddim"],
        decoder_depth=c["ddepth"],
        decoder_num_heads=c["dheads"],
    )  # MAE's defaults: 75% masking, norm-pix target


def bench(name: str, steps: int, warmup: int) -> dict:
    c = CONFIGS[name]
    torch.manual_seed(0)
    images = torch.randn(c["batch"], c["chans"], c["img"], c["img"])
    ours, theirs = build_mae(model_config(c)), build_hf_mae(model_config(c))
    cpu = torch.device("cpu")
    times = time_interleaved(
        {"ours": mimkit_step(ours, images, None), "hf": hf_step(theirs, images, None)},
        cpu,
        blocks=steps,
        block=1,
        warmup=warmup,
    )
    mo, mh = median(times["ours"]), median(times["hf"])
    return {
        "config": name,
        **c,
        "params_mimkit": sum(p.numel() for p in ours.parameters()),
        "params_hf_trainable": sum(p.numel() for p in theirs.parameters() if p.requires_grad),
        "steps": steps,
        "median_step_s_mimkit": round(mo, 4),
        "median_step_s_hf": round(mh, 4),
        "img_per_s_mimkit": round(c["batch"] / mo, 1),
        "img_per_s_hf": round(c["batch"] / mh, 1),
        "speedup_vs_hf": round(mh / mo, 3),
    }


def machine() -> dict:
    return machine_info()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cpu_step_vs_hf.json")
    args = parser.parse_args()
    results = []
    for name in args.config or list(CONFIGS):
        r = bench(name, args.steps, args.warmup)
        results.append(r)
        print(
            f"{name:>14}: mimkit {r['img_per_s_mimkit']:8.1f} img/s | transformers {r['img_per_s_hf']:8.1f} img/s"
            f" | ratio {r['speedup_vs_hf']:.2f}x  (median of {r['steps']} steps, batch {r['batch']})"
        )
    record = {
        "command": "python benchmarks/bench_cpu_step.py "
        + " ".join(f"--config {c}" for c in (args.config or []))
        + f" --steps {args.steps} --warmup {args.warmup}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
