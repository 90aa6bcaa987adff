#!/usr/bin/env bash
# The method comparison behind docs/results/methods.md: every row gets the same budget
# (ViT-tiny width, 6 blocks, 7x7 patches, EPOCHS epochs of Fashion-MNIST at batch 256, seed as
# given), then kNN (bank 10k) and a linear probe (10k labels) on frozen features of the test set.
# Usage: [EPOCHS=1] [ONLY="row row"] bash docs/results/methods.sh [OUT_ROOT]   (default runs/methods)
# ONLY runs just the named rows (e.g. ONLY="colormae_red colormae_blue"); each finished run's
# line in OUT_ROOT/times.log names the commit it ran.
set -euo pipefail
OUT=${1:-runs/methods}
COMMON="train.epochs=${EPOCHS:-1} eval.knn_train_limit=10000 eval.compare_random_init=false"
run() {  # name preset seed [extra overrides...]
    local name=$1 preset=$2 seed=$3; shift 3
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
    local dir="$OUT/${name}_seed${seed}"
    if compgen -G "$dir/eval/eval_linear*.json" > /dev/null; then return; fi  # finished earlier
    local start=$(date +%s)
    mkdir -p "$dir"
    python3 -m mimkit.cli pretrain "$preset" $COMMON train.seed="$seed" out_dir="$dir" "$@" --no-resume > "$dir.log" 2>&1
    python3 -m mimkit.cli eval linear "$dir" --train-limit 10000 >> "$dir.log" 2>&1
    echo "$name seed=$seed wall_s=$(( $(date +%s) - start )) commit=$(git rev-parse --short HEAD 2>/dev/null)" >> "$OUT/times.log"
}
mkdir -p "$OUT"
git rev-parse HEAD >> "$OUT/commit" 2>/dev/null || true  # the code of each start of this script
export TQDM_DISABLE=1
# seeds 0 and 1 of each row together, so a partial run still gives whole rows; DMAE needs the
# 12-block teacher of fmnist_mae_vit12.yaml and 4x4-pixel patches, so it is not a row here
run mae configs/fmnist_mae_tiny.yaml 0
run mae configs/fmnist_mae_tiny.yaml 1
run mae_block configs/fmnist_mae_block_tiny.yaml 0
run mae_block configs/fmnist_mae_block_tiny.yaml 1
run colormae_green configs/fmnist_colormae_green_tiny.yaml 0
run colormae_green configs/fmnist_colormae_green_tiny.yaml 1
run simmim configs/fmnist_simmim_tiny.yaml 0
run simmim configs/fmnist_simmim_tiny.yaml 1
run crossmae configs/fmnist_crossmae_tiny.yaml 0
run crossmae configs/fmnist_crossmae_tiny.yaml 1
run maskfeat configs/fmnist_maskfeat_tiny.yaml 0
run maskfeat configs/fmnist_maskfeat_tiny.yaml 1
run maskalign configs/fmnist_maskalign_tiny.yaml 0 method.teacher="$OUT/mae_seed0/checkpoint"
run maskalign configs/fmnist_maskalign_tiny.yaml 1 method.teacher="$OUT/mae_seed0/checkpoint"
run mfm configs/fmnist_mfm_tiny.yaml 0
run mfm configs/fmnist_mfm_tiny.yaml 1
run hpm configs/fmnist_hpm_tiny.yaml 0
run hpm configs/fmnist_hpm_tiny.yaml 1
run cae configs/fmnist_cae_tiny.yaml 0
run cae configs/fmnist_cae_tiny.yaml 1
run droppos configs/fmnist_droppos_tiny.yaml 0
run droppos configs/fmnist_droppos_tiny.yaml 1
run mrmae configs/fmnist_mrmae_tiny.yaml 0 method.teacher="$OUT/mae_seed0/checkpoint"
run mrmae configs/fmnist_mrmae_tiny.yaml 1 method.teacher="$OUT/mae_seed0/checkpoint"
run ibot configs/fmnist_ibot_tiny.yaml 0
run ibot configs/fmnist_ibot_tiny.yaml 1
# ColorMAE's other three colours (the green preset with another noise colour)
for colour in red blue purple; do
    run colormae_$colour configs/fmnist_colormae_green_tiny.yaml 0 masking.strategy=colormae_$colour
    run colormae_$colour configs/fmnist_colormae_green_tiny.yaml 1 masking.strategy=colormae_$colour
done
