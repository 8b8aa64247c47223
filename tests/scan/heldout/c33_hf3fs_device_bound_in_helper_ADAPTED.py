"""ADAPTED from vllm 0.24.0,
vllm/distributed/kv_transfer/kv_connector/v1/hf3fs/hf3fs_connector.py,
lines 101-262 (class AsyncOperationManager; same code as c26/c32).

Adaptation (negative counterpart of c32): the worker first calls a helper
method _bind_device() -- which wraps the real
torch.accelerator.set_device_index(self._device) call -- and only then
_init_cuda_resources(). The device is set before the streams are created.
No finding.
"""
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
        self._stop_event = threading.Event()
        self._save_queue = queue.Queue()
        self._save_thread = threading.Thread(target=self._save_worker, daemon=True)
        self._save_thread.start()

    def _bind_device(self) -> None:
        torch.accelerator.set_device_index(self._device)

    def _init_cuda_resources(self) -> None:
        """Initialize CUDA streams, events and buffer allocators."""
        self._save_stream = torch.cuda.Stream()
        self._load_stream = torch.cuda.Stream()
        self._save_event = torch.cuda.Event()

    def _save_worker(self) -> None:
        """Background worker for handling save operations."""
        self._bind_device()
        self._init_cuda_resources()
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
