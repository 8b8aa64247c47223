#!/usr/bin/env bash
# The vLLM version matrix on real GPUs: the repros that involve vLLM's current_stream, run with
# each carried vLLM's own current_stream() and PyNcclCommunicator (--engine vllm).
# Packs come from `python -m tools.vllm_env pack-gpu VERSION --out .carry/vllm-VERSION`;
# arguments name the packs to run (default: every .carry/vllm-*/).
set -uo pipefail
export PYTHONUNBUFFERED=1
L=${OUT:-gpu-evidence}
mkdir -p "$L"
packs=("$@")
[ ${#packs[@]} -gt 0 ] || packs=(.carry/vllm-*/)
for pack in "${packs[@]}"; do
  pack=${pack%/}
  v=$(basename "$pack"); v=${v#vllm-}
  echo "== vLLM $v"
  (
    . "$pack/activate.sh" || exit 1
    timeout 280 "${PYTHON:-python3}" -m streamcheck.cli.main run 'repro_global_stream_leak_*' \
      'repro_fresh_thread_device' 'repro_stale_stream_cache' --backend cuda --engine vllm \
      --json "$L/vllm-$v.json" >"$L/vllm-$v.log" 2>&1
    echo "   rc=$?"
  )
  grep -E "engine:|ok |MISMATCH|matched" "$L/vllm-$v.log" | head -14
done
