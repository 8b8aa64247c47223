"""Does a tree import? Run streamcheck's vLLM import targets in a fresh interpreter and read
its report; find the smallest set of stand-ins that they import with.

A probe runs ``probe_child.py`` in a subprocess so vLLM's import-time patches and platform
choice never touch this process. ``minimal`` probes hide the interpreter's site-packages except
torch and what torch itself requires, so every other package the imports need shows up as an
ImportError instead of being silently borrowed from this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from streamcheck.vllm_compat import VLLM_STUB_FLAG
from tools.vllm_env import probe_child
from tools.vllm_env.layout import Layout, has_gpu
from tools.vllm_env.requires import requirements, target_marker_env
from tools.vllm_env.stubs import read_stubs

Report = dict[str, Any]
ProbeConfig = dict[str, Any]


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


def probe_config(lay: Layout, stubs: Sequence[str] | None = None) -> ProbeConfig:
    """The targets, the wheel's compiled names, and the stand-ins (default: the env's own)."""
    stubbed, compiled = read_stubs(lay)
    return {
        "targets": probe_targets(lay.site),
        "compiled": list(compiled),
        "stubs": list(stubbed if stubs is None else stubs),
        "stub_flag": VLLM_STUB_FLAG,
    }


def probe_env(lay: Layout, minimal: bool) -> dict[str, str]:
    """Environment for a probe subprocess (see the module docstring for ``minimal``)."""
    env = dict(os.environ)
    paths = [str(lay.site), str(lay.deps)]
    if minimal:
        paths.append(str(base_view(lay.root)))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if not has_gpu():
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def probe_subprocess(
    cfg: ProbeConfig, env: dict[str, str] | None = None, isolated: bool = False
) -> Report:
    """Run the probe child in a fresh interpreter (this one's environment unless ``env``)."""
    cmd = [
        sys.executable,
        *(["-S"] if isolated else []),
        str(Path(probe_child.__file__).resolve()),
        json.dumps(cfg),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    for line in proc.stdout.splitlines():
        if line.startswith(probe_child.RESULT_TAG):
            return json.loads(line[len(probe_child.RESULT_TAG) :])
    raise SystemExit(
        f"probe crashed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def run_probe(lay: Layout, minimal: bool, stubs: Sequence[str] | None = None) -> Report:
    """Run the target imports against ``lay`` in a fresh interpreter; return its report."""
    return probe_subprocess(probe_config(lay, stubs), probe_env(lay, minimal), isolated=minimal)


def find_stubs(cfg: ProbeConfig, run: Callable[[ProbeConfig], Report]) -> tuple[list[str], Report]:
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


def torch_closure() -> list[importlib_metadata.Distribution]:
    """torch and every distribution it requires (no extras, on the target), as installed here."""
    seen: dict[str, importlib_metadata.Distribution] = {}
    todo = ["torch"]
    env = target_marker_env()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = importlib_metadata.distribution(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        todo.extend(req.name for req in requirements(dist.requires or [], env))
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
