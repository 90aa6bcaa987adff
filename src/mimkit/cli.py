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
    return parser


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mimkit.config import load_config
    from mimkit.report import pretrain_report
    from mimkit.train.loop import pretrain

    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg, resume=not args.no_resume)
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
    from mimkit.objectives.mae import build_mae
    from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    device = pick_device(args.device)
    model, cfg = load_model(args.checkpoint, device)
    if args.random_init:
        torch.manual_seed(cfg.train.seed)
        model = build_mae(cfg.model).to(device)
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


def main(argv: Sequence[str] | None = None) -> int:
    from mimkit.train.logging import setup_console_logging

    args = build_parser().parse_args(argv)
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
