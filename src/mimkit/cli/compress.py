"""`mimkit prune`, `mimkit tome` and `mimkit compress optin|diffrate|iared2`: the compression commands."""

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
    c = sub.add_parser("compress", help="structured pruning and learned token reduction")
    csub = c.add_subparsers(dest="action", required=True)
    csub.add_parser(
        "optin",
        help="one-shot pruning of heads and MLP units to a FLOPs target; writes a smaller checkpoint",
        configure=_optin_options,
    )
    csub.add_parser(
        "diffrate",
        help="learn per-block token pruning/merging rates for a FLOPs target (frozen encoder)",
        configure=_diffrate_options,
    )
    add_iared2_parser(csub)


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


# --- mimkit compress optin | diffrate ---------------------------------------------------------


def _calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (or the run folder holding it)")
    p.add_argument(
        "--flops", type=float, required=True, help="target: fraction of the encoder's FLOPs, (0, 1]"
    )
    p.add_argument(
        "--calib", type=int, default=256, help="unlabelled calibration images (train split)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw and probes")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def _optin_options(p: argparse.ArgumentParser) -> None:
    _calibration_options(p)
    p.add_argument("--out", required=True, help="folder for the pruned checkpoint")
    p.add_argument(
        "--probes", type=int, default=32, help="random projections for the MLP-unit estimate"
    )
    p.set_defaults(func=cmd_optin)


def _diffrate_options(p: argparse.ArgumentParser) -> None:
    _calibration_options(p)
    p.add_argument("--out", help="schedule JSON (default: EVAL_DIR/diffrate-FLOPS.json)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps on the rates")
    p.add_argument("--batch-size", type=int, default=64, help="calibration images per step")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the rates")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="the learned counts are then moved a token at a time to within this fraction of "
        "the target",
    )
    p.add_argument(
        "--train-limit", type=int, default=2000, help="kNN bank size; 0: no kNN, no timing"
    )
    p.add_argument("--test-limit", type=int, help="kNN: use only the first N test items")
    p.set_defaults(func=cmd_diffrate)


def _check_calibration_args(args: argparse.Namespace) -> None:
    # torch loads only when a command runs: --help stays fast
    from mimkit.compress.optin import check_flops_target
    from mimkit.errors import ConfigError

    check_flops_target(args.flops)
    if args.calib < 1:
        raise ConfigError(f"--calib: expected at least 1 calibration image, got {args.calib}")


def _calibration_images(cfg, count: int, seed: int):
    """`count` normalised images drawn (seeded) from the train split; labels are not read."""
    # torch loads only when a command runs: --help stays fast
    import torch

    from mimkit.data.sources import load_split
    from mimkit.data.transforms import normalize

    images, _ = load_split(cfg.data, "train", cfg.model.in_chans, cfg.model.image_hw)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=gen)[:count]
    return normalize(images[pick], cfg.data.mean, cfg.data.std)


def cmd_optin(args: argparse.Namespace) -> int:
    _check_calibration_args(args)
    # torch loads only when a command runs: --help stays fast
    from mimkit.compress.optin import optin_checkpoint
    from mimkit.train.checkpoint import load_config_file, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    folder = resolve_checkpoint_dir(args.checkpoint)
    cfg = load_config_file(folder)
    images = _calibration_images(cfg, args.calib, args.seed)
    print(
        f"optin: scoring heads (exact) and MLP units ({args.probes} probes) on {len(images)} "
        f"calibration images, pruning to {args.flops:.2f}x the encoder FLOPs; progress on stderr",
        flush=True,
    )
    record = optin_checkpoint(
        folder, args.out, images, args.flops, args.probes, args.seed,
        pick_device(args.device), progress=True,
    )  # fmt: skip
    print(
        f"heads per block {record['heads_before']} -> {record['heads_after']}\n"
        f"MLP width per block {record['mlp_hidden_before']} -> {record['mlp_hidden_after']}\n"
        f"encoder FLOPs {record['flops_full'] / 1e6:.1f}M -> {record['flops_pruned'] / 1e6:.1f}M "
        f"({record['flops_fraction']:.3f}x); parameters {record['params_before']:,} -> "
        f"{record['params_after']:,}; written to {args.out} (and {args.out}/optin.json)"
    )
    return 0


