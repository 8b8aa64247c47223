#!/usr/bin/env bash
# Everything GPU-shaped, in one go, logs into ${OUT:-gpu-evidence}/: the repro suite on all GPUs
# and on one, the connector's CUDA tests, the audit benchmarks (with a cProfile of a connector's
# declared read; the stream-heavy TP loop with its parts, its state and its phases taken
# apart), the connector benchmark, the torch.distributed and connector checks.
# Needs CUDA GPUs (two for the error-400 and fresh-thread repros) and py-spy for hang dumps.
# Arguments name the steps to run (default: all), e.g. `gpu_evidence.sh bench_connector`.
set -uo pipefail
export PYTHONUNBUFFERED=1
L=${OUT:-gpu-evidence}
mkdir -p "$L"
py=${PYTHON:-python3}
wanted=" ${*:-all} "
step() {
  local name=$1 limit=$2; shift 2
  [[ $wanted == " all " || $wanted == *" $name "* ]] || return 0
  echo "== $name"; timeout "$limit" "$@" >"$L/$name.log" 2>&1; echo "   rc=$?"
}
step run_all_gpus 260 "$py" -m streamcheck.cli.main run 'repro_*' --backend cuda --jobs 6 --json "$L/run_all_gpus.json"
CUDA_VISIBLE_DEVICES=0 step run_one_gpu 160 "$py" -m streamcheck.cli.main run 'repro_*' --backend cuda --json "$L/run_one_gpu.json"
step connector_cuda 120 "$py" -m pytest -q -p no:cacheprovider tests/connector/test_runtime_cuda.py
step bench_audit 200 "$py" scripts/bench_audit.py --profile-connector 2000
step stream_loop 300 "$py" scripts/bench_stream_loop.py --rounds 9 --iters 100 --ablate --phases
step dist_tp_loop 150 "$py" scripts/gpu_dist_tp_loop.py
step connector_check 200 "$py" scripts/gpu_connector_check.py
step bench_connector 150 "$py" scripts/bench_connector.py
show() { [ -f "$L/$1.log" ] && { echo "-- $1"; "${@:2}" "$L/$1.log"; }; }
for f in run_all_gpus run_one_gpu; do show "$f" grep -E "matched|MISMATCH"; done
show connector_cuda tail -3; show bench_audit tail -60; show stream_loop cat
show dist_tp_loop tail -6; show connector_check tail -4
show bench_connector cat
