"""`mimkit eval knn|linear|fewshot|finetune`: argument parsing, printing and JSON beside the checkpoint.

Every protocol accepts `--random-init` (the same architecture, untrained: the floor) and
`--data/--source/--train-limit`; all but finetune read features through the on-disk cache.
Results and the cache live in the run's `eval/` folder, beside `checkpoint/` (which training
replaces when it saves): `eval_<protocol>[_random_init][_<setting>-<value>...].json`, named by
every setting given that changes the result (`--pool`, `--block`, limits, data, k/T), so runs
with other settings never overwrite each other; each file also records its settings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mimkit.cli.parsing import DEVICE_HELP
from mimkit.errors import ConfigError

KNN_K, KNN_T = 20, 0.07  # `eval knn` defaults, also the names of its default result file

# --help of `eval finetune`'s options, which are made from the fine-tuning settings
FINETUNE_HELP = {
    "epochs": "training epochs",
    "recipe": "auto: settings sized to the images, the data and the run length; mae: MAE's "
    "main_finetune.py defaults (50 epochs, batch 64, RandAugment, random erasing, crop 0.08-1, "
    "test centre-crop 224/256); flags given still win",
    "batch_size": "images per step (default: from the number of training items, 16-128)",
    "base_lr": "peak lr = base_lr * batch_size / 256 (default: 4e-3 for runs under 20 epochs, "
    "else 1e-3)",
    "min_lr": "lr at the end of the cosine schedule",
    "warmup_epochs": "epochs of linear lr warm-up",
    "weight_decay": "AdamW weight decay",
    "betas": "AdamW betas",
    "layer_decay": "lr factor per block from the head down (1: the same lr everywhere; "
    "default 0.75 pretrained, 1.0 with --random-init)",
    "drop_path": "stochastic depth rate (default: 0.1 for runs of 20+ epochs on images over 32 px, else 0)",
    "crop_scale": "train random-resized-crop area range (default: none up to 32 px, 0.5-1 up "
    "to 96 px, 0.08-1 above)",
    "crop_ratio": "train crop aspect range (default 0.75 1.333)",
    "hflip": "random horizontal flip (default: the checkpoint's data.hflip)",
    "randaug_ops": "RandAugment operations per image, 0 off (default: 2 for 20+ epochs over 32 px, else 0)",
    "randaug_magnitude": "RandAugment magnitude, 0-10",
    "erase_prob": "random-erasing probability (default: 0.25 for 20+ epochs over 32 px, else 0)",
    "test_crop": "test: resize to side/test_crop, then centre-crop (default: 1 without a train "
    "crop, else 224/256)",
    "head": "fc_norm: MAE's head, a new LayerNorm on the mean of pre-norm tokens (default for "
    "pool avg); norm: pool the encoder's normalised tokens",
    "learn_pos": "train the position table (MAE does)",
    "head_init": "probe: the head starts as a linear probe fitted on the frozen features "
    "(LP-FT; default); zero: MAE's near-zero head (--recipe mae)",
    "label_smoothing": "label smoothing of the cross-entropy",
    "mixup": "mixup Beta(alpha, alpha); 0 turns it off (MAE: 0.8 for 100 epochs)",
    "cutmix": "cutmix alpha; 0 turns it off (MAE: 1.0 for 100 epochs)",
    "mix_switch_prob": "with mixup and cutmix both on: chance of cutmix for a batch",
    "clip_grad": "clip the gradient norm to this (default: no clipping)",
    "img_size": "fine-tune at this image side, position tables resampled (default: the "
    "checkpoint's)",
    "pool": "default: the checkpoint's model.pool",
    "teacher": "a fine-tuned classifier's checkpoint: distil its predictions (G2SD's "
    "specific stage) through a second head",
    "seed": "seed of the head, data order and augmentation",
    "amp": "mixed precision: auto, bf16, fp16 or off",
    "max_steps": "stop after this many steps (smoke runs; resumable)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    esub = p.add_subparsers(dest="protocol", required=True)

    knn = esub.add_parser("knn", help="weighted cosine kNN on frozen features")
    add_common_args(knn, train_limit_help="use only the first N training items as the bank")
    knn.add_argument("-k", "--k", type=int, default=KNN_K, help="neighbours that vote")
    knn.add_argument(
        "--temperature", type=float, default=KNN_T, help="softmax temperature of the votes"
    )
    add_feature_args(knn)
    knn.set_defaults(func=cmd_eval_knn)

    esub.add_parser(
        "linear",
        help="linear probe (BN + linear) on cached frozen features",
        configure=_linear_options,
    )

    few = esub.add_parser("fewshot", help="linear probe on 1/5/10 labelled items per class")
    add_common_args(few)
    add_feature_args(few)
    few.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10], help="items per class")
    few.add_argument("--seeds", type=int, default=5, help="number of random draws per shot count")
    few.add_argument("--l2", type=float, default=1e-2, help="L2 strength of the probe (fixed)")
    few.set_defaults(func=cmd_eval_fewshot)

    esub.add_parser(
        "finetune",
        help="fine-tune the whole encoder with a linear head",
        configure=_finetune_options,
    )
    esub.add_parser(
        "segment", help="semantic segmentation transfer (mIoU)", configure=_segment_options
    )


def add_common_args(
    p: argparse.ArgumentParser, train_limit_help: str = "use only the first N training items"
) -> None:
    """The checkpoint and the data it is evaluated on: shared by every protocol."""
    p.add_argument("checkpoint", help="checkpoint folder (or the run folder holding it)")
    p.add_argument("--data", help="data path (default: the checkpoint's own data config)")
    p.add_argument("--source", help="data source for --data: fashion_mnist, idx or folder")
    p.add_argument("--train-limit", type=int, help=train_limit_help)
    p.add_argument(
        "--random-init", action="store_true", help="evaluate the same architecture untrained"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_feature_args(p: argparse.ArgumentParser) -> None:
    """Which features: pooling, block, test items, and the on-disk cache (RUN/eval/features/)."""
    p.add_argument("--pool", choices=("cls", "avg"), help="default: the checkpoint's model.pool")
    p.add_argument("--block", type=int, help="features after this block (1..depth); default last")
    p.add_argument("--test-limit", type=int, help="use only the first N test items")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def _linear_options(p: argparse.ArgumentParser) -> None:
    # deferred to first use, for a fast --help: the defaults live beside the probe's torch code
    from mimkit.eval.linear import DEFAULT_LRS

    add_common_args(p)
    add_feature_args(p)
    p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS), help="lr grid")
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="part of train held out to pick the lr"
    )
    p.add_argument(
        "--epochs", type=int, help="probe epochs (default: >= 40, for at least 1000 steps)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="features per step (default: from the training items, 128-4096)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the probe")
    p.add_argument(
        "--protocol",
        dest="linear_protocol",
        choices=("cached", "mae"),
        default="cached",
        help="cached: SGD on features extracted once, lr picked on a validation split (seconds);"
        " mae: MAE's protocol, a fresh crop + flip per step through the frozen encoder, cls"
        " token, LARS at --blr x 16384 / 256 (MAE's lr), 90 epochs (minutes)",
    )
    p.add_argument("--blr", type=float, default=0.1, help="--protocol mae: base lr (MAE: 0.1)")
    p.set_defaults(func=cmd_eval_linear)


def _finetune_options(p: argparse.ArgumentParser) -> None:
    """One option per fine-tuning setting, but train_limit and device (common options) and progress."""
    # deferred to first use, for a fast --help: the settings live beside the fine-tuning torch code
    from mimkit.eval.finetune import finetune_flags

    add_common_args(p)
    p.add_argument("--out", help="run folder (default: next to the checkpoint's run folder)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds one")
    skip = {"train_limit", "device", "progress"}
    for f in finetune_flags():
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = FINETUNE_HELP.get(f.name, f"fine-tuning setting {f.name}")
        if f.default is not None and "default" not in help_text:
            help_text += f" (default: {f.default})"
        # only the flags given reach the settings: the rest come from the recipe
        kw: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_text)
        if f.name in ("betas", "crop_scale", "crop_ratio"):
            p.add_argument(flag, type=float, nargs=2, **kw)
        elif f.name in ("pool", "head", "recipe", "head_init"):
            choices = {
                "pool": ("cls", "avg"),
                "head": ("fc_norm", "norm"),
                "recipe": ("auto", "mae"),
                "head_init": ("probe", "zero"),
            }
            p.add_argument(flag, choices=choices[f.name], **kw)
        elif f.name in ("hflip", "learn_pos"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "teacher":
            p.add_argument(flag, **kw)
        else:
            kind = {int: int, float: float, str: str}.get(type(f.default), float)
            if f.name in ("img_size", "max_steps", "batch_size", "randaug_ops", "epochs"):
                kind = int
            p.add_argument(flag, type=kind, **kw)
    reduce = p.add_argument_group(
        "token reduction in the loop (one; trained and scored with it, as the papers fine-tune)"
    )
    reduce.add_argument("--tome-r", type=int, help="ToMe: merge R tokens after every block")
    reduce.add_argument(
        "--tome-flops", type=float, help="ToMe: the schedule nearest this fraction of the FLOPs"
    )
    reduce.add_argument("--diffrate", help="DiffRate: the schedule JSON `compress diffrate` wrote")
    reduce.add_argument(
        "--iared2", help="IA-RED²: the policy folder `compress iared2` wrote (kept frozen)"
    )
    p.set_defaults(func=cmd_eval_finetune)


def use_data_args(cfg, args: argparse.Namespace) -> None:
    """Point the run config's data section at --data/--source when given."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.data.sources import guess_source

    if args.data:
        cfg.data.path = args.data
        cfg.data.source = args.source or guess_source(args.data)
    elif args.source:
        cfg.data.source = args.source


