#!/usr/bin/env bash
# G2SD on Fashion-MNIST (docs/results/compression.md, "Distillation"): the 12-block MAE of
# configs/fmnist_mae_vit12.yaml is the teacher; the student is the same depth at half the width.
# Usage: bash docs/results/g2sd.sh TEACHER_RUN [OUT_ROOT]   (e.g. runs/vit12 runs/g2sd)
# Environment, for another teacher or today's fine-tuning recipe (compression.md's second G2SD
# table: the 6-block demo teacher after 20 epochs, fine-tuned with the tool's defaults):
#   FT       flags of every fine-tune (default: the 2026-11-21 recipe below; FT="" gives the
#            tool's own recipe)
#   STUDENT  overrides of the student's config (e.g. its width, depth and patch size to fit
#            the teacher) for both the G2SD and the MAE student
#   PRE      overrides of both students' pretraining (e.g. train.epochs=5 train.amp=bf16)
set -euo pipefail
TEACHER=${1:?the teacher MAE run folder, e.g. runs/vit12}
OUT=${2:-runs/g2sd}
# every fine-tune: 1 epoch of all 60k labels; lr and layer decay raised from the MAE recipe,
# which is tuned for 100 epochs and leaves a 12-block model underfit after a few hundred steps
FT=${FT-"--epochs ${FT_EPOCHS:-1} --batch-size 64 --base-lr 4e-3 --layer-decay 0.9"}
STUDENT=${STUDENT:-}
PRE=${PRE:-}
mkdir -p "$OUT"
export TQDM_DISABLE=1
step() {  # name command...: run once, log it, time it
    local name=$1; shift
    if [[ -f "$OUT/$name.done" ]]; then return; fi
    local start=$(date +%s)
    "$@" > "$OUT/$name.log" 2>&1
    echo "$name wall_s=$(( $(date +%s) - start ))" | tee -a "$OUT/times.log"
    touch "$OUT/$name.done"
}
mk() { python -m mimkit.cli "$@"; }
# the teacher, fine-tuned
step teacher_ft mk eval finetune "$TEACHER" --out "$OUT/teacher_ft" $FT
# generic stage: the student predicts the teacher's decoder tokens (same 2 epochs as the teacher's MAE)
step student_generic mk pretrain configs/fmnist_g2sd_student.yaml $STUDENT $PRE \
    method.teacher="$TEACHER/checkpoint" out_dir="$OUT/student_generic" --no-resume
# specific stage: fine-tune the student against the fine-tuned teacher's predictions + labels
step student_g2sd mk eval finetune "$OUT/student_generic" --out "$OUT/student_g2sd" \
    --teacher "$OUT/teacher_ft/checkpoint" $FT
# ablations: generic stage only; plain MAE for the student (same budget), with and without
# the specific stage; and the student trained from scratch
step student_generic_ft mk eval finetune "$OUT/student_generic" --out "$OUT/student_generic_ft" $FT
step student_mae mk pretrain configs/fmnist_g2sd_student.yaml $STUDENT $PRE method.name=mae \
    method.norm_pix_loss=true out_dir="$OUT/student_mae" --no-resume
step student_mae_ft mk eval finetune "$OUT/student_mae" --out "$OUT/student_mae_ft" $FT
step student_mae_specific mk eval finetune "$OUT/student_mae" --out "$OUT/student_mae_specific" \
    --teacher "$OUT/teacher_ft/checkpoint" $FT
step student_scratch mk eval finetune "$OUT/student_mae" --random-init --out "$OUT/student_scratch" $FT
# the teacher's own floor, and a second fine-tuning seed for every fine-tuned row (the teacher
# of the specific stage stays the seed-0 one)
step teacher_scratch mk eval finetune "$TEACHER" --random-init --out "$OUT/teacher_scratch" $FT
step teacher_ft_s1 mk eval finetune "$TEACHER" --out "$OUT/teacher_ft_s1" $FT --seed 1
step student_g2sd_s1 mk eval finetune "$OUT/student_generic" --out "$OUT/student_g2sd_s1" \
    --teacher "$OUT/teacher_ft/checkpoint" $FT --seed 1
step student_generic_ft_s1 mk eval finetune "$OUT/student_generic" --out "$OUT/student_generic_ft_s1" $FT --seed 1
step student_mae_ft_s1 mk eval finetune "$OUT/student_mae" --out "$OUT/student_mae_ft_s1" $FT --seed 1
step student_mae_specific_s1 mk eval finetune "$OUT/student_mae" --out "$OUT/student_mae_specific_s1" \
    --teacher "$OUT/teacher_ft/checkpoint" $FT --seed 1
step student_scratch_s1 mk eval finetune "$OUT/student_mae" --random-init --out "$OUT/student_scratch_s1" $FT --seed 1
