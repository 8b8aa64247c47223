#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it into fresh virtual environments
# outside the repository, and use every front end from there.
#   light: the wheel alone (no torch): list, scan, report, and `run` saying what it needs.
#   full:  the wheel with torch and pytest: run on the simulator, scan, report, pytest --streamcheck
#          under xdist, and the reports it leaves validated against the documented schema.
# Needs a package index (or pip's cache) for the dependencies. Exits non-zero on the first failure.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/streamcheck-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }
expect_rc() {  # expect_rc CODE CMD...: run CMD, fail unless it exits with CODE
  local want=$1; shift
  set +e; "$@"; local rc=$?; set -e
  if [ "$rc" != "$want" ]; then echo "check_wheel: '$*' exited $rc, expected $want" >&2; exit 1; fi
}

step "build the wheel"
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$repo"
wheel=$(ls "$work"/dist/streamcheck-*.whl)
# Only the library ships: no tools/ (python -m tools.vllm_env), tests/ or scripts/ inside.
"$py" - "$wheel" <<'PY'
import sys, zipfile

tops = {name.split("/")[0] for name in zipfile.ZipFile(sys.argv[1]).namelist()}
extra = {t for t in tops if t != "streamcheck" and not t.startswith("streamcheck-")}
assert not extra, f"the wheel ships more than streamcheck: {sorted(extra)}"
print("wheel holds:", ", ".join(sorted(tops)))
PY
torch_version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo "")

cd "$work"  # nothing of the repository on the path from here on
unset PYTHONPATH STREAMCHECK STREAMCHECK_REPORT_DIR || true
mkdir -p src tests
cat > src/leak.py <<'PY'
import torch

_current_stream = None


def current_stream():
    global _current_stream
    if _current_stream is None:
        _current_stream = torch.cuda.current_stream()
    return _current_stream
PY
cat > tests/test_tiny.py <<'PY'
import threading


def test_threads():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()


def test_math():
    assert 1 + 1 == 2
PY

step "light install: the wheel alone"
"$py" -m venv "$work/light"
"$work/light/bin/pip" install -q "$wheel"
L="$work/light/bin"
expect_rc 1 "$L/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
"$L/streamcheck" --version
"$L/streamcheck" list > list.txt && grep -q repro_global_stream_leak_nan list.txt
expect_rc 1 "$L/streamcheck" scan src --json scan.json
"$L/python" -c "import json; d = json.load(open('scan.json')); assert d['summary']['findings'] >= 1, d"
expect_rc 1 "$L/streamcheck" scan src --output-format concise > concise.txt
grep -q "^src/leak.py:[0-9]*:[0-9]*: SC101 " concise.txt
"$L/streamcheck" list --json list.json
"$L/streamcheck" completion bash > /dev/null
expect_rc 2 "$L/streamcheck" run repro_global_stream_leak_nan --backend sim 2> run-light.err
grep -q "streamcheck\[torch\]" run-light.err

step "full install: the wheel with torch and pytest"
"$py" -m venv "$work/full"
F="$work/full/bin"
"$F/pip" install -q "${wheel}[torch]" ${torch_version:+"torch==$torch_version"} pytest pytest-xdist
"$F/python" -c "import streamcheck, sys; p = streamcheck.__file__; \
assert p.startswith(sys.prefix), p; print('streamcheck from', p)"
"$F/streamcheck" run repro_global_stream_leak_nan --backend sim --json run.json
"$F/streamcheck" report run.json
"$L/streamcheck" report run.json > /dev/null  # a saved run renders without torch too
expect_rc 1 "$F/streamcheck" scan src --sarif scan.sarif
mkdir reports
"$F/python" -m pytest -q -p no:cacheprovider -n 2 --streamcheck=assert tests \
  --streamcheck-report reports/session.json
( eval "$("$F/streamcheck" env record --report-dir "$work/reports")"
  "$F/python" -c "import torch, streamcheck; assert streamcheck.current_auditor() is not None" )
ls reports
"$F/streamcheck" report reports --merge-to merged.json
"$F/python" - <<'PY'
from pathlib import Path

from streamcheck.documents import read_document

for name in ("run.json", "reports/session.json", "merged.json", "scan.json", "list.json"):
    doc = read_document(Path(name))  # validates against the schema the document names
    print(f"{name}: {doc.kind} valid")
PY
step "check_wheel: all good"
