"""Source: vllm 0.24.0, vllm/utils/torch_utils.py, lines 735-755
(verbatim minimization).

Module-global cache of a *dedicated* auxiliary stream created on purpose
with torch.cuda.Stream(); it is not "the current stream". No finding.
"""
import torch

# Global auxiliary stream for running operations in background streams.
# We have single global auxiliary stream to avoid an explosion of streams
# for every layer (and make profiling look sane).
_aux_stream: torch.cuda.Stream | None = None


def aux_stream() -> torch.cuda.Stream | None:
    """
    Ensures aux_stream is initialized only once
    """
    global _aux_stream

    from vllm.platforms import current_platform

    if _aux_stream is None and current_platform.is_cuda_alike():
        _aux_stream = torch.cuda.Stream()

    return _aux_stream
