"""Source: vllm 0.24.0, vllm/distributed/eplb/async_worker.py, lines 1-110
(verbatim minimization).

Thread target sets the device index first, then creates the stream with an
explicit device; the worker then makes it current with torch.cuda.stream.
vLLM 0.24.0's set_stream patch is thread-local (see c08), and no patching
module is imported here anyway. No finding.
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
        torch.accelerator.set_device_index(device_index)
        cuda_stream = torch.cuda.Stream(device=device_index)
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


def transfer_run_periodically(state, cuda_stream: torch.cuda.Stream,
                              is_profile: bool = False) -> None:
    while True:
        state.rearrange_event.wait(stream=cuda_stream)
        for model_state in state.model_states.values():
            # Set the async worker's CUDA stream on the communicator
            model_state.communicator.set_stream(cuda_stream)
            with torch.cuda.stream(cuda_stream):
                physical_to_logical_map_cpu = model_state.physical_to_logical_map.cpu()
