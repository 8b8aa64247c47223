"""Source: vllm 0.24.0,
vllm/distributed/kv_transfer/kv_connector/v1/hf3fs/hf3fs_connector.py,
lines 101-310 (class AsyncOperationManager; verbatim minimization).

Streams are created in _init_cuda_resources() on the constructing thread; the
worker threads set the device index first and make the pre-built stream
current in a helper they call. vLLM 0.24.0's set_stream patch is
thread-local and is not imported here. No finding.
"""
import concurrent
import queue
import threading
from queue import Empty

import torch

from vllm.logger import init_logger

logger = init_logger(__name__)


class AsyncOperationManager:
    def __init__(self, connector, numjobs: int, rank: int):
        self._connector = connector
        self._device = connector._device
        self._numjobs = numjobs
        self._rank = rank
        self._init_cuda_resources()
        self._init_worker_threads()

    def _init_cuda_resources(self) -> None:
        """Initialize CUDA streams, events and buffer allocators."""
        self._save_stream = torch.cuda.Stream()
        self._load_stream = torch.cuda.Stream()
        self._save_event = torch.cuda.Event()

    def _init_worker_threads(self) -> None:
        self._stop_event = threading.Event()
        self._save_queue = queue.Queue()
        self._io_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._numjobs,
            thread_name_prefix=f"HF3FS-Rank{self._rank}",
        )
        self._save_thread = threading.Thread(target=self._save_worker, daemon=True)
        self._save_thread.start()

    def _save_worker(self) -> None:
        """Background worker for handling save operations."""
        torch.accelerator.set_device_index(self._device)
        while not self._stop_event.is_set():
            try:
                task = self._save_queue.get(block=True, timeout=1)
                self._handle_save_task(task)
            except Empty:
                continue
            except Exception as e:
                logger.error("Save worker error: %s", e)

    def _handle_save_task(self, task) -> None:
        request_id, block_ids, buffers, main_stream_event = task
        with torch.cuda.stream(self._save_stream):
            self._save_stream.wait_event(main_stream_event)
            self._connector._gather_or_scatter_kv_caches(block_ids, buffers, "gather")
            save_stream_event = torch.cuda.Event()
            save_stream_event.record(self._save_stream)
