"""`mimkit bench`: time our MAE training step against transformers', then the input pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from mimkit.errors import ConfigError

# transformers' attention implementations that run on any device (flash_attention_2 needs CUDA
# and its own package)
HF_ATTENTION = {"sdpa", "eager"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time the MAE training step (vs transformers) and the input pipeline",
        description="Time our MAE training step side by side with transformers' "
        "ViTMAEForPreTraining at the same configuration (img/s, step time, peak memory, MFU), "
        "then the input pipeline alone. Writes JSON, markdown and PNG.",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.decoder_depth=4")
    p.add_argument("--config", help="YAML preset to take the model from (default: none)")
    p.add_argument("--preset", help="model preset (default vit_base without --config)")
    p.add_argument("--img-size", type=int, help="image side in pixels (default 224)")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--steps", type=int, default=10, help="timed blocks per model (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (and compile)")
    p.add_argument("--block", type=int, help="steps per timed block (default: 5 GPU, 1 CPU)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-pipeline", action="store_true", help="skip the input pipeline")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the folder")
    p.add_argument("--pipeline-items", type=int, help="images in the pipeline test")
    p.add_argument("--folder", help="time this image folder instead of synthetic JPEGs")
    p.add_argument("--peak-tflops", type=float, help="hardware peak for MFU (GPUs: looked up)")
    p.add_argument(
        "--variants",
        help="comma-separated step variants to time side by side instead of the config's "
        "amp/compile, each fp32, bf16 or fp16 optionally +compile (e.g. fp32,bf16,bf16+compile)",
    )
    p.add_argument(
        "--hf-attention",
        default="sdpa",
        help="transformers' attention implementations to time, each its own step: sdpa, eager "
        "or both (sdpa,eager), so the comparison is against its fastest setting",
    )
    p.add_argument(
        "--no-peak",
        action="store_true",
        help="skip measuring the matmul peak (fp32, bf16 at the model's shapes) for MFU",
    )
    p.add_argument("--out", help="result .json (default runs/bench/<model>_<device>.json)")
    p.add_argument(
        "--loader",
        action="store_true",
        help="instead: img per CPU-second of a JPEG folder, packed shards and in-memory data "
        "to augmented batches on the device, and the cores to feed MAE ViT-B at 6.7k img/s",
    )
    p.add_argument("--rounds", type=int, default=3, help="--loader: interleaved rounds")
    p.add_argument("--jpeg-size", type=int, default=256, help="--loader: side of the JPEGs made")
    p.add_argument("--work-dir", help="--loader: where the JPEGs and the pack are made (kept)")
    p.add_argument("--seed", type=int, default=0, help="--loader: seed of the JPEGs and order")
    p.set_defaults(func=cmd_bench)


def _command_line(args: argparse.Namespace) -> str:
    """The `mimkit bench ...` line that reproduces this run, recorded in the results."""
    flags = {
        "--config": args.config,
        "--preset": args.preset,
        "--img-size": args.img_size,
        "--batch": args.batch,
        "--steps": args.steps,
        "--warmup": args.warmup,
        "--block": args.block,
        "--workers": args.workers,
        "--pipeline-items": args.pipeline_items,
        "--folder": args.folder,
        "--peak-tflops": args.peak_tflops,
        "--variants": args.variants,
        "--hf-attention": None if args.hf_attention == "sdpa" else args.hf_attention,
        "--out": args.out,
        "--rounds": args.rounds if args.loader else None,
        "--jpeg-size": args.jpeg_size if args.loader else None,
        "--work-dir": args.work_dir,
        "--seed": args.seed if args.loader else None,
    }
    if args.loader:  # the step's settings do not apply
        for name in ("--steps", "--warmup", "--block"):
            flags.pop(name)
    parts = [f"{k} {v}" for k, v in flags.items() if v is not None]
    switches = (
        ("--no-hf", args.no_hf), ("--no-pipeline", args.no_pipeline), ("--no-peak", args.no_peak),
        ("--loader", args.loader),
    )  # fmt: skip
    parts += [f for f, on in switches if on]
    return " ".join(["mimkit bench", *parts, *args.overrides])


def cmd_bench(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.config import load_config

    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        raise ConfigError("--batch and --steps must be >= 1 and --warmup >= 0")
    if not args.no_pipeline and not args.loader and args.workers < 1:
        raise ConfigError(
            "--workers: the image-folder test decodes in DataLoader workers; use >= 1"
        )
    variants = None
    if args.variants:
        # torch loads only when a command runs: --help stays fast
        from mimkit.bench.run import parse_variant

        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for variant in variants:
            parse_variant(variant)  # one clear line before any work
    hf_attention = [a.strip() for a in args.hf_attention.split(",") if a.strip()]
    if not hf_attention or not set(hf_attention) <= HF_ATTENTION:
        raise ConfigError(
            f"--hf-attention: expected sdpa, eager or both (sdpa,eager); got {args.hf_attention!r}"
        )
    base = []
    if args.preset or not args.config:
        base.append(f"model.preset={args.preset or 'vit_base'}")
    if args.img_size:
        base.append(f"model.img_size={args.img_size}")
    cfg = load_config(args.config, base + list(args.overrides))
    if args.loader:
        return _bench_loader(args, cfg)
    # torch loads only when a command runs: --help stays fast
    from mimkit.bench.run import markdown, run_benchmark, write_results

    record = run_benchmark(
        cfg,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        block=args.block,
        with_hf=not args.no_hf,
        pipeline=not args.no_pipeline,
        workers=args.workers,
        pipeline_items=args.pipeline_items,
        folder=args.folder,
        peak_tflops=args.peak_tflops,
        command=_command_line(args),
        variants=variants,
        measure_peak=not args.no_peak,
        hf_attention=list(dict.fromkeys(hf_attention)),
    )
    device = record["device"].split(":")[0]
    name = f"mae_{cfg.model.preset}_{cfg.model.image_hw[0]}_b{args.batch}_{device}.json"
    out = Path(args.out) if args.out else Path("runs/bench") / name
    print(markdown(record), end="")
    for path in write_results(record, out):
        print(f"wrote {path}")
    return 0


def _bench_loader(args: argparse.Namespace, cfg) -> int:
    # torch loads only when a command runs: --help stays fast
    import json

    from mimkit.bench.loader import bench_loader, loader_markdown
    from mimkit.train.runtime import pick_device

    device = pick_device(cfg.train.device)
    work = Path(args.work_dir) if args.work_dir else Path("runs/bench/loader_data")
    record = bench_loader(
        cfg, work, device, items=args.pipeline_items or 2000, jpeg_side=args.jpeg_size,
        batch=args.batch, workers=args.workers, rounds=args.rounds, seed=args.seed,
    )  # fmt: skip
    record["command"] = _command_line(args)
    hw = cfg.model.image_hw[0]
    out = Path(args.out) if args.out else Path("runs/bench") / f"loader_{hw}px_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(loader_markdown(record))
    print(loader_markdown(record), end="")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
