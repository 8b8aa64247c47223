"""Source: sglang 0.5.23,
sglang/multimodal_gen/runtime/distributed/device_communicators/pynccl.py,
lines 30-59 (verbatim minimization; accessor is a private helper named
_get_current_stream and the saved original is _previous_set_stream).
"""
import torch

from sglang.multimodal_gen.runtime import platforms

_previous_set_stream = torch.cuda.set_stream

_current_stream = None


def _patched_set_stream(stream: torch.cuda.Stream | None) -> None:
    global _current_stream
    _current_stream = stream
    if stream is not None:
        _previous_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream  # expect: SC102


def _get_current_stream() -> torch.cuda.Stream | None:  # expect: SC101
    # cache the stream object to avoid constructing it for every collective;
    # callers must change streams through torch.cuda.set_stream
    if not platforms.current_platform.is_cuda_alike():
        return None

    global _current_stream
    if _current_stream is None:
        # RCCL performs better on a dedicated stream than the default stream
        _current_stream = (
            torch.cuda.Stream()
            if platforms.current_platform.is_rocm()
            else torch.cuda.current_stream()
        )
    return _current_stream


class PyNcclCommunicator:
    def all_reduce(self, in_tensor, stream=None):
        if stream is None:
            stream = _get_current_stream()
        return stream
