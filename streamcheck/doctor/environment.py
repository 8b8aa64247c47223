"""The environment half of the doctor: what a bug report about NaN or error 400 needs first.

Everything here only reads: versions from metadata, device names from torch, NCCL's version
from our own ctypes binding. vLLM is NOT imported (that would patch ``torch.cuda.set_stream`` in
this process); its version comes from package metadata.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys

from streamcheck.doctor.model import EnvItem


def collect() -> list[EnvItem]:
    """All environment lines, in the order a person reads them."""
    return [python_item(), hooks_item(), stream_reads_item(), *torch_items(), nccl_item(),
            vllm_item(), py_spy_item()]


def hooks_item() -> EnvItem:
    """Whether the audit's hottest hooks are compiled here (the Python ones cost more per
    stream switch and launch; the decisions are the same)."""
    from streamcheck.core.modes import ConfigError
    from streamcheck.settings import AuditSettings
    from streamcheck.wrappers import speedups

    try:
        settings = AuditSettings.load()
    except ConfigError as exc:
        return EnvItem("audit hooks", "bad setting", False, str(exc))
    if not speedups.built():
        return EnvItem("audit hooks", "Python", None, speedups.describe())
    if settings.core == "python":
        return EnvItem("audit hooks", "Python (chosen)", None,
                       f"the compiled ones are built; {settings.source_of('core')} chooses "
                       "the Python ones")
    return EnvItem("audit hooks", "compiled (streamcheck._speedups)", True,
                   "STREAMCHECK_CORE=python chooses the Python ones")


def stream_reads_item() -> EnvItem:
    """How the compiled launch check reads a device's current stream for a ``stream=None``
    launch here: through the C++ functions in torch's libc10_cuda where they are found (used
    once they agreed with torch's own read, streamcheck/_native_streams.c), else through
    torch's Python call at each launch."""
    from streamcheck.wrappers import speedups

    name = "current-stream reads"
    if speedups.active() is None:
        return EnvItem(name, "torch's", None, "the Python hooks call torch at each launch")
    try:
        import torch
    except ImportError as exc:
        return EnvItem(name, "none", None, f"torch is not importable: {exc}")
    reader = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if speedups.read_streams_natively(reader):
        return EnvItem(name, "native (c10::cuda)", True,
                       "getCurrentCUDAStream in torch's libc10_cuda, used once it agreed with "
                       "torch's own read on a non-default stream (the engine's, or one made "
                       "up and set current for the proof)")
    return EnvItem(name, "torch's", None,
                   "torch's libc10_cuda is not loaded or lacks getCurrentCUDAStream: each "
                   "stream=None launch calls torch._C._cuda_getCurrentRawStream, each "
                   "collective _cuda_getCurrentStream")


def python_item() -> EnvItem:
    impl = platform.python_implementation()
    return EnvItem("Python", f"{impl} {platform.python_version()}", True, sys.executable)


def torch_items() -> list[EnvItem]:
    """torch version and build, then CUDA devices (the probe's choice of back end follows it)."""
    try:
        import torch
    except ImportError as exc:
        return [EnvItem("torch", "not importable", False, str(exc))]
    cuda_build = getattr(torch.version, "cuda", None)
    hip_build = getattr(torch.version, "hip", None)
    if cuda_build:
        build = f"CUDA {cuda_build} build"
    elif hip_build:
        build = f"ROCm {hip_build} build"
    else:
        build = "CPU-only build"
    items = [EnvItem("torch", f"{torch.__version__} ({build})", True)]
    items.append(cuda_devices_item(torch, bool(cuda_build or hip_build)))
    return items


def cuda_devices_item(torch_module: object, gpu_build: bool) -> EnvItem:
    """Whether CUDA is usable, how many devices, and their names."""
    cuda = torch_module.cuda  # type: ignore[attr-defined]
    if not gpu_build:
        return EnvItem("CUDA", "not available (torch has no CUDA)", None,
                       "the probe runs on streamcheck's CPU stream simulator")
    try:
        available = bool(cuda.is_available())
        count = int(cuda.device_count()) if available else 0
        names = [str(cuda.get_device_name(i)) for i in range(count)]
    except Exception as exc:  # a broken driver is a finding in itself: say it
        return EnvItem("CUDA", "error while querying devices", False, f"{type(exc).__name__}: "
                       f"{exc}")
    if not available:
        return EnvItem("CUDA", "not available (no visible GPU or no driver)", None,
                       "the probe runs on streamcheck's CPU stream simulator")
    return EnvItem("CUDA", f"available, {count} device(s)", True,
                   "; ".join(f"cuda:{i} {n}" for i, n in enumerate(names)))


def nccl_item() -> EnvItem:
    """The NCCL that streamcheck's own binding (and usually vLLM's pynccl) would load."""
    try:
        from streamcheck.runtime.nccl import NcclLibrary

        lib = NcclLibrary()
        return EnvItem("NCCL", lib.version(), True, lib.path)
    except Exception as exc:  # NcclUnavailable carries the list of places it tried
        lines = str(exc).splitlines()
        headline = lines[0] if lines else type(exc).__name__
        return EnvItem("NCCL", f"not loadable: {headline}", None, "\n".join(lines[1:]) or None)


def vllm_item() -> EnvItem:
    from streamcheck.vllm_compat import vllm_version

    version = vllm_version()
    if version is None:
        return EnvItem("vLLM", "not installed here", None,
                       "probe a tree that is not installed with --vllm-path DIR")
    return EnvItem("vLLM", version, True, "from package metadata (not imported)")


def py_spy_item(timeout: float = 10.0) -> EnvItem:
    """py-spy dumps a rank that hangs after error 400; without it, hangs are harder to read."""
    path = shutil.which("py-spy")
    if path is None:
        return EnvItem("py-spy", "not found on PATH", None,
                       "`pip install py-spy` lets `streamcheck run` dump hung ranks")
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return EnvItem("py-spy", "found but did not run", False, f"{path}: {exc}")
    out = (proc.stdout or proc.stderr).strip()
    if proc.returncode != 0:
        return EnvItem("py-spy", "found but did not run", False, f"{path}: {out[-300:]}")
    return EnvItem("py-spy", out.removeprefix("py-spy ").strip() or out, True, path)
