"""Collect the runs of docs/results/methods.sh into a markdown table and a PNG.

python benchmarks/methods_table.py runs/methods --out docs/results [--floor runs/floor/mae_seed0 ...]

`--floor` names run folders evaluated with `--random-init` (the same architecture untrained);
their kNN and linear records become the table's floor row and a dashed line in the plot.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path


def collect(root: Path) -> dict[str, list[dict]]:
    times = {}
    log = root / "times.log"
    if log.is_file():
        for line in log.read_text().splitlines():
            m = re.match(r"(\S+) seed=(\d+) wall_s=(\d+)", line)
            if m:
                times[(m[1], int(m[2]))] = int(m[3])
    rows: dict[str, list[dict]] = defaultdict(list)
    for run in sorted(root.glob("*_seed*")):
        if not run.is_dir():
            continue
        name, seed = run.name.rsplit("_seed", 1)
        results = run / "results.json"
        linear = _linear_result(run)
        if not (results.is_file() and linear is not None):
            continue
        rows[name].append({
            "seed": int(seed),
            "knn": json.loads(results.read_text())["knn_pretrained"],
            "linear": json.loads(linear.read_text())["top1"],
            "wall_s": times.get((name, int(seed))),
        })  # fmt: skip
    return rows


def collect_floor(runs: list[Path]) -> list[dict]:
    """The untrained floor, one entry per run folder holding both random-init records."""
    floor = []
    for run in runs:
        knn = sorted((run / "eval").glob("eval_knn_random_init*.json"))
        linear = sorted((run / "eval").glob("eval_linear_random_init*.json"))
        if not (knn and linear):
            raise SystemExit(f"--floor {run}: expected eval/eval_{{knn,linear}}_random_init*.json")
        floor.append({
            "run": str(run),
            "knn": json.loads(knn[0].read_text())["top1"],
            "linear": json.loads(linear[0].read_text())["top1"],
        })  # fmt: skip
    return floor


def _linear_result(run: Path) -> Path | None:
    """The run's linear-probe record: RUN/eval/eval_linear*.json, or before 0.2 in checkpoint/."""
    found = sorted((run / "eval").glob("eval_linear*.json")) or sorted(
        (run / "checkpoint").glob("eval_linear*.json")
    )
    return found[0] if found else None


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--tag", default="", help="suffix of the output names (methods<tag>.png)")
    parser.add_argument("--budget", default="1 epoch", help="the budget, for the plot's title")
    parser.add_argument("--floor", nargs="*", default=[], help="run folders with random-init evals")
    args = parser.parse_args()
    rows = collect(Path(args.root))
    floor = collect_floor([Path(f) for f in args.floor])
    lines = ["| method / masking | seeds | kNN top-1 (%) | linear top-1 (%) | wall time per run (s) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, runs in sorted(
        rows.items(), key=lambda kv: -statistics.mean(r["linear"] for r in kv[1])
    ):
        walls = [r["wall_s"] for r in runs if r["wall_s"] is not None]
        wall = f"{statistics.mean(walls):.0f}" if walls else "?"
        lines.append(
            f"| {name} | {len(runs)} | {fmt([r['knn'] for r in runs])} | "
            f"{fmt([r['linear'] for r in runs])} | {wall} |"
        )
    if floor:
        lines.append(
            f"| random init (floor) | {len(floor)} | {fmt([f['knn'] for f in floor])} | "
            f"{fmt([f['linear'] for f in floor])} | - |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"methods{args.tag}_table.md").write_text("\n".join(lines) + "\n")
    record = {**rows, **({"random_init_floor": floor} if floor else {})}
    (out / f"methods{args.tag}.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(rows, key=lambda n: -statistics.mean(r["linear"] for r in rows[n]))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(names))
    for offset, key, label in ((-0.2, "knn", "kNN"), (0.2, "linear", "linear probe")):
        means = [100 * statistics.mean(r[key] for r in rows[n]) for n in names]
        ax.bar([x + offset for x in xs], means, width=0.4, label=label)
        for x, n in zip(xs, names, strict=True):
            for r in rows[n]:
                ax.plot(x + offset, 100 * r[key], "k.", markersize=4)
    for key, colour in (("knn", "C0"), ("linear", "C1")):
        if floor:
            level = 100 * statistics.mean(f[key] for f in floor)
            ax.axhline(level, color=colour, linestyle="--", linewidth=1, label=f"untrained, {key}")
    ax.set_xticks(list(xs), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(50, 90)
    ax.set_title(f"Same budget ({args.budget}), Fashion-MNIST (dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"methods{args.tag}.png", dpi=120)
    print(f"wrote methods{args.tag}_table.md, .json and .png under {out}")


if __name__ == "__main__":
    main()
