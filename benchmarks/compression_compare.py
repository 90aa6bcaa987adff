"""The one comparison of issue 22: token reduction and structured pruning at matched FLOPs.

ToMe (`compress.tome`), DiffRate (`compress.diffrate`), IA-RED² (`compress.iared2`), OPTIN
(`compress.optin`), entropy block pruning (`compress.prune`, Gardener) and two combinations
(OPTIN + ToMe, block pruning + ToMe) on one checkpoint, each at 0.5x, 0.65x and 0.8x of the
encoder's forward FLOPs (`bench.flops.encoder_inference_flops`, the count every method uses).
Every variant is scored on frozen features, no fine-tuning: weighted kNN top-1 and the cached
linear probe (`eval.linear.linear_probe`), beside the full encoder, the same architecture
untrained (the floor) and raw pixels. Speed: all variants interleaved on one batch, each
round running every variant once (as `mimkit tome` does), median img/s and quartiles.

DiffRate's learned counts are projected onto each target (`diffrate.project_schedule`, 1%
tolerance); its rows' detail keeps the learned schedule before the projection and the moves.

Seeds: everything that draws (the calibration images of OPTIN and DiffRate, DiffRate's batches,
IA-RED²'s policy training, the linear probe) runs once per seed; ToMe and block pruning draw
nothing, so only their probe changes with the seed. One IA-RED² policy is trained per seed
(at the middle target's keep counts) and applied at every target with that target's counts.
Beside it, its chance control ("IA-RED² counts, random tokens", `iared2.RandomTokenPolicy`):
the same stages and keep counts, the kept tokens drawn uniformly at random per image (seeded),
so the table shows whether the learned policy beats chance at the same FLOPs (the control's
FLOPs omit the interpreters it does not run). The IA-RED² rows' detail also holds the tokens
kept per image and each image's FLOPs (mean, min, quartiles, max per stage) on the test
images: at fixed counts (every image keeps the same) and under the paper's input-adaptive rule
(keep probability > 0.5, `iared2.adaptive_report`), which the table does not score.

    PYTHONPATH=src python3 benchmarks/compression_compare.py /work/runs/h22b/demo-checkpoint \\
        --out docs/results/compression
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mimkit.bench.flops import encoder_inference_flops
from mimkit.compress import iared2 as ia
from mimkit.compress.diffrate import diffrate_features, learn_schedule, schedule_flops
from mimkit.compress.importance import block_scores, blocks_to_keep
from mimkit.compress.optin import optin_prune
from mimkit.compress.prune import prune_blocks
from mimkit.compress.tome import tome_features, tome_flops, tome_schedule_for
from mimkit.compress.tradeoff import interleaved_rate_quartiles
from mimkit.data.sources import load_labelled_splits
from mimkit.data.transforms import normalize
from mimkit.eval.knn import knn_top1
from mimkit.eval.linear import linear_probe, probe_settings_for
from mimkit.objectives import build_method
from mimkit.train.checkpoint import load_model


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# --- the variants -----------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    name: str  # method
    target: float | None  # FLOPs fraction asked for (None: a reference row)
    flops: float  # FLOPs fraction reached
    fn: object  # normalised images -> pooled features
    seed: int | None  # None: draws nothing
    detail: dict


def block_prune_variant(model, target, full, detail_extra=None):
    cfg = model.encoder.cfg
    scores = block_scores(model.encoder.blocks, "entropy")
    options = {
        k: encoder_inference_flops(dataclasses.replace(cfg, depth=k)) / full
        for k in range(1, cfg.depth + 1)
    }
    k = min(options, key=lambda k: abs(options[k] - target))
    pruned = prune_blocks(model, blocks_to_keep(scores, k)).eval()
    return pruned, {"kept_blocks": blocks_to_keep(scores, k), **(detail_extra or {})}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", default="docs/results/compression")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.65, 0.8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--bank", type=int, default=1000, help="kNN bank = linear-probe train items")
    p.add_argument("--test", type=int, default=500, help="test items")
    p.add_argument("--calib", type=int, default=64, help="calibration images (OPTIN, DiffRate)")
    p.add_argument("--diffrate-steps", type=int, default=30)
    p.add_argument("--iared2-steps", type=int, default=30, help="REINFORCE steps per stage")
    p.add_argument("--iared2-train", type=int, default=2000, help="labelled images for IA-RED²")
    p.add_argument("--optin-probes", type=int, default=8, help="OPTIN's random probes")
    p.add_argument("--probe-epochs", type=int, default=40, help="linear probe epochs")
    p.add_argument("--batch", type=int, default=64, help="timed batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def machine_info(threads: int) -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = [line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")]
    return {
        "cpu": model[0] if model else platform.processor(),
        "cores": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "torch": torch.__version__,
        "threads": threads,
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
    }


def deterministic_variants(model, targets: list[float], full: float) -> list[Variant]:
    """The reference rows and the methods that draw nothing: ToMe, block pruning, both."""
    encoder, mcfg = model.encoder, model.encoder.cfg
    variants = [Variant("full encoder", None, 1.0, encoder.features, None, {})]
    torch.manual_seed(0)
    untrained = build_method(model.cfg, model.masking, model.settings).eval()
    variants.append(Variant("untrained (floor)", None, 1.0, untrained.encoder.features, None, {}))
    for target in targets:
        rs = tome_schedule_for(mcfg, target)
        variants.append(Variant(
            "ToMe", target, tome_flops(mcfg, rs) / full,
            lambda x, rs=rs: tome_features(encoder, x, rs), None, {"r_per_block": rs},
        ))  # fmt: skip
        pruned, detail = block_prune_variant(model, target, full)
        variants.append(Variant(
            "block pruning", target, encoder_inference_flops(pruned.encoder.cfg) / full,
            pruned.encoder.features, None, detail,
        ))  # fmt: skip
        # prune one block, ToMe the rest of the way
        pruned1, detail1 = block_prune_variant(model, 1.0 - 1.0 / mcfg.depth + 1e-9, full)
        pcfg = pruned1.encoder.cfg
        rs1 = tome_schedule_for(pcfg, target * full / encoder_inference_flops(pcfg))
        variants.append(Variant(
            "block pruning + ToMe", target, tome_flops(pcfg, rs1) / full,
            lambda x, e=pruned1.encoder, rs=rs1: tome_features(e, x, rs), None,
            {**detail1, "r_per_block": rs1},
        ))  # fmt: skip
    return variants


RANDOM_ROW = "IA-RED² counts, random tokens"


def iared2_variants(model, data, args, seed: int, full: float) -> list[Variant]:
    """One policy per seed, trained at the middle target's counts, applied at every target;
    beside each, its chance control: the same counts per stage, tokens drawn at random."""
    encoder, mcfg = model.encoder, model.encoder.cfg
    x_all, y_all, x_test, mean, std = data
    starts = ia.stage_starts_for(mcfg.depth, 3)
    mid = sorted(args.targets)[len(args.targets) // 2]
    counts_mid = ia.counts_for_budget(mcfg, starts, None, mid)
    t0 = time.time()
    images, labels = x_all[: args.iared2_train], y_all[: args.iared2_train]
    head = ia.fit_reward_head(encoder, images, labels, mean, std, seed=seed)
    torch.manual_seed(seed)
    policy = ia.TokenPolicy(ia.PolicySpec(mcfg.embed_dim, starts))
    settings = ia.TrainSettings(args.iared2_steps, 32, 1e-3, 0.5, seed)
    history = ia.train_policy(
        encoder, policy, head, images, labels, mean, std, counts_mid, settings
    )
    record = {
        "trained_at_counts": counts_mid,
        "reward_first10_last10": [
            [sum(h[:10]) / len(h[:10]), sum(h[-10:]) / len(h[-10:])] for h in history
        ],
        "train_seconds": round(time.time() - t0, 1),
    }
    # the paper's input-adaptive rule on the test images: tokens and FLOPs per image
    record["tokens_per_image_adaptive"] = ia.adaptive_report(encoder, policy, x_test, mean, std)
    ia.save_policy(policy, Path(args.out) / f"iared2-seed{seed}", record)
    log(f"seed {seed}: IA-RED² trained ({record['reward_first10_last10']})")
    variants = []
    for target in args.targets:
        counts = ia.counts_for_budget(mcfg, starts, None, target)
        # top-k at fixed counts: every image keeps `counts` (a one-value distribution)
        fixed = ia.tokens_per_image(mcfg, starts, torch.tensor([counts] * len(x_test)))
        variants.append(Variant(
            "IA-RED²", target, ia.iared2_flops(mcfg, starts, counts) / full,
            lambda x, c=counts: ia.iared2_features(encoder, policy, x, c), seed,
            {"counts": counts, "tokens_per_image": fixed, **record},
        ))  # fmt: skip
        # the chance control: the same stages and counts, the tokens drawn at random (seeded)
        control = ia.RandomTokenPolicy(starts, seed=seed)
        variants.append(Variant(
            RANDOM_ROW, target, ia.iared2_flops(mcfg, starts, counts, heads=0) / full,
            lambda x, c=counts, r=control: ia.iared2_features(encoder, r, x, c), seed,
            {"counts": counts, "random_seed": seed},
        ))  # fmt: skip
    return variants


def calibrated_variants(model, calib, args, seed: int, full: float) -> list[Variant]:
    """DiffRate and OPTIN on `calib` (normalised unlabelled images); OPTIN + ToMe reuses the
    OPTIN model of the largest target and merges the rest of the way to each smaller one."""
    encoder, mcfg = model.encoder, model.encoder.cfg
    variants, optin_top = [], None
    for target in sorted(args.targets, reverse=True):
        schedule, dr = learn_schedule(
            encoder, calib, target, steps=args.diffrate_steps, batch=32, seed=seed
        )
        variants.append(Variant(
            "DiffRate", target, schedule_flops(mcfg, schedule) / full,
            lambda x, s=schedule: diffrate_features(encoder, x, s), seed,
            {k: dr[k] for k in ("prune_keep", "merge_keep", "learned", "projection", "seconds")},
        ))  # fmt: skip
        optin, _, orec = optin_prune(model, calib, target, probes=args.optin_probes, seed=seed)
        variants.append(Variant(
            "OPTIN", target, orec["flops_fraction"], optin.eval().encoder.features, seed,
            {"heads": orec["heads_after"], "mlp_hidden": orec["mlp_hidden_after"]},
        ))  # fmt: skip
        if optin_top is None:
            optin_top = (optin, orec)
        else:
            top, trec = optin_top
            tcfg = top.encoder.cfg
            rs = tome_schedule_for(tcfg, target * full / encoder_inference_flops(tcfg))
            variants.append(Variant(
                "OPTIN + ToMe", target, tome_flops(tcfg, rs) / full,
                lambda x, e=top.encoder, rs=rs: tome_features(e, x, rs), seed,
                {"optin_target": trec["flops_target"], "heads": trec["heads_after"],
                 "mlp_hidden": trec["mlp_hidden_after"], "r_per_block": rs},
            ))  # fmt: skip
        log(f"seed {seed} @ {target}: DiffRate {dr['flops_fraction']:.3f}, "
            f"OPTIN {orec['flops_fraction']:.3f}")  # fmt: skip
    return variants


def probe_settings(items: int, seed: int, args):
    """`eval.linear`'s batch for `items`, but `--probe-epochs` epochs (budget)."""
    return dataclasses.replace(probe_settings_for(items, seed), epochs=args.probe_epochs)


