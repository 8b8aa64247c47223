"""Source: vllm 0.24.0,
vllm/distributed/kv_transfer/kv_connector/v1/example_hidden_states_connector.py,
lines 165-215 and 320-390 (verbatim minimization).

A ThreadPoolExecutor is used, but only for disk writes; the copy stream is
created lazily and made current on the calling (forward) thread. No finding.
"""
from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors.torch import save_file


class ExampleHiddenStatesConnector:
    def __init__(self, num_writer_threads: int = 8):
        self._copy_stream: torch.cuda.Stream | None = None  # lazy init
        self._executor = ThreadPoolExecutor(
            max_workers=num_writer_threads,
            thread_name_prefix="vllm-hs-save",
        )

    def _get_copy_stream(self) -> torch.cuda.Stream:
        """Lazily create the copy stream (CUDA must be initialized)."""
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream()
        return self._copy_stream

    def _submit_async_write(self, pending, kv_cache, slot_mapping):
        copy_stream = self._get_copy_stream()

        # Ensure the copy stream sees all prior writes on the default stream.
        ready_event = torch.cuda.Event()
        ready_event.record()
        copy_stream.wait_event(ready_event)

        with torch.cuda.stream(copy_stream):
            slot_mapping_gpu = slot_mapping.to(device=kv_cache.device, non_blocking=True)
            hidden_states_gpu = kv_cache[slot_mapping_gpu]
            pinned_hs = torch.empty_like(hidden_states_gpu, device="cpu", pin_memory=True)
            pinned_hs.copy_(hidden_states_gpu, non_blocking=True)

        copy_done = torch.cuda.Event()
        copy_done.record(copy_stream)
        tensors = {"hidden_states": pinned_hs}
        return self._executor.submit(
            self._write_tensors, tensors, copy_done, pending.filename
        )

    @staticmethod
    def _write_tensors(tensors, copy_done, filename):
        copy_done.synchronize()
        save_file(tensors, filename)
