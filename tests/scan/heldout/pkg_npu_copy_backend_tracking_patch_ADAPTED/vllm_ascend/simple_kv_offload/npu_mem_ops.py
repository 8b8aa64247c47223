"""ADAPTED from vllm-ascend 0.23.0, vllm_ascend/simple_kv_offload/npu_mem_ops.py,
lines 9-18 and 36-80 (minimized). Adaptation: the import of fla_npu.thin
and its use in copy_blocks are INVENTED to build a transitive import chain
copy_backend -> npu_mem_ops -> fla_npu.thin (the module with the patch).
"""
from __future__ import annotations

import torch

from fla_npu.thin import _current_stream_ptr

DIRECTION_H2D = 0
DIRECTION_D2H = 1


def build_params(src_caches, dst_caches, direction: int):
    return (src_caches, dst_caches, direction)


def copy_blocks(src_blocks, dst_blocks, params) -> None:
    stream_ptr = _current_stream_ptr()
    torch.ops._C_ascend.swap_blocks_batch(src_blocks, dst_blocks, params, stream_ptr)
