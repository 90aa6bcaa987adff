"""Collect the fine-tuned runs of docs/results/g2sd.sh and prune_finetune.sh into tables and plots.

python benchmarks/finetune_studies.py --g2sd runs/g2sd --prune runs/prune_ft \
    --out docs/results/compression
python benchmarks/finetune_studies.py --g2sd runs/g2sd6 --name g2sd_demo20 \
    --teacher "6 blocks, 192 wide" --student "6 blocks, 96 wide" \
    --title "G2SD, 20-epoch teacher (10k labels, 3 epochs)"

Each fine-tune run folder holds result.json (written by `mimkit eval finetune`); a name ending
in `_s1` is the seed-1 repeat of the run without it. Writes g2sd.json/.png,
prune_finetune.json/.png and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

G2SD_ROWS = {  # run name -> what it is ({teacher}, {student}: their architectures)
    "teacher_ft": "teacher ({teacher}): MAE, fine-tuned",
    "teacher_scratch": "teacher architecture from scratch",
    "student_g2sd": "student ({student}): G2SD generic + specific",
    "student_generic_ft": "student: G2SD generic only, fine-tuned",
    "student_mae_specific": "student: MAE + specific distillation",
    "student_mae_ft": "student: MAE, fine-tuned",
    "student_scratch": "student from scratch",
}
PRUNE_ROWS = {
    "entropy_keep3_ft": "entropy (Gardener)",
    "norm_keep3_ft": "norm",
    "first_keep3_ft": "first-k (= oracle at 3)",
    "last_keep3_ft": "last-k",
    "random_keep3_ft": "random (seed 0)",
    "scratch_keep3_ft": "3 blocks from scratch",
}


def runs_of(root: Path, name: str) -> list[dict]:
    found = []
    for folder in (root / name, root / f"{name}_s1"):
        path = folder / "result.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def summary(runs: list[dict]) -> dict:
    tops = [100 * r["top1"] for r in runs]
    return {
        "top1": tops,
        "mean": statistics.mean(tops),
        "std": statistics.stdev(tops) if len(tops) > 1 else None,
        "seconds": [r["seconds"] for r in runs],
    }


def cell(s: dict) -> str:
    return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")


def table(root: Path, rows: dict[str, str], ratio_to: str | None) -> tuple[list[str], dict]:
    results = {name: summary(runs) for name in rows if (runs := runs_of(root, name))}
    base = results.get(ratio_to) if ratio_to else None
    head = "| run | seeds | fine-tuned top-1 (%) |" + (" of the teacher |" if base else "")
    lines = [head + " wall time per run (s) |", "|---" * (head.count("|") - 1 + 1) + "|"]
    for name, label in rows.items():
        if name not in results:
            continue
        s = results[name]
        ratio = f" {100 * s['mean'] / base['mean']:.1f}% |" if base else ""
        wall = statistics.mean(s["seconds"])
        lines.append(f"| {label} | {len(s['top1'])} | {cell(s)} |{ratio} {wall:.0f} |")
    return lines, results


def plot(results: dict, labels: dict[str, str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in labels if n in results]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ys = range(len(names))
    ax.barh(list(ys), [results[n]["mean"] for n in names], color="#4c72b0")
    for y, n in zip(ys, names, strict=True):
        ax.plot(results[n]["top1"], [y] * len(results[n]["top1"]), "k.", markersize=5)
    ax.set_yticks(list(ys), [labels[n] for n in names], fontsize=8)
    ax.invert_yaxis()
    lo = min(min(results[n]["top1"]) for n in names)
    ax.set_xlim(
        max(0, lo - 5), 100 if lo > 90 else min(100, max(r["mean"] for r in results.values()) + 3)
    )
    ax.set_xlabel("fine-tuned top-1 (%), dots: seeds")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--g2sd", type=Path, required=True)
    parser.add_argument("--prune", type=Path, help="prune_finetune.sh's runs (none: G2SD only)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/compression"))
    parser.add_argument("--name", default="g2sd", help="file stem of the G2SD table and plot")
    parser.add_argument("--teacher", default="12 blocks, 96 wide", help="the teacher's shape")
    parser.add_argument("--student", default="12 blocks, 48 wide", help="the student's shape")
    parser.add_argument("--title", default="G2SD on Fashion-MNIST (1 fine-tuning epoch)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    g2sd_rows = {
        k: v.format(teacher=args.teacher, student=args.student) for k, v in G2SD_ROWS.items()
    }
    studies = [(args.name, args.g2sd, g2sd_rows, "teacher_ft", args.title)]
    if args.prune:
        studies.append(
            ("prune_finetune", args.prune, PRUNE_ROWS, None, "Keep 3 of 12 blocks, then fine-tune")
        )
    for name, root, rows, ratio_to, title in studies:
        lines, results = table(root, rows, ratio_to)
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
        if results:
            plot(results, rows, args.out / f"{name}.png", title)
        print(f"## {name}\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
