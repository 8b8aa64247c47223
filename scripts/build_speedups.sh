#!/usr/bin/env bash
# Build streamcheck._speedups in place for the python3 on PATH, for a checkout used without
# installing it (PYTHONPATH=$PWD on a GPU machine whose Python differs from the one the wheel
# was built with). With an argument, also copy the module into that site directory (where a
# wheel was unpacked). `pip install .` builds it the usual way; this is the same compile: the
# interpreter's own CFLAGS and CCSHARED, as setuptools passes them (-DNDEBUG among them, where a
# bare -O2 kept the C API's asserts in the hooks the GPU runs timed).
# Prints what the audit will use; exits 0 either way (the Python hooks work without it).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
inc=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
ext=$("$py" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
flags=$("$py" -c "import sysconfig; print(sysconfig.get_config_var('CFLAGS') or '-O2 -DNDEBUG', sysconfig.get_config_var('CCSHARED') or '-fPIC')")
out="streamcheck/_speedups$ext"
if [ -f "$inc/Python.h" ] && ${CC:-cc} -shared $flags -I"$inc" streamcheck/_speedups.c streamcheck/_sites.c streamcheck/_declare.c streamcheck/_launch_check.c streamcheck/_frames.c streamcheck/_handoffs.c streamcheck/_counter.c streamcheck/_native_streams.c streamcheck/_creations.c streamcheck/_current_stream.c streamcheck/_fast_lock.c -ldl -o "$out"; then
  echo "built $out"
else
  echo "not built here (no C compiler or no Python.h under $inc)"
fi
if [ $# -ge 1 ] && [ -f "$out" ]; then cp "$out" "$1/streamcheck/"; fi
PYTHONPATH=${1:-$PWD} "$py" -c "from streamcheck.wrappers import speedups; print('audit hooks:', speedups.describe())"
