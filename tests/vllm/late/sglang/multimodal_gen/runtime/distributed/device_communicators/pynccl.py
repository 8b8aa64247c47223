"""Shaped like SGLang's ``multimodal_gen`` pynccl: vLLM 0.9's module-global stream cache.

Importing it patches ``torch.cuda.set_stream`` to remember the last stream *any* thread made
current, and ``_get_current_stream()`` hands that to every thread. Written for the tests from
the structure of the real module (the seed incident's pattern, alive in a second engine).
"""

import torch

_previous_set_stream = torch.cuda.set_stream
_current_stream = None


def _patched_set_stream(stream):
    global _current_stream
    _current_stream = stream
    if stream is not None:
        _previous_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream


def _get_current_stream():
    global _current_stream
    if _current_stream is None:
        _current_stream = torch.cuda.current_stream()
    return _current_stream


class PyNcclCommunicator:
    def __init__(self, device):
        self.device = torch.device("cuda", device)
        self.disabled = False
        self.launches = []

    def all_reduce(self, tensor, op=None, stream=None):
        if self.disabled:
            return None
        if stream is None:
            stream = _get_current_stream()
        self.launches.append(("all_reduce", stream.cuda_stream))
        return tensor

    def send(self, tensor, dst, stream=None):
        if self.disabled:
            return
        if stream is None:
            stream = _get_current_stream()
        self.launches.append(("send", stream.cuda_stream))
