"""`mimkit pretrain`: train an encoder by masked modelling, from a YAML preset plus overrides,
or from a folder of images alone (`mimkit pretrain PATH --budget 5m`: see `mimkit.plan`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder by masked modelling")
    p.add_argument(
        "config",
        help="YAML preset (e.g. configs/fmnist_mae_tiny.yaml), or a folder of images to plan a "
        "run for with no YAML",
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=1")
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if out_dir holds a checkpoint"
    )
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the kNN report and the reconstruction images (at the end and per epoch)",
    )
    p.add_argument(
        "--budget",
        default="20m",
        help="a folder: wall-clock time for the whole run, evaluation included (90s, 5m, 1h)",
    )
    p.add_argument("--out", help="a folder: run folder (default: runs/<folder name>_mae)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    if Path(args.config).is_dir():
        return pretrain_folder(args)
    # torch loads only when a command runs: --help stays fast
    import functools

    from mimkit.config import load_config
    from mimkit.inspect.reconstructions import training_picture
    from mimkit.report import pretrain_report
    from mimkit.train.distributed import env_context
    from mimkit.train.loop import pretrain

    cfg = load_config(args.config, args.overrides)
    init = None
    if cfg.model.init_from is not None:
        from mimkit.interop.init_from import resolve_init_from  # torch loads only when run: --help

        cfg, init = resolve_init_from(cfg)
        record = init.record
        print(
            f"init_from: {record['source']} ({record['format']}): encoder imported, decoder "
            f"{record['decoder']}; position tables {record['position_tables']}; "
            f"{len(record['assumptions'])} note(s) in {cfg.out_dir}/source.json"
        )
    fill_folder_stats(cfg, args.config, args.overrides)
    picture = None
    if not args.no_eval:  # a reconstruction figure after each saved epoch, in RUN/reconstructions/
        picture = functools.partial(
            training_picture, mean=cfg.data.mean, std=cfg.data.std, seed=cfg.train.seed
        )
    result = pretrain(cfg, resume=not args.no_resume, picture=picture, init=init)
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


def stats_given(config_path: str, overrides: list[str]) -> bool:
    """Whether the YAML or an override sets data.mean and data.std."""
    # deferred with the rest of the config loader, for a fast --help
    from mimkit.yamlio import load_yaml

    tree = load_yaml(Path(config_path).read_text()) or {}
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    keys = {o.partition("=")[0].strip() for o in overrides}
    return all(name in data or f"data.{name}" in keys for name in ("mean", "std"))


def fill_folder_stats(cfg, config_path: str, overrides: list[str]) -> None:
    """An image folder whose YAML gives no data.mean/std is normalised by its own statistics
    (computed once, cached), never silently by Fashion-MNIST's defaults."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.plan import folder_stats

    if cfg.data.source not in ("folder", "packed") or stats_given(config_path, overrides):
        return
    if cfg.data.source == "packed":  # `mimkit data pack` measured them
        # loaded only when a command runs: --help stays fast
        from mimkit.data.shards import pack_stats

        cfg.data.mean, cfg.data.std = pack_stats(cfg.data.path)
        print(f"data.mean/std: not in {config_path}; from {cfg.data.path}/pack.json: mean "
              f"{cfg.data.mean}, std {cfg.data.std} (set data.mean and data.std to choose them)")  # fmt: skip
        return
    stats, cached = folder_stats(cfg.data, cfg.model.in_chans, cfg.model.image_hw)
    cfg.data.mean, cfg.data.std = stats["mean"], stats["std"]
    how = "cached" if cached else "computed"
    print(
        f"data.mean/std: not in {config_path}; {how} from {cfg.data.path}: mean {stats['mean']}, "
        f"std {stats['std']} (set data.mean and data.std to choose them)"
    )


def pretrain_folder(args: argparse.Namespace) -> int:
    """Survey the folder, plan for the budget, pretrain, report kNN and linear probe."""
    # torch loads only when a command runs: --help stays fast
    import json
    import time

    from mimkit.data.config import DataConfig
    from mimkit.errors import ConfigError
    from mimkit.inspect.reconstructions import save_reconstructions
    from mimkit.plan import (
        encoder_report,
        folder_stats,
        model_geometry,
        parse_budget,
        plan_run,
        planned_config,
        report_splits,
        survey_folder,
    )
    from mimkit.report import one_per_class
    from mimkit.train.loop import pretrain

    start = time.perf_counter()
    if args.overrides:
        raise ConfigError("pretrain PATH: a folder takes no overrides; write a YAML to set them")
    budget = parse_budget(args.budget)
    survey = survey_folder(args.config)
    for line in survey.lines():
        print(line)
    img, _ = model_geometry(survey.side)
    data = DataConfig(source="folder", path=survey.path, channels=survey.channels)
    before = time.perf_counter()
    stats, cached = folder_stats(data, survey.channels, (img, img))
    # decoding the folder again for the report takes about as long as the statistics did
    reload_s = time.perf_counter() - before if not cached else 1e-3 * survey.train_items
    print(
        f"normalisation: mean {stats['mean']}, std {stats['std']} ({'cached' if cached else 'computed'})"
    )
    out = args.out or str(Path("runs") / f"{Path(survey.path).resolve().name}_mae")
    cfg = planned_config(survey, stats, out)
    plan = plan_run(survey, cfg, budget - (time.perf_counter() - start), reload_s=reload_s)
    for line in plan.lines():
        print(line)
    result = pretrain(plan.cfg, resume=not args.no_resume)
    print(
        f"checkpoint: {result.checkpoint}  (steps {result.steps}, final loss {result.final_loss:.4f})"
    )
    results, lines = encoder_report(result.model, result.cfg, survey, plan.eval_items)
    for line in lines:
        print(line)
    if survey.classes and not args.no_eval:
        _, _, x_te, y_te = report_splits(result.cfg, survey, *plan.eval_items)
        path = save_reconstructions(
            result.model.eval(), one_per_class(x_te, y_te, 8), result.cfg.data.mean,
            result.cfg.data.std, Path(out) / "reconstruction.png", seed=result.cfg.train.seed,
        )  # fmt: skip
        print(f"reconstructions: {path}  (one test item per class)")
    wall = time.perf_counter() - start
    record = {
        "data": survey.path,
        "budget_s": budget,
        "wall_s": round(wall, 1),
        "plan": plan.lines(),
        "steps": result.steps,
        "results": results,
    }
    (Path(out) / "zero_config.json").write_text(json.dumps(record, indent=1))
    print(f"wall time {wall:.0f} s for a budget of {budget:.0f} s; summary: {out}/zero_config.json")
    return 0
