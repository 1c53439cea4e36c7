#!/usr/bin/env bash
# Create .venv and install platonic_fast with everything its tests, demo and benchmarks use.
# Safe to re-run: an existing .venv is reused and only what is missing gets installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"

# timm needs torchvision, and PyPI's torchvision loads only with PyPI's own (CUDA) build of
# torch, which also runs on CPU-only machines. Install the pair in one command so pip picks
# matching versions (the newest torchvision pins its torch; a locally provided CPU-only torch
# wheel, which cannot import torchvision, is older and is not chosen).
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  $PIP install "torch>=2.4" torchvision
fi

# Build requirements in the environment itself, so the editable install can rebuild in place.
$PIP install "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
# (features includes accelerate, for extract --device-map; the 'large' extra adds bitsandbytes for
# --load-in 8bit/4bit, which needs a CUDA GPU and is not installed here.)
$PIP install --no-build-isolation -e ".[test,bench,plot,features,demo]"
