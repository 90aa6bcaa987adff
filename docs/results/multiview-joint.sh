#!/usr/bin/env bash
# Reproduces the "two sensors that are both needed" section of docs/results/multiview.md: CROMA
# (ALiBi and sin-cos) against MAE on all six bands, on `tile-groups --joint` tiles (4 classes;
# each sensor alone tells at most half), pretrained for 540 steps, probed at the trained size
# (32x32) and at 2x and 4x the side (the size-extrapolation check). Run from a folder where
# data/ and res/ may be written, with mimkit importable (PYTHONPATH=REPO/src).
#   bash docs/results/multiview-joint.sh [data|pretrain|probe|all]   (default all)
# NOISE=25 makes the tiles with pixel noise std 25 instead of 100 (the section's second run).
set -eu
NOISE=${NOISE:-100}
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
C=$REPO/configs
STEP=${1:-all}
T="/usr/bin/time -f %e_s_wall"
P="python3 $REPO/benchmarks/multiview_probes.py --seeds 0,1 --k 10"

if [ "$STEP" = data ] || [ "$STEP" = all ]; then
  # seeded tiles: 32x32 for training, 64 and 128 (the same scenes' statistics, larger) for the check
  python3 -m mimkit.cli data synth tile-groups data/joint --joint --noise $NOISE --train 1200 --test 600 --seed 0
  python3 -m mimkit.cli data synth tile-groups data/joint_64 --joint --noise $NOISE --size 64 --train 1200 --test 600 --seed 1
  python3 -m mimkit.cli data synth tile-groups data/joint_128 --joint --noise $NOISE --size 128 --train 600 --test 300 --seed 2
  python3 -m mimkit.cli data stats data/joint --source multi --size 32 32 | tail -1 > data/joint_stats.json
  # the six bands as one image per tile, for MAE (the same files' contents, concatenated)
  python3 - <<'EOF'
from pathlib import Path
import numpy as np
for name in ("joint", "joint_64", "joint_128"):
    for opt in Path(f"data/{name}").glob("*/optical/*/*.npy"):
        split, cls = opt.parts[-4], opt.parts[-2]
        out = Path(f"data/{name}_bands/{split}/{cls}/{opt.name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        radar = Path(str(opt).replace("/optical/", "/radar/"))
        np.save(out, np.concatenate([np.load(opt), np.load(radar)]))
EOF
fi

# statistics (value/255 units) of the 32x32 training split, per input and for the 6-band image
STATS=$(python3 -c "
import json; s = json.load(open('data/joint_stats.json'))
o, r = s['optical'], s['radar']
print(f\"data.inputs.optical.mean={o['mean']} data.inputs.optical.std={o['std']} data.inputs.radar.mean={r['mean']} data.inputs.radar.std={r['std']}\".replace(' ', '').replace('data.', ' data.'))
print(f\"data.mean={o['mean'] + r['mean']} data.std={o['std'] + r['std']}\".replace(' ', '').replace('data.', ' data.'))
")
CROMA_STATS=$(echo "$STATS" | sed -n 1p)
MAE_STATS=$(echo "$STATS" | sed -n 2p)
# one model size for all: 128 wide, 4 heads, 8x8 patches (16 tokens at 32x32); CROMA's optical
# encoder 4 blocks (radar encoder and fusion 2 each), MAE's encoder 4 blocks; 1-block decoders
M="model.embed_dim=128 model.num_heads=4 model.depth=4 model.patch_size=8 model.decoder_embed_dim=64 model.decoder_depth=1 model.decoder_num_heads=4 train.batch_size=64 train.epochs=30 train.warmup_epochs=3 train.progress=false"

if [ "$STEP" = pretrain ] || [ "$STEP" = all ]; then
  for s in 0 1; do
    $T python3 -m mimkit.cli pretrain $C/synthetic_tiles_croma_tiny.yaml $M data.path=data/joint $CROMA_STATS train.seed=$s out_dir=res/croma_s$s --no-eval --no-resume
    $T python3 -m mimkit.cli pretrain $C/synthetic_tiles_croma_tiny.yaml $M data.path=data/joint $CROMA_STATS method.position=sincos train.seed=$s out_dir=res/croma_sincos_s$s --no-eval --no-resume
    $T python3 -m mimkit.cli pretrain $C/synthetic_tiles_mae_tiny.yaml $M data.path=data/joint_bands model.img_size=32 $MAE_STATS train.seed=$s out_dir=res/mae_s$s --no-eval --no-resume
  done
fi

if [ "$STEP" = probe ] || [ "$STEP" = all ]; then
  for s in 0 1; do
    R=""; [ $s = 0 ] && R=--raw
    for r in croma croma_sincos; do
      $T $P res/${r}_s$s $R --subsets optical radar optical+radar --out res/probe_${r}_s$s.json
      for z in 64 128; do
        $T $P res/${r}_s$s --data data/joint_$z --size $z --subsets optical radar optical+radar --out res/probe_${r}_${z}_s$s.json
      done
      for z in 32 64 128; do
        D=""; [ $z != 32 ] && D="--data data/joint_$z --size $z"
        $T $P res/${r}_s$s $D --recon --out res/recon_${r}_${z}_s$s.json
      done
    done
    $T $P res/mae_s$s $R --out res/probe_mae_s$s.json
    for z in 64 128; do
      $T $P res/mae_s$s --data data/joint_${z}_bands --size $z --out res/probe_mae_${z}_s$s.json
    done
  done
fi
