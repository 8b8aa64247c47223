"""Source: vllm 0.33.0, vllm/distributed/weight_transfer/packed_tensor.py,
lines 8-24 (verbatim minimization).

functools.cache memo, but of dedicated streams created on purpose with an
explicit device. No finding.
"""
from functools import cache

import torch


# Streams are cached across calls: the caching allocator keys cached blocks by the
# stream they were allocated on, so fresh streams at every call would strand the
# packed buffers' reserved memory per call. See gh-52950.
@cache
def _get_streams(device_idx: int, num_buffers: int) -> tuple[torch.cuda.Stream, ...]:
    return tuple(torch.cuda.Stream(device=device_idx) for _ in range(num_buffers))
