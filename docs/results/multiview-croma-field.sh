#!/usr/bin/env bash
# CROMA's size-extrapolation claim on data where nothing depends on absolute position:
# fmnist-modal --layout field (a flat ground, items of one size in pixels that may hang over the
# border, their count growing with the area, the scene's class held by 60% of its items), its
# `image` and `depth` as the two sensors. Trained at 32x32 (1,000 scenes), evaluated at 32, 64
# and 128 (the same generator at 2x and 4x the side: a larger field at the same resolution,
# with more evidence for the same class). ALiBi against MAE's sin-cos table (regenerated for
# the larger grid), seeds 0 and 1, and MAE on the image alone at the same budget; the model and
# budget of multiview-croma-modal.sh (64 wide, 2 blocks, 8x8 patches, batch 32, lr 1e-3).
# Statistics of the 32x32 training split, written into copies of the presets, used at every
# size. Run from a scratch folder, with mimkit importable (PYTHONPATH=REPO/src):
#   EPOCHS=300 bash docs/results/multiview-croma-field.sh [pretrain|probe|all]   (default all)
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
SYNTH="python3 -m mimkit.cli data synth fmnist-modal"

image_folder() {  # $1: a field data folder; $1_image/{train,test} link to its image input
  mkdir -p "$1_image"
  for s in train test; do ln -sfn "../$(basename "$1")/$s/image" "$1_image/$s"; done
}

if [ "$STEP" = pretrain ] || [ "$STEP" = all ]; then
  mkdir -p res
  [ -d data/fmnist_field ] || $SYNTH data/fmnist_field --layout field --seed 0
  [ -d data/fmnist_field_64 ] || $SYNTH data/fmnist_field_64 --layout field --size 64 --train 300 --test 300 --seed 1
  [ -d data/fmnist_field_128 ] || $SYNTH data/fmnist_field_128 --layout field --size 128 --train 300 --test 300 --seed 2
  for d in data/fmnist_field data/fmnist_field_64 data/fmnist_field_128; do image_folder $d; done
  # copies of the presets on these folders, in block style (the stats writer's form), then
  # the statistics of the 32x32 training split written into them
  python3 - "$C" <<'PY'
import sys, yaml
presets = sys.argv[1]
for name, out, data in (
    ("fmnist_croma_tiny", "croma_field", {"path": "data/fmnist_field"}),
    ("fmnist_mae_tiny", "mae_field_image",
     {"source": "folder", "path": "data/fmnist_field_image", "crop_scale": [0.5, 1.0]}),
):
    config = yaml.safe_load(open(f"{presets}/{name}.yaml"))
    config["data"].update(data)
    config["model"].update(img_size=32, patch_size=8)
    yaml.safe_dump(config, open(f"res/{out}.yaml", "w"), default_flow_style=False, sort_keys=False)
PY
  python3 -m mimkit.cli data stats data/fmnist_field --source multi --size 32 32 --config res/croma_field.yaml
  python3 -m mimkit.cli data stats data/fmnist_field_image --source folder --channels 1 --size 32 32 --config res/mae_field_image.yaml
  for s in 0 1; do
    for pos in alibi sincos; do
      $T python3 -m mimkit.cli pretrain res/croma_field.yaml $A method.position=$pos train.seed=$s out_dir=res/croma_${pos}_s$s --no-eval --no-resume > res/pre_croma_${pos}_s$s.log 2>&1
    done
    $T python3 -m mimkit.cli pretrain res/mae_field_image.yaml $A train.seed=$s out_dir=res/mae_image_s$s --no-eval --no-resume > res/pre_mae_image_s$s.log 2>&1
  done
fi

if [ "$STEP" = probe ] || [ "$STEP" = all ]; then
  for s in 0 1; do
    R=""; [ $s = 0 ] && R=--raw
    for pos in alibi sincos; do
      r=res/croma_${pos}_s$s
      $T $P $r $R --subsets image depth image+depth --out res/probe_croma_${pos}_s$s.json
      $T $P $r --recon --out res/recon_croma_${pos}_32_s$s.json
      for n in 64 128; do
        $T $P $r $R --data data/fmnist_field_$n --size $n --subsets image depth image+depth --out res/probe_croma_${pos}_${n}_s$s.json
        $T $P $r --recon --data data/fmnist_field_$n --size $n --out res/recon_croma_${pos}_${n}_s$s.json
      done
    done
    $T $P res/mae_image_s$s --out res/probe_mae_image_s$s.json
    for n in 64 128; do
      $T $P res/mae_image_s$s --data data/fmnist_field_${n}_image --size $n --out res/probe_mae_image_${n}_s$s.json
    done
  done
fi
