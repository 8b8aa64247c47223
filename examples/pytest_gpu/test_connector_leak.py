"""On a real GPU: a KV-connector thread's stream leaks into the engine's NCCL all-reduce.

    pytest --streamcheck examples/pytest_gpu      # expected: 1 failed, 1 passed

A connector thread holds ``with torch.cuda.stream(S)`` on cuda:0 while the engine thread (the
test) all-reduces through streamcheck's one-rank NCCL binding. Both tests pass without the
plugin: they synchronize the device around the all-reduce, which hides the race an engine
would run into. Under ``--streamcheck`` the test whose communicator resolves "the current
stream" through a process-global cache (the vLLM <= 0.9.2 pattern) gets S, the connector's
stream, and fails with ``foreign-stream``; the test that reads the calling thread's real
current stream passes. Without CUDA or NCCL the tests skip and say why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})",
                allow_module_level=True)

from streamcheck.repro.patterns import GlobalStreamCache  # noqa: E402
from streamcheck.runtime import nccl  # noqa: E402


@pytest.fixture
def uid() -> bytes:
    """A fresh NCCL unique id for a one-rank communicator."""
    try:
        return nccl.unique_id()
    except nccl.NcclUnavailable as exc:
        pytest.skip(f"needs a loadable NCCL library: {exc}")


@contextmanager
def connector_holding_stream() -> Iterator[Any]:
    """A connector thread inside ``with torch.cuda.stream(S)`` for the duration."""
    side = torch.cuda.Stream(device=0)
    entered, release = threading.Event(), threading.Event()

    def connector() -> None:
        with torch.cuda.stream(side):
            entered.set()
            release.wait()

    thread = threading.Thread(target=connector, name="kv-connector", daemon=True)
    thread.start()
    try:
        assert entered.wait(30), "connector thread did not enter its stream context"
        yield side
    finally:
        release.set()
        thread.join(30)


def all_reduce_on_cuda0(uid: bytes, current_stream: Callable[[], Any]) -> None:
    comm = nccl.NcclCommunicator(1, 0, uid, 0, current_stream=current_stream)
    try:
        x = torch.full((1024,), 3.0, device="cuda:0")
        torch.cuda.synchronize()
        out = comm.all_reduce(x)
        torch.cuda.synchronize()
        assert torch.equal(out.cpu(), x.cpu())  # one rank: the sum is the input
    finally:
        comm.close()


def test_global_stream_cache_leaks_the_connector_stream(uid):
    """Fails under --streamcheck: foreign-stream, the all-reduce launches on the connector's S."""
    cache = GlobalStreamCache(torch.cuda)  # patched in first, as vLLM did at import
    try:
        with connector_holding_stream():
            all_reduce_on_cuda0(uid, cache.current_stream)
    finally:
        cache.remove()


def test_real_current_stream_is_clean(uid):
    """Passes: the communicator reads this thread's real current stream."""
    with connector_holding_stream():
        all_reduce_on_cuda0(uid, torch.cuda.current_stream)
