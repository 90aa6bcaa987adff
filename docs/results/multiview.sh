#!/usr/bin/env bash
# Reproduces the numbers of docs/results/multiview.md, one command per line; each command's
# wall time and exit code go to $RUNS/times.log.
# Run from the repository root: bash docs/results/multiview.sh [STEP ...] (default: all).
# Steps may run at the same time (bash multiview.sh pre_croco_0 & ...); the results were made
# with the four pretrainings at once, then the evaluations.
# Sized for a 2-core CPU shared with eight other jobs: 20 steps of 64 pairs (1,280 pairs, the
# first 20 of the 46 steps of an epoch over 3,000) for a 96-wide, 4-block ViT; far below any
# paper's budget.
set -u
ONLY=" $* "
RUNS=${RUNS:-runs/multiview}
PAIRS=${PAIRS:-$RUNS/pairs3k}      # view1/ and view2/ of every pair (data.source: multi)
VIEW1=${VIEW1:-$RUNS/view1_3k}     # view1 alone, as an image folder (for single-view MAE)
mkdir -p "$RUNS"
MIMKIT=${MIMKIT:-"python3 -m mimkit.cli"}
step() {
  local name=$1
  shift
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $name "* ]] || return 0
  local start=$(date +%s)
  echo "== $name: $*" | tee -a "$RUNS/times.log"
  "$@" > "$RUNS/$name.out" 2> "$RUNS/$name.err"
  local rc=$?
  echo "   rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$RUNS/times.log"
}
# 0. data: 3,000 training and 1,000 test pairs of 32x32 views (seed 0); view1 alone as a folder
[ -f "$PAIRS/inputs.json" ] || step data $MIMKIT data synth fmnist-pairs $PAIRS --train 3000 --test 1000 --seed 0
mkdir -p "$VIEW1"
ln -sfn "$(realpath "$PAIRS")/train/view1" "$VIEW1/train"
ln -sfn "$(realpath "$PAIRS")/test/view1" "$VIEW1/test"
# 1. pretraining, the same model, data order, steps and optimiser for both methods; the view
#    statistics are the preset's (measured on the 10,000-pair set by `mimkit data stats`)
SMALL="model.embed_dim=96 model.num_heads=3 model.depth=4 model.decoder_embed_dim=64 model.decoder_depth=1 model.decoder_num_heads=2"
# the schedule of one epoch (46 steps of 64), stopped after 20 steps (the CPU time there was);
# FRESH= (empty) resumes a stopped run instead of starting over (resuming is exact on CPU)
# EPOCHS=30 MAX_STEPS=1380 WARMUP=2 (or EPOCHS=60 MAX_STEPS=2760 WARMUP=4): the longer runs of the CroCo section
EPOCHS=${EPOCHS:-1} MAX_STEPS=${MAX_STEPS:-20} WARMUP=${WARMUP:-0.1}
PRE="train.epochs=$EPOCHS train.max_steps=$MAX_STEPS train.batch_size=64 train.base_lr=1.5e-3 train.warmup_epochs=$WARMUP train.log_every=5 train.progress=false ${FRESH---no-resume} --no-eval"
MAE_DATA="model.img_size=32 model.patch_size=4 model.pool=avg data.source=folder data.path=$VIEW1 data.channels=1 data.mean=[0.33761] data.std=[0.295644] data.crop_scale=[0.5,1.0]"
for seed in 0 1; do
  step pre_croco_$seed $MIMKIT pretrain configs/fmnist_croco_tiny.yaml data.path=$PAIRS out_dir=$RUNS/croco_s$seed train.seed=$seed $SMALL $PRE
  step pre_mae_$seed $MIMKIT pretrain configs/fmnist_mae_tiny.yaml $MAE_DATA out_dir=$RUNS/mae_s$seed train.seed=$seed $SMALL $PRE
done
# 2. kNN (k=20, T=0.07) and linear probe on view1 features: bank = the 3,000 training pairs,
#    test = the 1,000 test pairs; --random-init: the same architecture untrained (the floor)
for seed in 0 1; do
  for m in croco mae; do
    [ -d $RUNS/${m}_s$seed/checkpoint ] || continue
    step knn_${m}_$seed $MIMKIT eval knn $RUNS/${m}_s$seed --device cpu
    step knn_${m}_random_$seed $MIMKIT eval knn $RUNS/${m}_s$seed --device cpu --random-init
    step linear_${m}_$seed $MIMKIT eval linear $RUNS/${m}_s$seed --device cpu
    step linear_${m}_random_$seed $MIMKIT eval linear $RUNS/${m}_s$seed --device cpu --random-init
  done
done
# 3. raw pixels of view1 (normalised, flattened): kNN and the same linear probe
if [ "$ONLY" = "  " ] || [[ "$ONLY" == *" pixels "* ]]; then
  VIEW1=$VIEW1 python3 - > "$RUNS/pixels.out" <<'PY'
import json, os
from mimkit.data.config import DataConfig
from mimkit.data.sources import load_labelled_splits
from mimkit.eval.knn import knn_top1
from mimkit.eval.linear import linear_probe, probe_settings_for
from mimkit.plan import pixel_features
data = DataConfig(source="folder", path=os.environ["VIEW1"], channels=1)
x_tr, y_tr, x_te, y_te = load_labelled_splits(data, 1, (32, 32))
f_tr, f_te = (pixel_features(x, [0.33761], [0.295644]) for x in (x_tr, x_te))
out = {"knn": knn_top1(f_tr, y_tr, f_te, y_te, k=20, temperature=0.07)}
for seed in (0, 1):
    settings = probe_settings_for(len(y_tr), seed)  # as `mimkit eval linear --seed`
    probe = linear_probe(f_tr, y_tr, f_te, y_te, settings=settings)
    out[f"linear_seed{seed}"] = probe.top1
print(json.dumps(out))
PY
fi
