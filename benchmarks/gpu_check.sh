#!/usr/bin/env bash
# The prepared GPU check: run it first whenever the device tool's `status` says a GPU is lent,
#     run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
# then commit the files it returns (from the run's files_at folder) under
# benchmarks/results/gpu/<date>/. Budget: under 8 minutes on one H100/H200, start excluded.
#
# It needs nothing from outside the machine: the device image holds torch, transformers and
# pytest, and mimkit runs from src/ (PYTHONPATH), not installed. At most 8 files come back from
# $OUT, so logs go to stdout (the run's output_tail) and only results are written there:
#   machine.txt, gpu_tests.txt, and JSON + markdown + PNG for each of two benches.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu/local}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
step() { echo "== $(date -u +%T) $*"; }

step "machine"
{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0))"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step "GPU tests (pytest -m gpu)"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests > "$OUT/gpu_tests.txt" 2>&1
echo "exit $?" >> "$OUT/gpu_tests.txt"
tail -5 "$OUT/gpu_tests.txt"

# MAE ViT-B/16 at 224 in bf16 beside transformers' ViTMAEForPreTraining in the same run, then
# the input pipeline (synthetic JPEGs through the loader to an augmented batch on the device)
step "bench: MAE ViT-B/16, 224 px, bf16, eager, beside transformers, with the loader"
timeout 200 python3 -m mimkit.cli bench --preset vit_base --img-size 224 --batch 128 \
    --out "$OUT/mae_vit_base_224_bf16_eager.json" train.amp=bf16 train.compile=false

step "bench: the same step with torch.compile (ours only)"
timeout 200 python3 -m mimkit.cli bench --preset vit_base --img-size 224 --batch 128 \
    --no-hf --no-pipeline --out "$OUT/mae_vit_base_224_bf16_compile.json" \
    train.amp=bf16 train.compile=true

step "done; files in $OUT"
ls -la "$OUT"
