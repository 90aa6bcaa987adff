#!/usr/bin/env bash
# Segmentation transfer of the methods table's encoders (docs/results/methods.sh: 1 epoch of
# Fashion-MNIST, 234 steps, seeds 0 and 1), frozen, on the Fashion-MNIST scenes: a linear head
# and the FPN head, 1000 train / 300 val scenes, 10 head epochs (310 steps of 32), seed 0.
# Usage: bash docs/results/segmentation_methods.sh RUNS_ROOT [ROW ...]   (default rows below)
#        bash docs/results/segmentation_methods.sh RUNS_ROOT table       (print the table)
# Results: RUNS_ROOT/<row>_seed<s>/eval/eval_segment{,_random_init}.json, wall times in
# RUNS_ROOT/seg_times.log. The floor: --random-init on the mae rows (their own seeds' init).
set -euo pipefail
ROOT=$1; shift
ROWS=${*:-"mae mae_block colormae_green colormae_red colormae_blue colormae_purple simmim crossmae maskfeat mfm maskalign hpm cae droppos mrmae ibot"}
SCENES=${SCENES:-runs/fmnist_scenes}
MIMKIT=${MIMKIT:-"python3 -m mimkit.cli"}
SEG="--data $SCENES --train-limit 1000 --val-limit 300 --epochs 10 --width 32 --device cpu"
[ -f "$SCENES/classes.txt" ] || $MIMKIT data synth fmnist-scenes "$SCENES"
evaluate() {  # run [extra flags]: skips a run that already has its record
    local run=$1; shift
    local record="$ROOT/$run/eval/eval_segment$([ "$*" = "--random-init" ] && echo _random_init).json"
    [ -f "$record" ] && return
    local start=$(date +%s)
    $MIMKIT eval segment "$ROOT/$run" $SEG "$@" > "$ROOT/$run.segment$([ -n "$*" ] && echo _floor).log" 2>&1
    echo "$run $* wall_s=$(( $(date +%s) - start ))" >> "$ROOT/seg_times.log"
}
if [ "$ROWS" = "table" ]; then
    python3 - "$ROOT" <<'PY'
import json, statistics as st, sys
from pathlib import Path
root = Path(sys.argv[1])
rows = [("random init (floor)", "mae", "eval_segment_random_init.json")] + [
    (r, r, "eval_segment.json")
    for r in ("mae", "mae_block", "colormae_green", "colormae_red", "colormae_blue",
              "colormae_purple", "simmim", "crossmae", "maskfeat", "mfm", "maskalign", "hpm", "cae", "droppos",
              "mrmae", "ibot")]
def cell(values):
    if not values:
        return "not run"
    sd = f" ± {100 * st.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * st.mean(values):.1f}{sd}"
print("| encoder | seeds | linear mIoU | linear pixel acc | fpn mIoU | fpn pixel acc |")
print("| --- | --- | --- | --- | --- | --- |")
for label, run, name in rows:
    recs = [json.loads(p.read_text()) for s in (0, 1)
            if (p := root / f"{run}_seed{s}" / "eval" / name).is_file()]
    if recs:
        print(f"| {label} | {len(recs)} | " + " | ".join(
            cell([r[h][k] for r in recs]) for h in ("linear", "fpn") for k in ("miou", "pixel_acc")) + " |")
PY
    exit 0
fi
for s in 0 1; do
    evaluate "mae_seed$s" --random-init
    for row in $ROWS; do
        [ -d "$ROOT/${row}_seed$s/checkpoint" ] && evaluate "${row}_seed$s"
    done
done
