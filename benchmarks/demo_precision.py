"""The demo at the seed budget in fp32 and in bf16: does bf16 keep the kNN, and how much faster?

Runs `mimkit pretrain configs/fmnist_mae_tiny.yaml` (the README's demo: 3 epochs, kNN over all
60,000 + 10,000 images) with `train.amp=off` and `train.amp=bf16` for each seed, one run at a
time so each has the whole machine, alternating precisions so drifting load hits both alike.
Each run folder keeps its log, metrics and `results.json`; `wall.json` holds the command's wall
time and the load around it. Then prints a markdown table and writes `precision.json`.

    python benchmarks/demo_precision.py --out-dir runs/amp --seeds 0 1 2
    python benchmarks/demo_precision.py --out-dir runs/amp --seeds 0 1 2 --collect   # table only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mimkit.bench.machine import machine_info

AMPS = ("off", "bf16")
CONFIG = "configs/fmnist_mae_tiny.yaml"


def run_one(folder: Path, amp: str, seed: int) -> None:
    command = [sys.executable, "-m", "mimkit.cli", "pretrain", CONFIG, "--no-resume"]
    command += [f"train.amp={amp}", f"train.seed={seed}", f"out_dir={folder}"]
    folder.mkdir(parents=True, exist_ok=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with open(folder.with_suffix(".log"), "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = {
        "command": " ".join(command[2:]),
        "wall_s": round(time.perf_counter() - start, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    (folder / "wall.json").write_text(json.dumps(wall, indent=1) + "\n")


def read_run(folder: Path) -> dict:
    """kNN, final loss, training wall time (first to last metrics record) and median img/s."""
    results = json.loads((folder / "results.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows]
    rates = [r["img_per_s"] for r in rows if "img_per_s" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    wall = folder / "wall.json"
    return {
        "knn_pretrained": round(100 * results["knn_pretrained"], 2),
        "knn_random_init": round(100 * results["knn_random_init"], 2),
        "final_loss": round(losses[-1], 4),
        "train_wall_s": round(times[-1] - times[0], 1),
        "median_img_per_s": round(statistics.median(rates)),
        **(json.loads(wall.read_text()) if wall.exists() else {}),
    }


def spread(values: list[float], digits: int = 2) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(runs: dict[str, dict[int, dict]]) -> str:
    lines = [
        "| train.amp | kNN top-1 pretrained (%), per seed | mean ± sd | random init (%) "
        "| final loss | training wall (s) | median img/s | whole command (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for amp, by_seed in runs.items():
        rows = list(by_seed.values())

        def col(key: str, rows: list[dict] = rows) -> list:
            return [r[key] for r in rows if key in r]

        walls = col("wall_s")
        lines.append(
            f"| {amp} | {', '.join(f'{v:.2f}' for v in col('knn_pretrained'))} | "
            f"{spread(col('knn_pretrained'))} | {spread(col('knn_random_init'))} | "
            f"{spread(col('final_loss'), 4)} | {spread(col('train_wall_s'), 0)} | "
            f"{statistics.median(col('median_img_per_s')):.0f} | "
            f"{spread(walls, 0) if walls else '-'} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[int, dict]], path: Path) -> None:
    """kNN top-1 per seed and training wall time per seed, fp32 beside bf16."""
    import matplotlib  # optional dependency: mimkit[plot]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional dependency: mimkit[plot]

    fig, (knn, wall) = plt.subplots(1, 2, figsize=(8, 3.2))
    for offset, (amp, by_seed) in zip((-0.15, 0.15), runs.items(), strict=True):
        seeds = list(by_seed)
        x = [i + offset for i in range(len(seeds))]
        label = "fp32" if amp == "off" else amp
        knn.bar(x, [r["knn_pretrained"] for r in by_seed.values()], 0.3, label=label)
        wall.bar(x, [r["train_wall_s"] for r in by_seed.values()], 0.3, label=label)
    floor = statistics.mean(r["knn_random_init"] for r in runs["off"].values())
    knn.axhline(floor, color="grey", linestyle="--", label="untrained (same seeds)")
    top = max(r["knn_pretrained"] for by_seed in runs.values() for r in by_seed.values())
    knn.set_ylim(floor - 2, top + 3)  # room for the legend above the bars
    for ax, title in ((knn, "kNN top-1 (%)"), (wall, "training wall time (s)")):
        ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
        ax.set_title(title, fontsize=9)
    knn.legend(fontsize=7, loc="upper center", ncol=3)
    fig.suptitle("The demo (3 epochs of MAE on Fashion-MNIST) in fp32 and bf16", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/demo_precision"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--collect", action="store_true", help="only read the runs made")
    args = parser.parse_args()
    if not args.collect:
        for seed in args.seeds:
            for amp in AMPS:
                print(f"pretraining: train.amp={amp} seed {seed}", flush=True)
                run_one(args.out_dir / f"{amp}_s{seed}", amp, seed)
    runs = {amp: {s: read_run(args.out_dir / f"{amp}_s{s}") for s in args.seeds} for amp in AMPS}
    record = {
        "command": "python benchmarks/demo_precision.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "runs": runs,
    }
    (args.out_dir / "precision.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(runs, args.out_dir / "precision.png")
    print(table(runs), end="")
    print(f"wrote {args.out_dir / 'precision.json'} and {args.out_dir / 'precision.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
