#!/usr/bin/env bash
# MultiMAE against MAE on the image alone, fmnist-modal, at a longer budget than
# multiview-multimae-croma.sh's one epoch: its MultiMAE commands with EPOCHS epochs (warm-up
# EPOCHS/15), the two seeds' four pretrainings at once, then the same probes. Run from a folder
# where data/ and res/ may be written, with mimkit importable (PYTHONPATH=REPO/src):
#   EPOCHS=30 bash docs/results/multiview-multimae-long.sh     (and EPOCHS=300)
set -eu
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
C=$REPO/configs
EPOCHS=${EPOCHS:-30}
WARMUP=$(python3 -c "print($EPOCHS / 15)")
P="python3 $REPO/benchmarks/multiview_probes.py --seeds 0"
T="/usr/bin/time -f %e_s_wall"
python3 -m mimkit.cli data synth fmnist-modal data/fmnist_modal --seed 0
mkdir -p data/fmnist_modal_image res
for s in train test; do ln -sfn ../fmnist_modal/$s/image data/fmnist_modal_image/$s; done
M="model.embed_dim=64 model.num_heads=2 model.depth=2 model.patch_size=8 model.decoder_embed_dim=32 model.decoder_depth=1 model.decoder_num_heads=2 train.batch_size=32 train.lr=1e-3 train.progress=false"
A="$M train.epochs=$EPOCHS train.warmup_epochs=$WARMUP"
IMG="data.source=folder data.path=data/fmnist_modal_image model.img_size=32 data.mean=[0.297841] data.std=[0.275605] data.crop_scale=[0.5,1.0]"
for s in 0 1; do
  $T python3 -m mimkit.cli pretrain $C/fmnist_multimae_tiny.yaml $A train.seed=$s out_dir=res/multimae_s$s --no-eval > res/pre_multimae_s$s.log 2>&1 &
  $T python3 -m mimkit.cli pretrain $C/fmnist_mae_tiny.yaml $A $IMG train.seed=$s out_dir=res/mae_image_s$s --no-eval > res/pre_mae_s$s.log 2>&1 &
done
wait
for s in 0 1; do
  R=""; [ $s = 0 ] && R=--raw
  $T $P res/multimae_s$s --train-limit 300 $R --subsets image depth image+depth+seg --out res/probe_multimae_s$s.json
  $T $P res/mae_image_s$s --train-limit 300 $R --out res/probe_mae_image_s$s.json
done
