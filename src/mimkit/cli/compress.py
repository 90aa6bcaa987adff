"""`mimkit prune` and `mimkit tome`: the compression commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mimkit.cli.parsing import DEVICE_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "prune",
        help="remove whole encoder blocks, data-free (or by oracle)",
        configure=_prune_options,
    )
    t = sub.add_parser("tome", help="token merging: img/s vs kNN top-1 for several r")
    t.add_argument("checkpoint", help="checkpoint folder (or the run folder holding it)")
    t.add_argument("--r", type=int, nargs="+", default=[0, 1, 2, 3], help="tokens merged per block")
    t.add_argument("--train-limit", type=int, default=10000, help="kNN bank size")
    t.add_argument("--batch-size", type=int, default=256, help="images per timed forward pass")
    t.add_argument("--device", default="auto", help=DEVICE_HELP)
    t.set_defaults(func=cmd_tome)


def _prune_options(p: argparse.ArgumentParser) -> None:
    # deferred to first use, for a fast --help: the method names live beside their torch code
    from mimkit.compress.importance import METHODS

    p.add_argument("checkpoint", help="checkpoint folder (or the run folder holding it)")
    p.add_argument("out", help="folder for the pruned checkpoint")
    p.add_argument(
        "--method",
        choices=[*METHODS, "oracle"],
        default="entropy",
        help="block importance score; oracle: kNN accuracy lost without each block",
    )
    p.add_argument("--keep", type=int, required=True, help="number of blocks to keep")
    p.add_argument("--bins", type=int, default=256, help="histogram bins of the entropy estimator")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--train-limit", type=int, default=10000, help="oracle: kNN bank size")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_prune)


def _splits_for(cfg, train_limit: int | None):
    # torch loads only when a command runs: --help stays fast
    from mimkit.data.sources import load_labelled_splits

    return load_labelled_splits(cfg.data, cfg.model.in_chans, cfg.model.image_hw, train_limit)


def _knn_oracle(args: argparse.Namespace):
    """Block sensitivities by kNN on the checkpoint's own labelled data."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.compress.oracle import knn_probe, oracle_sensitivity
    from mimkit.train.checkpoint import load_model
    from mimkit.train.runtime import pick_device

    device = pick_device(args.device)
    _, cfg = load_model(args.checkpoint)
    probe = knn_probe(_splits_for(cfg, args.train_limit), cfg.data.mean, cfg.data.std, device)
    return lambda model: oracle_sensitivity(model.to(device), probe)[1]


def cmd_prune(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.compress.prune import prune_checkpoint

    oracle = _knn_oracle(args) if args.method == "oracle" else None
    record = prune_checkpoint(
        args.checkpoint, args.out, args.method, args.keep, args.bins, args.seed, oracle
    )
    kept = ", ".join(map(str, record["kept_blocks"]))
    print(
        f"pruned {record['depth_before']} -> {record['depth_after']} blocks by {args.method} "
        f"(kept {kept}); encoder parameters {record['params_before']:,} -> "
        f"{record['params_after']:,}; written to {args.out}"
    )
    return 0


def cmd_tome(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.compress.tradeoff import plot_tradeoff, rows_as_dicts, tome_tradeoff
    from mimkit.eval.cache import eval_dir
    from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    device = pick_device(args.device)
    model, cfg = load_model(args.checkpoint, device)
    splits = _splits_for(cfg, args.train_limit)
    rs = sorted(set(args.r))
    print(
        f"tome: timing r={', '.join(map(str, rs))} interleaved on {min(args.batch_size, len(splits[2]))} "
        f"images, then kNN per r (bank {len(splits[1])}, test {len(splits[3])}); progress on stderr",
        flush=True,
    )
    rows = tome_tradeoff(
        model.encoder,
        splits,
        cfg.data.mean,
        cfg.data.std,
        rs,
        args.batch_size,
        device,
        progress=True,
    )
    print(f"{'r':>4} {'tokens out':>10} {'img/s':>10} {'speed-up':>9} {'kNN top-1':>10}")
    for row in rows:
        print(
            f"{row.r:>4} {row.tokens_out:>10} {row.img_per_s:>10.1f} {row.speedup:>8.2f}x "
            f"{100 * row.knn_top1:>9.2f}%"
        )
    folder = eval_dir(resolve_checkpoint_dir(args.checkpoint))  # survives checkpoint updates
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tome.json").write_text(json.dumps(rows_as_dicts(rows), indent=1))
    plot = plot_tradeoff(rows, Path(folder) / "tome.png")
    print(f"written {folder / 'tome.json'}" + (f" and {plot}" if plot else ""))
    return 0