def cmd_diffrate(args: argparse.Namespace) -> int:
    _check_calibration_args(args)
    # torch loads only when a command runs: --help stays fast
    from mimkit.compress.diffrate import check_tolerance, diffrate_report, learn_schedule
    from mimkit.eval.cache import eval_dir
    from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    check_tolerance(args.tolerance)
    device = pick_device(args.device)
    folder = resolve_checkpoint_dir(args.checkpoint)
    model, cfg = load_model(folder, device)
    images = _calibration_images(cfg, args.calib, args.seed).to(device)
    print(
        f"diffrate: learning prune/merge rates for {args.flops:.2f}x the encoder FLOPs, "
        f"{args.steps} steps on {len(images)} calibration images; progress on stderr",
        flush=True,
    )
    schedule, record = learn_schedule(
        model.encoder, images, args.flops, args.steps, args.batch_size, args.lr,
        seed=args.seed, progress=True, tolerance=args.tolerance,
    )  # fmt: skip
    attn, mlp = schedule.tokens(cfg.model.num_patches)
    moves = len(record["projection"]["moves"])
    print(f"patch tokens per block (attention) {attn}; after the last block {mlp[-1]}")
    print(
        f"encoder FLOPs {record['flops_fraction']:.3f}x of full (target {args.flops}; learned "
        f"{record['learned']['flops_fraction']:.3f}x, then {moves} one-token "
        f"move{'' if moves == 1 else 's'}); feature distance {record['distance_first_last'][-1]:.4f} "
        f"(1 - cosine, while learning)"
    )
    if not record["within_tolerance"]:
        print(
            f"warning: {record['flops_fraction']:.3f}x is not within {args.tolerance:g} of the "
            f"target; the fewest FLOPs any schedule reaches here is "
            f"{record['flops_floor_fraction']:.3f}x (block 0 compresses nothing)"
        )
    if args.train_limit:
        splits = _splits_for(cfg, args.train_limit)
        if args.test_limit:
            splits = (*splits[:2], splits[2][: args.test_limit], splits[3][: args.test_limit])
        record.update(
            diffrate_report(
                model.encoder, schedule, splits, cfg.data.mean, cfg.data.std, device,
                batch=args.batch_size,
            )
        )  # fmt: skip
        print(
            f"kNN top-1 (bank {len(splits[1])}, test {len(splits[3])}): full "
            f"{100 * record['knn_top1_full']:.2f}%, diffrate {100 * record['knn_top1']:.2f}%; "
            f"img/s {record['img_per_s_full']:.0f} -> {record['img_per_s']:.0f} "
            f"({record['speedup']:.2f}x)"
        )
    out = Path(args.out) if args.out else eval_dir(folder) / f"diffrate-{args.flops:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": str(folder), **record}, indent=1))
    print(f"written {out}")
    return 0


# --- `mimkit compress iared2`: IA-RED² learned token dropping --------------------------------


def add_iared2_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "iared2",
        help="IA-RED²: train a token-dropping policy on the frozen encoder, then drop tokens",
    )
    p.add_argument("checkpoint", help="checkpoint folder (or the run folder holding it)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--keep", type=float, help="fraction of the patch tokens entering each stage it keeps"
    )
    budget.add_argument(
        "--flops", type=float, help="target FLOPs as a fraction of the full encoder's"
    )
    p.add_argument("--out", required=True, help="folder for policy.safetensors and iared2.json")
    p.add_argument("--stages", type=int, default=3, help="groups of blocks, one policy each")
    p.add_argument("--steps", type=int, default=300, help="REINFORCE steps per stage")
    p.add_argument("--batch-size", type=int, default=64, help="images per REINFORCE step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the policy")
    p.add_argument("--tau", type=float, default=0.5, help="reward of a wrong prediction: -tau")
    p.add_argument("--train-limit", type=int, default=10000, help="labelled training images")
    p.add_argument("--test-limit", type=int, default=2000, help="test images for kNN")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and batches")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="also report the paper's input-adaptive rule: keep tokens with keep probability "
        "above this (tokens and FLOPs per image, kNN)",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_iared2)


