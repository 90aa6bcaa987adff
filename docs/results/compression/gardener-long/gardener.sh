#!/usr/bin/env bash
# Gardener's entropy ranking against the oracle over pretraining (compression.md, "After longer
# pretraining"). SET=demo (default): the 6-block demo architecture after 3, 5, 10, 15 and 20
# epochs of MAE; RUNS holds the runs of docs/results/fashion-mnist-long.sh (RUNS/demo: the demo
# preset, 3 epochs; RUNS/long/s{0,1}, with the snapshots snap_ep{5,10,15} its watcher copied).
# SET=vit12: the 12-block preset after 2, 10, 25 and 50 epochs (RUNS/vit12l/s0 and its
# snapshots snap_ep{2,10,25}: the 50-epoch run of compression.md's command). One torch thread,
# about 6 min per 6-block checkpoint; a study already in OUT is not redone; JOBS=2 runs two checkpoints at a time.
#   RUNS=/work/runs [SET=vit12] [JOBS=2] bash docs/results/compression/gardener-long/gardener.sh OUT
set -eu
REPO=$(cd "$(dirname "$0")/../../../.." && pwd)
RUNS=${RUNS:-runs}
OUT=${1:-runs/gardener}
JOBS=${JOBS:-1}
cd "$REPO"
if [ "${SET:-demo}" = vit12 ]; then
  V=$RUNS/vit12l/s0
  PAIRS=("vit12_ep2 $V/snap_ep2" "vit12_ep10 $V/snap_ep10" "vit12_ep25 $V/snap_ep25"
         "vit12_ep50 $V/checkpoint")
else
  PAIRS=("ep20_s0 $RUNS/long/s0/checkpoint" "ep20_s1 $RUNS/long/s1/checkpoint"
         "ep3_demo $RUNS/demo/checkpoint" "ep5_s0 $RUNS/long/s0/snap_ep5"
         "ep10_s0 $RUNS/long/s0/snap_ep10" "ep15_s0 $RUNS/long/s0/snap_ep15")
fi
study() {  # $1: record name, $2: checkpoint; a record already in OUT is kept, not redone
  echo "== $(date -u +%T) $1 $2"
  [ -f "$OUT/$1/compression.json" ] || OMP_NUM_THREADS=1 PYTHONPATH=$REPO/src python3 benchmarks/compression_study.py "$2" \
    --out "$OUT/$1" --train-limit 5000 --test-limit 5000 --tome-r 0 > "$OUT/$1.log" 2>&1
  cp "$OUT/$1/compression.json" "docs/results/compression/gardener-long/$1.json"
}
mkdir -p "$OUT"
for pair in "${PAIRS[@]}"; do
  set -- $pair
  study "$1" "$2" &
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
done
wait
python3 docs/results/compression/gardener-long/table.py --plot ${SET:+--set $SET}
