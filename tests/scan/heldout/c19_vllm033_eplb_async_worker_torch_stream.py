"""Source: vllm 0.33.0, vllm/distributed/eplb/async_worker.py, lines 24-50
(verbatim minimization).

Generic torch.Stream(device=torch.accelerator.current_accelerator()) created
on the helper thread after torch.accelerator.set_device_index(). The device
argument is the accelerator *type* only, but the thread has set its device
index first. No finding.
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
        torch.accelerator.set_device_index(device_index)
        stream = torch.Stream(device=torch.accelerator.current_accelerator())
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
