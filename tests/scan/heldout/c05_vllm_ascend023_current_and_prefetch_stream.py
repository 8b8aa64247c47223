"""Source: vllm-ascend 0.23.0, vllm_ascend/utils.py, lines 60-61 and 492-515
(verbatim minimization).

current_stream() memoizes torch.npu.current_stream() in a module global
(no set_stream patch at all: the value is never refreshed). prefetch_stream()
right below is the look-alike safe pattern: a dedicated stream created on
purpose.
"""
import torch
import torch_npu

_CURRENT_STREAM = None
_PREFETCH_STREAM = None


def current_stream() -> torch.npu.Stream:  # expect: SC101
    """
    replace `torch.npu.current_stream()` with `vllm.utils.current_stream()`.
    """
    global _CURRENT_STREAM
    if _CURRENT_STREAM is None:
        # when this function is called before any stream is set,
        # we return the default stream.
        _CURRENT_STREAM = torch.npu.current_stream()
    return _CURRENT_STREAM


def prefetch_stream() -> torch.npu.Stream:
    global _PREFETCH_STREAM
    if _PREFETCH_STREAM is None:
        # when this function is called before any stream is set,
        # we return the default stream.
        _PREFETCH_STREAM = torch_npu.npu.Stream()
    return _PREFETCH_STREAM
