"""Shaped like SGLang's own pynccl (``sglang.srt``, 0.5.x): no ``stream`` parameter at all.

Every collective asks ``self._resolve_stream()``, which reads the current device once into a
module global and then asks torch for that device's current stream. Written for the tests from
the structure of the real module, so the built-in site ``sglang.pynccl`` has something to patch;
``launches`` counts what reached the (absent) NCCL.
"""

import torch

_cached_device = -1


def _current_device_stream():
    global _cached_device
    if _cached_device == -1:
        _cached_device = torch.cuda.current_device()
    return torch.cuda.current_stream(_cached_device)


class PyNcclCommunicator:
    def __init__(self, device):
        self.device = torch.device("cuda", device)
        self.disabled = False
        self.launches = []

    def _resolve_stream(self):
        return _current_device_stream()

    def all_reduce(self, tensor, op=None):
        if self.disabled:
            return
        self.launches.append(("all_reduce", self._resolve_stream().cuda_stream))

    def broadcast(self, tensor, src):
        if self.disabled:
            return
        self.launches.append(("broadcast", self._resolve_stream().cuda_stream))
