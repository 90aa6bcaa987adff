"""The `mimkit` command line. Bad input prints one line naming what and where, and exits 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from mimkit.compress.cli import add_commands as add_compress_commands
from mimkit.errors import MimkitError
from mimkit.interop.cli import add_interop_commands

log = logging.getLogger("mimkit")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder by masked modelling")
    p.add_argument("config", help="YAML preset, e.g. configs/fmnist_mae_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=1")
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if out_dir holds a checkpoint"
    )
    p.add_argument(
        "--no-eval", action="store_true", help="skip the kNN report and reconstruction image"
    )
    p.set_defaults(func=cmd_pretrain)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    esub = p.add_subparsers(dest="protocol", required=True)
    knn = esub.add_parser("knn", help="weighted cosine kNN on frozen features")
    knn.add_argument("checkpoint", help="checkpoint folder (or the run folder holding it)")
    knn.add_argument("--data", help="data path (default: the checkpoint's own data config)")
    knn.add_argument("--source", help="data source for --data: fashion_mnist, idx or folder")
    knn.add_argument("-k", "--k", type=int, default=20)
    knn.add_argument("--temperature", type=float, default=0.07)
    knn.add_argument(
        "--train-limit", type=int, help="use only the first N training items as the bank"
    )
    knn.add_argument(
        "--random-init", action="store_true", help="evaluate the same architecture untrained"
    )
    knn.add_argument("--device", default="auto")
    knn.set_defaults(func=cmd_eval_knn)
    from mimkit.eval.commands import add_eval_protocols, add_feature_args

    add_feature_args(knn)
    add_eval_protocols(esub)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect data")
    dsub = p.add_subparsers(dest="action", required=True)
    info = dsub.add_parser("info", help="summarise a data folder (IDX files or images)")
    info.add_argument("path", help="folder of IDX files or of images, or 'fashion_mnist'")
    info.set_defaults(func=cmd_data_info)
    _add_modal_data_commands(dsub)


def _add_modal_data_commands(dsub: argparse._SubParsersAction) -> None:
    from mimkit.data.modal_cli import add_data_stats, add_data_synth

    add_data_synth(dsub)
    add_data_stats(dsub)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="pictures of what models and methods do")
    isub = p.add_subparsers(dest="what", required=True)
    masks = isub.add_parser("masks", help="a PNG gallery of every masking strategy on one image")
    masks.add_argument("--image", help="an image file (default: a Fashion-MNIST test image)")
    masks.add_argument("--grid", type=int, default=14, help="patches per side")
    masks.add_argument("--ratio", type=float, default=0.75)
    masks.add_argument("--seed", type=int, default=0)
    masks.add_argument("--out", default="mask_gallery.png")
    masks.set_defaults(func=cmd_inspect_masks)


def cmd_inspect_masks(args: argparse.Namespace) -> int:
    from mimkit.inspect.masks import save_mask_gallery

    path = save_mask_gallery(args.out, args.image, args.grid, args.ratio, args.seed)
    print(f"mask gallery: {path}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--steps", type=int, default=10, help="timed blocks per model (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (and compile)")
    p.add_argument("--block", type=int, help="steps per timed block (default: 5 GPU, 1 CPU)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-pipeline", action="store_true", help="skip the input pipeline")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the folder")
    p.add_argument("--pipeline-items", type=int, help="images in the pipeline test")
    p.add_argument("--folder", help="time this image folder instead of synthetic JPEGs")
    p.add_argument("--peak-tflops", type=float, help="hardware peak for MFU (GPUs: looked up)")
    p.add_argument("--out", help="result .json (default runs/bench/<model>_<device>.json)")
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit", description="Masked image modelling for Vision Transformers."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_eval(sub)
    _add_data(sub)
    add_interop_commands(sub)
    add_compress_commands(sub)
    _add_inspect(sub)
    _add_bench(sub)
    return parser


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mimkit.config import load_config
    from mimkit.report import pretrain_report
    from mimkit.train.distributed import env_context
    from mimkit.train.loop import pretrain

    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg, resume=not args.no_resume)
    if not env_context().is_main:
        return 0  # under torchrun, rank 0 reports
    print(
        f"checkpoint: {result.checkpoint}  (steps {result.steps}, final loss {result.final_loss:.4f})"
    )
    if result.corrupt_skipped:
        print(f"skipped corrupt images: {result.corrupt_skipped}")
    if not args.no_eval:
        report = pretrain_report(result.model, result.cfg, result.sample_images)
        for line in report["lines"]:
            print(line)
    return 0


def cmd_eval_knn(args: argparse.Namespace) -> int:
    import torch

    from mimkit.data.sources import guess_source, load_labelled_splits
    from mimkit.eval.knn import knn_evaluate
    from mimkit.train.checkpoint import load_model, method_from_config, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    device = pick_device(args.device)
    model, cfg = load_model(args.checkpoint, device)
    if args.random_init:
        torch.manual_seed(cfg.train.seed)
        model = method_from_config(cfg).to(device)
    if args.data:
        cfg.data.path = args.data
        cfg.data.source = args.source or guess_source(args.data)
    elif args.source:
        cfg.data.source = args.source
    splits = load_labelled_splits(
        cfg.data, cfg.model.in_chans, cfg.model.image_hw, args.train_limit
    )
    cache = None if args.no_cache else resolve_checkpoint_dir(args.checkpoint) / "features"
    result = knn_evaluate(
        model.encoder,
        splits,
        cfg.data.mean,
        cfg.data.std,
        args.k,
        args.temperature,
        device,
        cache_dir=cache,
        pool=args.pool,
        block=args.block,
    )
    name = "random-init" if args.random_init else "pretrained"
    print(
        f"kNN top-1 ({name}, k={args.k}, T={args.temperature}, bank {result.train_items}, test {result.test_items}): {100 * result.top1:.2f}%"
    )
    out = (
        resolve_checkpoint_dir(args.checkpoint)
        / f"eval_knn{'_random_init' if args.random_init else ''}.json"
    )
    out.write_text(
        json.dumps(
            {
                "top1": result.top1,
                "k": args.k,
                "temperature": args.temperature,
                "train_items": result.train_items,
                "test_items": result.test_items,
                "random_init": args.random_init,
                "seconds": round(result.seconds, 2),
            },
            indent=1,
        )
    )
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from mimkit.data.info import describe

    for line in describe(args.path):
        print(line)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimkit.bench.run import markdown, run_benchmark, write_results
    from mimkit.config import load_config
    from mimkit.errors import ConfigError

    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        raise ConfigError("--batch and --steps must be >= 1 and --warmup >= 0")
    if not args.no_pipeline and args.workers < 1:
        raise ConfigError(
            "--workers: the image-folder test decodes in DataLoader workers; use >= 1"
        )
    base = []
    if args.preset or not args.config:
        base.append(f"model.preset={args.preset or 'vit_base'}")
    if args.img_size:
        base.append(f"model.img_size={args.img_size}")
    cfg = load_config(args.config, base + list(args.overrides))
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
        "--out": args.out,
    }
    parts = [f"{k} {v}" for k, v in flags.items() if v is not None]
    parts += [f for f, on in (("--no-hf", args.no_hf), ("--no-pipeline", args.no_pipeline)) if on]
    command = " ".join(["mimkit bench", *parts, *args.overrides])
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
        command=command,
    )
    device = record["device"].split(":")[0]
    name = f"mae_{cfg.model.preset}_{cfg.model.image_hw[0]}_b{args.batch}_{device}.json"
    out = Path(args.out) if args.out else Path("runs/bench") / name
    print(markdown(record), end="")
    for path in write_results(record, out):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from mimkit.train.logging import setup_console_logging

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after options, e.g. `--no-resume a.b=1`
        if not (
            hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra)
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    setup_console_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except MimkitError as exc:
        print(f"mimkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
