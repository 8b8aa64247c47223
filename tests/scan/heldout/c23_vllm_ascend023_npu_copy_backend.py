"""Source: vllm-ascend 0.23.0, vllm_ascend/simple_kv_offload/copy_backend.py,
lines 9-127 (verbatim minimization).

Worker thread calls torch.npu.set_device first, creates no stream (streams
are passed in by the caller) and makes them current with torch.npu.stream.
No set_stream patch is imported. No finding.
"""
from __future__ import annotations

import queue
import threading

import torch

from vllm_ascend.simple_kv_offload.npu_mem_ops import (
    DIRECTION_D2H,
    DIRECTION_H2D,
    build_params,
    copy_blocks,
)


class NPUDmaCopyBackend:
    def __init__(self) -> None:
        self._load_stream: torch.npu.Stream | None = None
        self._store_stream: torch.npu.Stream | None = None
        self._device: torch.device | None = None
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None

    def init(self, npu_caches, cpu_caches, device: torch.device,
             load_stream: torch.npu.Stream, store_stream: torch.npu.Stream) -> None:
        self._load_stream = load_stream
        self._store_stream = store_stream
        self._device = device
        self._store_params = build_params(npu_caches, cpu_caches, DIRECTION_D2H)
        self._load_params = build_params(cpu_caches, npu_caches, DIRECTION_H2D)

        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._copy_loop,
            name="npu-kv-offload-copy",
            daemon=True,
        )
        self._thread.start()

    def _copy_loop(self) -> None:
        assert self._device is not None
        assert self._queue is not None
        torch.npu.set_device(self._device)

        while True:
            item = self._queue.get()
            if item is None:
                return
            (src_blocks, dst_blocks, params, is_store, event_idx,
             events_list, wait_event) = item

            stream = self._store_stream if is_store else self._load_stream
            with torch.npu.stream(stream):
                if wait_event is not None:
                    stream.wait_event(wait_event)
                copy_blocks(src_blocks, dst_blocks, params)
                event = torch.npu.Event()
                event.record(stream)
            events_list.append((event_idx, event))
