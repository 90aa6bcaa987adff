#!/usr/bin/env bash
# One-time set-up, safe to re-run: torch (only if none is importable, so a CUDA build you
# installed is kept), Fashion-MNIST from Debian's package (when apt is there), then mimkit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"

if ! $PY -c "import torch" >/dev/null 2>&1; then
    echo "setup: no torch found; installing torch==2.13.0 (CPU wheel)"
    $PIP torch==2.13.0
fi

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${MIMKIT_DATA:-}" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian's dataset-fashion-mnist"
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: Fashion-MNIST not found at $FMNIST." >&2
        echo "  Install it (sudo apt-get install dataset-fashion-mnist), or put the four IDX files in" >&2
        echo "  \$MIMKIT_DATA/fashion-mnist, or run with data.download=true to fetch the official files." >&2
    fi
fi

$PIP -e ".[dev]"
