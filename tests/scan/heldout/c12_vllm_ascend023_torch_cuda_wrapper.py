"""Source: vllm-ascend 0.23.0, vllm_ascend/worker/v2/utils.py, lines 1-28
(verbatim minimization).

Same as c11 for NPU: set_stream aliased to torch.npu.set_stream, nothing
stored. No finding.
"""
from contextlib import contextmanager

import torch
from vllm.logger import logger


@contextmanager
def torch_cuda_wrapper():
    try:
        torch.cuda.Event = torch.npu.Event
        torch.cuda.Stream = torch.npu.Stream
        torch.cuda.stream = torch.npu.stream
        torch.cuda.default_stream = torch.npu.default_stream
        torch.cuda.current_stream = torch.npu.current_stream
        torch.cuda.synchronize = torch.npu.synchronize
        torch.cuda.set_stream = torch.npu.set_stream
        torch.cuda.current_device = torch.npu.current_device
        logger.info_once("Wrapping torch.cuda with torch.npu.")
        yield
    finally:
        pass
