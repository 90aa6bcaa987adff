#!/usr/bin/env bash
# The full fuzz and kill suite (CI runs a fast subset of the same tests: `make test`).
#   scripts/fuzz_full.sh                 # 5000 config draws, 30 rounds of byte damage, kill tests
#   SEEDS="0 1 2" scripts/fuzz_full.sh   # repeat the random parts under several seeds
# Each seed: about 10 minutes on an idle 2-core CPU. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export MIMKIT_FUZZ_EXAMPLES=${MIMKIT_FUZZ_EXAMPLES:-5000}
export MIMKIT_FUZZ_ROUNDS=${MIMKIT_FUZZ_ROUNDS:-30}
export MIMKIT_FUZZ_FULL=1
for seed in ${SEEDS:-0}; do
    echo "== seed $seed"
    MIMKIT_FUZZ_SEED=$seed MIMKIT_KILL_SEED=$seed "$PYTHON" -m pytest -q -x -p no:randomly \
        --hypothesis-seed="$seed" \
        tests/test_fuzz_config.py tests/test_fuzz_data.py tests/test_kill_resume.py
done
