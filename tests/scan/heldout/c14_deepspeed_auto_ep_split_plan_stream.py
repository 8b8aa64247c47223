"""Source: deepspeed 0.19.8, deepspeed/module_inject/auto_ep_layer.py,
lines 219-221 (verbatim minimization; import lines from the file header).

lru_cache memo of a dedicated accelerator stream per device index. No finding.
"""
from functools import lru_cache

from deepspeed.accelerator import get_accelerator


@lru_cache(maxsize=None)
def _get_async_split_plan_stream(device_index: int):
    return get_accelerator().Stream(device=device_index)
