#!/usr/bin/env bash
# Install what streamcheck and its tests need into the current Python, without pulling CUDA
# wheels on a machine that has no GPU: an existing torch is kept; otherwise the CPU build
# torch==2.13.0 is installed where no NVIDIA driver is present, the default build elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q torch
  else
    "$PY" -m pip install -q "torch==2.13.0"
  fi
fi
"$PY" -m pip install -q -e ".[dev]"
