#!/bin/sh
# Evaluations behind docs/results/points.md, after points_pretrain.sh: kNN and linear probe on
# frozen features of each pretrained run and of its untrained initialisation (--random-init),
# then the raw-input baseline and the table. Run from the repo root; arguments: the methods
# to evaluate (default both), "table" for only the baseline and the table.
set -e
export PYTHONPATH="$PWD/src"
export OMP_NUM_THREADS=1
methods="${*:-point_mae point_cmae}"
for seed in 0 1; do
  for method in $methods; do
    [ "$method" = table ] && continue
    run=runs/points/${method}_s$seed
    for init in "" --random-init; do
      python3 -m mimkit.cli eval knn $run $init --no-cache
      python3 -m mimkit.cli eval linear $run $init --seed $seed --no-cache
    done
  done
done
python3 benchmarks/points_baselines.py --data data/shapes --points 512 --seeds 0 1
python3 benchmarks/points_table.py runs/points
