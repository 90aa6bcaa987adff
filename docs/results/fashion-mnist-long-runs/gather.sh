#!/usr/bin/env bash
# Copy the result JSONs of the runs of docs/results/fashion-mnist-long.md here, under the names
# collect.py reads. RUNS is where fashion-mnist-long.sh wrote them (default runs/; the
# session's were in /work/runs).
set -eu
RUNS=${RUNS:-runs}
here=$(cd "$(dirname "$0")" && pwd)
cp "$RUNS/demo/eval/eval_knn.json" "$here/demo3_knn.json"
cp "$RUNS/demo/eval/eval_linear.json" "$here/demo3_linear.json"
for p in 0 1; do
  L=$RUNS/long/s$p
  cp "$L/results.json" "$here/long_s${p}_end_report.json"
  cp "$L/eval/eval_knn.json" "$here/long_s${p}_ep20_knn.json"
  cp "$L/eval/eval_linear.json" "$here/long_s${p}_ep20_linear.json"
  cp "$L/eval/eval_knn_random_init.json" "$here/untrained_s${p}_knn.json"
  cp "$L/eval/eval_linear_random_init.json" "$here/untrained_s${p}_linear.json"
  for e in 5 10 15; do
    cp "$L/snap_ep$e/eval/eval_knn.json" "$here/long_s${p}_ep${e}_knn.json"
    cp "$L/snap_ep$e/eval/eval_linear.json" "$here/long_s${p}_ep${e}_linear.json"
  done
  cp "$RUNS/long/ft10k_s$p/result.json" "$here/ft10k_long_s$p.json"
  grep -E "^(start|rc=)|Elapsed" "$L/log.txt" > "$here/long_s${p}_wall.txt"
done
for name in scratch_s0 scratch_s1 scratch_s2 mae20_s0 mae20_s1 mae20_s2; do
  cp "$RUNS/ft60k/$name/result.json" "$here/ft60k_$name.json"
done
# the 12-block model (4x4 patches) after 50 epochs, fine-tuned 10 epochs on 60k labels
for name in mae_s0 mae_s1 mae_s2 scratch_s0 scratch_s1 scratch_s2; do
  cp "$RUNS/ft12/ep10/$name/result.json" "$here/ft60k_vit12_ep10_$name.json"
done
