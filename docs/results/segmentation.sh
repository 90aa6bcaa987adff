#!/usr/bin/env bash
# Reproduces every number of docs/results/segmentation.md, in order, one command per line.
# Each command's wall time and exit code go to runs/seg_results/times.log.
# Run from the repository root: bash docs/results/segmentation.sh [STEP ...] (default: all)
# Sized for a 2-core CPU shared with five other jobs (about 5 img/s for the 6-block ViT-tiny):
# each pretraining is one epoch over the first 1280 Fashion-MNIST training images (20 steps
# of 64, base lr 1.5e-3 for so short a run), far below any paper's budget.
# Steps may run at the same time (bash segmentation.sh pre_mae_0 ... & bash segmentation.sh
# pre_mae_1 ... &); the results were made so, the evaluations six at once.
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
  "$@" > "$LOG/$name.out" 2> "$LOG/$name.err"
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
# 1. the scenes: 1000 train / 300 val, 64 px, seed 0 (the first 200 / 100 are used below)
[ -f "$SCENES/classes.txt" ] || step scenes $MIMKIT data synth fmnist-scenes $SCENES
# 2. frozen encoder, linear probe and FPN head, pretrained and random-init (seeds 0 and 1)
SEG="--data $SCENES --train-limit 200 --val-limit 100 --epochs 5 --width 32 --device cpu"
for seed in 0 1; do
  for m in mae block green simmim; do
    [ -d runs/seg/${m}_s$seed/checkpoint ] && step seg_${m}_$seed $MIMKIT eval segment runs/seg/${m}_s$seed $SEG
  done
  step seg_random_$seed $MIMKIT eval segment runs/seg/mae_s$seed $SEG --random-init
done
# 2b. raw-input baselines on the same scenes: a linear head on the raw 7x7 patch pixels (the
#     encoder's input grid, 63 px), and the constant "background everywhere" predictor
[ "$ONLY" = "  " ] || [[ "$ONLY" == *" pixels "* ]] && \
  python3 docs/results/segmentation_pixels.py "$SCENES" 200 100 5 > "$LOG/pixels.out"
# 3. the table: mean ± std over the seeds of each row, from the JSON beside each checkpoint
[ "$ONLY" = "  " ] || [[ "$ONLY" == *" table "* ]] && python3 - <<'PY'
import json, statistics as st
from pathlib import Path
rows = [("random init (floor)", "mae", "eval_segment_random_init.json"), ("MAE", "mae", "eval_segment.json"),
        ("MAE + block masking", "block", "eval_segment.json"), ("ColorMAE green", "green", "eval_segment.json"),
        ("SimMIM", "simmim", "eval_segment.json")]
def cell(values):
    if not values:
        return "not run"
    sd = f" ± {100 * st.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * st.mean(values):.1f}{sd} (n={len(values)})"
print("| encoder | linear mIoU | linear pixel acc | fpn mIoU | fpn pixel acc |")
print("| --- | --- | --- | --- | --- |")
for label, run, name in rows:
    recs = [json.loads(p.read_text()) for s in (0, 1)
            if (p := Path(f"runs/seg/{run}_s{s}/checkpoint/{name}")).is_file()]
    print(f"| {label} | " + " | ".join(cell([r[h][k] for r in recs]) for h in ("linear", "fpn")
                                       for k in ("miou", "pixel_acc")) + " |")
PY
