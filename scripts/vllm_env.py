#!/usr/bin/env python3
"""Reproducible environments that hold vLLM's *Python modules* without its compiled wheel.

Why: streamcheck audits vLLM code paths that are plain Python (``current_stream()``, the
``PyNcclCommunicator`` wrapper, the v1 KV connector base and factory, the v1 scheduler). The full
vLLM wheel pins its own torch and ships CUDA kernels, so it can neither be installed next to a CPU
torch nor travel to an offline GPU machine. Its ``.py`` files and ``METADATA`` can, together with
the dependencies that those imports need (wheels, installed with ``--no-deps`` so torch is never
touched). This script builds exactly that, per vLLM version, from committed pins
(``scripts/vllm_deps/VERSION.txt``), so a test run or CI installs the same bytes every time.

The pins were found by trying: import the targets in an interpreter that sees only torch (and
what torch requires), install the distribution that the first ImportError names at the newest
version inside every declared range, repeat (``prepare VERSION --discover``).

Layout under ROOT (default ``.vllm/`` at the repository root, or ``$STREAMCHECK_VLLM_ROOT``)::

    wheels/                      downloaded wheels (the vLLM wheel is ~300-500 MB: fetched once)
    VERSION/site/vllm/**.py      the wheel's Python files
    VERSION/site/vllm-VERSION.dist-info/{METADATA,entry_points.txt}
    VERSION/site/streamcheck_vllm_stubs.py
    VERSION/deps/                pinned dependencies (``pip install --no-deps --target``)
    VERSION/READY.json           written last; says which pins the env was built from

Subcommands: ``prepare``, ``prepare-all`` (the CI versions), ``env``, ``probe``, ``pack-gpu``,
``find-stubs``. Stdlib only; Linux (wheels for x86_64).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

#: The stand-in module a prepared tree ships; the contract library code relies on is
#: ``streamcheck.vllm_compat.VLLM_STUBS_MODULE`` (a test holds the two equal). Not imported from
#: there: this script also runs as a probe in the prepared tree's own interpreter, where
#: streamcheck's dependencies are not installed.
STUBS_MODULE = "streamcheck_vllm_stubs"

REPO = Path(__file__).resolve().parent.parent
PINS_DIR = REPO / "scripts" / "vllm_deps"
SUPPORTED = ("0.9.2", "0.13.0", "0.24.0", "0.33.0")
CI_VERSIONS = ("0.9.2", "0.33.0")
RESULT_TAG = "STREAMCHECK_PROBE_RESULT:"

# vLLM wheels are abi3 manylinux; pip matches a --platform tag exactly, so list the usual ones.
MANYLINUX = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35, 39)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]

# Compiled vLLM modules that the GPU import path of the probe targets cannot do without: the
# CUDA platform module (vllm/platforms/cuda.py) imports them unconditionally. On an H200 with
# each version's .py tree, every compiled-module import on the targets' path was recorded: 0.9.2
# tried vllm._C and vllm._moe_C, 0.33 vllm._C_stable_libtorch and vllm._qutlass_C; 0.13 and 0.24
# were read from source only (the same single unconditional import in cuda.py). Optional imports
# that vLLM guards with try/except (0.9.2's _moe_C, 0.33's _qutlass_C) are NOT stubbed: a
# stand-in there would tell vLLM that a kernel library exists. ``find-stubs`` re-derives the list
# on a GPU machine; names the CPU path needs are found the same way by ``prepare`` and added.
GPU_NEEDED_STUBS: dict[str, tuple[str, ...]] = {
    "0.9.2": ("vllm._C",),
    "0.13.0": ("vllm._C",),
    "0.24.0": ("vllm._C_stable_libtorch",),
    "0.33.0": ("vllm._C_stable_libtorch",),
}

# Upper bounds that a version's own Requires-Dist leaves open but its code needs. Each stays inside
# vLLM's declared range (it only narrows it). 0.9.2 registers its own "aimv2" config, which
# transformers 4.56+ also defines (ValueError at import); 4.53 was current at its release. 0.24
# pins apache-tvm-ffi==0.1.9 but allows xgrammar<1, and xgrammar 0.2.6+ needs tvm-ffi>=0.1.10.
NARROWER: dict[str, dict[str, str]] = {
    "0.9.2": {"transformers": "<4.54"},
    "0.24.0": {"xgrammar": "<0.2.6"},
}

# Import names whose distribution is spelled differently. A tuple lists candidates: the first
# that vLLM (or an installed dependency) declares wins; vLLM 0.33 moved from openai-harmony to
# its fork oss-harmony, which installs the same ``openai_harmony`` module.
MODULE_TO_DIST: dict[str, str | tuple[str, ...]] = {
    "openai_harmony": ("oss-harmony", "openai-harmony"),
    "tvm_ffi": "apache-tvm-ffi",
    "opentelemetry": "opentelemetry-api",
    "zmq": "pyzmq",
    "yaml": "pyyaml",
    "cv2": "opencv-python-headless",
    "google": "protobuf",
    "PIL": "pillow",
    "cpuinfo": "py-cpuinfo",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "multipart": "python-multipart",
    "pythonjsonlogger": "python-json-logger",
    "attr": "attrs",
    "jwt": "pyjwt",
    "sklearn": "scikit-learn",
    "pynvml": "nvidia-ml-py",
    "websockets": "websockets",
    "email_validator": "email-validator",
}

# Versions of some of those, as its pip list showed them: one outside a range that vLLM or a
# pinned dependency declares is carried anyway (0.9.2 needs transformers 4.53, not 5.x).
GPU_IMAGE_VERSIONS = {
    "transformers": "5.17.0",
    "tokenizers": "0.23.2",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
}

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


def normalize(name: str) -> str:
    """PEP 503 name, so 'PyYAML', 'pyyaml' and 'py_yaml' compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def log(msg: str) -> None:
    """Progress goes to stderr so ``env`` output stays eval-able."""
    print(f"[vllm_env] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- paths


def default_root() -> Path:
    """One cache for every checkout that points at it; the repo's git-ignored .vllm/ otherwise."""
    env = os.environ.get("STREAMCHECK_VLLM_ROOT")
    return Path(env).resolve() if env else REPO / ".vllm"


@dataclass(frozen=True)
class Layout:
    """Where one version's environment lives; every path derives from (root, version)."""

    root: Path
    version: str

    @property
    def base(self) -> Path:
        return self.root / self.version

    @property
    def site(self) -> Path:
        return self.base / "site"

    @property
    def deps(self) -> Path:
        return self.base / "deps"

    @property
    def ready(self) -> Path:
        return self.base / "READY.json"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def dep_wheels(self) -> Path:
        return self.root / "wheels" / f"deps-cp{sys.version_info[0]}{sys.version_info[1]}"

    @property
    def metadata(self) -> Path:
        return self.site / f"vllm-{self.version}.dist-info" / "METADATA"

    @property
    def pins(self) -> Path:
        return PINS_DIR / f"{self.version}.txt"


def prepare_command(version: str) -> str:
    """The exact command a person runs to build the env that a skipped test wanted."""
    return f"python scripts/vllm_env.py prepare {version}"


# --------------------------------------------------------------------------- pins


@dataclass(frozen=True)
class Pin:
    """One pinned dependency and the first probe target that needed it."""

    name: str
    version: str
    needed_by: str = ""

    def line(self) -> str:
        spec = f"{self.name}=={self.version}"
        return f"{spec:<40}# {self.needed_by}" if self.needed_by else spec


def read_pins(path: Path) -> list[Pin]:
    """Parse ``name==version  # target`` lines; comments and blanks are skipped."""
    pins = []
    for raw in path.read_text().splitlines():
        body, _, comment = raw.partition("#")
        body = body.strip()
        if not body:
            continue
        name, sep, ver = body.partition("==")
        if not sep:
            raise ValueError(f"{path}: expected name==version, got {raw!r}")
        pins.append(Pin(name.strip(), ver.strip(), comment.strip()))
    return pins


def write_pins(path: Path, version: str, pins: Sequence[Pin]) -> None:
    """Committed file: CI and every developer install exactly these versions."""
    head = [
        f"# Dependencies of vLLM {version}'s Python modules as streamcheck imports them",
        "# (current_stream, pynccl, KV connector base/factory, v1 scheduler), on CPU torch.",
        "# Every version lies inside the range that vLLM's own METADATA declares.",
        "# The comment names the first import target that needed the package.",
        "# Regenerate: python scripts/vllm_env.py prepare VERSION --discover",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head + [p.line() for p in pins]) + "\n")


