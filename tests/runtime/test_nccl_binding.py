"""The NCCL binding: library search, argument checks and marshalling, and the self-test runner.

Most of it runs without a GPU: a recording fake stands in for the library, and a fake stream
carries only ``cuda_stream`` (so any look at the stream's device would fail loudly). Behaviour
that needs a GPU and NCCL is only tested where they exist: it is skipped, never faked as passing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from streamcheck.runtime import nccl, nccl_selftest
from streamcheck.runtime.nccl import (
    NcclCommunicator,
    NcclError,
    NcclLibrary,
    NcclUnavailable,
    find_nccl_library,
)
from tests.processes import process_gone

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and an NCCL library")
ROOT = Path(__file__).resolve().parents[2]
UID = bytes(range(128))
STREAM_HANDLE = 0x5EED


class FakeStream:
    """Has ``cuda_stream`` and nothing else: the binding must never ask for its device."""

    __slots__ = ("cuda_stream",)

    def __init__(self, handle: int = STREAM_HANDLE):
        self.cuda_stream = handle


class FakeLibrary:
    """Records every NCCL call; each returns ``results.get(name, 0)``."""

    def __init__(self, results: dict[str, int] | None = None):
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.results = results or {}

    def function(self, name: str):
        def call(*args: object) -> int:
            self.calls.append((name, args))
            return self.results.get(name, 0)

        return call

    def error_string(self, code: int) -> str:
        return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)"

    def last_error(self, comm: object) -> str | None:
        return "Cuda failure 400 'invalid resource handle'"

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Accessor:
    """A ``current_stream`` stand-in that counts how often the binding asked for it."""

    def __init__(self):
        self.calls = 0
        self.stream = FakeStream(0xACC)

    def __call__(self) -> FakeStream:
        self.calls += 1
        return self.stream


@pytest.fixture
def device_ctx(monkeypatch):
    """This torch has no CUDA, so ``torch.cuda.device`` cannot be entered: record it instead."""
    entered: list[torch.device] = []

    @contextlib.contextmanager
    def fake_device(dev):
        entered.append(dev)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    return entered


@pytest.fixture
def make_comm(device_ctx):
    def make(lib: FakeLibrary | None = None, accessor: Accessor | None = None, world: int = 2,
             rank: int = 0) -> NcclCommunicator:
        return NcclCommunicator(world, rank, UID, 0, current_stream=accessor or Accessor(),
                                library=lib or FakeLibrary())

    return make


@pytest.fixture
def host_comm(make_comm):
    """A communicator that treats the CPU as its device, so CPU tensors reach the fake library.

    Only argument marshalling is tested this way; real device checks are tested with cuda:0.
    """

    def make(**kw) -> tuple[NcclCommunicator, FakeLibrary, Accessor]:
        lib, acc = FakeLibrary(kw.pop("results", None)), Accessor()
        comm = make_comm(lib, acc, **kw)
        comm.device = torch.device("cpu")
        return comm, lib, acc

    return make


# --------------------------------------------------------------------------- import / search


def test_import_loads_nothing(tmp_path):
    env = dict(os.environ, STREAMCHECK_NCCL_SO=str(tmp_path / "absent.so"), PYTHONPATH=str(ROOT))
    code = "import streamcheck.runtime.nccl as n; assert n._default is None; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_explicit_path_that_does_not_exist(monkeypatch, tmp_path):
    missing = str(tmp_path / "libnccl.so.2")
    monkeypatch.setenv("STREAMCHECK_NCCL_SO", missing)
    with pytest.raises(NcclUnavailable) as info:
        find_nccl_library()
    msg = str(info.value)
    assert f"$STREAMCHECK_NCCL_SO={missing}" in msg
    assert "No such file" in msg
    assert "STREAMCHECK_NCCL_SO=/path/to/libnccl.so.2" in msg  # says how to fix it
    with pytest.raises(NcclUnavailable):
        NcclLibrary()


def test_explicit_path_is_not_replaced_by_a_fallback(monkeypatch, tmp_path):
    probed: list[str] = []
    monkeypatch.setattr(nccl, "_probe", lambda p: probed.append(p) or "nope")
    monkeypatch.setenv("STREAMCHECK_NCCL_SO", str(tmp_path / "mine.so"))
    monkeypatch.setenv("VLLM_NCCL_SO_PATH", str(tmp_path / "vllm.so"))
    with pytest.raises(NcclUnavailable):
        find_nccl_library()
    assert probed == [str(tmp_path / "mine.so")]


def _libc() -> str:
    return ctypes.util.find_library("c") or "libc.so.6"


def test_explicit_path_to_a_library_that_is_not_nccl(monkeypatch):
    monkeypatch.setenv("STREAMCHECK_NCCL_SO", _libc())
    with pytest.raises(NcclUnavailable, match="not NCCL \\(no symbol ncclGetVersion\\)"):
        find_nccl_library()


def test_library_missing_symbols_lists_them():
    with pytest.raises(NcclUnavailable) as info:
        NcclLibrary(_libc())
    msg = str(info.value)
    for sym in ("ncclGetVersion", "ncclGetUniqueId", "ncclCommInitRank"):
        assert sym in msg
    assert "STREAMCHECK_NCCL_SO" in msg


def test_unique_id_without_nccl_raises_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(nccl, "_default", None)
    monkeypatch.setenv("STREAMCHECK_NCCL_SO", str(tmp_path / "absent.so"))
    with pytest.raises(NcclUnavailable):
        nccl.unique_id()


@pytest.fixture
def search_dirs(monkeypatch, tmp_path):
    """VLLM_NCCL_SO_PATH, a fake ``nvidia.nccl`` package and a fake torch lib dir."""
    monkeypatch.delenv("STREAMCHECK_NCCL_SO", raising=False)
    vllm = tmp_path / "vllm" / "libnccl.so.2"
    monkeypatch.setenv("VLLM_NCCL_SO_PATH", str(vllm))
    pkg = types.ModuleType("nvidia.nccl")
    pkg.__path__ = [str(tmp_path / "nv")]
    (tmp_path / "nv" / "lib").mkdir(parents=True)
    nv = tmp_path / "nv" / "lib" / "libnccl.so.2"
    nv.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "nvidia.nccl", pkg)
    tlib = tmp_path / "torchlib"
    tlib.mkdir()
    tl = tlib / "libnccl.so.2"
    tl.write_bytes(b"")
    monkeypatch.setattr(nccl, "_torch_lib_dir", lambda: str(tlib))
    return [str(vllm), str(nv), str(tl), "libnccl.so.2"]


def test_search_order_and_message_lists_every_path(monkeypatch, search_dirs):
    probed: list[str] = []
    monkeypatch.setattr(nccl, "_probe", lambda p: probed.append(p) or f"cannot load {p}")
    with pytest.raises(NcclUnavailable) as info:
        find_nccl_library()
    assert probed == search_dirs
    msg = str(info.value)
    positions = [msg.index(f"cannot load {p}") for p in search_dirs]
    assert positions == sorted(positions)
    assert "$STREAMCHECK_NCCL_SO: not set" in msg
    assert "STREAMCHECK_NCCL_SO=" in msg


def test_search_returns_first_that_loads(monkeypatch, search_dirs):
    good = {search_dirs[2], search_dirs[3]}
    monkeypatch.setattr(nccl, "_probe", lambda p: None if p in good else "no")
    assert find_nccl_library() == search_dirs[2]


def test_real_probe_rejects_a_file_that_is_not_a_library(search_dirs):
    why = nccl._probe(search_dirs[1])  # an empty file
    assert why and "libnccl.so.2" in why


def test_search_reports_sources_that_offered_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("STREAMCHECK_NCCL_SO", raising=False)
    monkeypatch.delenv("VLLM_NCCL_SO_PATH", raising=False)
    monkeypatch.setattr(nccl, "_nvidia_nccl_dirs", lambda: [])
    monkeypatch.setattr(nccl, "_torch_lib_dir", lambda: str(tmp_path))
    monkeypatch.setattr(nccl, "_probe", lambda p: "no")
    with pytest.raises(NcclUnavailable) as info:
        find_nccl_library()
    msg = str(info.value)
    assert "nvidia.nccl package: not installed" in msg
    assert f"no libnccl*.so* in {tmp_path}" in msg
    assert "libnccl.so.2: no" in msg


def test_version_string_both_encodings():
    lib = object.__new__(NcclLibrary)
    lib._version_code = 22809
    assert lib.version() == "2.28.9"
    lib._version_code = 2708  # before 2.9: MAJOR*1000 + MINOR*100 + PATCH
    assert lib.version() == "2.7.8"


# --------------------------------------------------------------------------- mapping


def test_dtype_and_op_enums_match_nccl():
    dtypes, ops = nccl.DTYPES, nccl.OPS
    assert dtypes == {torch.int8: 0, torch.uint8: 1, torch.int32: 2, torch.int64: 4,
                      torch.float16: 6, torch.float32: 7, torch.float64: 8, torch.bfloat16: 9}
    assert ops == {"sum": 0, "prod": 1, "max": 2, "min": 3, "avg": 4}


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_unsupported_dtype_names_supported_ones(host_comm, dtype):
    comm, lib, _ = host_comm()
    with pytest.raises(ValueError) as info:
        comm.all_reduce(torch.zeros(4, dtype=dtype))
    msg = str(info.value)
    assert str(dtype) in msg
    for name in ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int32", "int64"):
        assert name in msg
    assert comm.launches == 0 and lib.names() == ["ncclCommInitRank"]


@pytest.mark.parametrize("op", ["mean", "SUM", None])
def test_unsupported_op_names_supported_ones(host_comm, op):
    comm, _, _ = host_comm()
    with pytest.raises(ValueError, match="supported: sum, prod, max, min, avg"):
        comm.all_reduce(torch.zeros(4), op=op)
    with pytest.raises(ValueError, match="supported: sum, prod, max, min, avg"):
        comm.reduce_scatter(torch.zeros(2), torch.zeros(4), op=op)
    assert comm.launches == 0


# --------------------------------------------------------------------------- checks before launch


def _calls(t: torch.Tensor, o: torch.Tensor):
    return {
        "all_reduce": lambda c, **kw: c.all_reduce(t, **kw),
        "all_gather": lambda c, **kw: c.all_gather(o, t, **kw),
        "reduce_scatter": lambda c, **kw: c.reduce_scatter(o, t, **kw),
        "broadcast": lambda c, **kw: c.broadcast(t, src=0, **kw),
        "send": lambda c, **kw: c.send(t, dst=1, **kw),
        "recv": lambda c, **kw: c.recv(t, src=1, **kw),
    }


METHODS = list(_calls(torch.zeros(1), torch.zeros(1)))


@pytest.mark.parametrize("method", METHODS)
def test_cpu_tensor_rejected_after_stream_resolved_before_any_call(make_comm, method):
    lib, acc = FakeLibrary(), Accessor()
    comm = make_comm(lib, acc)
    call = _calls(torch.zeros(4), torch.zeros(8))[method]
    with pytest.raises(ValueError, match=r"is on cpu, but this communicator is on cuda:0"):
        call(comm)
    assert acc.calls == 1  # stream=None resolved first, like pynccl
    assert lib.names() == ["ncclCommInitRank"]  # nothing launched
    assert comm.launches == 0


@pytest.mark.parametrize("method", METHODS)
def test_explicit_stream_skips_the_accessor(make_comm, method):
    acc = Accessor()
    comm = make_comm(accessor=acc)
    with pytest.raises(ValueError):
        _calls(torch.zeros(4), torch.zeros(8))[method](comm, stream=FakeStream())
    assert acc.calls == 0


def test_rejects_non_tensors_and_non_contiguous(host_comm):
    comm, lib, _ = host_comm()
    with pytest.raises(ValueError, match=r"must be a torch\.Tensor, got list"):
        comm.all_reduce([1.0, 2.0])
    with pytest.raises(ValueError, match="contiguous"):
        comm.all_reduce(torch.zeros(4, 4).t())
    with pytest.raises(ValueError, match="out has dtype"):
        comm.all_reduce(torch.zeros(4), out=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="out must have 8 elements, got 4"):
        comm.all_gather(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="not a multiple of world_size 2"):
        comm.reduce_scatter(torch.zeros(2), torch.zeros(5))
    with pytest.raises(ValueError, match="out must have 2 elements"):
        comm.reduce_scatter(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"src=2 is outside 0\.\.1"):
        comm.broadcast(torch.zeros(4), src=2)
    with pytest.raises(ValueError, match="send/recv to self would hang"):
        comm.send(torch.zeros(4), dst=0)
    assert comm.launches == 0 and lib.names() == ["ncclCommInitRank"]


def test_constructor_validates(make_comm, device_ctx):
    with pytest.raises(ValueError, match="rank"):
        make_comm(world=2, rank=2)
    with pytest.raises(ValueError, match="128 bytes"):
        NcclCommunicator(1, 0, b"short", 0, library=FakeLibrary())
    with pytest.raises(ValueError, match="CUDA device"):
        NcclCommunicator(1, 0, UID, "cpu", library=FakeLibrary())


# --------------------------------------------------------------------------- launches


def test_init_runs_inside_the_device_context(make_comm, device_ctx):
    lib = FakeLibrary()
    comm = NcclCommunicator(2, 1, UID, "cuda:1", library=lib)
    assert device_ctx == [torch.device("cuda", 1)]
    assert comm.device == torch.device("cuda", 1)
    (name, (comm_ptr, world, uid, rank)), = lib.calls
    assert name == "ncclCommInitRank" and (world, rank) == (2, 1)
    assert comm_ptr._obj is comm._comm  # byref(handle): NCCL fills in the handle we keep
    assert bytes(ctypes.string_at(ctypes.addressof(uid), 128)) == UID


def test_all_reduce_marshalling_and_counter(host_comm):
    comm, lib, acc = host_comm()
    x = torch.arange(6, dtype=torch.bfloat16)
    out = comm.all_reduce(x, op="max")
    assert out.shape == x.shape and out.dtype == x.dtype and out.data_ptr() != x.data_ptr()
    name, (send, recv, count, dtype, op, comm_ptr, stream) = lib.calls[-1]
    assert name == "ncclAllReduce" and comm_ptr is comm._comm
    assert (send.value, recv.value) == (x.data_ptr(), out.data_ptr())
    assert (count.value, dtype.value, op.value) == (6, 9, 2)
    assert isinstance(stream, ctypes.c_void_p) and stream.value == acc.stream.cuda_stream
    assert comm.launches == 1
    given = torch.empty(6, dtype=torch.bfloat16)
    assert comm.all_reduce(x, out=given, stream=FakeStream()) is given
    assert lib.calls[-1][1][-1].value == STREAM_HANDLE
    assert comm.launches == 2


def test_every_op_launches_with_its_arguments(host_comm):
    comm, lib, _ = host_comm()
    t, big, small = torch.zeros(4, dtype=torch.int32), torch.zeros(8, dtype=torch.int32), \
        torch.zeros(2, dtype=torch.int32)
    s = FakeStream()
    comm.all_gather(big, t, stream=s)
    comm.reduce_scatter(small, t, op="min", stream=s)
    comm.broadcast(t, src=1, stream=s)
    comm.send(t, dst=1, stream=s)
    comm.recv(t, src=1, stream=s)
    got = {name: tuple(getattr(a, "value", a) for a in args[:-2]) for name, args in lib.calls[1:]}
    assert got == {
        "ncclAllGather": (t.data_ptr(), big.data_ptr(), 4, 2),
        "ncclReduceScatter": (t.data_ptr(), small.data_ptr(), 2, 2, 3),
        "ncclBroadcast": (t.data_ptr(), t.data_ptr(), 4, 2, 1),
        "ncclSend": (t.data_ptr(), 4, 2, 1),
        "ncclRecv": (t.data_ptr(), 4, 2, 1),
    }
    assert all(args[-1].value == STREAM_HANDLE for _, args in lib.calls[1:])
    assert comm.launches == 5


def test_failed_launch_raises_nccl_error_and_still_counts(host_comm):
    comm, _, _ = host_comm(results={"ncclAllReduce": 1})
    with pytest.raises(NcclError) as info:
        comm.all_reduce(torch.zeros(4), stream=FakeStream())
    err = info.value
    assert (err.code, err.name) == (1, "ncclUnhandledCudaError")
    assert err.detail == "Cuda failure 400 'invalid resource handle'"
    text = str(err)
    assert "ncclAllReduce failed" in text and "unhandled cuda error" in text
    assert f"stream 0x{STREAM_HANDLE:x}" in text and "invalid resource handle" in text
    assert comm.launches == 1
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.code, clone.name, clone.detail, str(clone)) == (1, err.name, err.detail, text)


def test_failed_init_raises_nccl_error(make_comm):
    with pytest.raises(NcclError) as info:
        make_comm(FakeLibrary({"ncclCommInitRank": 5}))
    assert info.value.name == "ncclInvalidUsage"
    assert "ncclCommInitRank failed (rank 0/2 on cuda:0)" in str(info.value)


def test_default_accessor_is_this_modules_current_stream(monkeypatch, make_comm, device_ctx):
    """Imported by name like pynccl: patching torch.cuda.current_stream does not reach it."""
    comm = NcclCommunicator(2, 0, UID, 0, library=FakeLibrary())
    comm.device = torch.device("cpu")
    mine, torchs = Accessor(), Accessor()
    monkeypatch.setattr(nccl, "current_stream", mine)
    monkeypatch.setattr(torch.cuda, "current_stream", torchs)
    comm.all_reduce(torch.zeros(2))
    assert (mine.calls, torchs.calls) == (1, 0)


def test_close_and_abort_are_idempotent(host_comm):
    comm, lib, _ = host_comm()
    with comm:
        pass
    assert comm.closed
    comm.close()
    comm.abort()
    assert lib.names() == ["ncclCommInitRank", "ncclCommDestroy"]
    with pytest.raises(RuntimeError, match="closed"):
        comm.all_reduce(torch.zeros(2), stream=FakeStream())
    assert comm.launches == 0

    comm2, lib2, _ = host_comm()
    comm2.abort()
    comm2.abort()
    comm2.close()
    assert lib2.names() == ["ncclCommInitRank", "ncclCommAbort"]


def test_last_error_asks_the_library(host_comm):
    comm, _, _ = host_comm()
    assert comm.last_error() == "Cuda failure 400 'invalid resource handle'"


# --------------------------------------------------------------------------- self-test runner


def test_selftest_without_gpu_cannot_run(capsys):
    if HAS_CUDA:
        pytest.skip("this machine has a GPU")
    assert nccl_selftest.main([]) == nccl_selftest.EXIT_CANNOT_RUN
    assert '"ok": false' in capsys.readouterr().out


def test_mismatch_reports_first_difference():
    want = torch.arange(5)
    assert nccl_selftest._mismatch(want.clone(), want) is None
    got = want.clone()
    got[3] = 9
    assert nccl_selftest._mismatch(got, want).startswith("1 of 5 differ; first at [3]")


_FAKE_RANK = """
import os, subprocess, sys, time
from pathlib import Path
from streamcheck.runtime.procgroup import rendezvous
rank = int(sys.argv[sys.argv.index("--rank") + 1])
uid_file = Path(sys.argv[sys.argv.index("--uid-file") + 1])
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
uid = rendezvous(uid_file, rank, lambda: bytes([0xc0, 0xff, 0xee, rank]), 60)
with open(os.path.join({tmp!r}, f"pids{{rank}}"), "w") as f:
    f.write(f"{{os.getpid()}} {{kid.pid}} {{uid.hex()}}")
