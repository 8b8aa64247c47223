"""Source: vllm 0.10.2, vllm/v1/worker/gpu_model_runner.py, lines 347-353
(GPUModelRunner.__init__; verbatim minimization).

torch.cuda.default_stream() is used explicitly, but in the model runner's
constructor on the main worker thread -- no helper thread involved. No
finding.
"""
from typing import Optional

import torch


class GPUModelRunner:
    def __init__(self, vllm_config, device: torch.device):
        self.device = device
        self.use_async_scheduling = vllm_config.scheduler_config.async_scheduling

        # CUDA event to synchronize use of reused CPU tensors between steps
        # when async scheduling is enabled.
        self.prepare_inputs_event: Optional[torch.cuda.Event] = None
        if self.use_async_scheduling:
            self.prepare_inputs_event = torch.cuda.Event()
            # Start in a completed state.
            self.prepare_inputs_event.record(torch.cuda.default_stream())
