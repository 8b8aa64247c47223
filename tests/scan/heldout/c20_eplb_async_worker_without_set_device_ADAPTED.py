"""ADAPTED from vllm 0.33.0, vllm/distributed/eplb/async_worker.py,
lines 24-50 (same code as c19) -- NOT shipped code.

Adaptation: the torch.accelerator.set_device_index() call that the real
thread_target makes first was removed, to give the positive counterpart of
c19 with identical surroundings. torch.Stream(device=<accelerator type>)
carries no device index, so it is created on the thread's default device 0.
"""
import threading

import torch

from vllm.distributed.parallel_state import get_eplb_group
from vllm.logger import init_logger

logger = init_logger(__name__)


def start_async_worker(state, is_profile: bool = False) -> threading.Thread:
    rank = get_eplb_group().device_group.rank()
    device_index = state.device_index
    assert state.is_async

    def thread_target() -> None:
        assert device_index is not None
        stream = torch.Stream(device=torch.accelerator.current_accelerator())  # expect: SC103
        try:
            transfer_run_periodically(
                state=state,
                stream=stream,
                is_profile=is_profile,
            )
        except Exception as exc:  # pragma: no cover - diagnostic path
            logger.exception("async loop error (Rank %d): %s", rank, str(exc))

    thread = threading.Thread(target=thread_target, daemon=True)
    thread.start()
    return thread


def transfer_run_periodically(state, stream, is_profile: bool = False) -> None:
    while True:
        state.rearrange_event.wait(stream=stream)
