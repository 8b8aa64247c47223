#!/usr/bin/env bash
# The tests: install, then run the whole suite in parallel (pytest-xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -n auto -q "$@"
