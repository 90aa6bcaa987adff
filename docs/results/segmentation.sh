#!/usr/bin/env bash
# Reproduces every number of docs/results/segmentation.md, in order, one command per line.
# Each command's wall time and exit code go to runs/seg_results/times.log.
# Run from the repository root: bash docs/results/segmentation.sh [STEP ...] (default: all)
# Sized for a 2-core CPU shared with five other jobs (about 5 img/s for the 6-block ViT-tiny):
# each pretraining is one epoch over the first 1280 Fashion-MNIST training images (20 steps
# of 64, base lr 1.5e-3 for so short a run), far below any paper's budget.
# The two seeds' steps may run at the same time: bash segmentation.sh pre_mae_0 ... & ...
set -u
ONLY=" $* "
LOG=runs/seg_results
SCENES=runs/fmnist_scenes
mkdir -p "$LOG"
MIMKIT=${MIMKIT:-"python3 -m mimkit.cli"}
step() {
  local name=$1
  shift
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $name "* ]] || return 0
  local start=$(date +%s)
  echo "== $name: $*" | tee -a "$LOG/times.log"
  nice -n 10 "$@" > "$LOG/$name.out" 2> "$LOG/$name.err"
  local rc=$?
  echo "   rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$LOG/times.log"
}
PRE="train.epochs=1 data.limit=1280 train.batch_size=64 train.base_lr=1.5e-3 train.warmup_epochs=0.1 train.log_every=5 train.progress=false --no-resume"
# 0. the short pretraining budget: four family rows, two seeds each
for seed in 0 1; do
  step pre_mae_$seed    $MIMKIT pretrain configs/fmnist_mae_tiny.yaml out_dir=runs/seg/mae_s$seed train.seed=$seed $PRE --no-eval
  step pre_block_$seed  $MIMKIT pretrain configs/fmnist_mae_block_tiny.yaml out_dir=runs/seg/block_s$seed train.seed=$seed $PRE --no-eval
  step pre_green_$seed  $MIMKIT pretrain configs/fmnist_colormae_green_tiny.yaml out_dir=runs/seg/green_s$seed train.seed=$seed $PRE --no-eval
  step pre_simmim_$seed $MIMKIT pretrain configs/fmnist_simmim_tiny.yaml out_dir=runs/seg/simmim_s$seed train.seed=$seed $PRE --no-eval
done
