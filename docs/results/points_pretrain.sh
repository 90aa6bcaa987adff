#!/bin/sh
# Pretraining runs behind docs/results/points.md: both methods, seeds 0 and 1, on the
# synthetic shapes (12 classes, 50 train / 25 test clouds per class). Run from the repo root.
set -e
export PYTHONPATH="$PWD/src"
export OMP_NUM_THREADS=1  # one thread: on 2 shared cores two threads spin and run ~10x slower
[ -d data/shapes ] || python3 -m mimkit.cli data synth shapes data/shapes --train 50 --test 25 --points 1024 --seed 0
run() {  # method seed
  /usr/bin/time -f "$1 seed $2: wall %e s" python3 -m mimkit.cli pretrain \
    configs/shapes_$1_tiny.yaml train.seed=$2 out_dir=runs/points/$1_s$2 train.progress=false --no-eval
}
# the two seeds run side by side, one thread each
for seed in 0 1; do
  (run point_mae $seed && run point_cmae $seed) &
done
wait
