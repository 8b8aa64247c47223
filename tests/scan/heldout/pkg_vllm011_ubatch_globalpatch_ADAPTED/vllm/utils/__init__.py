"""Source: vllm 0.9.2, vllm/utils/__init__.py, lines 1156-1191
(verbatim minimization; has_deep_gemm() abbreviated). Used in this ADAPTED
package in place of the 0.11.0 thread-local version.
"""
import torch

prev_set_stream = torch.cuda.set_stream

_current_stream = None


def _patched_set_stream(stream: torch.cuda.Stream) -> None:
    global _current_stream
    _current_stream = stream
    prev_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream  # expect: SC102


def current_stream() -> torch.cuda.Stream:  # expect: SC101
    from vllm.platforms import current_platform
    global _current_stream
    if _current_stream is None:
        _current_stream = torch.cuda.Stream() if current_platform.is_rocm(
        ) else torch.cuda.current_stream()
    return _current_stream


def has_deep_gemm() -> bool:
    return False