def score(variants: list[Variant], splits, mean, std, args, rates: dict) -> list[dict]:
    """kNN top-1 and linear-probe top-1 (per seed) of every variant, and of raw pixels."""
    x_bank, y_bank, x_test, y_test = splits
    raw = (normalize(x_bank, mean, std).flatten(1), normalize(x_test, mean, std).flatten(1))
    rows = []
    for v in [None, *variants]:
        if v is None:
            name, target, detail, (fb, ft) = "raw pixels", None, {}, raw
        else:
            name, target, detail = v.name, v.target, v.detail
            fb = ia.batched_features(v.fn, x_bank, mean, std, 256, "cpu")
            ft = ia.batched_features(v.fn, x_test, mean, std, 256, "cpu")
        probe_seeds = args.seeds if v is None or v.seed is None else [v.seed]
        linear = [
            linear_probe(fb, y_bank, ft, y_test, settings=probe_settings(len(fb), s, args)).top1
            for s in probe_seeds
        ]
        key = f"{name}@{target}"
        rows.append({
            "method": name,
            "target": target,
            "flops": 1.0 if v is None else round(v.flops, 4),
            "seed": None if v is None else v.seed,
            "knn_top1": knn_top1(fb, y_bank, ft, y_test),
            "linear_top1": linear,
            "probe_seeds": probe_seeds,
            **({} if key not in rates else {k: round(r, 1) for k, r in rates[key].items()}),
            "detail": detail,
        })  # fmt: skip
        log(f"scored {name} @ {target} (seed {rows[-1]['seed']}): kNN {rows[-1]['knn_top1']:.3f}")
    return rows


