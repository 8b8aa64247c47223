"""Source: vllm 0.9.2, vllm/distributed/device_communicators/pynccl.py,
lines 16 and 95-130 (verbatim minimization).

Consumer of the cached current_stream() on the main thread; it does not make
a stream current itself and runs on no helper thread. No finding here (the
SC101 finding belongs to the accessor's def in vllm/utils).
"""
import torch

from vllm.utils import current_stream


class PyNcclCommunicator:
    def __init__(self, group, device: torch.device):
        self.device = device
        # `torch.cuda.device` is a context manager that changes the
        # current cuda device to the specified one
        with torch.cuda.device(device):
            stream = current_stream()
            data = torch.zeros(1, device=device)
            self.all_reduce(data)
            stream.synchronize()
            del data

    def all_reduce(self, in_tensor: torch.Tensor, stream=None) -> torch.Tensor:
        out_tensor = torch.empty_like(in_tensor)
        if stream is None:
            stream = current_stream()
        return out_tensor
