#!/usr/bin/env bash
# The ICL study's findings 1 and 2 at d = 10, 6 x 128, six models at once, in about 8 minutes of one
# GPU (issue 21, item 8). Writes to $OUT/icl_gpu (or the folder given as $1).
#   scripts/icl_gpu.sh [OUT_FOLDER]            the real run (needs CUDA)
#   scripts/icl_gpu.sh --dry-run [OUT_FOLDER]  tiny sizes on the CPU, a few seconds (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DRY=()
if [[ ${1:-} == --dry-run ]]; then DRY=(--dry-run); shift; fi
DEST=${1:-${OUT:-.}/icl_gpu}
exec "$PY" -m platonic_fast.icl.gpu --out "$DEST" --budget "${ICL_GPU_BUDGET:-480}" "${DRY[@]}"
