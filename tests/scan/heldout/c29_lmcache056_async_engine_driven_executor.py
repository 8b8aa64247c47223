"""Source: lmcache 0.5.6,
lmcache/v1/multiprocess/transfer_context/async_engine_driven.py,
lines 5-22, 68-90 and 178-343 (verbatim minimization).

A closure submitted to a ThreadPoolExecutor makes a pre-built copy stream
current (`torch_dev.stream(self._copy_stream)`); the stream was created on
the constructing thread. LMCache installs no set_stream patch. No finding.
"""
from concurrent.futures import ThreadPoolExecutor
import threading

import torch

from lmcache import torch_dev
from lmcache.v1.multiprocess.transfer_context.base import gather_paged_kv_to_cpu


class AsyncEngineDrivenTransferContext:
    def __init__(self, instance_id: int, req_client, commit_workers: int = 2) -> None:
        self._commit_workers = max(1, int(commit_workers))
        self._copy_stream = torch_dev.Stream()
        self._commit_executor: ThreadPoolExecutor = ThreadPoolExecutor(
            max_workers=self._commit_workers,
            thread_name_prefix="lmcache_engine_driven_commit",
        )
        self._inflight_lock = threading.Lock()
        self._inflight_gather_events: set = set()

    def submit_store(self, _request_id, key, kv_caches, block_ids, _event,
                     blocks_in_chunk):
        commit_executor = self._commit_executor
        full_block_ids = block_ids[0]

        def _prepare_gather_and_commit() -> None:
            gather_done = None
            # --- Phase 2: gather (GPU->CPU copy on copy stream) ---
            with torch.inference_mode(), torch_dev.stream(self._copy_stream):
                _event.wait(stream=self._copy_stream)
                gather_paged_kv_to_cpu(kv_caches, full_block_ids, blocks_in_chunk)
                gather_done = torch_dev.Event()
                gather_done.record(self._copy_stream)
            with self._inflight_lock:
                if gather_done is not None:
                    self._inflight_gather_events.add(gather_done)

        commit_executor.submit(_prepare_gather_and_commit)
