"""Source: vllm 0.24.0, vllm/v1/worker/cpu/shm.py, lines 8-47
(verbatim minimization).

set_stream is monkey-patched, but by a no-op that keeps nothing; the
current_stream replacement builds a fresh placeholder on every call.
No finding expected.
"""
from typing import Any

# Patch torch APIs
import torch


def noop(*args: Any, **kwargs: Any) -> None:
    pass


class _EventPlaceholder:
    def __init__(self, *args, **kwargs) -> None:
        self.record = noop
        self.synchronize = noop


class _StreamPlaceholder:
    def __init__(self, *args, **kwargs) -> None:
        self.wait_stream = noop

    def __enter__(self, *args, **kwargs):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        pass


torch.Event = _EventPlaceholder
torch.cuda.Event = _EventPlaceholder
torch.cuda.Stream = _StreamPlaceholder
torch.cuda.set_stream = noop
torch.cuda.current_stream = lambda *args, **kwargs: _StreamPlaceholder()
torch.accelerator.synchronize = noop
torch.accelerator.empty_cache = noop
