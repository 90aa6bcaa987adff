#!/usr/bin/env bash
# Reproduces the MultiMAE and CROMA numbers of docs/results/multiview.md. Run from a folder
# where data/ and res/ may be written, with mimkit importable (PYTHONPATH=REPO/src).
# Sized for a 2-core CPU shared with eight other jobs (load 20-28): a 64-wide, 2-block ViT,
# one epoch (MultiMAE, 31 steps) or three (CROMA, 27 steps); far below any paper's budget.
# The numbers were made with these commands run in 3-5 parallel streams.
set -eu
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
C=$REPO/configs
P="python3 $REPO/benchmarks/multiview_probes.py --seeds 0"
T="/usr/bin/time -v"
# 0. data (seeded); single-input views of the same files for the MAE baselines
python3 -m mimkit.cli data synth fmnist-modal data/fmnist_modal --seed 0
python3 -m mimkit.cli data synth tile-groups data/tile_groups --seed 0
python3 -m mimkit.cli data synth tile-groups data/tile_groups_64 --size 64 --seed 1
python3 -m mimkit.cli data stats data/fmnist_modal --source multi --size 32 32   # the presets' statistics
python3 -m mimkit.cli data stats data/tile_groups --source multi --size 32 32
mkdir -p data/fmnist_modal_image data/tile_groups_optical data/tile_groups_64_optical res
for s in train test; do
  ln -sfn ../fmnist_modal/$s/image data/fmnist_modal_image/$s
  ln -sfn ../tile_groups/$s/optical data/tile_groups_optical/$s
  ln -sfn ../tile_groups_64/$s/optical data/tile_groups_64_optical/$s
done
# 1. pretraining, the same model, optimiser, steps and data order per seed for each pair
M="model.embed_dim=64 model.num_heads=2 model.depth=2 model.patch_size=8 model.decoder_embed_dim=32 model.decoder_depth=1 model.decoder_num_heads=2 train.batch_size=32 train.lr=1e-3 train.progress=false"
A="$M train.epochs=1 train.warmup_epochs=0.2"
B="$M train.epochs=3 train.warmup_epochs=0.6"
IMG="data.source=folder data.path=data/fmnist_modal_image model.img_size=32 data.mean=[0.297841] data.std=[0.275605] data.crop_scale=[0.5,1.0]"
OPT="data.path=data/tile_groups_optical model.img_size=32 model.in_chans=3 data.mean=[1.959153,3.91913,5.880756] data.std=[0.669536,0.670164,0.669296]"
for s in 0 1; do
  $T python3 -m mimkit.cli pretrain $C/fmnist_multimae_tiny.yaml $A train.seed=$s out_dir=res/multimae_s$s --no-eval
  $T python3 -m mimkit.cli pretrain $C/fmnist_mae_tiny.yaml $A $IMG train.seed=$s out_dir=res/mae_image_s$s --no-eval
  $T python3 -m mimkit.cli pretrain $C/synthetic_tiles_croma_tiny.yaml $B train.seed=$s out_dir=res/croma_s$s --no-eval
  $T python3 -m mimkit.cli pretrain $C/synthetic_tiles_croma_tiny.yaml $B method.position=sincos train.seed=$s out_dir=res/croma_sincos_s$s --no-eval
  $T python3 -m mimkit.cli pretrain $C/synthetic_tiles_mae_tiny.yaml $B $OPT train.seed=$s out_dir=res/mae_optical_s$s --no-eval
done
# 2. probes (pretrained, untrained twin, raw pixels with --raw), at 32x32 and at 64x64
for s in 0 1; do
  R=""; [ $s = 0 ] && R=--raw
  $T $P res/multimae_s$s --train-limit 300 $R --subsets image depth image+depth+seg --out res/probe_multimae_s$s.json
  $T $P res/mae_image_s$s --train-limit 300 $R --out res/probe_mae_image_s$s.json
  for r in croma croma_sincos; do
    $T $P res/${r}_s$s $R --k 10 --subsets optical radar optical+radar --out res/probe_${r}_s$s.json
    $T $P res/${r}_s$s --k 10 --data data/tile_groups_64 --size 64 --subsets optical optical+radar --out res/probe_${r}_64_s$s.json
  done
  $T $P res/mae_optical_s$s --k 10 --out res/probe_mae_optical_s$s.json
  $T $P res/mae_optical_s$s --k 10 --data data/tile_groups_64_optical --size 64 --out res/probe_mae_optical_64_s$s.json
done
