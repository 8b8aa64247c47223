"""ADAPTED from vllm 0.11.0, vllm/v1/worker/gpu_ubatch_wrapper.py, lines 4-22
and 147-228 (same code as pkg_vllm011_ubatch_tls) -- the combination in this
package never shipped.

Adaptation: the thread code is the real 0.11.0 code (verbatim minimization),
but the vllm/utils it imports is the vllm 0.9.2 global-cache patch. This is
the hazard vLLM avoided by moving to thread-local storage when ubatch
threads were introduced: each `with torch.cuda.stream(...)` on a ubatch
thread calls the patched set_stream and overwrites the single process-wide
_current_stream.
"""
import threading

import torch

from vllm.utils import has_deep_gemm


class UBatchWrapper:

    def __init__(self, runnable, vllm_config, runtime_mode, device: torch.device):
        self.runnable = runnable
        self.vllm_config = vllm_config
        self.device = device
        self.ready_barrier = threading.Barrier(3)

    def _capture_ubatches(self, ubatch_metadata, model) -> torch.Tensor:

        @torch.inference_mode()
        def _capture_ubatch_thread(results, ubatch_metadata):
            torch.cuda.set_device(self.device)
            ubatch_context = ubatch_metadata.context
            with torch.cuda.stream(ubatch_context.compute_stream):  # expect: SC104
                _ = torch.cuda.current_blas_handle()
            with torch.cuda.stream(ubatch_context.comm_stream):  # expect: SC104
                _ = torch.cuda.current_blas_handle()
            with ubatch_context:
                model_output = model(
                    input_ids=ubatch_metadata.input_ids,
                    positions=ubatch_metadata.positions,
                    intermediate_tensors=ubatch_metadata.intermediate_tensors,
                    inputs_embeds=ubatch_metadata.inputs_embeds,
                )

            results.append((ubatch_metadata.context.id, model_output))

        results: list[tuple[int, torch.Tensor]] = []
        compute_stream = ubatch_metadata[0].context.compute_stream

        ubatch_threads = []
        for metadata in ubatch_metadata:
            thread = threading.Thread(target=_capture_ubatch_thread,
                                      args=(
                                          results,
                                          metadata,
                                      ))
            ubatch_threads.append(thread)
            thread.start()
        self.ready_barrier.wait()  # Wait for both threads to be ready

        cudagraph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cudagraph, stream=compute_stream):
            ubatch_metadata[0].context.cpu_wait_event.set()
            for thread in ubatch_threads:
                thread.join()
            sorted_results = [value for position, value in sorted(results)]
            result = torch.cat(sorted_results, dim=0)
        return result
