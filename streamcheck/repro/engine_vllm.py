"""Run repros against a real vLLM: its ``current_stream()`` and its ``PyNcclCommunicator``.

Selected with ``streamcheck run --engine vllm`` (GPUs only). Each rank joins a gloo process
group (PyNcclCommunicator needs one to share NCCL's unique id), builds vLLM's communicator on
its device, and hands repros vLLM's own ``current_stream`` accessor. A communicator that
disabled itself (its NCCL binding did not load, or world size 1) is an error, never a pass.
"""

from __future__ import annotations

import inspect
from typing import Any


class VllmCommunicator:
    """pynccl with the repro calling convention ``all_reduce(tensor, out=None, stream=None)``.

    vLLM <= 0.9 returns a new output tensor; later releases take ``out_tensor``.
    """

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self._takes_out = "out_tensor" in inspect.signature(comm.all_reduce).parameters

    def all_reduce(self, tensor: Any, out: Any = None, stream: Any = None) -> Any:
        if self._takes_out:
            return self.comm.all_reduce(tensor, out_tensor=out, stream=stream)
        return self.comm.all_reduce(tensor, stream=stream)


def setup(rank: int, world_size: int, port: int) -> tuple[str, Any, Any]:
    """(engine label, vLLM's current_stream, communicator factory) for this rank process."""
    import torch
    import torch.distributed as dist

    from streamcheck.vllm_compat import (
        find_current_stream_accessor,
        register_vllm_stubs,
        vllm_version,
    )

    register_vllm_stubs()  # a prepared tree's stand-ins for vLLM's compiled modules

    module, name = find_current_stream_accessor()
    accessor = getattr(module, name)
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                world_size=world_size, rank=rank)

    def make_comm(_accessor: Any) -> VllmCommunicator:
        comm = PyNcclCommunicator(dist.group.WORLD, device=torch.device("cuda", rank))
        if comm.disabled:
            raise RuntimeError(
                "vLLM's PyNcclCommunicator disabled itself (world size 1, or its NCCL library "
                "did not load: set VLLM_NCCL_SO_PATH); refusing to report a pass")
        return VllmCommunicator(comm)

    return f"vllm {vllm_version()}", accessor, make_comm
