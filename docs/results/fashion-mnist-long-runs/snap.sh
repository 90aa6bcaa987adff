#!/usr/bin/env bash
# Copy RUN/checkpoint to RUN/snap_epN whenever epoch N (one of the arguments after RUN) has just
# been saved; stops when RUN/done exists. fashion-mnist-long.sh starts it beside each pretraining.
#   snap.sh RUN 5 10 15
run=$1; shift
while sleep 5; do
  state=$run/checkpoint/trainer_state.json
  [ -f "$state" ] || continue
  epoch=$(python3 -c "import json; print(json.load(open('$state'))['epoch'])" 2>/dev/null) || continue
  for want in "$@"; do
    if [ "$epoch" = "$want" ] && [ ! -d "$run/snap_ep$want" ]; then
      # training replaces checkpoint/ by renames; keep the copy only if it is still that epoch
      cp -r "$run/checkpoint" "$run/.snap_tmp" \
        && python3 -c "import json; assert json.load(open('$run/.snap_tmp/trainer_state.json'))['epoch'] == $want" \
        && mv "$run/.snap_tmp" "$run/snap_ep$want" || rm -rf "$run/.snap_tmp"
    fi
  done
  [ -f "$run/done" ] && break
done
