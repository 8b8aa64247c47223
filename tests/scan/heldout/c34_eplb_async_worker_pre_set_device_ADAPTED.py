"""ADAPTED from vllm 0.24.0, vllm/distributed/eplb/async_worker.py,
lines 24-47 (same code as c18) -- NOT shipped code.

Adaptation (two edits): the thread target's
torch.accelerator.set_device_index(device_index) call was removed and the
stream is built as torch.cuda.Stream() without the device=device_index
argument. The stream is therefore created on the helper thread's default
device 0 instead of the EPLB device. Unambiguous counterpart of c20.
"""
import threading

import torch

from vllm.distributed.parallel_state import get_eplb_group
from vllm.logger import init_logger

logger = init_logger(__name__)


def start_async_worker(state, is_profile: bool = False) -> threading.Thread:
    rank = get_eplb_group().device_group.rank()
    device_index = state.cuda_device_index
    assert state.is_async

    def thread_target() -> None:
        assert device_index is not None
        cuda_stream = torch.cuda.Stream()  # expect: SC103
        try:
            transfer_run_periodically(
                state=state,
                cuda_stream=cuda_stream,
                is_profile=is_profile,
            )
        except Exception as exc:  # pragma: no cover - diagnostic path
            logger.exception("async loop error (Rank %d): %s", rank, str(exc))

    thread = threading.Thread(target=thread_target, daemon=True)
    thread.start()
    return thread


def transfer_run_periodically(state, cuda_stream, is_profile: bool = False) -> None:
    while True:
        state.rearrange_event.wait(stream=cuda_stream)
