"""Source: vllm-ascend 0.9.1, vllm_ascend/utils.py, lines 135-152
(verbatim minimization). Lower-case global, same memoized shape.
"""
import torch

_current_stream = None


def current_stream() -> torch.npu.Stream:  # expect: SC101
    """
    replace `torch.npu.current_stream()` with `vllm.utils.current_stream()`.
    """
    global _current_stream
    if _current_stream is None:
        # when this function is called before any stream is set,
        # we return the default stream.
        _current_stream = torch.npu.current_stream()
    return _current_stream
