#!/usr/bin/env bash
# The main job: install, then run every repro on the default backend (CUDA when GPUs and NCCL
# are usable, else the CPU simulator, labelled sim). Extra arguments go to `streamcheck run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m streamcheck.cli.main run 'repro_*' "$@"
