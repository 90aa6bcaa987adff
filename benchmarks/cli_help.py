"""How long `mimkit --help` (and friends) take from a cold process, against the 1 s target.

Each command runs as a fresh `python -m mimkit.cli ...` process, `--repeats` times after one
untimed warm-up (which fills the OS file cache); we report the median, min and max wall time,
whether parsing imported torch, the machine, and its load average (the machine may be shared).
For scale it also times `python -c "import torch"`, what --help cost when it loaded torch.

    python benchmarks/cli_help.py                  # writes benchmarks/results/cli_help.{json,md}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mimkit.bench.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
COMMANDS = (
    ["--help"],
    ["--version"],
    ["pretrain", "--help"],
    ["eval", "--help"],
    ["eval", "knn", "--help"],
    ["eval", "finetune", "--help"],
    ["export", "--help"],
    ["prune", "--help"],
)
TORCH_CHECK = (
    "import contextlib, io, sys\n"
    "from mimkit.cli.main import build_parser\n"
    "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
    "    build_parser().parse_args({argv!r})\n"
    "print('torch' in sys.modules)\n"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")  # this checkout's mimkit, whatever is installed
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def time_command(argv: list[str], repeats: int) -> dict:
    cmd = [sys.executable, *argv]
    subprocess.run(cmd, env=_env(), capture_output=True, check=False)  # warm the file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=_env(), capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-500:]}")
    return {
        "command": " ".join(argv),
        "imports_torch": None,
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "runs": repeats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per command")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_help.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    for argv in COMMANDS:
        row = time_command(["-m", "mimkit.cli", *argv], args.repeats)
        row["command"] = row["command"].replace("-m mimkit.cli", "mimkit", 1)
        check = TORCH_CHECK.format(argv=list(argv))
        loaded = subprocess.run(
            [sys.executable, "-c", check], env=_env(), capture_output=True, text=True, check=True
        ).stdout.strip()
        row["imports_torch"] = loaded == "True"
        rows.append(row)
    torch_row = time_command(["-c", "import torch"], max(3, args.repeats // 2))
    torch_row["command"] = 'python -c "import torch" (for scale)'
    help_row = rows[0]
    record = {
        "benchmark": "cli_help",
        "command": f"python benchmarks/cli_help.py --repeats {args.repeats}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "target_s": TARGET_S,
        "help_median_s": help_row["median_s"],
        "meets_target": help_row["median_s"] < TARGET_S,
        "parsing_imports_torch": help_row["imports_torch"],
        "rows": rows + [torch_row],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    md = out.with_suffix(".md")
    m = record["machine"]
    lines = [
        "# `mimkit --help` start-up time",
        "",
        f"`{record['command']}` on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"{record['date']}; load average {m['load_average_before'][0]} before, "
        f"{m['load_average_after'][0]} after (the machine is shared). Fresh process per run, "
        f"one untimed warm-up. Target: `mimkit --help` under {TARGET_S:g} s "
        f"({'met' if record['meets_target'] else 'NOT met'}); parsing `--help` imports torch: "
        f"{record['parsing_imports_torch']}. `eval finetune` and `prune` build their options "
        "from torch-side modules on first use, so their own --help loads torch.",
        "",
        "| command | median s | min s | max s | runs | imports torch |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in record["rows"]:
        lines.append(
            f"| `{row['command']}` | {row['median_s']:.3f} | {row['min_s']:.3f} | "
            f"{row['max_s']:.3f} | {row['runs']} | {row['imports_torch']} |"
        )
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} and {md}")
    return 0 if record["meets_target"] and not record["parsing_imports_torch"] else 1


if __name__ == "__main__":
    sys.exit(main())