def cmd_iared2(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    import time

    import torch

    from mimkit.compress import iared2 as ia
    from mimkit.compress.tradeoff import interleaved_rate_quartiles
    from mimkit.data.transforms import normalize
    from mimkit.eval.knn import knn_top1
    from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    start = time.perf_counter()
    ia.check_threshold(args.threshold)
    device = pick_device(args.device)
    model, cfg = load_model(args.checkpoint, device)
    encoder, mcfg = model.encoder.eval(), cfg.model
    starts = ia.stage_starts_for(mcfg.depth, args.stages)
    full = ia.iared2_flops(mcfg, starts, [mcfg.num_patches] * len(starts))
    counts = ia.counts_for_budget(mcfg, starts, args.keep, args.flops)
    x_train, y_train, x_test, y_test = _splits_for(cfg, args.train_limit)
    x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    mean, std = cfg.data.mean, cfg.data.std
    print(
        f"iared2: {len(starts)} stages at blocks {starts}, keeping {counts} of "
        f"{mcfg.num_patches} patch tokens; reward head on {len(y_train)} labelled images "
        f"(the checkpoint's data labels); progress on stderr",
        flush=True,
    )
    head = ia.fit_reward_head(encoder, x_train, y_train, mean, std, seed=args.seed)
    policy = ia.TokenPolicy(ia.PolicySpec(mcfg.embed_dim, starts)).to(device)
    settings = ia.TrainSettings(args.steps, args.batch_size, args.lr, args.tau, args.seed)
    history = ia.train_policy(
        encoder, policy, head, x_train, y_train, mean, std, counts, settings, progress=True
    )
    control = ia.RandomTokenPolicy(starts, seed=args.seed)
    variants = {
        "full": encoder.features,
        "iared2": lambda x: ia.iared2_features(encoder, policy, x, counts),
        # the chance control: the same counts per stage, the tokens drawn at random
        "random": lambda x: ia.iared2_features(encoder, control, x, counts),
    }
    # the adaptive rule keeps the dropped tokens in the tensor (masked): no speed to time
    adaptive = {"adaptive": lambda x: ia.adaptive_features(encoder, policy, x, args.threshold)}
    top1 = {}
    for name, fn in {**variants, **adaptive}.items():
        f_train = ia.batched_features(fn, x_train, mean, std, 256, device)
        f_test = ia.batched_features(fn, x_test, mean, std, 256, device)
        top1[name] = knn_top1(f_train, y_train, f_test, y_test)
    x = normalize(x_test[:256].to(device), mean, std)
    rates = interleaved_rate_quartiles(variants, x, rounds=args.rounds)
    flops = ia.iared2_flops(mcfg, starts, counts)
    fixed = torch.tensor([counts] * len(y_test))  # top-k: every image keeps `counts`
    per_image = {
        "fixed": {"rule": "top-k, the counts above", **ia.tokens_per_image(mcfg, starts, fixed)},
        "adaptive": ia.adaptive_report(encoder, policy, x_test, mean, std, args.threshold),
    }
    record = {
        "source": str(resolve_checkpoint_dir(args.checkpoint)),
        "counts": counts,
        "keep": args.keep,
        "flops_target": args.flops,
        "flops": flops,
        "flops_full": full,
        "flops_ratio": flops / full,
        "flops_random": ia.iared2_flops(mcfg, starts, counts, heads=0),
        "labels": "the checkpoint's data labels; correctness by a linear head on full features",
        "settings": vars(settings),
        "reward_first_last": [[h[0], sum(h[-10:]) / len(h[-10:])] for h in history],
        "tokens_per_image": per_image,
        "knn_top1": top1,
        "knn_bank": len(y_train),
        "knn_test": len(y_test),
        "rates": rates,
        "device": str(device),
        "seconds": time.perf_counter() - start,
    }
    ia.save_policy(policy, args.out, record)
    print(
        f"kept {counts} tokens per stage ({100 * flops / full:.1f}% of the encoder's FLOPs); "
        f"kNN top-1 {100 * top1['full']:.2f}% -> {100 * top1['iared2']:.2f}% "
        f"(random tokens at the same counts: {100 * top1['random']:.2f}%); "
        f"{rates['full']['img_per_s']:.0f} -> {rates['iared2']['img_per_s']:.0f} img/s; "
        f"written {args.out}"
    )
    print(_adaptive_line(per_image["adaptive"], top1["adaptive"]))
    return 0


def _adaptive_line(report: dict, top1: float) -> str:
    """Per-image kept tokens and FLOPs under the adaptive rule, in one line."""

    def spread(d: dict, fmt: str) -> str:
        return f"mean {d['mean']:{fmt}} [min {d['min']:{fmt}}, q25 {d['q25']:{fmt}}, " + (
            f"median {d['median']:{fmt}}, q75 {d['q75']:{fmt}}, max {d['max']:{fmt}}]"
        )

    stages = "; ".join(
        f"stage {s + 1} {spread(d, '.1f')}" for s, d in enumerate(report["kept_per_stage"])
    )
    return (
        f"adaptive rule ({report['rule']}), per image over {report['images']} test images: "
        f"patch tokens kept {stages}; FLOPs {spread(report['flops_fraction'], '.3f')} of the "
        f"encoder's; kNN top-1 {100 * top1:.2f}%"
    )