def cmd_eval_knn(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.eval.knn import knn_top1

    feats = load_features(args)
    start = time.perf_counter()
    top1 = knn_top1(*feats["train"], *feats["test"], k=args.k, temperature=args.temperature)
    n_train, n_test = len(feats["train"][1]), len(feats["test"][1])
    print(
        f"kNN top-1 ({_name(args)}, k={args.k}, T={args.temperature}, bank {n_train}, test {n_test}): {100 * top1:.2f}%"
    )
    write_result(
        feats["folder"],
        "knn",
        args.random_init,
        {
            "top1": top1,
            "k": args.k,
            "temperature": args.temperature,
            "pool": feats["pool"],
            "block": feats["block"],
            "train_items": n_train,
            "test_items": n_test,
            "random_init": args.random_init,
            "seconds": round(feats["seconds"] + time.perf_counter() - start, 2),
        },
        args,
    )
    return 0


def load_target(args: argparse.Namespace):
    """(encoder, run config, checkpoint folder, device), honouring --random-init/--data/--source."""
    # torch loads only when a command runs: --help stays fast
    import torch

    from mimkit.eval.features import feature_encoder
    from mimkit.train.checkpoint import load_model, method_from_config, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    device = pick_device(args.device)
    folder = resolve_checkpoint_dir(args.checkpoint)
    model, cfg = load_model(folder, device)
    if args.random_init:
        torch.manual_seed(cfg.train.seed)  # the initialisation pretraining started from
        model = method_from_config(cfg).to(device).eval()
    use_data_args(cfg, args)
    return feature_encoder(model, cfg.data), cfg, folder, device


def load_features(args: argparse.Namespace) -> dict[str, Any]:
    """Train/test features and labels for the target, from the cache when possible."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.data.sources import load_labelled_splits
    from mimkit.eval.cache import cached_features, feature_cache_dir, legacy_eval_dir
    from mimkit.eval.features import feature_stats

    start = time.perf_counter()
    encoder, cfg, folder, device = load_target(args)
    x_train, y_train, x_test, y_test = load_labelled_splits(
        cfg.data, cfg.model.in_chans, cfg.model.image_hw, args.train_limit
    )
    if args.test_limit is not None:
        x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    cache_dir = None if args.no_cache else feature_cache_dir(folder)
    old = (legacy_eval_dir(folder) / "features",)  # pre-0.2 entries are still read
    kw = dict(
        cache_dir=cache_dir, also_read=old, pool=args.pool, block=args.block, device=device,
        progress=True,
    )  # fmt: skip
    mean, std = feature_stats(cfg.data)  # per input for samples with several inputs
    f_train = cached_features(encoder, x_train, mean, std, desc="train features", **kw)
    f_test = cached_features(encoder, x_test, mean, std, desc="test features", **kw)
    return {
        "train": (f_train.to(device), y_train.to(device)),
        "test": (f_test.to(device), y_test.to(device)),
        "folder": folder,
        "pool": args.pool or encoder.cfg.pool,
        "block": args.block or len(encoder.blocks),
        "depth": len(encoder.blocks),
        "seconds": time.perf_counter() - start,
    }


def result_name(protocol: str, random_init: bool, args: argparse.Namespace | None = None) -> str:
    """`eval_<protocol>[_random_init]`, then `_<setting>-<value>` for each setting given that
    changes the result; the defaults give the plain name (`eval_knn.json`)."""
    parts = [f"eval_{protocol}"] + (["random_init"] if random_init else [])
    if args is not None:
        given = [
            ("pool", getattr(args, "pool", None)),
            ("block", getattr(args, "block", None)),
            ("train", getattr(args, "train_limit", None)),
            ("test", getattr(args, "test_limit", None)),
            ("data", getattr(args, "data", None) and Path(args.data).name),
            ("source", getattr(args, "source", None)),
        ]
        given += reduction_given(args)
        if protocol == "knn":
            given += [
                ("k", args.k if args.k != KNN_K else None),
                ("T", f"{args.temperature:g}" if args.temperature != KNN_T else None),
            ]
        parts += [f"{key}-{value}" for key, value in given if value is not None]
    name = "_".join(parts)
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) + ".json"


def reduction_given(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """`eval finetune`'s token reduction, as (name, value) for result and folder names."""
    given = [
        ("tome-r", getattr(args, "tome_r", None)),
        ("tome-flops", getattr(args, "tome_flops", None)),
        ("diffrate", getattr(args, "diffrate", None) and Path(args.diffrate).stem),
        ("iared2", getattr(args, "iared2", None) and Path(args.iared2).name),
    ]
    return [(key, value) for key, value in given if value is not None]


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What the command line chose about the data and features (None: the default)."""
    keys = ("pool", "block", "train_limit", "test_limit", "data", "source", "no_cache")
    return {key: getattr(args, key) for key in keys if hasattr(args, key)}


def write_result(
    folder: Path,
    protocol: str,
    random_init: bool,
    record: dict,
    args: argparse.Namespace | None = None,
) -> Path:
    """`record` as JSON in the checkpoint's eval folder (RUN/eval/), named by its settings."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.eval.cache import eval_dir

    out = eval_dir(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_name(protocol, random_init, args)
    if args is not None:
        record = dict(record, settings=settings_of(args))
    path.write_text(json.dumps(record, indent=1))
    print(f"written: {path}")
    return path


def _name(args: argparse.Namespace) -> str:
    return "random-init" if args.random_init else "pretrained"


def cmd_eval_linear(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from dataclasses import replace

    from mimkit.eval.linear import linear_probe, probe_settings_for

    if getattr(args, "linear_protocol", "cached") == "mae":
        return cmd_eval_linear_mae(args)
    start = time.perf_counter()
    feats = load_features(args)
    settings = probe_settings_for(len(feats["train"][1]), args.seed)
    if args.batch_size:
        settings = replace(settings, batch_size=args.batch_size)
    if args.epochs:
        settings = replace(settings, epochs=args.epochs)
    result = linear_probe(
        *feats["train"], *feats["test"], args.lrs, args.val_fraction, settings, progress=True
    )
    n_val = round(result.train_items * args.val_fraction)
    print(
        f"linear probe top-1 ({_name(args)}, pool {feats['pool']}, block {feats['block']}/{feats['depth']}): "
        f"{100 * result.top1:.2f}%  (train {100 * result.train_top1:.2f}%; lr {result.lr:g} chosen "
        f"on {n_val} validation items carved from train; train {result.train_items}, test "
        f"{result.test_items})"
    )
    print("  lr        val top-1")
    for lr, acc in sorted(result.val_top1.items()):
        mark = "  <- chosen" if lr == result.lr else ""
        print(f"  {lr:<9g} {100 * acc:6.2f}%{mark}")
    if result.lr_at_grid_edge:
        print(f"  warning: lr {result.lr:g} is at the edge of the grid; widen --lrs")
    print(f"  (cached-feature probe: batch {settings.batch_size}, {settings.epochs} epochs)")
    seconds = time.perf_counter() - start
    print(
        f"time: {seconds:.1f} s (features {feats['seconds']:.1f} s, probe {result.seconds:.1f} s)"
    )
    write_result(
        feats["folder"],
        "linear",
        args.random_init,
        {
            "top1": result.top1,
            "train_top1": result.train_top1,
            "lr": result.lr,
            "val_top1": {str(k): v for k, v in result.val_top1.items()},
            "val_fraction": args.val_fraction,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "pool": feats["pool"],
            "block": feats["block"],
            "train_items": result.train_items,
            "test_items": result.test_items,
            "random_init": args.random_init,
            "seconds": round(seconds, 2),
        },
        args,
    )
    return 0


def cmd_eval_linear_mae(args: argparse.Namespace) -> int:
    """MAE's linear protocol: augmented batches through the frozen encoder, LARS, cls token."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.data.sources import load_labelled_splits
    from mimkit.eval.linear_mae import MAEProbeSettings, linear_probe_mae

    if args.block is not None:
        raise ConfigError("--block: --protocol mae probes the last block's output, as MAE does")
    encoder, cfg, folder, device = load_target(args)
    x_train, y_train, x_test, y_test = load_labelled_splits(
        cfg.data, cfg.model.in_chans, cfg.model.image_hw, args.train_limit
    )
    if args.test_limit is not None:
        x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    settings = MAEProbeSettings(base_lr=args.blr, batch_size=args.batch_size, seed=args.seed)
    settings.pool = args.pool or settings.pool
    if args.epochs:
        settings.epochs = args.epochs
        settings.warmup_epochs = min(settings.warmup_epochs, max(0, args.epochs // 9))
    result = linear_probe_mae(
        encoder, (x_train, y_train), (x_test, y_test), cfg.data.mean, cfg.data.std, settings,
        device, progress=True,
    )  # fmt: skip
    print(
        f"linear probe top-1 ({_name(args)}, MAE protocol, pool {result.pool}): "
        f"{100 * result.top1:.2f}% test, {100 * result.train_top1:.2f}% train (un-augmented); "
        f"LARS lr {result.lr:g} (blr {settings.base_lr:g} x MAE's batch 16384 / 256), batch "
        f"{result.batch_size}, {result.epochs} epochs, {result.steps} steps; train {result.train_items}, "
        f"test {result.test_items}"
    )
    print(f"time: {result.seconds:.1f} s")
    record = {
        key: getattr(result, key)
        for key in ("top1", "train_top1", "lr", "batch_size", "epochs", "steps", "pool",
                    "train_items", "test_items")
    }  # fmt: skip
    record.update(
        protocol="mae", blr=settings.base_lr, warmup_epochs=settings.warmup_epochs,
        crop_scale=list(settings.crop_scale), eval_crop=settings.eval_crop, seed=args.seed,
        random_init=args.random_init, seconds=round(result.seconds, 2),
    )  # fmt: skip
    write_result(folder, "linear_mae", args.random_init, record, args)
    return 0


def cmd_eval_fewshot(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.eval.fewshot import fewshot_evaluate

    start = time.perf_counter()
    feats = load_features(args)
    seeds = list(range(args.seeds))
    results, probe_seconds = fewshot_evaluate(
        *feats["train"], *feats["test"], args.shots, seeds, args.l2
    )
    print(
        f"few-shot linear probe ({_name(args)}, pool {feats['pool']}, block {feats['block']}/{feats['depth']}, "
        f"{len(seeds)} seeds, L2 {args.l2:g}; test {len(feats['test'][1])})"
    )
    print("  shots/class   top-1 mean ± std")
    for r in results:
        print(f"  {r.shots:<13d} {100 * r.mean:6.2f}% ± {100 * r.std:.2f}")
    seconds = time.perf_counter() - start
    print(
        f"time: {seconds:.1f} s (features {feats['seconds']:.1f} s, probes {probe_seconds:.1f} s)"
    )
    write_result(
        feats["folder"],
        "fewshot",
        args.random_init,
        {
            "results": [
                {"shots": r.shots, "mean": r.mean, "std": r.std, "per_seed": r.per_seed}
                for r in results
            ],
            "seeds": seeds,
            "l2": args.l2,
            "pool": feats["pool"],
            "block": feats["block"],
            "random_init": args.random_init,
            "seconds": round(seconds, 2),
        },
        args,
    )
    return 0


def cmd_eval_finetune(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.compress.reductions import reduction_for
    from mimkit.eval.finetune import finetune, finetune_flags, split_settings
    from mimkit.models.config import resolve_model_config
    from mimkit.train.checkpoint import (
        MODEL_FILE,
        load_config_file,
        read_weights,
        resolve_checkpoint_dir,
    )
    from mimkit.train.distributed import env_context

    folder = resolve_checkpoint_dir(args.checkpoint)
    cfg = load_config_file(folder)
    use_data_args(cfg, args)
    values = {f.name: getattr(args, f.name) for f in finetune_flags() if hasattr(args, f.name)}
    train, ft = split_settings(values)  # train_limit and device come from the common args
    reduction = reduction_for(
        resolve_model_config(cfg.model), args.tome_r, args.tome_flops, args.diffrate, args.iared2
    )
    if reduction is not None and ft.img_size is not None:
        raise ConfigError(
            "--img-size with a token reduction: its schedule counts the checkpoint's tokens"
        )
    weights = None if args.random_init else read_weights(folder / MODEL_FILE)
    default_out = folder.parent / "_".join(
        ["finetune"] + (["random_init"] if args.random_init else [])
        + [f"{key}-{value}" for key, value in reduction_given(args)]
    )  # fmt: skip
    out = Path(args.out) if args.out else default_out
    result = finetune(cfg, weights, train, ft, out, resume=not args.no_resume, reduction=reduction)
    if not env_context().is_main:
        return 0  # under torchrun, rank 0 reports
    print(
        f"fine-tune top-1 ({_name(args)}, {result.epochs} epoch(s), {result.steps} steps, "
        f"train {result.train_items}, test {result.test_items}): {100 * result.top1:.2f}%  "
        f"(train items, un-augmented: {100 * result.train_top1:.2f}%; final train loss "
        f"{result.final_loss:.4f}; {result.seconds:.0f} s; run folder {out})"
    )
    record = dict(
        result.settings or {}, top1=result.top1, train_top1=result.train_top1,
        steps=result.steps, epochs_done=result.epochs,
    )  # fmt: skip
    record.update(
        train_items=result.train_items,
        test_items=result.test_items,
        final_loss=result.final_loss,
        random_init=args.random_init,
        run_folder=str(out),
        seconds=round(result.seconds, 2),
    )
    record["betas"] = list(record["betas"])
    write_result(folder, "finetune", args.random_init, record, args)
    (out / "result.json").write_text(json.dumps(record, indent=1))  # this run's own copy
    return 0


def _segment_options(p: argparse.ArgumentParser) -> None:
    # deferred to first use, for a fast --help (the settings module loads no torch)
    from mimkit.eval.segment_settings import SegmentSettings

    p.add_argument("checkpoint", help="checkpoint folder (or the run folder holding it)")
    p.add_argument(
        "--data", required=True, help="images/{train,val}, annotations/{train,val}, classes.txt"
    )
    p.add_argument("--train-limit", type=int, help="use only the first N training scenes")
    p.add_argument(
        "--random-init", action="store_true", help="evaluate the same architecture untrained"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_eval_segment)
    p.add_argument("--val-limit", type=int, help="score only the first N validation scenes")
    p.add_argument(
        "--head", choices=("linear", "fpn", "both"), default="both", help="which head(s) to train"
    )
    p.add_argument(
        "--finetune", action="store_true", help="train the encoder too (layer-wise lr decay)"
    )
    d = SegmentSettings()
    p.add_argument("--epochs", type=int, default=d.epochs, help="head training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="scenes per step")
    p.add_argument(
        "--lr", type=float, default=d.lr, help="fpn, and any --finetune: AdamW peak lr (cosine)"
    )
    p.add_argument("--linear-lr", type=float, default=d.linear_lr, help="frozen linear: peak lr")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay")
    p.add_argument(
        "--layer-decay",
        type=float,
        default=d.layer_decay,
        help="--finetune: lr factor per block from the head down",
    )
    p.add_argument("--width", type=int, default=d.width, help="channels of the fpn decoder")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the head and data order")
    p.add_argument(
        "--predictions", type=int, default=8, help="validation scenes drawn into prediction images"
    )


def cmd_eval_segment(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    import torch

    from mimkit.data.segmentation import load_segmentation_split
    from mimkit.eval import segment
    from mimkit.eval.cache import eval_dir
    from mimkit.eval.segment_settings import SegmentSettings
    from mimkit.train.checkpoint import load_model, method_from_config, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    device = pick_device(args.device)
    folder = resolve_checkpoint_dir(args.checkpoint)
    model, cfg = load_model(folder, "cpu")
    if args.random_init:
        torch.manual_seed(cfg.train.seed)  # the initialisation pretraining started from
        model = method_from_config(cfg)
    chans = cfg.model.in_chans
    train = load_segmentation_split(args.data, "train", chans, args.train_limit)
    val = load_segmentation_split(args.data, "val", chans, args.val_limit)
    settings = SegmentSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        linear_lr=args.linear_lr,
        weight_decay=args.weight_decay,
        layer_decay=args.layer_decay,
        width=args.width,
        seed=args.seed,
    )
    heads = ("linear", "fpn") if args.head == "both" else (args.head,)
    # beside the other evaluation outputs, outside the checkpoint folder training replaces
    pictures = eval_dir(folder) / f"segment{'_random_init' if args.random_init else ''}"
    record: dict[str, Any] = {"data": str(args.data), "random_init": args.random_init}
    record.update(train_items=len(train.labels), val_items=len(val.labels))
    record["skipped"] = len(train.skipped) + len(val.skipped)
    record["settings"] = vars(settings)
    scenes = segment.scene_encoder(model, cfg, tuple(val.labels.shape[-2:]), str(folder))
    encoder = scenes.encoder
    if scenes.note:  # several inputs per sample: which input's encoder reads the scenes
        print(scenes.note)
        record["encoder_input"] = scenes.note
    results = segment.evaluate_heads(
        encoder.to(device),
        heads,
        (train.images, train.labels),
        (val.images, val.labels),
        val.num_classes,
        val.ignore_index,
        scenes.mean,
        scenes.std,
        settings,
        device,
        finetune=args.finetune,
    )
    for kind, result in results.items():
        name = f"{kind}{'_finetune' if args.finetune else ''}"
        _print_segment(name, args, train, val, encoder, result)
        record[name] = {
            "miou": result.scores.miou,
            "pixel_acc": result.scores.pixel_acc,
            "per_class_iou": dict(zip(val.class_names, result.scores.per_class_iou, strict=True)),
            "encoder": "fine-tuned" if args.finetune else "frozen",
            "steps": result.steps,
            "seconds": round(result.seconds, 2),
        }
        if args.predictions > 0:
            _save_predictions(pictures / f"{name}.png", val, result.predictions, args.predictions)
    write_result(folder, "segment", args.random_init, record)
    return 0


def _print_segment(name: str, args: argparse.Namespace, train, val, encoder, result) -> None:
    s = result.scores
    grid = "x".join(str(g) for g in encoder.grid_hw)
    print(
        f"segment {name} ({_name(args)}, encoder at {encoder.cfg.image_hw[0]} px / grid {grid}, "
        f"train {len(train.labels)}, val {len(val.labels)}, {result.steps} steps, "
        f"{result.seconds:.0f} s): mIoU {100 * s.miou:.2f}%  pixel acc {100 * s.pixel_acc:.2f}%"
    )
    print(
        "  "
        + "  ".join(
            f"{c} {'-' if v is None else f'{100 * v:.1f}'}"
            for c, v in zip(val.class_names, s.per_class_iou, strict=True)
        )
    )
    if train.skipped or val.skipped:
        print(f"  skipped pairs: {len(train.skipped)} train, {len(val.skipped)} val")


def _save_predictions(path: Path, val, predictions, count: int) -> None:
    # deferred so that `mimkit --help` starts fast (PIL and the torch code load on use)
    from PIL import Image

    from mimkit.eval.segment import prediction_panel

    n = min(count, len(val.labels))
    panel = prediction_panel(val.images[:n], val.labels[:n], predictions[:n], val.ignore_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(panel)
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path)
    print(f"  prediction images: {path} (image | truth | prediction; white: ignored)")