if rank == 0 and {fail_fast}:
    sys.exit(3)
time.sleep(600)
"""



def _run_fake_ranks(monkeypatch, tmp_path, fail_fast: bool, timeout: float, grace: float):
    (tmp_path / "fake_rank.py").write_text(textwrap.dedent(
        _FAKE_RANK.format(tmp=str(tmp_path), fail_fast=fail_fast)))
    monkeypatch.setattr(nccl_selftest, "_MODULE", "fake_rank")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    t0 = time.monotonic()
    results = nccl_selftest._spawn_and_wait(2, timeout=timeout, grace=grace)
    elapsed = time.monotonic() - t0
    written = [(tmp_path / f"pids{r}").read_text().split() for r in range(2)]
    # rank 0 made the id (its maker appends its rank) and rank 1 read it from the file
    assert [w[2] for w in written] == ["c0ffee00", "c0ffee00"]
    pids = [int(p) for w in written for p in w[:2]]
    deadline = time.monotonic() + 10
    while not all(process_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return results, elapsed, pids


def test_selftest_kills_every_rank_group_on_timeout(monkeypatch, tmp_path):
    results, elapsed, pids = _run_fake_ranks(monkeypatch, tmp_path, False, timeout=10, grace=1)
    assert [r["ok"] for r in results] == [False, False]
    assert all("killed" in r["error"] for r in results)
    assert all(r["returncode"] == -signal.SIGKILL for r in results)
    assert all(process_gone(p) for p in pids), "a rank or its child outlived the self-test"
    assert elapsed < 40


def test_selftest_stops_waiting_for_peers_of_a_failed_rank(monkeypatch, tmp_path):
    results, elapsed, pids = _run_fake_ranks(monkeypatch, tmp_path, True, timeout=120, grace=1)
    assert results[0]["returncode"] == 3 and "exited without a result" in results[0]["error"]
    assert results[1]["returncode"] == -signal.SIGKILL
    assert elapsed < 60  # the grace period, not the 120 s timeout
    assert all(process_gone(p) for p in pids), "a rank or its child outlived the self-test"


# --------------------------------------------------------------------------- real GPU


@needs_gpu
def test_real_library_loads():
    lib = NcclLibrary()
    assert re.fullmatch(r"\d+\.\d+\.\d+", lib.version())
    assert len(lib.get_unique_id()) == 128
    assert lib.has("ncclAllReduce")


@needs_gpu
def test_world_one_all_reduce_on_gpu():
    with NcclCommunicator(1, 0, nccl.unique_id(), 0) as comm:
        x = torch.arange(8, dtype=torch.float32, device="cuda:0")
        out = comm.all_reduce(x)
        torch.cuda.synchronize()
        assert torch.equal(out, x)
        assert comm.launches == 1
        with pytest.raises(ValueError, match="is on cpu"):
            comm.all_reduce(x.cpu())


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensor_on_another_gpu_rejected():
    with NcclCommunicator(1, 0, nccl.unique_id(), 0) as comm:
        with pytest.raises(ValueError, match="is on cuda:1, but this communicator is on cuda:0"):
            comm.all_reduce(torch.ones(4, device="cuda:1"))
        assert comm.launches == 0


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_stream_of_another_device_reaches_nccl_and_fails_with_400():
    """The hazard is passed through on purpose: rank 1 launching on a cuda:0 stream gets
    NCCL's error 400, reported with its name and ncclGetLastError detail."""
    uid, comms = nccl.unique_id(), {}
    x = {r: torch.ones(256, device=f"cuda:{r}") for r in range(2)}

    def on_both(fn):
        # One thread per rank: NCCL connects lazily at the first collective and blocks there
        # until the peer joins.
        res: dict[int, object] = {}

        def go(r: int) -> None:
            torch.cuda.set_device(r)
            try:
                res[r] = fn(r)
            except Exception as exc:
                res[r] = exc

        threads = [threading.Thread(target=go, args=(r,), daemon=True) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(res) == 2, "a rank did not return"
        return res

    on_both(lambda r: comms.__setitem__(r, NcclCommunicator(2, r, uid, r)))
    try:
        on_both(lambda r: (comms[r].all_reduce(x[r]), torch.cuda.synchronize(r)))
        foreign = torch.cuda.Stream(device="cuda:0")
        res = on_both(lambda r: comms[r].all_reduce(x[r], stream=foreign if r else None))
        err = res[1]
        assert isinstance(err, NcclError), err
        assert err.name == "ncclUnhandledCudaError"
        assert "invalid resource handle" in (err.detail or "")
        assert comms[1].launches == 2
    finally:
        for comm in comms.values():
            comm.abort()  # rank 0 waits for a peer that never came


@needs_gpu
def test_selftest_world_one():
    out = subprocess.run([sys.executable, "-m", "streamcheck.runtime.nccl_selftest", "--world",
                          "1"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "send/recv" in out.stderr
