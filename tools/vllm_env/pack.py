"""The pack for an offline GPU machine: vLLM's Python files as one zip, the wheels its image
lacks, an ``activate.sh`` that unpacks and selects them, and the probe config for ``find-stubs``.

The GPU machine cannot reach a package index and has its own image (its pip list is below), so
only what is missing there, or present at a version outside a declared range, travels.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name

from streamcheck.vllm_compat import VLLM_STUBS_MODULE
from tools.vllm_env.discover import spec_for
from tools.vllm_env.layout import Layout, log, prepare_command
from tools.vllm_env.pins import Pin, read_pins
from tools.vllm_env.prepare import is_ready
from tools.vllm_env.probe import probe_config
from tools.vllm_env.requires import satisfies
from tools.vllm_env.wheels import dir_size, download_deps

# Python packages that the lab's GPU image already holds (its pip list, read there); pack-gpu
# carries only what is missing from it.
GPU_IMAGE_PACKAGES = frozenset(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()  # noqa: SIM905 - a pasted pip list
)


# Versions of some of those, as its pip list showed them: one outside a range that vLLM or a
# pinned dependency declares is carried anyway (0.9.2 needs transformers 4.53, not 5.x).
GPU_IMAGE_VERSIONS = {
    "transformers": "5.17.0",
    "tokenizers": "0.23.2",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
}


ACTIVATE_TEMPLATE = """\
# Source this on the offline GPU machine:  . PACK_DIR/activate.sh
# Unpacks vLLM {version}'s Python modules and the carried wheels once, then sets PYTHONPATH.
# Import {stubs_module} before vllm (empty stand-ins for compiled modules; see its doc).
_sc_here=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
_sc_dest=${{STREAMCHECK_VLLM_DEST:-/tmp/streamcheck-vllm-{version}}}
_sc_py=${{PYTHON:-python3}}
if [ ! -f "$_sc_dest/.ready" ]; then
  rm -rf "$_sc_dest" && mkdir -p "$_sc_dest/deps" || return 1
  "$_sc_py" -m zipfile -e "$_sc_here/vllm-{version}-py.zip" "$_sc_dest/site" || return 1
  if ls "$_sc_here"/wheels/*.whl >/dev/null 2>&1; then
    "$_sc_py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
      --target "$_sc_dest/deps" "$_sc_here"/wheels/*.whl || return 1
  fi
  touch "$_sc_dest/.ready"
fi
export PYTHONPATH="$_sc_dest/site:$_sc_dest/deps${{PYTHONPATH:+:$PYTHONPATH}}"
# vLLM's own lookup misses the NCCL inside the nvidia-nccl wheel (seen with 0.9.2).
if [ -z "${{VLLM_NCCL_SO_PATH:-}}" ]; then
  _sc_nccl=$("$_sc_py" -c 'import importlib.util as u, pathlib as p
s = u.find_spec("nvidia.nccl")
f = s and [p.Path(d, "lib", "libnccl.so.2") for d in s.submodule_search_locations]
print(next((str(x) for x in f or [] if x.exists()), ""))' 2>/dev/null)
  [ -n "$_sc_nccl" ] && export VLLM_NCCL_SO_PATH="$_sc_nccl"
fi
unset _sc_here _sc_dest _sc_py _sc_nccl
"""


def pack_zip(lay: Layout, out: Path) -> Path:
    """site/ as one deflated zip: ~10k small files travel as one object."""
    dest = out / f"vllm-{lay.version}-py.zip"
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(lay.site.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(lay.site).as_posix())
    return dest


def gpu_missing(pins: Sequence[Pin], scope: Sequence[str], lay: Layout) -> list[Pin]:
    """Pins to carry: missing on the GPU image, or there at a version outside a declared range.

    ``scope`` limits them to packages that the given probe targets needed (empty: all).
    """
    present = {canonicalize_name(n) for n in GPU_IMAGE_PACKAGES}
    carry = []
    for pin in pins:
        if scope and pin.needed_by.split(";")[0].strip() not in scope:
            continue
        name = canonicalize_name(pin.name)
        there = GPU_IMAGE_VERSIONS.get(name)
        own, others = spec_for(name, lay)
        if name not in present or (there and not satisfies(there, own & others)):
            carry.append(pin)
    return carry


def pack_gpu(version: str, root: Path, out: Path, scope: Sequence[str], python: str) -> None:
    """Write the zip, the missing wheels for the GPU's Python, and an activate script."""
    lay = Layout(root, version)
    if not is_ready(lay):
        raise SystemExit(f"vLLM {version} is not prepared: {prepare_command(version)}")
    out.mkdir(parents=True, exist_ok=True)
    wheels = out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    zpath = pack_zip(lay, out)
    carry = gpu_missing(read_pins(lay.pins), scope, lay)
    if carry:
        download_deps([f"{p.name}=={p.version}" for p in carry], wheels, python=python, gpu=True)
    activate = ACTIVATE_TEMPLATE.format(version=version, stubs_module=VLLM_STUBS_MODULE)
    (out / "activate.sh").write_text(activate)
    # What prepare checked, for `python -m tools.vllm_env find-stubs probe.json` on the GPU
    # machine: which compiled modules the CUDA platform's import path needs (starts with none).
    (out / "probe.json").write_text(json.dumps(probe_config(lay, stubs=[])))
    total = dir_size(out)
    log(
        f"{zpath.name}: {zpath.stat().st_size / 2**20:.1f} MiB; wheels: "
        f"{', '.join(p.line().split('#')[0].strip() for p in carry) or 'none'}; "
        f"total {total / 2**20:.1f} MiB"
    )
    if total > 30 * 2**20:
        log("warning: over 30 MiB; narrow --scope")
