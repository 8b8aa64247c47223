"""torch.distributed's own collectives under the audit, in a one-rank process group, both cores.

With gloo (everywhere; on torch's CPU build through a reader of stand-in streams): the
hooked functions keep torch's signatures and results (a value reduced, ``async_op=True``'s work
handle, arguments by keyword), and a CPU tensor is not counted. With NCCL (where a CUDA device
is visible): a launch is counted, and in ``assert`` mode a helper thread on the default stream
while the engine thread computes on a side stream is stopped before the collective runs. The
stand-in cases (tests/wrappers/test_speedups.py) check the decisions case by case; these check
that torch's real functions reach them.
"""

from __future__ import annotations

import inspect
import socket
import threading

import pytest
import torch
import torch.distributed as dist

import streamcheck
from streamcheck.core.errors import StreamHazardError
from streamcheck.runtime import cuda
from streamcheck.runtime.reader import StreamReader
from streamcheck.wrappers.generated import checked_by_compiled_code

pytestmark = pytest.mark.skipif(not dist.is_available(),
                                reason="torch.distributed is not in this torch build")


def one_rank_group(backend: str, **kwargs) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=1,
                            rank=0, **kwargs)


def all_reduce_count(auditor) -> int:
    return sum(n for op, n in auditor.coverage.launches_by_op().items() if "all_reduce" in op)


def test_the_hooked_gloo_collectives_keep_torchs_signatures_and_results(each_core):
    if not torch.cuda.is_available():  # torch's CPU build: a reader of stand-in streams
        cuda.use_reader(StreamReader(current_stream=lambda device: (5, device, 1),
                                     current_device=lambda: 0))
    original = dist.all_reduce
    one_rank_group("gloo")
    try:
        auditor = streamcheck.install("assert")
        hooked = dist.all_reduce
        assert hooked is not original
        assert checked_by_compiled_code(hooked) == (each_core == "compiled")
        # compiled: a wrapper generated with the signature behind torch's logging wrapper;
        # Python: a wrapper of the logging wrapper's own (*args, **kwargs)
        follow = each_core == "compiled"
        assert inspect.signature(hooked, follow_wrapped=False) == inspect.signature(
            original, follow_wrapped=follow)
        x = torch.ones(4)
        assert hooked(x) is None and x.tolist() == [1.0] * 4
        work = hooked(x, op=dist.ReduceOp.MAX, async_op=True)
        work.wait()
        out = [torch.zeros(4)]
        dist.all_gather(out, torch.arange(4.0))
        assert out[0].tolist() == [0.0, 1.0, 2.0, 3.0]
        dist.broadcast(tensor=x, src=0)
        assert all_reduce_count(auditor) == 0 and auditor.findings() == []  # CPU: not audited
    finally:
        streamcheck.uninstall()
        dist.destroy_process_group()
        cuda.use_reader(None)
    assert dist.all_reduce is original


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(),
                    reason="needs a CUDA GPU and NCCL")
def test_a_helper_on_the_default_stream_is_stopped_before_its_nccl_all_reduce(each_core):
    one_rank_group("nccl", device_id=torch.device("cuda", 0))
    try:
        auditor = streamcheck.install("assert")
        assert checked_by_compiled_code(dist.all_reduce) == (each_core == "compiled")
        side = torch.cuda.Stream()
        x = torch.ones(1024, device="cuda")
        with torch.cuda.stream(side):  # the engine thread computes on a side stream
            dist.all_reduce(x)
            dist.all_reduce(tensor=x)
            side.synchronize()
            assert all_reduce_count(auditor) == 2 and auditor.findings() == []
            caught: list[BaseException] = []
            y = torch.full((1024,), 3.0, device="cuda")

            def helper() -> None:  # a new thread starts on the default stream
                try:
                    dist.all_reduce(y, op=dist.ReduceOp.SUM)
                except StreamHazardError as exc:
                    caught.append(exc)

            thread = threading.Thread(target=helper, name="kv-helper")
            thread.start()
            thread.join()
        assert [f.rule_id for f in auditor.findings()] == ["default-stream-in-worker"]
        assert len(caught) == 1 and "kv-helper" in str(caught[0])
        torch.cuda.synchronize()
        assert y.eq(3.0).all().item()  # stopped before it ran
        assert x.eq(1.0).all().item()  # one rank: the sum of one
        assert all_reduce_count(auditor) == 3
    finally:
        streamcheck.uninstall()
        dist.destroy_process_group()
