"""`mimkit pretrain`: train an encoder by masked modelling from a YAML preset plus overrides."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder by masked modelling")
    p.add_argument("config", help="YAML preset, e.g. configs/fmnist_mae_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=1")
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if out_dir holds a checkpoint"
    )
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the kNN report and the reconstruction images (at the end and per epoch)",
    )
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    import functools

    from mimkit.config import load_config
    from mimkit.inspect.reconstructions import training_picture
    from mimkit.report import pretrain_report
    from mimkit.train.distributed import env_context
    from mimkit.train.loop import pretrain

    cfg = load_config(args.config, args.overrides)
    picture = None
    if not args.no_eval:  # a reconstruction figure after each saved epoch, in RUN/reconstructions/
        picture = functools.partial(
            training_picture, mean=cfg.data.mean, std=cfg.data.std, seed=cfg.train.seed
        )
    result = pretrain(cfg, resume=not args.no_resume, picture=picture)
    if not env_context().is_main:
        return 0  # under torchrun, rank 0 reports
    loss, note = result.final_loss, ""
    if math.isnan(loss) and result.steps:  # nothing trained now: the run had already finished
        loss = last_logged_loss(Path(result.cfg.out_dir) / "metrics.jsonl")
        note = "; already finished, nothing to train (train.epochs=N to continue)"
    shown = "unknown" if math.isnan(loss) else f"{loss:.4f}"
    print(f"checkpoint: {result.checkpoint}  (steps {result.steps}, final loss {shown}{note})")
    if result.corrupt_skipped:
        print(f"skipped corrupt images: {result.corrupt_skipped}")
    if not args.no_eval:
        tc, world = result.cfg.train, env_context().world_size
        seen = result.steps * tc.batch_size * tc.accum_steps * world
        report = pretrain_report(
            result.model, result.cfg, result.sample_images, seen, lambda s: print(s, flush=True)
        )
        for line in report["lines"]:
            print(line)
    return 0


def last_logged_loss(metrics: Path) -> float:
    """The last finite training loss in a run's metrics.jsonl (nan when there is none)."""
    loss = math.nan
    if not metrics.is_file():
        return loss
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if not isinstance(record, dict):
            continue
        value = record.get("loss")
        if (
            record.get("event") == "train"
            and isinstance(value, (int, float))
            and math.isfinite(value)
        ):
            loss = float(value)
    return loss