def sources() -> dict:
    """Git blob hashes of the method files, so a row can be traced to the code that made it."""
    root = Path(__file__).resolve().parents[1] / "src" / "mimkit" / "compress"
    names = ("tome.py", "diffrate.py", "iared2.py", "optin.py", "prune.py", "importance.py")
    out = {}
    for name in names:
        done = subprocess.run(
            ["git", "hash-object", str(root / name)], capture_output=True, text=True
        )
        out[name] = done.stdout.strip()
    return out


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    began = time.time()
    machine = machine_info(args.threads)
    model, cfg = load_model(args.checkpoint)
    model.eval()
    mcfg = model.encoder.cfg
    mean, std = cfg.data.mean, cfg.data.std
    x_all, y_all, x_test, y_test = load_labelled_splits(
        cfg.data, cfg.model.in_chans, cfg.model.image_hw, None
    )
    splits = (x_all[: args.bank], y_all[: args.bank], x_test[: args.test], y_test[: args.test])
    full = encoder_inference_flops(mcfg)
    log(f"loaded; bank {args.bank}, test {args.test}, full encoder {full / 1e6:.1f} MFLOPs")
    variants = deterministic_variants(model, args.targets, full)
    for seed in args.seeds:
        gen = torch.Generator().manual_seed(seed)
        calib = normalize(x_all[torch.randperm(len(x_all), generator=gen)[: args.calib]], mean, std)
        data = (x_all, y_all, splits[2], mean, std)
        variants += iared2_variants(model, data, args, seed, full)
        variants += calibrated_variants(model, calib, args, seed, full)
    # speed: the first seed's variants and the deterministic ones, interleaved on one batch
    timed = {f"{v.name}@{v.target}": v.fn for v in variants if v.seed in (None, args.seeds[0])}
    x = normalize(splits[2][: args.batch], mean, std)
    log(f"timing {len(timed)} variants interleaved, {args.rounds} rounds of {len(x)} images")
    rates = interleaved_rate_quartiles(timed, x, rounds=args.rounds, warmup=1)
    rows = score(variants, splits, mean, std, args, rates)
    machine["load_average_end"] = os.getloadavg()
    result = {
        "command": " ".join(["PYTHONPATH=src python3", *sys.argv]),
        "machine": machine,
        "wall_seconds": round(time.time() - began, 1),
        "checkpoint": str(args.checkpoint),
        "args": vars(args),
        "sources": sources(),
        "full_mflops": full / 1e6,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / "accuracy_vs_speed.png")
    print(table(result))
    return 0


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (method, target): seeds pooled (mean and half-range of kNN and linear)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    out = []
    for (method, target), rs in groups.items():
        knn = [r["knn_top1"] for r in rs]
        lin = [x for r in rs for x in r["linear_top1"]]
        speed = [r["img_per_s"] for r in rs if "img_per_s" in r]
        out.append({
            "method": method, "target": target,
            "flops": statistics.mean(r["flops"] for r in rs),
            "knn": statistics.mean(knn), "knn_spread": (max(knn) - min(knn)) / 2,
            "linear": statistics.mean(lin), "linear_spread": (max(lin) - min(lin)) / 2,
            "n": len(lin),
            "img_per_s": speed[0] if speed else None,
            "q": (rs[0].get("img_per_s_q25"), rs[0].get("img_per_s_q75")),
        })  # fmt: skip
    return out


