#!/usr/bin/env bash
# Pruning followed by fine-tuning (the Gardener paper's protocol) on the 12-block MAE of
# configs/fmnist_mae_vit12.yaml: keep 3 of 12 blocks by each data-free ranking, then fine-tune
# with the same recipe as the full model's fine-tune in g2sd.sh (1 epoch, all labels), or with
# RECIPE=auto the tool's own recipe on 10k labels for its default 3 epochs, in bf16 (issue 13's
# protocol; FULL=1 then also fine-tunes the unpruned model as the reference row).
# (The oracle keeps blocks 0, 1, 2 at this size, the same as first-k.)
# Usage: [SEED=0] [RECIPE=auto [FULL=1]] bash docs/results/prune_finetune.sh MAE_RUN [OUT_ROOT] [KEEP]
# SEED > 0 repeats the fine-tunes with that seed (folders *_s$SEED) on the same pruned models.
set -euo pipefail
RUN=${1:?the MAE run folder, e.g. runs/vit12}
OUT=${2:-runs/prune_ft}
KEEP=${3:-3}
SEED=${SEED:-0}
SUFFIX=$([[ "$SEED" == 0 ]] && echo "" || echo "_s$SEED")
if [[ "${RECIPE:-}" == auto ]]; then
    FT="--train-limit 10000 --amp bf16 --seed $SEED"
else
    FT="--epochs ${FT_EPOCHS:-1} --batch-size 64 --base-lr 4e-3 --layer-decay 0.9 --seed $SEED"
fi
mkdir -p "$OUT"
export TQDM_DISABLE=1
for method in entropy norm first last random; do
    name="${method}_keep${KEEP}"
    if [[ -f "$OUT/$name$SUFFIX.done" ]]; then continue; fi
    start=$(date +%s)
    if [[ ! -f "$OUT/$name/model.safetensors" ]]; then
        python -m mimkit.cli prune "$RUN" "$OUT/$name" --method "$method" --keep "$KEEP" > "$OUT/$name.log" 2>&1
    fi
    python -m mimkit.cli eval finetune "$OUT/$name" --out "$OUT/${name}_ft$SUFFIX" $FT >> "$OUT/$name$SUFFIX.log" 2>&1
    echo "$name$SUFFIX wall_s=$(( $(date +%s) - start ))" | tee -a "$OUT/times.log"
    touch "$OUT/$name$SUFFIX.done"
done
# the control: the same 3-block architecture fine-tuned from random weights
name="scratch_keep${KEEP}$SUFFIX"
if [[ ! -f "$OUT/$name.done" ]]; then
    start=$(date +%s)
    python -m mimkit.cli eval finetune "$OUT/first_keep${KEEP}" --random-init \
        --out "$OUT/scratch_keep${KEEP}_ft$SUFFIX" $FT > "$OUT/$name.log" 2>&1
    echo "$name wall_s=$(( $(date +%s) - start ))" | tee -a "$OUT/times.log"
    touch "$OUT/$name.done"
fi
# the reference: the unpruned model, fine-tuned the same way
name="full$SUFFIX"
if [[ "${FULL:-0}" == 1 && ! -f "$OUT/$name.done" ]]; then
    start=$(date +%s)
    python -m mimkit.cli eval finetune "$RUN" --out "$OUT/full_ft$SUFFIX" $FT > "$OUT/$name.log" 2>&1
    echo "$name wall_s=$(( $(date +%s) - start ))" | tee -a "$OUT/times.log"
    touch "$OUT/$name.done"
fi
