"""Source: vllm-ascend 0.9.1, vllm_ascend/ops/comm_utils.py, lines 16-55
(verbatim minimization).

Module-global COMM_STREAM, but it is a dedicated stream created on purpose
(torch_npu.npu.Stream(device=...)); the current stream is read live with
torch.npu.current_stream(). No finding.
"""
import torch
import torch.distributed
import torch_npu

COMM_STREAM = None


def async_all_gather(input_,
                     group,
                     event=None,
                     is_use_get_global_memory_buffer=False):
    world_size = torch.distributed.get_world_size(group)
    dim_size = list(input_.size())
    dim_size[0] = dim_size[0] * world_size

    ag_out = torch.empty(dim_size,
                         dtype=input_.dtype,
                         device=torch.npu.current_device())
    if event:
        # multi stream wait event
        global COMM_STREAM
        if COMM_STREAM is None:
            COMM_STREAM = torch_npu.npu.Stream(
                device=torch.npu.current_device())
        with torch_npu.npu.stream(COMM_STREAM):
            event.wait()
            handle = torch.distributed._all_gather_base(ag_out,
                                                        input_.contiguous(),
                                                        group=group,
                                                        async_op=True)
    else:
        handle = torch.distributed._all_gather_base(ag_out,
                                                    input_.contiguous(),
                                                    group=group,
                                                    async_op=True)
    return input_, ag_out, handle
