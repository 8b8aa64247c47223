"""Source: vllm 0.24.0, vllm/v1/worker/xpu_model_runner.py, lines 40-58
(verbatim minimization).

torch.cuda.set_stream is re-pointed at the backend's own torch.xpu.set_stream:
a patch, but the replacement stores nothing in Python state. No finding.
"""
from contextlib import contextmanager

import torch


@contextmanager
def _torch_cuda_wrapper():
    # replace cuda APIs with xpu APIs, this should work by default
    torch.cuda.Stream = torch.xpu.Stream
    torch.cuda.default_stream = torch.xpu.current_stream
    torch.cuda.current_stream = torch.xpu.current_stream
    torch.cuda.stream = torch.xpu.stream
    torch.cuda.mem_get_info = torch.xpu.mem_get_info
    torch.cuda.Event = torch.Event
    torch.cuda.set_stream = torch.xpu.set_stream
    yield
