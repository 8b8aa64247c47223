#!/usr/bin/env bash
# The tests: install, then run the whole suite in parallel (pytest-xdist).
# Also prepared here (idempotent, quick once done): a real redis-server for the global-store
# backend, and vLLM 0.9.2 / 0.13.0 / 0.33.0 Python-module trees (.vllm/) for the tests that run
# real vLLM code on CPU. If either cannot be had, those tests are skipped and say how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=${PYTHON:-python3}
bash scripts/install_redis.sh || echo "test.sh: redis-server unavailable: its tests will be skipped"
"$py" -m tools.vllm_env prepare 0.9.2 0.13.0 0.33.0 \
  || echo "test.sh: vLLM trees could not be prepared: the vLLM tests will be skipped"
exec "$py" -m pytest -n auto -q "$@"
