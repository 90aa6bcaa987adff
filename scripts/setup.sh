#!/usr/bin/env bash
# One-time set-up, safe to re-run. Picks the interpreter, installs torch (only if none is
# importable, so a CUDA build you installed is kept), Fashion-MNIST from Debian's package (when
# apt is there), then mimkit with its dev extras. Writes the chosen interpreter's path to
# $STAMP (default .setup.stamp): the Makefile and .ci/run run everything with it.
#
# The interpreter: $PYTHON when given (used as it is). Otherwise `python3`, unless pip refuses
# to install into it (PEP 668 "externally managed": the system python of Debian 12, Ubuntu
# 23.04 and later); then a project virtual environment, .venv, made with
# --system-site-packages so that a torch installed system-wide (e.g. a CUDA build from apt or
# your admin) is still seen and kept. A plain python3 is used directly rather than always
# making a venv, so an existing environment (conda, pyenv, a venv you activated) keeps working
# with what it already holds.
#
# torch, when none is importable: with an NVIDIA GPU (nvidia-smi answers) the default build
# from the package index; without one the CPU build: first a local wheel when pip is configured
# with one (find-links; its dependencies from the index), else PyTorch's CPU wheel index ($TORCH_INDEX_URL, default
# https://download.pytorch.org/whl/cpu), never the multi-GB CUDA build. The line it prints says
# which was chosen.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
STAMP=${STAMP:-.setup.stamp}
VENV=${VENV:-.venv}

externally_managed() {  # the test pip itself applies (PEP 668): a marker beside the stdlib, no venv
    "$1" - <<'EOF'
import os, sys, sysconfig
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if (not in_venv and os.path.isfile(marker)) else 1)
EOF
}

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    echo "setup: using PYTHON=$PY as given"
elif [ -x "$VENV/bin/python" ]; then
    PY=$VENV/bin/python
    echo "setup: using the project virtual environment $VENV"
else
    PY=python3
    command -v "$PY" >/dev/null 2>&1 || { echo "setup: python3 not found; install Python >= 3.10" >&2; exit 1; }
    if externally_managed "$PY"; then
        echo "setup: $(command -v $PY) is externally managed (PEP 668): pip may not install into it;"
        echo "setup: creating the project virtual environment $VENV (--system-site-packages, so a system torch is kept)"
        if ! "$PY" -m venv --system-site-packages "$VENV"; then
            rm -rf "$VENV"
            echo "setup: could not create $VENV; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
            exit 1
        fi
        PY=$VENV/bin/python
    fi
fi
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null \
    || { echo "setup: $PY is not Python >= 3.10" >&2; exit 1; }
PIP="$PY -m pip install --disable-pip-version-check -q"

if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: no torch found, NVIDIA GPU present: installing torch==$TORCH_VERSION (CUDA build, package index)"
    $PIP "torch==$TORCH_VERSION"
elif $PIP --dry-run --no-deps --no-index "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    # a local wheel in pip's find-links (this workplace's CPU build): torch from it, and its
    # dependencies (which that folder need not hold) from the package index
    $PIP "torch==$TORCH_VERSION"
    echo "setup: no torch found, no GPU: installed torch $("$PY" -c 'import torch; print(torch.__version__)') from a local wheel (pip's find-links)"
else
    echo "setup: no torch found, no GPU: installing torch==$TORCH_VERSION (CPU build) from $TORCH_INDEX_URL"
    $PIP --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
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
"$PY" -c 'import sys; print(sys.executable)' >"$STAMP"
echo "setup: done; make uses $(cat "$STAMP")"