def table(result: dict) -> str:
    lines = [
        "| method | target | FLOPs | kNN top-1 (%) | linear top-1 (%) | img/s (median [q25, q75]) |",
        "|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in result["rows"]))}
    rows = sorted(summarise(result["rows"]), key=lambda s: (s["target"] or 9, order[s["method"]]))
    for s in rows:
        speed = (
            "–"
            if s["img_per_s"] is None
            else f"{s['img_per_s']:.0f} [{s['q'][0]:.0f}, {s['q'][1]:.0f}]"
        )
        knn = f"{100 * s['knn']:.1f}" + (
            f" ± {100 * s['knn_spread']:.1f}" if s["knn_spread"] else ""
        )
        lin = f"{100 * s['linear']:.1f} ± {100 * s['linear_spread']:.1f}"
        target = "–" if s["target"] is None else f"{s['target']:.2f}x"
        lines.append(f"| {s['method']} | {target} | {s['flops']:.3f}x | {knn} | {lin} | {speed} |")
    return "\n".join(lines)


MARKERS = {0.5: "o", 0.65: "s", 0.8: "^", None: "*"}  # by FLOPs target; None: a reference row


def draw_points(ax, points: list[dict], colours: dict[str, str], legend: bool = True) -> None:
    """Accuracy (%) vs img/s, one marker per (method, target): `points` hold method, target,
    img_per_s, acc, acc_spread and optionally q (img/s quartiles, drawn as x error bars)."""
    for s in points:
        xerr = None
        if s.get("q") and None not in s["q"]:
            xerr = [[s["img_per_s"] - s["q"][0]], [s["q"][1] - s["img_per_s"]]]
        ax.errorbar(
            s["img_per_s"], 100 * s["acc"], yerr=100 * s["acc_spread"], xerr=xerr,
            fmt=MARKERS.get(s["target"], "o"), color=colours[s["method"]], ms=6, capsize=2,
        )  # fmt: skip
    if not legend:
        return
    for m, colour in colours.items():
        ax.plot([], [], "o", color=colour, label=m)
    for t, mk in MARKERS.items():
        ax.plot([], [], mk, color="grey", label="reference" if t is None else f"{t:.2f}x FLOPs")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib  # optional dependency: mimkit[plot]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional dependency: mimkit[plot]
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    summary = [s for s in summarise(rows) if s["img_per_s"] is not None]
    methods = sorted({s["method"] for s in summary})
    points = [dict(s, acc=s["linear"], acc_spread=s["linear_spread"]) for s in summary]
    draw_points(ax, points, {m: f"C{i}" for i, m in enumerate(methods)})
    ax.set_xlabel("images / s (CPU, interleaved, one batch)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Compression at matched FLOPs, frozen features, no fine-tuning")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
