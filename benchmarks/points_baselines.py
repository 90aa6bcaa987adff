"""The raw-input baseline of docs/results/points.md: a hand-made descriptor, no encoder.

Each cloud of the synthetic shapes becomes `distance_histograms` (radial + pairwise distance
histograms, 64 numbers), scored by the protocols `mimkit eval knn` and `mimkit eval linear`
apply to encoder features: weighted cosine kNN (k=20, T=0.07) and the linear probe (lr picked on
10% of train), the probe for each seed.

    python benchmarks/points_baselines.py --data data/shapes --points 512 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mimkit.data.config import DataConfig
from mimkit.data.points import distance_histograms, load_point_split
from mimkit.eval.knn import knn_top1
from mimkit.eval.linear import ProbeSettings, linear_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--points", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/points/raw_baseline.json")
    args = parser.parse_args()
    start = time.perf_counter()
    data = DataConfig(source="points", path=args.data, points=args.points)
    x_train, y_train = load_point_split(data, "train")
    x_test, y_test = load_point_split(data, "test")
    f_train, f_test = distance_histograms(x_train), distance_histograms(x_test)
    result = {"descriptor": "distance_histograms (2 x 32 bins)", "points": args.points}
    result["knn_top1"] = knn_top1(f_train, y_train, f_test, y_test, k=20, temperature=0.07)
    result["linear_top1"] = {
        seed: linear_probe(f_train, y_train, f_test, y_test, settings=ProbeSettings(seed=seed)).top1
        for seed in args.seeds
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
