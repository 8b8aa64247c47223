"""Source: vllm 0.11.0, vllm/utils/__init__.py, lines 1420-1471
(verbatim minimization; has_deep_gemm() abbreviated).

Thread-local set_stream patch. No finding.
"""
import threading

import torch

prev_set_stream = torch.cuda.set_stream

_current_stream_tls = threading.local()


def _patched_set_stream(stream: torch.cuda.Stream) -> None:
    _current_stream_tls.value = stream
    prev_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream


class _StreamPlaceholder:

    def __init__(self):
        self.synchronize = lambda: None


def current_stream() -> torch.cuda.Stream:
    from vllm.platforms import current_platform
    if not hasattr(_current_stream_tls,
                   "value") or _current_stream_tls.value is None:
        if current_platform.is_rocm():
            # torch.cuda.set_stream here is the alias of _pathed_set_stream
            torch.cuda.set_stream(torch.cuda.Stream())
        elif current_platform.is_cpu():
            _current_stream_tls.value = _StreamPlaceholder()
        else:
            current_stream = current_platform.current_stream
            if current_stream is not None:
                _current_stream_tls.value = current_stream()
            else:
                raise ValueError(
                    "Fail to set current stream, current platform "
                    "may not support current_stream with torch API")
    return _current_stream_tls.value


def has_deep_gemm() -> bool:
    return False
