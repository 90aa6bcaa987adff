"""Pixel-space baselines on Fashion-MNIST: what a classifier gets with no encoder at all.

Three numbers, each with its own wall time: scikit-learn's kNN (k=5, Euclidean, the setting of
the Fashion-MNIST benchmark table), scikit-learn's multinomial logistic regression on raw pixels
scaled to [0, 1], and mimkit's own weighted cosine kNN (k=20, T=0.07) on raw pixels, the exact
protocol `mimkit eval knn` applies to encoder features. Test labels are used for scoring only.

    python benchmarks/fmnist_pixel_baselines.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from mimkit.data.idx import load_fashion_mnist
from mimkit.eval.knn import knn_top1


def machine() -> dict:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return float(value), round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/fmnist_pixel_baselines.json")
    parser.add_argument("--logreg-max-iter", type=int, default=200)
    args = parser.parse_args()
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    xtr = x_train.reshape(len(x_train), -1).numpy().astype(np.float32) / 255.0
    xte = x_test.reshape(len(x_test), -1).numpy().astype(np.float32) / 255.0
    ytr, yte = y_train.numpy(), y_test.numpy()

    results = {}
    knn = KNeighborsClassifier(n_neighbors=5, n_jobs=1)
    results["sklearn_knn_k5_euclidean"] = timed(lambda: knn.fit(xtr, ytr).score(xte, yte))
    print("sklearn kNN (k=5):", results["sklearn_knn_k5_euclidean"], flush=True)
    results["mimkit_weighted_cosine_knn_k20_T0.07"] = timed(
        lambda: knn_top1(torch.from_numpy(xtr), y_train, torch.from_numpy(xte), y_test)
    )
    print("weighted cosine kNN:", results["mimkit_weighted_cosine_knn_k20_T0.07"], flush=True)
    logreg = LogisticRegression(max_iter=args.logreg_max_iter, C=1.0)
    results["sklearn_logistic_regression"] = timed(lambda: logreg.fit(xtr, ytr).score(xte, yte))
    print("logistic regression:", results["sklearn_logistic_regression"], flush=True)
    record = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": {k: {"top1": v[0], "seconds": v[1]} for k, v in results.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
