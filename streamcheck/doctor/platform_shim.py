"""Make vLLM take its CUDA branch in ``current_stream()`` when the child fakes CUDA.

Why: on a machine without a GPU vLLM resolves its CPU platform (with ``VLLM_TARGET_DEVICE=cpu``)
or none, and ``current_stream()`` then returns a ``_StreamPlaceholder`` (0.13 onward) instead of
running the code that the hazards live in. Read from each version's source, ``current_stream()``
consults only the platform's kind:

========  ===================================================================================
0.9.2     ``current_platform.is_rocm()`` (ROCm: new stream; else ``torch.cuda.current_stream()``)
0.13.0    ``is_rocm()``, ``is_cpu()``, then ``current_platform.current_stream``, which
          ``Platform.__getattr__`` forwards to ``torch.<device_type>.current_stream``
0.33.0    ``is_rocm() or is_cuda()`` (new ``torch.cuda.Stream()``), ``is_cpu()``, else as 0.13
========  ===================================================================================

So a :class:`~vllm.platforms.interface.Platform` subclass whose ``_enum`` is CUDA and whose
``device_type`` is ``"cuda"`` is all it takes, in every version. vLLM resolves the platform
lazily into ``vllm.platforms._current_platform`` (the same name in 0.9.2, 0.13 and 0.33) and
``current_stream()`` imports ``current_platform`` at call time, so setting that one global is
enough. The real ``CudaPlatform`` class cannot be used: its module loads NVML and compiled ops.
"""

from __future__ import annotations

from typing import Any


def resolved_platform() -> Any:
    """vLLM's current platform object (resolving it if vLLM has not yet)."""
    import vllm.platforms as platforms

    return platforms.current_platform


def is_cuda_alike(platform: Any) -> bool:
    check = getattr(platform, "is_cuda_alike", None)
    return bool(check()) if callable(check) else False


def force_cuda_platform() -> str:
    """Install the shim as vLLM's current platform; return a line saying what was replaced."""
    import vllm.platforms as platforms
    from vllm.platforms.interface import Platform, PlatformEnum

    previous = getattr(platforms, "_current_platform", None)

    class StreamcheckCudaPlatformShim(Platform):  # type: ignore[misc, valid-type]
        """A CUDA platform with no NVML and no compiled ops: enough for ``current_stream()``."""

        _enum = PlatformEnum.CUDA
        device_name = "cuda"
        device_type = "cuda"
        dispatch_key = "CUDA"

    platforms._current_platform = StreamcheckCudaPlatformShim()
    was = f"platform {type(previous).__name__}" if previous is not None else "platform (unresolved)"
    return f"vLLM's {was} replaced by a CUDA shim so current_stream() takes its CUDA path"
