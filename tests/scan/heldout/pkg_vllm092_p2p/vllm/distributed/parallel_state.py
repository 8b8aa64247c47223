"""Source: vllm 0.9.2, vllm/distributed/parallel_state.py, lines 45 and
300-340 (GroupCoordinator.graph_capture; verbatim minimization).

Look-alike negative inside the same package: this module imports the patched
vllm.utils directly and makes a stream current, but graph_capture runs on
the main thread, not on a helper thread. No finding.
"""
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from vllm.utils import get_distributed_init_method


@dataclass
class GraphCaptureContext:
    stream: torch.cuda.Stream


class GroupCoordinator:
    @contextmanager
    def graph_capture(
            self, graph_capture_context: Optional[GraphCaptureContext] = None):
        if graph_capture_context is None:
            stream = torch.cuda.Stream()
            graph_capture_context = GraphCaptureContext(stream)
        else:
            stream = graph_capture_context.stream

        maybe_ca_context = nullcontext()

        # ensure all initialization operations complete before attempting to
        # capture the graph on another stream
        curr_stream = torch.cuda.current_stream()
        if curr_stream != stream:
            stream.wait_stream(curr_stream)

        with torch.cuda.stream(stream), maybe_ca_context:
            yield graph_capture_context
