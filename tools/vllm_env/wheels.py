"""Getting bytes: pip downloads and installs (never resolving, never touching torch), and
unpacking only the Python files of the vLLM wheel.

The vLLM wheel is several hundred MB and is fetched once into ``ROOT/wheels``; dependency wheels
are cached per Python (``deps-cpXY``), so a re-prepare installs offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from importlib.metadata import PathDistribution
from pathlib import Path

from packaging.utils import canonicalize_name

from tools.vllm_env.layout import Layout, log

# vLLM wheels are abi3 manylinux; pip matches a --platform tag exactly, so list the usual ones.
MANYLINUX = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35, 39)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def pip(args: Sequence[str], silent: bool = False) -> None:
    """Run this interpreter's pip; never with dependencies, so torch is never touched."""
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"]
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore")
    subprocess.run(cmd, check=True, env=env, capture_output=silent)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _platform_args() -> list[str]:
    return [a for p in MANYLINUX for a in ("--platform", p)]


def download_vllm_wheel(lay: Layout) -> Path:
    """Fetch the Linux x86_64 wheel once; later prepares reuse the cached file."""
    pattern = f"vllm-{lay.version}-*x86_64.whl"
    found = sorted(lay.wheels.glob(pattern))
    if found:
        return found[0]
    lay.wheels.mkdir(parents=True, exist_ok=True)
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
            *_platform_args(),
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
        args += ["--implementation", "cp", "--python-version", python, *_platform_args()]
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


def installed_versions(deps: Path) -> dict[str, str]:
    """Canonical name -> version of each distribution in deps/, from its own METADATA."""
    out = {}
    for info in deps.glob("*.dist-info"):
        dist = PathDistribution(info)
        name = dist.metadata["Name"]
        if name:
            out[canonicalize_name(name)] = dist.version
    return out


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
