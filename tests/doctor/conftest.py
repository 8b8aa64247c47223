"""Helpers for the doctor's tests: prepared vLLM trees, and tiny stand-in vLLM trees.

A real vLLM version is probed only from a tree that ``python -m tools.vllm_env prepare`` built; one
that is absent or stale SKIPS with the exact command that prepares it, never passes. The stand-in
trees are a few files of Python that have vLLM's shape (``vllm.platforms``, ``vllm.utils.
torch_utils.current_stream``, dist-info metadata), so the CLI's JSON and exit codes can be tested
end to end in seconds, with no vLLM at all.
"""

from __future__ import annotations

import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from streamcheck.doctor.model import ProbeOutcome
from streamcheck.doctor.runner import run_probe
from tools.vllm_env.layout import Layout, default_root
from tools.vllm_env.prepare import is_ready

REPO = Path(__file__).resolve().parents[2]
VERSIONS = ("0.9.2", "0.13.0", "0.33.0")
PROBE_TIMEOUT_S = 240.0


def prepared_paths(version: str) -> list[str] | None:
    """[site, deps] of a prepared, current env for ``version``; None when it is not there."""
    layout = Layout(default_root(), version)
    if not is_ready(layout):
        return None
    return [str(layout.site), str(layout.deps)]


@pytest.fixture(scope="session")
def version_outcomes() -> dict[str, Future[ProbeOutcome]]:
    """Probe every prepared version at once (each in its own child), on first use.

    vLLM's import dominates (10-15 s per version here); overlapping the children keeps the whole
    set close to the slowest one.
    """
    pool = ThreadPoolExecutor(max_workers=len(VERSIONS))
    futures = {}
    for version in VERSIONS:
        paths = prepared_paths(version)
        if paths is not None:
            futures[version] = pool.submit(run_probe, "sim", paths, PROBE_TIMEOUT_S)
    pool.shutdown(wait=False)
    return futures


# --------------------------------------------------------------------------- stand-in trees

_PLATFORMS = '''\
_current_platform = None


def __getattr__(name):
    if name == "current_platform":
        global _current_platform
        if _current_platform is None:
            from vllm.platforms.interface import Platform
            _current_platform = Platform()
        return _current_platform
    raise AttributeError(name)
'''

_INTERFACE = '''\
import enum


class PlatformEnum(enum.Enum):
    CUDA = enum.auto()
    ROCM = enum.auto()
    CPU = enum.auto()
    UNSPECIFIED = enum.auto()


class Platform:
    _enum = PlatformEnum.UNSPECIFIED
    device_type = ""

    def is_cuda(self):
        return self._enum == PlatformEnum.CUDA

    def is_rocm(self):
        return self._enum == PlatformEnum.ROCM

    def is_cpu(self):
        return self._enum == PlatformEnum.CPU

    def is_cuda_alike(self):
        return self._enum in (PlatformEnum.CUDA, PlatformEnum.ROCM)
'''

# The seed bug, as vLLM <= 0.9.2 wrote it.
LEAKY = '''\
import torch

prev_set_stream = torch.cuda.set_stream
_current_stream = None


def _patched_set_stream(stream):
    global _current_stream
    _current_stream = stream
    prev_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream


def current_stream():
    global _current_stream
    if _current_stream is None:
        _current_stream = torch.cuda.current_stream()
    return _current_stream
'''

# No cache, and the rank's device remembered: every thread gets its real current stream on the
# device the rank's main thread chose. Nothing for the doctor to find.
SOUND = '''\
import threading

import torch

_rank_device = None
_prev_set_device = torch.cuda.set_device


def _set_device(device):
    global _rank_device
    if threading.current_thread() is threading.main_thread():
        _rank_device = device
    _prev_set_device(device)


torch.cuda.set_device = _set_device


def current_stream():
    return torch.cuda.current_stream(_rank_device)
'''

# Import hangs: the doctor must kill it at its deadline and say "cannot tell".
HANGS = '''\
import time

time.sleep(600)


def current_stream():
    raise AssertionError("never reached")
'''


def make_tree(root: Path, torch_utils: str, version: str = "0.0.1") -> Path:
    """A directory that imports as a tiny vLLM ``version`` with this ``torch_utils`` source."""
    files = {
        "vllm/__init__.py": "",
        "vllm/platforms/__init__.py": _PLATFORMS,
        "vllm/platforms/interface.py": _INTERFACE,
        "vllm/utils/__init__.py": "",
        "vllm/utils/torch_utils.py": torch_utils,
        f"vllm-{version}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root
