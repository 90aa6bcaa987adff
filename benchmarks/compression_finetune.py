"""Issue 22's comparison, fine-tuned: every compressed variant of `compression_compare.py`
fine-tuned with issue 13's recipe, the reduction in the loop, beside the full encoder and the
same architecture trained from scratch.

Each (method, FLOPs target) is rebuilt as `compression_compare.py` built it, from its record:

- ToMe: the near-constant schedule nearest the target (`compress.tome.tome_schedule_for`);
- block pruning: Gardener's entropy ranking, the depth nearest the target; + ToMe: one block
  pruned, ToMe the rest of the way; "(first k)": the same depth, the first blocks kept (the
  oracle's ranking on this model; not in `compare.json`, its speed is block pruning's);
- DiffRate: the schedule `compare.json` holds for that seed and target (not learned again);
- IA-RED²: the policy `compression_compare.py` saved per seed (`iared2-seed{S}/`), frozen, at
  the target's keep counts;
- OPTIN: pruned again from the same 64 calibration images and seed (deterministic: the kept
  heads and units are checked against `compare.json`); + ToMe: the 0.8x OPTIN model merged.

Pruned models (blocks, OPTIN) are written as checkpoints and fine-tuned from what is read back,
as a user would (`mimkit eval finetune PRUNED`). Token reductions (ToMe, DiffRate, IA-RED²)
run inside the classifier in training and scoring (`eval.finetune.TokenReduction`); their
schedules and policies stay fixed while the encoder and head learn.

Fine-tuning: `mimkit eval finetune`'s defaults (issue 13's recipe: 3 epochs, batch and lr from
the dataset size, probe-initialised fc_norm head) on the first `--train-limit` labelled
images, scored on all 10,000 test images, with train accuracy (10k un-augmented) beside it.
Seed S is the fine-tuning seed and the compression seed of `compare.json`.

One JSON per run (`OUT/runs/<variant>/seed<S>.json`): an interrupted sweep skips what is done.
`--collect` reads them with `compare.json` into `finetune.json`, a markdown table and a plot.

    PYTHONPATH=src python3 benchmarks/compression_finetune.py runs/cmp/mae20-checkpoint \\
        --compare docs/results/compression --out runs/cmp/ft --seeds 0
    PYTHONPATH=src python3 benchmarks/compression_finetune.py runs/cmp/mae20-checkpoint \\
        --compare docs/results/compression --out runs/cmp/ft --collect
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from compression_compare import block_prune_variant, draw_points, machine_info

from mimkit.bench.flops import encoder_inference_flops
from mimkit.compress import iared2 as ia
from mimkit.compress.diffrate import Schedule
from mimkit.compress.optin import optin_prune
from mimkit.compress.prune import prune_blocks
from mimkit.compress.reductions import diffrate_reduction, iared2_reduction, tome_reduction
from mimkit.compress.tome import tome_schedule_for
from mimkit.data.sources import load_labelled_splits
from mimkit.data.transforms import normalize
from mimkit.eval.finetune import TokenReduction, finetune, split_settings
from mimkit.train.checkpoint import load_config_file, load_model, read_weights, save_checkpoint

FULL, SCRATCH = "full encoder", "untrained (from scratch)"
FIRST_K = "block pruning (first k)"  # the same depth, the first blocks kept: the oracle's choice
METHODS = (
    "ToMe",
    "block pruning",
    FIRST_K,
    "block pruning + ToMe",
    "IA-RED²",
    "DiffRate",
    "OPTIN",
    "OPTIN + ToMe",
)


@dataclasses.dataclass
class Plan:
    """One fine-tune: the model to start from (a checkpoint folder, or None for scratch) and
    the token reduction to train with."""

    method: str
    target: float | None
    checkpoint: Path | None
    reduction: TokenReduction | None
    detail: dict


def slug(method: str, target: float | None) -> str:
    name = method.replace(" + ", "+").replace(" ", "-").replace("²", "2").replace("(", "")
    name = name.replace(")", "")
    return name if target is None else f"{name}@{target}"


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def write_pruned(pruned, cfg, folder: Path) -> Path:
    """A pruned model as a checkpoint (fine-tuned from what is read back)."""
    new_cfg = dataclasses.replace(cfg)
    new_cfg.model = pruned.cfg
    if not (folder / "model.safetensors").is_file():
        save_checkpoint(folder, pruned, new_cfg)
    return folder


def compare_row(compare: dict, method: str, target: float, seed: int) -> dict:
    for row in compare["rows"]:
        if row["method"] == method and row["target"] == target and row["seed"] in (seed, None):
            return row
    raise SystemExit(f"compare.json: no row for {method} @ {target} seed {seed}")


def plans(args, seed: int) -> list[Plan]:
    """Every variant of `compression_compare.py` for `seed`, the full encoder and scratch."""
    source = Path(args.checkpoint)
    model, cfg = load_model(source)
    model.eval()
    mcfg = model.encoder.cfg
    full = encoder_inference_flops(mcfg)
    compare = json.loads((Path(args.compare) / "compare.json").read_text())
    work = Path(args.out) / "models" / f"seed{seed}"
    out = [Plan(FULL, None, source, None, {}), Plan(SCRATCH, None, None, None, {})]
    x_all = load_labelled_splits(cfg.data, mcfg.in_chans, mcfg.image_hw, None)[0]
    gen = torch.Generator().manual_seed(seed)  # the calibration draw of compression_compare
    pick = torch.randperm(len(x_all), generator=gen)[: args.calib]
    calib = normalize(x_all[pick], cfg.data.mean, cfg.data.std)
    policy, _ = ia.load_policy(Path(args.compare) / f"iared2-seed{seed}")
    starts = policy.stage_starts
    # block pruning + ToMe: one block pruned by entropy, the same model for every target
    pruned1, detail1 = block_prune_variant(model, 1.0 - 1.0 / mcfg.depth + 1e-9, full)
    folder1 = write_pruned(pruned1, cfg, work / "block-pruning-1")
    optin_top = None
    for target in sorted(args.targets, reverse=True):
        rs = tome_schedule_for(mcfg, target)
        out.append(Plan("ToMe", target, source, tome_reduction(rs), {"r_per_block": rs}))
        pruned, detail = block_prune_variant(model, target, full)
        folder = write_pruned(pruned, cfg, work / slug("block pruning", target))
        out.append(Plan("block pruning", target, folder, None, detail))
        first = list(range(len(detail["kept_blocks"])))
        folder = write_pruned(prune_blocks(model, first), cfg, work / slug(FIRST_K, target))
        out.append(Plan(FIRST_K, target, folder, None, {"kept_blocks": first}))
        rs1 = tome_schedule_for(pruned1.cfg, target * full / encoder_inference_flops(pruned1.cfg))
        out.append(Plan("block pruning + ToMe", target, folder1, tome_reduction(rs1), detail1))
        counts = ia.counts_for_budget(mcfg, starts, None, target)
        out.append(Plan(
            "IA-RED²", target, source, iared2_reduction(policy, counts, mcfg.num_patches),
            {"counts": counts},
        ))  # fmt: skip
        schedule = Schedule.from_record(compare_row(compare, "DiffRate", target, seed)["detail"])
        out.append(Plan("DiffRate", target, source, diffrate_reduction(schedule), {}))
        optin, _, orec = optin_prune(model, calib, target, probes=args.optin_probes, seed=seed)
        expected = compare_row(compare, "OPTIN", target, seed)["detail"]
        if (
            orec["heads_after"] != expected["heads"]
            or orec["mlp_hidden_after"] != expected["mlp_hidden"]
        ):
            raise SystemExit(f"OPTIN @ {target} seed {seed}: not the model compare.json scored")
        folder = write_pruned(optin, cfg, work / slug("OPTIN", target))
        out.append(Plan("OPTIN", target, folder, None, {"heads": orec["heads_after"]}))
        if optin_top is None:
            optin_top = (optin, folder)
        else:
            top, top_folder = optin_top
            rs = tome_schedule_for(top.cfg, target * full / encoder_inference_flops(top.cfg))
            out.append(Plan("OPTIN + ToMe", target, top_folder, tome_reduction(rs), {}))
    wanted = set(args.only or [])
    out = [p for p in out if not wanted or slug(p.method, p.target) in wanted]
    first = {t: i for i, t in enumerate([None, *args.targets])}  # the order asked for
    return sorted(out, key=lambda p: first[p.target])


def run_one(plan: Plan, seed: int, args) -> dict:
    """Fine-tune `plan` with the recipe's defaults at `--train-limit` labels, fine-tune seed
    `seed`, and return its record."""
    source = plan.checkpoint or Path(args.checkpoint)
    cfg = load_config_file(source)
    weights = None if plan.checkpoint is None else read_weights(source / "model.safetensors")
    flags = {"train_limit": args.train_limit, "seed": seed, "progress": False}
    if args.epochs is not None:
        flags["epochs"] = args.epochs
    train, ft = split_settings(flags)
    folder = Path(args.out) / "runs" / slug(plan.method, plan.target) / f"seed{seed}"
    began = time.time()
    result = finetune(cfg, weights, train, ft, folder, reduction=plan.reduction)
    flops = encoder_inference_flops(cfg.model)
    return {
        "method": plan.method,
        "target": plan.target,
        "seed": seed,
        "top1": result.top1,
        "train_top1": result.train_top1,
        "steps": result.steps,
        "train_items": result.train_items,
        "test_items": result.test_items,
        "final_loss": result.final_loss,
        "seconds": round(time.time() - began, 1),
        "model_mflops_before_reduction": flops / 1e6,
        "settings": result.settings,
        "detail": plan.detail,
    }


def sweep(args) -> None:
    machine = machine_info(args.threads)
    for seed in args.seeds:
        for plan in plans(args, seed):
            path = Path(args.out) / "runs" / slug(plan.method, plan.target) / f"seed{seed}.json"
            if path.is_file():
                continue
            log(f"fine-tuning {plan.method} @ {plan.target}, seed {seed}")
            record = run_one(plan, seed, args)
            record["machine"] = {**machine, "load_average_end": list(os.getloadavg())}
            record["command"] = " ".join(["PYTHONPATH=src python3", *sys.argv])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))
            log(f"  top-1 {100 * record['top1']:.2f} (train {100 * record['train_top1']:.2f}), "
                f"{record['seconds']:.0f} s")  # fmt: skip


def collect(args) -> None:
    """finetune.json, finetune.md and accuracy_vs_speed_finetuned.png from the run records and
    `compare.json` (frozen-feature scores and img/s of the same variants)."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("runs/*/seed*.json"))]
    compare = json.loads((Path(args.compare) / "compare.json").read_text())
    full_mflops = compare["full_mflops"]
    frozen: dict[tuple, dict] = {}
    for row in compare["rows"]:
        method = SCRATCH if row["method"] == "untrained (floor)" else row["method"]
        frozen.setdefault((method, row["target"]), []).append(row)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    order = {m: i for i, m in enumerate([FULL, SCRATCH, *METHODS])}
    lines = [
        "| method | target | FLOPs | fine-tuned top-1 (%) | train top-1 (%) | frozen linear (%) "
        "| img/s | seeds | wall s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for (method, target), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][1] or 0, order[kv[0][0]])
    ):
        top = [r["top1"] for r in rs]
        fz = frozen.get((method, target), [])
        lin = [x for f in fz for x in f["linear_top1"]]
        # first-k has block pruning's shapes, so its speed; it has no frozen scores of its own
        timed = frozen.get(("block pruning", target), []) if method == FIRST_K else fz
        speed = next((f["img_per_s"] for f in timed if "img_per_s" in f), None)
        # without a reduction the model's own FLOPs are exact (a pruned model's are smaller)
        own = statistics.mean(r["model_mflops_before_reduction"] for r in rs) / full_mflops
        s = {
            "method": method,
            "target": target,
            "flops": statistics.mean(f["flops"] for f in fz) if fz else own,
            "top1": statistics.mean(top),
            "top1_spread": (max(top) - min(top)) / 2,
            "train_top1": statistics.mean(r["train_top1"] for r in rs),
            "frozen_linear": statistics.mean(lin) if lin else None,
            "frozen_linear_spread": (max(lin) - min(lin)) / 2 if lin else 0.0,
            "q": next(
                ((f["img_per_s_q25"], f["img_per_s_q75"]) for f in timed if "img_per_s" in f),
                None,
            ),
            "img_per_s": speed,
            "seeds": sorted(r["seed"] for r in rs),
            "seconds": statistics.mean(r["seconds"] for r in rs),
        }
        summary.append(s)
        cells = [
            method,
            "–" if target is None else f"{target:.2f}x",
            f"{s['flops']:.3f}x",
            f"{100 * s['top1']:.2f} ± {100 * s['top1_spread']:.2f}",
            f"{100 * s['train_top1']:.1f}",
            "–" if s["frozen_linear"] is None else f"{100 * s['frozen_linear']:.1f}",
            "–" if speed is None else f"({speed:.0f})" if method == FIRST_K else f"{speed:.0f}",
            str(len(rs)),
            f"{s['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out = Path(args.compare)
    (out / "finetune.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    (out / "finetune.md").write_text("\n".join(lines) + "\n")
    plot(summary, out / "accuracy_vs_speed_finetuned.png")
    print("\n".join(lines))


def plot(summary: list[dict], path: Path) -> None:
    """Frozen linear probe (left) and fine-tuned top-1 (right) against img/s, one colour per
    method on both panels."""
    try:
        import matplotlib  # optional dependency: mimkit[plot]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional dependency: mimkit[plot]
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
    timed = [s for s in summary if s["img_per_s"] is not None]
    methods = [m for m in [FULL, SCRATCH, *METHODS] if any(s["method"] == m for s in timed)]
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    frozen = [
        dict(s, acc=s["frozen_linear"], acc_spread=s["frozen_linear_spread"])
        for s in timed
        if s["frozen_linear"] is not None
    ]
    tuned = [dict(s, acc=s["top1"], acc_spread=s["top1_spread"]) for s in timed]
    draw_points(axes[0], frozen, colours, legend=False)
    draw_points(axes[1], tuned, colours)
    axes[0].set_title("frozen features: linear probe (5k bank, 2k test)")
    axes[1].set_title("fine-tuned with the reduction in the loop (10k labels, 3 epochs)")
    axes[0].set_ylabel("top-1 (%)")
    for ax in axes:
        ax.set_xlabel("images / s (CPU, interleaved, one batch; compare.json)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="the checkpoint compression_compare.py compressed")
    p.add_argument("--compare", default="docs/results/compression", help="its output folder")
    p.add_argument("--out", required=True, help="run folder of the fine-tunes")
    p.add_argument(
        "--targets", type=float, nargs="+", default=[0.65, 0.5, 0.8], help="in the order to run"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-limit", type=int, default=10000, help="labelled training images")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the recipe's)")
    p.add_argument("--calib", type=int, default=64, help="as compression_compare.py --calib")
    p.add_argument("--optin-probes", type=int, default=8, help="as compression_compare.py")
    p.add_argument("--only", nargs="+", help="variant slugs to run, e.g. ToMe@0.65 full-encoder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--collect", action="store_true", help="tabulate the finished runs")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.collect:
        collect(args)
    else:
        sweep(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
