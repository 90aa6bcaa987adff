#!/usr/bin/env bash
# CROMA on a set-up where masked modelling learns: fmnist-modal's `image` and `depth` as the two
# sensors, the model and budget of multiview-multimae-long.sh (64 wide, 2 blocks, 8x8 patches,
# batch 32, lr 1e-3, EPOCHS epochs), ALiBi against MAE's sin-cos table, seeds 0 and 1; probes
# and the masked-reconstruction loss at the trained 32x32 and at 64x64 (fmnist-modal --size 64:
# the same kind of scene drawn at twice the side, 4x the patches), and the reconstruction loss
# on mosaics of 2x2 and 4x4 test scenes (the trained resolution, 4x and 16x the area). MAE on
# the image alone at the same budget comes from multiview-multimae-long.sh (run it first,
# EPOCHS the same, in the same folder: its res/mae_image_s*); here it is probed at 64x64 too.
# Run from that folder, with mimkit importable (PYTHONPATH=REPO/src):
#   EPOCHS=300 bash docs/results/multiview-croma-modal.sh [pretrain|probe|all]   (default all)
set -eu
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
C=$REPO/configs
EPOCHS=${EPOCHS:-300}
STEP=${1:-all}
WARMUP=$(python3 -c "print($EPOCHS / 15)")
P="python3 $REPO/benchmarks/multiview_probes.py --seeds 0 --train-limit 300 --k 20"
T="/usr/bin/time -f %e_s_wall"
M="model.embed_dim=64 model.num_heads=2 model.depth=2 model.patch_size=8 model.decoder_embed_dim=32 model.decoder_depth=1 model.decoder_num_heads=2 train.batch_size=32 train.lr=1e-3 train.progress=false"
A="$M train.epochs=$EPOCHS train.warmup_epochs=$WARMUP"

if [ "$STEP" = pretrain ] || [ "$STEP" = all ]; then
  [ -d data/fmnist_modal ] || python3 -m mimkit.cli data synth fmnist-modal data/fmnist_modal --seed 0
  [ -d data/fmnist_modal_64 ] || python3 -m mimkit.cli data synth fmnist-modal data/fmnist_modal_64 --size 64 --seed 1
  mkdir -p data/fmnist_modal_64_image res
  for s in train test; do ln -sfn ../fmnist_modal_64/$s/image data/fmnist_modal_64_image/$s; done
  for s in 0 1; do
    for pos in alibi sincos; do
      $T python3 -m mimkit.cli pretrain $C/fmnist_croma_tiny.yaml $A method.position=$pos train.seed=$s out_dir=res/croma_${pos}_s$s --no-eval --no-resume > res/pre_croma_${pos}_s$s.log 2>&1
    done
  done
fi

if [ "$STEP" = probe ] || [ "$STEP" = all ]; then
  for s in 0 1; do
    R=""; [ $s = 0 ] && R=--raw
    for pos in alibi sincos; do
      r=res/croma_${pos}_s$s
      $T $P $r $R --subsets image depth image+depth --out res/probe_croma_${pos}_s$s.json
      $T $P $r $R --data data/fmnist_modal_64 --size 64 --subsets image depth image+depth --out res/probe_croma_${pos}_64_s$s.json
      $T $P $r --recon --out res/recon_croma_${pos}_32_s$s.json
      $T $P $r --recon --data data/fmnist_modal_64 --size 64 --out res/recon_croma_${pos}_64_s$s.json
      for n in 2 4; do  # n x n test scenes side by side: a larger area at the trained resolution
        $T $P $r --recon --mosaic $n --out res/recon_croma_${pos}_mosaic${n}_s$s.json
      done
    done
    $T $P res/mae_image_s$s --data data/fmnist_modal_64_image --size 64 --out res/probe_mae_image_64_s$s.json
  done
fi
