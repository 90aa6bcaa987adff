#!/usr/bin/env bash
# Gardener's entropy ranking against the oracle on the 6-block demo architecture after 3, 5, 10,
# 15 and 20 epochs of MAE (compression.md, "After longer pretraining"). RUNS holds the runs of
# docs/results/fashion-mnist-long.sh (RUNS/demo: the demo preset, 3 epochs; RUNS/long/s{0,1}, with the
# snapshots snap_ep{5,10,15} its watcher copied). One torch thread, about 6 min per checkpoint.
#   RUNS=/work/runs bash docs/results/compression/gardener-long/gardener.sh OUT
set -eu
REPO=$(cd "$(dirname "$0")/../../../.." && pwd)
RUNS=${RUNS:-runs}
OUT=${1:-runs/gardener}
cd "$REPO"
for pair in "ep20_s0 $RUNS/long/s0/checkpoint" "ep20_s1 $RUNS/long/s1/checkpoint" \
            "ep3_demo $RUNS/demo/checkpoint" "ep5_s0 $RUNS/long/s0/snap_ep5" \
            "ep10_s0 $RUNS/long/s0/snap_ep10" "ep15_s0 $RUNS/long/s0/snap_ep15"; do
  set -- $pair
  echo "== $(date -u +%T) $1 $2"
  OMP_NUM_THREADS=1 PYTHONPATH=$REPO/src python3 benchmarks/compression_study.py "$2" \
    --out "$OUT/$1" --train-limit 5000 --test-limit 5000 --tome-r 0
  cp "$OUT/$1/compression.json" "docs/results/compression/gardener-long/$1.json"
done
python3 docs/results/compression/gardener-long/table.py --plot