def pins_digest(pins: Sequence[Pin]) -> str:
    """Identifies a pin set, so a stale env is noticed when the committed list changes."""
    text = "\n".join(sorted(f"{normalize(p.name)}=={p.version}" for p in pins))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- requirements


def marker_holds(marker: str, env: dict[str, str]) -> bool:
    """Evaluate a PEP 508 marker for the target machine (``packaging``'s evaluator, with the
    target's variables instead of this interpreter's; no extra is requested)."""
    if not marker.strip():
        return True
    try:
        return bool(Marker(marker).evaluate({**env, "extra": ""}))
    except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
        return False


def target_marker_env(python: str = "", machine: str = "x86_64") -> dict[str, str]:
    """Marker variables for Linux x86_64 at the given (or this) Python."""
    py = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    return {
        "python_version": py,
        "python_full_version": py + ".0",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*\(?([^;()]*)\)?\s*(;.*)?$")


def parse_requires(metadata_text: str, env: dict[str, str]) -> dict[str, str]:
    """Map normalized name -> version spec from Requires-Dist lines whose marker holds."""
    out: dict[str, str] = {}
    for line in metadata_text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        m = _REQ.match(line.split(":", 1)[1])
        if not m:
            continue
        name, spec, marker = m.group(1), (m.group(3) or "").strip(), (m.group(4) or "")[1:]
        if marker_holds(marker, env):
            key = normalize(name)
            out[key] = ",".join(s for s in (out.get(key, ""), spec) if s)
    return out


def dist_metadata_texts(dirs: Iterable[Path]) -> list[str]:
    """METADATA of every distribution installed under ``dirs`` (site/ and deps/)."""
    texts = []
    for d in dirs:
        texts.extend(p.read_text(errors="replace") for p in d.glob("*.dist-info/METADATA"))
    return texts


# --------------------------------------------------------------------------- pip


def pip(args: Sequence[str], silent: bool = False) -> None:
    """Run this interpreter's pip; never with dependencies, so torch is never touched."""
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"]
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore")
    subprocess.run(cmd, check=True, env=env, capture_output=silent)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def download_vllm_wheel(lay: Layout) -> Path:
    """Fetch the Linux x86_64 wheel once; later prepares reuse the cached file."""
    pattern = f"vllm-{lay.version}-*x86_64.whl"
    found = sorted(lay.wheels.glob(pattern))
    if found:
        return found[0]
    lay.wheels.mkdir(parents=True, exist_ok=True)
    plat = [a for p in MANYLINUX for a in ("--platform", p)]
    log(f"downloading vllm=={lay.version} (large: several hundred MB)")
    pip(
        [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            "3.12",
            *plat,
            "-d",
            str(lay.wheels),
            f"vllm=={lay.version}",
        ],
    )
    found = sorted(lay.wheels.glob(pattern))
    if not found:
        raise SystemExit(f"pip saved no {pattern} into {lay.wheels}")
    return found[0]


def download_deps(specs: Sequence[str], dest: Path, python: str = "", gpu: bool = False) -> None:
    """Binary wheels only: nothing gets built, and the GPU machine can install them offline."""
    dest.mkdir(parents=True, exist_ok=True)
    args = ["download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    if gpu:
        plat = [a for p in MANYLINUX for a in ("--platform", p)]
        args += ["--implementation", "cp", "--python-version", python, *plat]
    pip([*args, *specs])


def install_deps(specs: Sequence[str], wheel_dir: Path, target: Path, silent: bool = False) -> None:
    """Install from the local wheel cache into ``target``, offline and without resolution."""
    target.mkdir(parents=True, exist_ok=True)
    pip(
        [
            "install",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--find-links",
            str(wheel_dir),
            "--target",
            str(target),
            *specs,
        ],
        silent=silent,
    )


# --------------------------------------------------------------------------- extraction


def compiled_names(zf: zipfile.ZipFile) -> list[str]:
    """Module names of the wheel's extension modules (``vllm/_C.abi3.so`` -> ``vllm._C``)."""
    names = set()
    for n in zf.namelist():
        if n.startswith("vllm/") and n.endswith(".so"):
            stem = n[: -len(".so")].split(".")[0]
            names.add(stem.replace("/", "."))
    return sorted(names)


def wanted_member(name: str, version: str) -> bool:
    """Only the Python files and the metadata that version checks and entry points read."""
    if name.startswith("vllm/") and name.endswith(".py"):
        return True
    info = f"vllm-{version}.dist-info/"
    return name in (info + "METADATA", info + "entry_points.txt")


def extract_site(wheel: Path, lay: Layout) -> list[str]:
    """Unpack the .py tree into site/; return the compiled module names the wheel ships."""
    if lay.site.exists():
        shutil.rmtree(lay.site)
    lay.site.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if wanted_member(n, lay.version)]
        zf.extractall(lay.site, members)
        compiled = compiled_names(zf)
    log(f"extracted {len(members)} files from {wheel.name}")
    return compiled


STUBS_TEMPLATE = '''\
"""Empty stand-ins for vLLM {version}'s compiled extension modules.

Imported before ``vllm``, this registers an empty module for each name in STUBBED: the compiled
modules that the import path of ``current_stream()``, ``PyNcclCommunicator``, the KV connector
base/factory and the v1 scheduler cannot do without (vllm/platforms/cuda.py imports them
unconditionally once the platform resolves to CUDA). This tree holds only vLLM's Python files,
so without the stand-ins those imports fail. Imports that vLLM guards with try/except are left
alone: vLLM then sees those optional kernels as absent, which they are.

Why this is honest: those code paths never call into the compiled kernels (pynccl reaches NCCL
through ctypes); they only import the modules, whose import registers custom ops. A stand-in has
no attributes and registers no op, so code that did call a kernel would fail at once, never
return a made-up result. Where the real extension file sits next to this one (a full install),
nothing is registered. Set STREAMCHECK_VLLM_STUBS=off to skip registration.
"""

import os
import sys
import types
from pathlib import Path

VERSION = {version!r}
STUBBED = {stubbed!r}
COMPILED = {compiled!r}


def install() -> list:
    """Register the stand-ins that are missing; return the names registered."""
    here = Path(__file__).resolve().parent
    done = []
    for name in STUBBED:
        parts = name.split(".")
        if name in sys.modules or any(here.joinpath(*parts[:-1]).glob(parts[-1] + ".*so")):
            continue
        module = types.ModuleType(name)
        module.__streamcheck_stub__ = True
        sys.modules[name] = module
        done.append(name)
    return done


if os.environ.get("STREAMCHECK_VLLM_STUBS", "on").lower() not in ("0", "off", "no", "false"):
    install()
'''


def write_stubs(lay: Layout, stubbed: Iterable[str], compiled: Sequence[str]) -> None:
    """(Re)write the stand-in module with the given names, keeping the wheel's full list."""
    text = STUBS_TEMPLATE.format(
        version=lay.version, stubbed=tuple(sorted(set(stubbed))), compiled=tuple(compiled)
    )
    (lay.site / f"{STUBS_MODULE}.py").write_text(text)


def read_stubs(lay: Layout) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(STUBBED, COMPILED) from the written module, without importing it."""
    text = (lay.site / f"{STUBS_MODULE}.py").read_text()
    found = {}
    for key in ("STUBBED", "COMPILED"):
        m = re.search(rf"^{key} = (.*)$", text, re.M)
        found[key] = ast.literal_eval(m.group(1)) if m else ()
    return tuple(found["STUBBED"]), tuple(found["COMPILED"])


# --------------------------------------------------------------------------- probe


def current_stream_module(site: Path) -> str:
    """Where this version defines ``current_stream`` (read from the source, not assumed)."""
    for rel in ("vllm/utils/torch_utils.py", "vllm/utils/__init__.py", "vllm/utils.py"):
        path = site / rel
        if path.exists() and re.search(r"^def current_stream\(", path.read_text(), re.M):
            mod = rel[: -len(".py")].replace("/", ".")
            return mod.removesuffix(".__init__")
    raise SystemExit(f"no 'def current_stream' under {site}/vllm/utils")


def probe_targets(site: Path) -> list[dict[str, object]]:
    """What streamcheck imports from vLLM, in the order a dependency is first needed."""
    return [
        {
            "name": "current_stream",
            "module": current_stream_module(site),
            "attrs": ["current_stream", "_patched_set_stream"],
            "call": "current_stream",
        },
        {
            "name": "pynccl",
            "module": "vllm.distributed.device_communicators.pynccl",
            "attrs": ["PyNcclCommunicator", "current_stream"],
        },
        {
            "name": "kv_connector",
            "module": "vllm.distributed.kv_transfer.kv_connector.v1.base",
            "attrs": ["KVConnectorBase_V1"],
        },
        {
            "name": "kv_connector",
            "module": "vllm.distributed.kv_transfer.kv_connector.factory",
            "attrs": ["KVConnectorFactory"],
        },
        {"name": "scheduler", "module": "vllm.v1.core.sched.scheduler", "attrs": ["Scheduler"]},
    ]


def _probe_inprocess(cfg: dict) -> dict:
    """Import each target in this process; report the first failure and compiled-name tries.

    Runs inside the env under test (PYTHONPATH set by the caller). ``cfg["stubs"]`` names the
    stand-ins to register first, exactly as streamcheck_vllm_stubs does. A meta-path hook records
    every other attempt to import a compiled vLLM module and lets it fail as it would without
    the extension, so vLLM's own try/except fallbacks run unchanged.
    """
    import importlib
    import importlib.abc
    import traceback
    import types

    compiled = set(cfg.get("compiled", ()))
    tried: list[str] = []

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
            if name in compiled:
                tried.append(name)
            return None

    for name in cfg.get("stubs", ()):
        module = types.ModuleType(name)
        module.__streamcheck_stub__ = True  # type: ignore[attr-defined]
        sys.modules.setdefault(name, module)
    sys.meta_path.insert(0, _Finder())
    result: dict = {"ok": True, "targets": [], "tried_compiled": tried, "platform": None}
    for tgt in cfg["targets"]:
        entry: dict = {"name": tgt["name"], "module": tgt["module"]}
        result["targets"].append(entry)
        try:
            mod = importlib.import_module(tgt["module"])
            entry["missing_attrs"] = [a for a in tgt["attrs"] if not hasattr(mod, a)]
            if tgt.get("call"):
                entry["call"] = _probe_call(getattr(mod, tgt["call"]), result)
        except ImportError as exc:
            entry["import_error"] = {
                "chain": _import_chain(exc),
                "msg": str(exc)[:500],
                "tb": traceback.format_exc()[-3000:],
            }
            result["ok"] = False
            break
        except Exception as exc:  # e.g. a dependency that breaks when its own dep is absent
            frames = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
            entry["error"] = {
                "type": type(exc).__name__,
                "msg": str(exc)[:500],
                "frames": frames[-20:],
                "tb": traceback.format_exc()[-3000:],
            }
            result["ok"] = False
            break
    return result


def _import_chain(exc: BaseException) -> list[dict]:
    """Every ImportError in the cause/context chain, outermost first.

    Lazy importers (transformers) re-raise a vague error from the real ModuleNotFoundError, so
    the missing package is often named only deeper in the chain.
    """
    chain, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ImportError):
            chain.append(
                {
                    "type": type(cur).__name__,
                    "name": cur.name,
                    "path": cur.path,
                    "msg": str(cur)[:500],
                }
            )
        cur = cur.__cause__ or cur.__context__
    return chain


def _probe_call(fn, result: dict) -> str:  # type: ignore[no-untyped-def]
    """Call current_stream(); on a CPU build the CUDA-only branch raising is expected."""
    import importlib

    try:
        plat = importlib.import_module("vllm.platforms").current_platform
        result["platform"] = type(plat).__name__
    except ImportError:
        raise
    except Exception as exc:
        result["platform"] = f"error: {type(exc).__name__}: {exc}"[:300]
    try:
        return "returned " + type(fn()).__name__
    except ImportError:
        raise
    except Exception as exc:
        return f"raised {type(exc).__name__}: {exc}"[:300]


def probe_env(lay: Layout, minimal: bool) -> dict[str, str]:
    """Environment for a probe subprocess.

    ``minimal`` hides the interpreter's site-packages except torch and what torch itself
    requires (a view of symlinks), so every other package that the imports need shows up as an
    ImportError instead of being silently borrowed from this machine.
    """
    env = dict(os.environ)
    paths = [str(lay.site), str(lay.deps)]
    if minimal:
        paths.append(str(base_view(lay.root)))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if not has_gpu():
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def probe_config(lay: Layout, stubs: Sequence[str] | None = None) -> dict:
    """The targets, the wheel's compiled names, and the stand-ins (default: the env's own)."""
    stubbed, compiled = read_stubs(lay)
    return {
        "targets": probe_targets(lay.site),
        "compiled": list(compiled),
        "stubs": list(stubbed if stubs is None else stubs),
    }


def probe_subprocess(cfg: dict, env: dict[str, str] | None = None, isolated: bool = False) -> dict:
    """Run ``_probe`` in a fresh interpreter (this one's environment unless ``env``)."""
    cmd = [
        sys.executable,
        *(["-S"] if isolated else []),
        str(Path(__file__).resolve()),
        "_probe",
        json.dumps(cfg),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise SystemExit(
        f"probe crashed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def run_probe(lay: Layout, minimal: bool, stubs: Sequence[str] | None = None) -> dict:
    """Run the target imports against ``lay`` in a fresh interpreter; return its report."""
    return probe_subprocess(probe_config(lay, stubs), probe_env(lay, minimal), isolated=minimal)


def find_stubs(cfg: dict, run) -> tuple[list[str], dict]:  # type: ignore[no-untyped-def]
    """Smallest stand-in list the targets import with: add what each failure asks for.

    Starts from ``cfg["stubs"]``; each round that fails on a compiled vLLM module adds it. The
    final report's ``tried_compiled`` lists the optional imports that vLLM tolerated missing.
    """
    stubs = list(cfg["stubs"])
    for _ in range(len(cfg["compiled"]) + 1):
        report = run({**cfg, "stubs": stubs})
        failed = next((t for t in report["targets"] if "import_error" in t), None)
        chain = failed["import_error"]["chain"] if failed else []
        wanted = next(
            (c["name"] for c in chain if c["name"] in cfg["compiled"] and c["name"] not in stubs),
            None,
        )
        if wanted is None:
            return stubs, report
        stubs.append(wanted)
    raise SystemExit("stand-in search did not converge")


# --------------------------------------------------------------------------- base view


def torch_closure() -> list[importlib_metadata.Distribution]:
    """torch and every distribution it requires (no extras), as installed here."""
    seen: dict[str, importlib_metadata.Distribution] = {}
    todo = ["torch"]
    while todo:
        name = normalize(todo.pop())
        if name in seen:
            continue
        try:
            dist = importlib_metadata.distribution(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        env = target_marker_env()
        for req in dist.requires or []:
            m = _REQ.match(req)
            if m and marker_holds((m.group(4) or "")[1:], env):
                todo.append(m.group(1))
    return list(seen.values())


def base_view(root: Path) -> Path:
    """A directory of symlinks to torch and its own requirements only (see probe_env).

    Built once per torch version and renamed into place, so concurrent prepares share it.
    """
    view = root / f"base-view-torch-{importlib_metadata.version('torch')}"
    if view.exists():
        return view
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".base-view-"))
    for dist in torch_closure():
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__", "bin"}:
            src, dst = base / top, tmp / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    try:
        tmp.rename(view)
    except OSError:  # another prepare won the race
        shutil.rmtree(tmp)
    return view


# --------------------------------------------------------------------------- discovery


def dist_for_module(module: str, declared: Iterable[str] = ()) -> str:
    """Distribution that provides a missing top-level module (see MODULE_TO_DIST)."""
    top = module.split(".")[0]
    found = MODULE_TO_DIST.get(top, normalize(top))
    candidates = (found,) if isinstance(found, str) else found
    declared = set(declared)
    return next((c for c in candidates if normalize(c) in declared), candidates[0])


def declared_names(lay: Layout) -> set[str]:
    """Every distribution name that vLLM or an installed dependency requires."""
    env = target_marker_env()
    names: set[str] = set()
    for text in dist_metadata_texts([lay.site, lay.deps]):
        names |= set(parse_requires(text, env))
    return names


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def missing_dist(err: dict, declared: Iterable[str] = ()) -> str:
    """The distribution an ImportError chain asks for, or '' when none is a missing package.

    The innermost error is the real one. A missing module names an import; transformers'
    version check instead raises PackageNotFoundError naming a distribution ("The
    'safetensors>=0.8.0' distribution was not found ...").
    """
    for link in reversed(err["chain"]):
        name = str(link["name"] or "")
        if link["type"] == "PackageNotFoundError":
            m = re.search(r"The '([A-Za-z0-9][A-Za-z0-9._-]*)", link["msg"])
            if m or _MODULE_NAME.match(name):
                return normalize(m.group(1) if m else name)
        if link["type"] == "ModuleNotFoundError" and _MODULE_NAME.match(name):
            if name.split(".")[0] in ("vllm", STUBS_MODULE):
                continue
            return dist_for_module(name, declared)
        if link["type"] == "ImportError" and "base-view" in str(link.get("path") or ""):
            # "cannot import name X from typing_extensions": torch's copy is too old for a
            # dependency; a newer one in deps/ shadows it.
            return dist_for_module(name, declared)
    return ""


def unmet_requirement(path: str, lay: Layout) -> str:
    """First declared requirement, not installed, of the dependency whose code raised.

    transformers 5.20 without tokenizers fails with a TypeError, not an ImportError: when the
    failing frame is inside deps/, a requirement that its METADATA declares is the likely gap.
    """
    try:
        top = Path(path).resolve().relative_to(lay.deps.resolve()).parts[0]
    except ValueError:
        return ""
    have = set(installed_versions(lay.deps)) | {
        normalize(d.metadata["Name"]) for d in torch_closure()
    }
    for info in lay.deps.glob("*.dist-info"):
        record = info / "RECORD"
        if record.exists() and f"\n{top}/" in "\n" + record.read_text():
            needs = parse_requires((info / "METADATA").read_text(), target_marker_env())
            return next((n for n in needs if n not in have), "")
    return ""


def spec_for(dist: str, lay: Layout) -> tuple[str, str]:
    """(vLLM's constraint, every other declared constraint) on ``dist``, as spec strings."""
    env = target_marker_env()
    key = normalize(dist)
    own = parse_requires(lay.metadata.read_text(), env).get(key, "")
    others = [parse_requires(t, env).get(key, "") for t in dist_metadata_texts([lay.deps])]
    others.append(NARROWER.get(lay.version, {}).get(key, ""))
    return own, ",".join(s for s in others if s)


def fetch_in_range(dist: str, lay: Layout) -> tuple[str, str]:
    """Download the newest wheel in range; return (requirement used, note for the pin file).

    A range that the index cannot meet (vLLM 0.33 asks for a certifi newer than any release)
    falls back to the other constraints, and the pin says so instead of hiding it.
    """
    own, others = spec_for(dist, lay)
    req = dist + ",".join(s for s in (own, others) if s)
    try:
        download_deps([req], lay.dep_wheels)
        return req, ""
    except subprocess.CalledProcessError:
        if not own:
            raise
    fallback = dist + others
    why = f"none on the index meets it with {others}" if others else "no such release on the index"
    log(f"vLLM asks {dist}{own}, {why}: using {fallback}")
    download_deps([fallback], lay.dep_wheels)
    return fallback, f"vLLM asks {own}: {why}"


def installed_versions(deps: Path) -> dict[str, str]:
    """Normalized name -> version of what sits in deps/."""
    out = {}
    for info in deps.glob("*.dist-info"):
        name, _, ver = info.name[: -len(".dist-info")].rpartition("-")
        out[normalize(name)] = ver
    return out


def discover(lay: Layout, limit: int = 120) -> list[Pin]:
    """Install whatever the next ImportError names, until every target imports.

    Each round runs the probe in a minimal interpreter (site-packages hidden but torch), reads
    the first ModuleNotFoundError, and installs that one distribution at the newest version
    inside every range declared for it. The result is the smallest set that these imports need.
    """
    progress = lay.deps / ".discovery.json"
    needed_by: dict[str, str] = {}
    if progress.exists():  # resume an interrupted discovery: each round costs seconds
        needed_by = json.loads(progress.read_text())
        log(f"resuming discovery with {len(needed_by)} packages already found")
    else:
        if lay.deps.exists():
            shutil.rmtree(lay.deps)
        lay.deps.mkdir(parents=True)
    for _ in range(limit):
        report = run_probe(lay, minimal=True)
        failed = next((t for t in report["targets"] if "import_error" in t or "error" in t), None)
        if failed is None:
            versions = installed_versions(lay.deps)
            progress.unlink(missing_ok=True)
            return [Pin(n, versions[n], needed_by.get(n, "")) for n in sorted(versions)]
        err = failed.get("import_error") or failed["error"]
        if "error" in failed:
            dist = unmet_requirement(err["frames"][-1], lay)
        else:
            dist = missing_dist(err, declared_names(lay))
        if not dist:
            raise SystemExit(f"{failed['module']}: {err['msg']}\n{err['tb']}")
        if dist in needed_by:
            raise SystemExit(f"installed {dist}, still missing:\n{err['tb']}")
        req, note = fetch_in_range(dist, lay)
        log(f"{failed['name']}: needs {dist} -> installing {req}")
        install_deps([req], lay.dep_wheels, lay.deps)
        needed_by[dist] = "; ".join(s for s in (str(failed["name"]), note) if s)
        progress.write_text(json.dumps(needed_by))
    raise SystemExit(f"gave up after {limit} rounds")


# --------------------------------------------------------------------------- prepare


def has_gpu() -> bool:
    """An NVIDIA device node means vLLM should resolve its CUDA platform, not the CPU one."""
    return os.path.exists("/dev/nvidiactl")


def is_ready(lay: Layout) -> bool:
    """Prepared and built from the pins that are committed now."""
    if not lay.ready.exists() or not lay.pins.exists():
        return False
    info = json.loads(lay.ready.read_text())
    return info.get("pins_digest") == pins_digest(read_pins(lay.pins))


@dataclass
class PrepareStats:
    """What a prepare cost: seconds and bytes fetched, for the CI budget."""

    seconds: float = 0.0
    downloaded: int = 0
    reused: bool = False


@contextlib.contextmanager
def version_lock(lay: Layout) -> Iterator[None]:
    """One prepare per version at a time: a second one waits instead of unpacking over it."""
    lay.root.mkdir(parents=True, exist_ok=True)
    with open(lay.root / f".{lay.version}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another prepare of {lay.version} is running; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def prepare(version: str, root: Path, rediscover: bool = False) -> PrepareStats:
    """Build ROOT/VERSION from the wheel and the committed pins (or discover the pins)."""
    lay = Layout(root, version)
    with version_lock(lay):
        if not rediscover and is_ready(lay):
            return PrepareStats(reused=True)
        return _prepare_locked(lay, rediscover)


def _prepare_locked(lay: Layout, rediscover: bool) -> PrepareStats:
    t0 = time.monotonic()
    version = lay.version
    before = dir_size(lay.wheels)
    if lay.ready.exists():
        lay.ready.unlink()
    compiled = extract_site(download_vllm_wheel(lay), lay)
    write_stubs(lay, GPU_NEEDED_STUBS.get(version, ()), compiled)
    if rediscover or not lay.pins.exists():
        pins = discover(lay)
        write_pins(lay.pins, version, pins)
        log(f"wrote {lay.pins.relative_to(REPO)} ({len(pins)} packages)")
    else:
        pins = read_pins(lay.pins)
        if lay.deps.exists():
            shutil.rmtree(lay.deps)
        install_pins([f"{p.name}=={p.version}" for p in pins], lay)
    stats = PrepareStats(downloaded=dir_size(lay.wheels) - before)
    report = verify(lay, compiled)
    lay.ready.write_text(
        json.dumps(
            {
                "version": version,
                "pins_digest": pins_digest(pins),
                "platform": report["platform"],
                "current_stream_module": current_stream_module(lay.site),
                "targets": report["targets"],
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=1,
        )
    )
    stats.seconds = time.monotonic() - t0
    return stats


def install_pins(specs: Sequence[str], lay: Layout) -> None:
    """Install exact pins from the wheel cache; go to the index only for what it lacks."""
    if not specs:
        return
    try:
        install_deps(specs, lay.dep_wheels, lay.deps, silent=True)
        return
    except subprocess.CalledProcessError:
        log(f"fetching {len(specs)} dependency wheels")
    download_deps(specs, lay.dep_wheels)
    install_deps(specs, lay.dep_wheels, lay.deps)


def verify(lay: Layout, compiled: Sequence[str]) -> dict:
    """Every target must import with the pinned deps alone; needed stand-ins are added."""
    cfg = probe_config(lay)
    env = probe_env(lay, minimal=True)
    stubs, report = find_stubs(cfg, lambda c: probe_subprocess(c, env, isolated=True))
    if set(stubs) != set(cfg["stubs"]):
        log(f"stand-ins needed on this machine too: {sorted(set(stubs) - set(cfg['stubs']))}")
        write_stubs(lay, stubs, compiled)
    bad = [t for t in report["targets"] if "import_error" in t or t.get("missing_attrs")]
    if bad:
        raise SystemExit(
            f"vLLM {lay.version}: env does not import cleanly:\n"
            + json.dumps(bad, indent=1)[-4000:]
        )
    return report


# --------------------------------------------------------------------------- env / pack


def env_vars(version: str, root: Path, gpu: bool | None = None) -> dict[str, str]:
    """Variables that make ``import vllm`` pick this env's Python modules."""
    lay = Layout(root, version)
    out = {"PYTHONPATH": os.pathsep.join([str(lay.site), str(lay.deps)])}
    if not (has_gpu() if gpu is None else gpu):
        out["VLLM_TARGET_DEVICE"] = "cpu"
    return out


ACTIVATE_TEMPLATE = """\
# Source this on the offline GPU machine:  . PACK_DIR/activate.sh
# Unpacks vLLM {version}'s Python modules and the carried wheels once, then sets PYTHONPATH.
# Import streamcheck_vllm_stubs before vllm (empty stand-ins for compiled modules; see its doc).
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


def satisfies(version: str, spec: str) -> bool:
    """Does ``version`` meet a comma-joined specifier (``packaging``'s rules; an empty one is
    met; one that cannot be read is not)?"""
    if not spec.strip():
        return True
    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def gpu_missing(pins: Sequence[Pin], scope: Sequence[str], lay: Layout) -> list[Pin]:
    """Pins to carry: missing on the GPU image, or there at a version outside a declared range.

    ``scope`` limits them to packages that the given probe targets needed (empty: all).
    """
    present = {normalize(n) for n in GPU_IMAGE_PACKAGES}
    carry = []
    for pin in pins:
        if scope and pin.needed_by.split(";")[0].strip() not in scope:
            continue
        name = normalize(pin.name)
        there = GPU_IMAGE_VERSIONS.get(name)
        declared = ",".join(filter(None, spec_for(name, lay)))
        if name not in present or (there and not satisfies(there, declared)):
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
    (out / "activate.sh").write_text(ACTIVATE_TEMPLATE.format(version=version))
    # What prepare checked, for `vllm_env.py find-stubs probe.json` on the GPU machine: which
    # compiled modules the CUDA platform's import path needs (starts with no stand-ins).
    (out / "probe.json").write_text(json.dumps(probe_config(lay, stubs=[])))
    total = dir_size(out)
    log(
        f"{zpath.name}: {zpath.stat().st_size / 2**20:.1f} MiB; wheels: "
        f"{', '.join(p.line().split('#')[0].strip() for p in carry) or 'none'}; "
        f"total {total / 2**20:.1f} MiB"
    )
    if total > 30 * 2**20:
        log("warning: over 30 MiB; narrow --scope")


# --------------------------------------------------------------------------- CLI


def _version(v: str) -> str:
    if v not in SUPPORTED:
        log(f"note: {v} is not one of the checked versions {', '.join(SUPPORTED)}")
    return v


def cmd_prepare(args: argparse.Namespace) -> None:
    for version in args.versions:
        if args.force:
            Layout(args.root, version).ready.unlink(missing_ok=True)
        stats = prepare(version, args.root, args.discover)
        if stats.reused:
            print(f"vLLM {version}: already prepared from the committed pins (--force rebuilds)")
            continue
        print(
            f"vLLM {version}: prepared in {stats.seconds:.0f} s, downloaded "
            f"{stats.downloaded / 2**20:.0f} MiB -> {Layout(args.root, version).base}"
        )


def cmd_env(args: argparse.Namespace) -> None:
    lay = Layout(args.root, args.version)
    if not is_ready(lay):
        raise SystemExit(f"vLLM {args.version} is not prepared: {prepare_command(args.version)}")
    gpu = {"auto": None, "yes": True, "no": False}[args.gpu]
    for key, val in env_vars(args.version, args.root, gpu).items():
        print(f"export {key}={shlex.quote(val)}")


def cmd_probe(args: argparse.Namespace) -> None:
    print(json.dumps(run_probe(Layout(args.root, args.version), args.minimal), indent=1))


def cmd_pack(args: argparse.Namespace) -> None:
    pack_gpu(args.version, args.root, args.out, args.scope, args.python)


def cmd_find_stubs(args: argparse.Namespace) -> None:
    cfg = json.loads(Path(args.config).read_text())
    stubs, report = find_stubs(cfg, probe_subprocess)
    print(
        json.dumps(
            {"needed": stubs, "optional_absent": report["tried_compiled"], "report": report},
            indent=1,
        )
    )


def cmd_probe_inprocess(args: argparse.Namespace) -> None:
    print(RESULT_TAG + json.dumps(_probe_inprocess(json.loads(args.config))), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def with_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--root", type=Path, default=default_root())
        return p

    p = with_root(sub.add_parser("prepare", help="download, extract, install pinned deps"))
    p.add_argument("versions", nargs="+", type=_version, metavar="VERSION")
    p.add_argument(
        "--discover",
        action="store_true",
        help="ignore the committed pins; find the deps by trying and rewrite them",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.set_defaults(fn=cmd_prepare)
    p = with_root(sub.add_parser("prepare-all", help=f"prepare {', '.join(CI_VERSIONS)}"))
    p.set_defaults(fn=cmd_prepare, versions=list(CI_VERSIONS), discover=False, force=False)
    p = with_root(sub.add_parser("env", help="print shell exports for a prepared version"))
    p.add_argument("version", type=_version)
    p.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto")
    p.set_defaults(fn=cmd_env)
    p = with_root(sub.add_parser("probe", help="import the targets in the env; print JSON"))
    p.add_argument("version", type=_version)
    p.add_argument("--minimal", action="store_true", help="hide site-packages except torch")
    p.set_defaults(fn=cmd_probe)
    p = with_root(sub.add_parser("pack-gpu", help="zip + wheels for the offline GPU machine"))
    p.add_argument("version", type=_version)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (X.Y)")
    p.add_argument(
        "--scope",
        nargs="*",
        default=[],
        help="carry deps of these probe targets only (current_stream pynccl "
        "kv_connector scheduler); default all",
    )
    p.set_defaults(fn=cmd_pack)
    p = sub.add_parser(
        "find-stubs",
        help="in the current env (e.g. after activate.sh on the "
        "GPU machine): which compiled vLLM modules the targets need",
    )
    p.add_argument("config", help="probe.json written by pack-gpu")
    p.set_defaults(fn=cmd_find_stubs)
    p = sub.add_parser("_probe", help=argparse.SUPPRESS)
    p.add_argument("config")
    p.set_defaults(fn=cmd_probe_inprocess)
    args = ap.parse_args(argv)
    if hasattr(args, "root"):
        args.root = args.root.resolve()
    args.fn(args)


if __name__ == "__main__":
    main()
