"""The compiled hooks' native read of a device's current stream
(streamcheck/_native_streams.c): used only once it agreed with torch's reader on a non-default
stream (the engine's own, or a made-up one set current for the proof and set back), for a
device torch's reader answered for, and never again after one disagreement.

torch's libc10_cuda is not on the CPU machine: a stand-in library exports the two C++ names
(a C function may carry a mangled name) and answers what the test sets. Each case runs in a
child process, as the trust it builds lasts for the process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamcheck.wrappers import speedups
from tests.wrappers.stand_in_stream_type import build_key_type

pytestmark = pytest.mark.skipif(not speedups.built() or shutil.which("cc") is None,
                                reason="needs streamcheck._speedups and a C compiler")

ROOT = Path(__file__).resolve().parents[2]

STAND_IN = r"""
#include <stdint.h>
typedef struct { int8_t device_type; int8_t device_index; int64_t stream_id; } CudaStream;
CudaStream answer = {1, 0, 0};  /* what getCurrentCUDAStream answers */
int64_t handle_offset = 0x7000;  /* CUDAStream::stream(): the id plus this */
int64_t external_offset = 0;     /* and for an even (external) id, plus this */
int asked = 0;                   /* native reads made */
CudaStream _ZN3c104cuda20getCurrentCUDAStreamEa(int8_t device)
{
    asked++;
    CudaStream s = answer;
    s.device_index = device;
    return s;
}
void *_ZNK3c104cuda10CUDAStream6streamEv(const CudaStream *s)
{
    if (s->stream_id == 0)
        return (void *)0;
    if (s->stream_id % 2 == 0)  /* an external stream: its id is its handle */
        return (void *)(intptr_t)(s->stream_id + external_offset);
    return (void *)(intptr_t)(s->stream_id + handle_offset);
}
"""

PRELUDE = """
import ctypes, sys
sys.path.insert(0, {root!r})
from streamcheck import _speedups as c
lib = ctypes.CDLL({lib!r})
answer_id = ctypes.c_int64.in_dll(lib, "answer")  # the struct's id sits at offset 8
asked = ctypes.c_int.in_dll(lib, "asked")
def set_id(stream_id):
    ctypes.c_int64.from_address(ctypes.addressof(answer_id) + 8).value = stream_id
def get_id():
    return ctypes.c_int64.from_address(ctypes.addressof(answer_id) + 8).value
handles = {{0: 0}}
def reader(device):  # torch's _cuda_getCurrentRawStream, as the test sets it
    return handles[device]
assert c.native_raw_streams({lib!r}, reader)
"""


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("c10")
    (folder / "stand_in.c").write_text(STAND_IN)
    library = folder / "libc10_cuda_stand_in.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", str(folder / "stand_in.c"), "-o",
                    str(library)], check=True)
    return library


def run(stand_in: Path, body: str) -> str:
    code = PRELUDE.format(root=str(ROOT), lib=str(stand_in)) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_device_is_read_natively_once_both_agreed_on_a_real_stream(stand_in):
    out = run(stand_in, """
        assert c.raw_stream(reader, 0) == 0  # the default stream proves nothing
        assert c.native_raw_streams_state() == (True, False, 1, False)
        set_id(5); handles[0] = 0x7005  # a side stream current: both answer its handle
        assert c.raw_stream(reader, 0) == 0x7005
        assert c.native_raw_streams_state() == (True, True, 1, False)
        before = asked.value
        set_id(9); handles[0] = "torch is not asked any more"
        print(c.raw_stream(reader, 0), asked.value - before)
        handles[2] = 0  # another device: torch's reader first, for a valid index
        set_id(0)
        print(c.raw_stream(reader, 2), c.native_raw_streams_state())
        set_id(7); handles[2] = "not asked"
        print(c.raw_stream(reader, 2))
    """)
    assert out.splitlines() == [f"{0x7009} 1", "0 (True, True, 5, False)", str(0x7007)]


def test_one_disagreement_turns_the_native_reads_off_for_good(stand_in):
    out = run(stand_in, """
        set_id(5); handles[0] = 0x9999  # the stand-in's layout or names are not torch's
        assert c.raw_stream(reader, 0) == 0x9999  # torch's answer, always
        handles[1] = 0x7005
        assert c.raw_stream(reader, 1) == 0x7005
        print(c.native_raw_streams_state())
    """)
    assert out == "(True, False, 1, True)"  # off: device 1 went to torch, unrecorded


def test_another_reader_and_a_device_torch_refuses_go_to_the_reader(stand_in):
    out = run(stand_in, """
        set_id(5); handles[0] = 0x7005
        c.raw_stream(reader, 0)  # proven for reader
        other = {0: 0x4242}.__getitem__
        assert c.raw_stream(other, 0) == 0x4242
        try:
            c.raw_stream(reader, 3)  # torch's reader raises for it: the native is not asked
        except KeyError:
            print("raised", c.native_raw_streams_state())
    """)
    assert out == "raised (True, True, 1, False)"


def test_only_a_loaded_library_with_both_functions_is_used():
    from streamcheck import _speedups as c

    assert c.native_raw_streams("/nonexistent/libc10_cuda.so", print) is False
    libc = subprocess.run([sys.executable, "-c", "import ctypes.util; print(ctypes.util."
                           "find_library('c'))"], capture_output=True, text=True).stdout.strip()
    assert c.native_raw_streams(libc, print) is False  # loaded, but not torch's


# torch's four calls as the stand-in's current stream answers them: the handle, the tuple,
# setting a stream (keywords only, as torch's), the thread's current device
TORCH_LIKE = """
torch_reads, set_calls, current_device = [], [], [0]
def torch_raw(device):
    torch_reads.append("raw")
    sid = get_id()
    return 0 if sid == 0 else sid if sid % 2 == 0 else sid + 0x7000
def torch_tuple(device):
    torch_reads.append("tuple")
    return (get_id(), device, 1)
def torch_set_stream(*, stream_id, device_index, device_type):
    set_calls.append((stream_id, device_index, device_type))
    set_id(stream_id)
def torch_get_device():
    return current_device[0]
assert c.native_raw_streams({lib!r}, torch_raw, torch_tuple, torch_set_stream, torch_get_device)
"""


def run_torch_like(stand_in: Path, body: str) -> str:
    return run(stand_in, TORCH_LIKE.format(lib=str(stand_in)) + textwrap.dedent(body))


def test_an_engine_on_the_default_stream_proves_the_read_on_a_made_up_stream(stand_in):
    """No side stream ever current: the first read proves the native one on a made-up
    external stream, set current and set back, and the reads after it are native."""
    out = run_torch_like(stand_in, """
        assert c.raw_stream(torch_raw, 0) == 0
        made_up = set_calls[0][0]
        print(c.native_raw_streams_state(), get_id(), made_up % 2, made_up > 2)
        print(set_calls[1:], torch_reads)
        torch_reads.clear(); before = asked.value
        print(c.raw_stream(torch_raw, 0), c.current_stream(torch_tuple, 0), torch_reads,
              asked.value - before)
        set_id(5)  # a side stream now: native too
        print(c.raw_stream(torch_raw, 0) == 0x7005, c.current_stream(torch_tuple, 0),
              torch_reads)
        from streamcheck.wrappers import speedups
        print(speedups.stream_reads())  # what the process's report says
    """)
    assert out.splitlines() == [
        "(True, True, 1, False) 0 0 True",  # proven, the default stream current again
        "[(0, 0, 1)] ['raw', 'tuple', 'raw']",  # set back to what torch read before
        "0 (0, 0, 1) [] 2",
        "True (5, 0, 1) []",
        "native (c10::cuda), proven; devices 0"]


def test_the_proof_sets_back_a_side_stream_and_the_tuple_read_proves_it_too(stand_in):
    out = run_torch_like(stand_in, """
        set_id(9)  # a collective's first read, a side stream current (odd: a pool stream)
        print(c.current_stream(torch_tuple, 0), get_id(), set_calls[1:],
              c.native_raw_streams_state())
    """)
    assert out == "(9, 0, 1) 9 [(9, 0, 1)] (True, True, 1, False)"


def test_no_proof_on_another_device_than_the_current_one(stand_in):
    """Setting another device's stream would make that device current: the proof waits for a
    read of the thread's current device."""
    out = run_torch_like(stand_in, """
        current_device[0] = 1
        c.raw_stream(torch_raw, 0)
        print(set_calls, c.native_raw_streams_state())
        c.raw_stream(torch_raw, 1)
        print(len(set_calls), c.native_raw_streams_state())
    """)
    assert out.splitlines() == ["[] (True, False, 1, False)", "2 (True, True, 3, False)"]


def test_a_made_up_stream_read_otherwise_turns_the_native_reads_off(stand_in):
    out = run_torch_like(stand_in, """
        ctypes.c_int64.in_dll(lib, "external_offset").value = 16  # not torch's layout
        print(c.raw_stream(torch_raw, 0), get_id(), c.native_raw_streams_state())
        torch_reads.clear()
        c.raw_stream(torch_raw, 0); c.current_stream(torch_tuple, 0)
        print(torch_reads, len(set_calls))
        from streamcheck.wrappers import speedups
        print(speedups.stream_reads())
    """)
    assert out.splitlines() == ["0 0 (True, False, 1, True)", "['raw', 'tuple'] 2",
                                "torch's (the native read disagreed with torch's once: "
                                "turned off)"]


def test_a_torch_that_does_not_read_the_made_up_stream_shows_nothing(stand_in):
    """Where torch's own read does not answer the made-up handle, nothing is shown: not
    trusted, not turned off; an engine's own side stream can still prove it."""
    out = run_torch_like(stand_in, """
        def torch_raw_elsewhere(device):  # even ids: not external streams to this torch
            return 0 if get_id() % 2 == 0 else get_id() + 0x7000
        assert c.native_raw_streams(lib._name, torch_raw_elsewhere, torch_tuple,
                                    torch_set_stream, torch_get_device)
        c.raw_stream(torch_raw_elsewhere, 0)
        print(get_id(), len(set_calls), c.native_raw_streams_state())
        set_id(5)
        print(hex(c.raw_stream(torch_raw_elsewhere, 0)), c.native_raw_streams_state())
    """)
    assert out.splitlines() == ["0 2 (True, False, 1, False)",
                                "0x7005 (True, True, 1, False)"]


def test_a_torch_that_refuses_the_made_up_stream_leaves_the_read_as_it_was(stand_in):
    """A _cuda_setStream that raises for the made-up stream: the read stands, nothing is
    proven or turned off, the proof is not tried again, the current stream never moved."""
    out = run_torch_like(stand_in, """
        def refusing_set_stream(*, stream_id, device_index, device_type):
            set_calls.append(stream_id)
            raise RuntimeError("invalid stream")
        assert c.native_raw_streams(lib._name, torch_raw, torch_tuple, refusing_set_stream,
                                    torch_get_device)
        print(c.raw_stream(torch_raw, 0), c.current_stream(torch_tuple, 0), get_id(),
              len(set_calls), c.native_raw_streams_state())
    """)
    assert out == "0 (0, 0, 1) 0 1 (True, False, 1, False)"


def test_a_collective_is_checked_on_the_native_read(stand_in):
    """The torch.distributed hook (compiled) reads a helper thread's current stream natively
    once proven (the main engine thread's is not read: the one rule here spares it): counted
    as before, and a helper thread on the default stream while the engine computes on its own
    stream is still found (by the Python hook, which asks torch's reader)."""
    out = run_torch_like(stand_in, """
        import threading
        from types import SimpleNamespace
        from streamcheck import installer
        from streamcheck.core.ids import StreamRef
        from streamcheck.wrappers.torch_distributed import wrap_tensor_function
        from tests.core.fakes import made_current
        from streamcheck.wrappers import speedups
        speedups.read_streams_natively = lambda reader: False  # torch's own library (a GPU
        # host's) would take the stand-in's place at the install
        class Tensor:
            def get_device(self):
                return 0
        aud = installer.install("record")
        made_current(aud.book, StreamRef(0, 5))  # the engine (main) thread computes on 5
        module = SimpleNamespace(all_reduce=lambda tensor: "done")
        wrap_tensor_function(installer._registry, installer._gate, module, "all_reduce",
                             "dist.all_reduce", torch_tuple, "torch.distributed")
        from streamcheck.wrappers.generated import checked_by_compiled_code
        print(checked_by_compiled_code(module.all_reduce), module.all_reduce(Tensor()))
        done = []

        def helper():
            thread = threading.Thread(target=lambda: done.append(module.all_reduce(Tensor())))
            thread.start(); thread.join()

        set_id(5)
        helper()  # the first read: the native one proven against torch's
        torch_reads.clear()
        module.all_reduce(Tensor())  # the main engine thread: nothing read
        helper()  # on stream 5: read natively, fine
        print(torch_reads, done)
        set_id(0)
        helper()  # on the default stream: to the Python hook
        print(torch_reads, done, [f.rule_id for f in aud.findings()],
              aud.coverage.launches_by_op()["dist.all_reduce"])
        installer.uninstall()
    """)
    assert out.splitlines() == [
        "True done",
        "[] ['done', 'done']",
        # the tuple: the helper's on the default stream, read by the Python hook
        "['tuple'] ['done', 'done', 'done'] ['default-stream-in-worker'] 5"]


def test_a_handoff_reads_its_stream_natively(stand_in):
    """A connector's ``streamcheck.handoff`` with stream=None (the compiled declare) asks
    torch's tuple read as ``current_stream_of`` finds it: natively once proven, the handoff's
    stream the same."""
    out = run_torch_like(stand_in, """
        import types
        import streamcheck
        from streamcheck import installer
        from streamcheck.wrappers import speedups
        from tests.wrappers.compiled_parts import FakeTensor
        speedups.read_streams_natively = lambda reader: False  # as in the test above
        installer.install("record")
        torch = types.ModuleType("torch")
        torch._C = types.SimpleNamespace(_cuda_getCurrentStream=torch_tuple)
        sys.modules["torch"] = torch  # what current_stream_of reads, as the compiled part does
        c.current_stream(torch_tuple, 0)  # proven (the made-up stream)
        torch_reads.clear()
        set_id(5)
        first = streamcheck.handoff(FakeTensor(0x1000))
        set_id(7)
        second = streamcheck.handoff(FakeTensor(0x2000))
        print(torch_reads, (first.stream.device, first.stream.stream_id),
              (second.stream.device, second.stream.stream_id))
        installer.uninstall()
    """)
    assert out == "[] (0, 5) (0, 7)"


def test_an_event_record_on_the_current_stream_reads_it_natively(stand_in):
    """With the clocks live, a record on the current stream (the compiled hook) keeps the
    clock of the stream read natively once proven: torch's tuple read is not asked."""
    out = run_torch_like(stand_in, """
        from types import SimpleNamespace
        from streamcheck import installer
        from streamcheck.runtime.reader import StreamReader
        from streamcheck.wrappers import speedups
        from streamcheck.wrappers.events import hook_event_record
        speedups.read_streams_natively = lambda reader: False  # as in the tests above
        class Event:
            def __init__(self):
                self.device = None
            def record(self, stream=None):
                self.device = self.device or SimpleNamespace(index=0)
        aud = installer.install("record")
        hook_event_record(installer._registry, installer._gate, Event,
                          StreamReader(current_stream=torch_tuple,
                                       current_device=torch_get_device))
        c.current_stream(torch_tuple, 0)  # proven (the made-up stream)
        event = Event()
        event.record()  # bound to device 0
        aud.ordering = True  # the clocks live, as after a connector's first declared access
        aud.clocks._clocks[(0, 5)], aud.clocks._clocks[(0, 7)] = {(0, 5): 2}, {(0, 7): 3}
        torch_reads.clear()
        set_id(5); event.record(); five = event._streamcheck_clock
        set_id(7); event.record(); seven = event._streamcheck_clock
        print(type(Event.__dict__["record"]).__name__, torch_reads, five, seven)
        installer.uninstall()
    """)
    assert out == "GuardedCall [] {(0, 5): 2} {(0, 7): 3}"


def test_the_installed_current_stream_reads_it_natively(stand_in):
    """The compiled ``current_stream()`` the audit installs: torch's tuple read is not asked
    once the native read is proven; the stream it makes is the current one."""
    out = run_torch_like(stand_in, """
        from types import SimpleNamespace
        class Stream:
            def __new__(cls, **key):
                made = object.__new__(cls)
                made.key = key
                return made
        inits = []
        cuda = {"_initialized": True}
        current = c.CurrentStream(cuda, lambda: False, lambda: inits.append(1),
                                  torch_get_device, None, torch_tuple, Stream.__new__, Stream)
        c.current_stream(torch_tuple, 0)  # proven (the made-up stream)
        torch_reads.clear()
        set_id(5); first = current()
        set_id(7); second = current(0)
        print(torch_reads, inits, first.key["stream_id"], second.key)
    """)
    assert out == "[] [] 5 {'stream_id': 7, 'device_index': 0, 'device_type': 1}"


@pytest.fixture(scope="module")
def key_type(tmp_path_factory) -> Path:
    return build_key_type(tmp_path_factory.mktemp("key_type"))


def test_a_launch_tells_torchs_stream_by_its_key_read_in_place(stand_in, key_type):
    """A stream=None launch whose accessor makes a new stream object each call (torch's
    current_stream()): once the current stream is read natively, told by the object's key
    fields against it, no attribute read (the stand-in type has no handle), nothing asked of
    torch; a default stream passes for the main engine thread only; any other stream is left
    to the other tests (here: the slow path, the handle being unreadable)."""
    out = run_torch_like(stand_in, f"""
        import threading
        sys.path.insert(0, {str(key_type)!r})
        from key_type import Stream
        from streamcheck import installer
        from streamcheck.wrappers import speedups
        from streamcheck.wrappers.launches import site_counter
        speedups.read_streams_natively = lambda reader: False  # keep the stand-in (above)
        aud = installer.install("record")
        owner, counter = site_counter(installer._gate, "noop.all_reduce", "noop")
        resolved = [5]
        class Comm:
            _streamcheck_device = 0
            def _current_stream(self):
                return Stream(stream_id=resolved[0], device_index=0, device_type=1)
        slow = []
        check = c.StreamCheck(installer._gate, owner, counter, True, torch_raw, torch_tuple,
                              Stream)
        def launch(comm):  # the generated wrapper's steps
            stream = comm._current_stream()
            if check(comm, stream):
                return ("launched", stream.stream_id)
            return slow.append(1) or "slow"
        comm = Comm()
        c.raw_stream(torch_raw, 0)  # proven (the made-up stream), device 0 answered
        torch_reads.clear()
        set_id(5)
        print(launch(comm), torch_reads)
        resolved[0] = 7  # not the current stream
        print(launch(comm), torch_reads)
        set_id(0); resolved[0] = 0  # the default stream, the main thread
        print(launch(comm))
        helper = []
        thread = threading.Thread(target=lambda: helper.append(launch(comm)))
        thread.start(); thread.join()
        print(helper, len(slow), aud.coverage.launches_by_op().get("noop.all_reduce"))
        installer.uninstall()
    """)
    assert out.splitlines() == [
        "('launched', 5) []",
        "slow []",
        "('launched', 0)",
        "['slow'] 2 2"]


def test_only_torch_own_c_functions_are_stood_in_for():
    """A reader replaced in torch._C (a test's stand-in, a wrapper) keeps answering: the
    native reads stand in only for functions of torch._C's own (builtins bound to it)."""
    import builtins

    assert speedups.torch_own(len, builtins)
    assert not speedups.torch_own(len, sys)  # a builtin of another module
    assert not speedups.torch_own(lambda device: (0, device, 1), builtins)


def test_torch_without_its_cuda_library_is_read_through_python(monkeypatch):
    """On the CPU machine torch has no libc10_cuda: the wrappers keep torch's reader."""
    torch = pytest.importorskip("torch")
    reader = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if (Path(torch.__file__).parent / "lib" / "libc10_cuda.so").exists():
        pytest.skip("this torch has its CUDA library")
    assert speedups.read_streams_natively(reader) is False
    assert speedups.read_streams_natively(print) is False  # not torch's reader


def test_torch_streams_read_natively_agree_with_torch_on_cuda():
    """On real CUDA, in a process that never leaves the default stream before the first
    read: the native reads are found in torch's libc10_cuda, trusted after the proof on a
    made-up stream (the default stream current again after it), and then answer every
    stream's handle and tuple as torch's readers do."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, {root!r})
        import torch
        from streamcheck import _speedups as c
        from streamcheck.wrappers import speedups
        raw, current = torch._C._cuda_getCurrentRawStream, torch._C._cuda_getCurrentStream
        torch.cuda.init()
        assert speedups.read_streams_natively(raw)
        device = torch.cuda.current_device()
        assert c.raw_stream(raw, device) == raw(device) == 0
        found, proven, answered, off = c.native_raw_streams_state()
        assert found and proven and answered >> device & 1 and not off
        assert current(device)[0] == 0 and torch.cuda.current_stream().cuda_stream == 0
        assert c.current_stream(current, device) == current(device)
        x = torch.ones(4, device="cuda")  # the default stream still works
        assert float((x + 1).sum()) == 8.0
        for stream in [torch.cuda.Stream() for _ in range(3)]:
            with torch.cuda.stream(stream):
                assert c.raw_stream(raw, device) == stream.cuda_stream == raw(device)
                assert c.current_stream(current, device) == current(device)
        assert c.raw_stream(raw, device) == raw(device)  # back on the thread's own stream
        print("ok")
    """).format(root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_the_doctor_says_how_current_streams_are_read():
    from streamcheck.doctor.environment import stream_reads_item

    torch = pytest.importorskip("torch")
    item = stream_reads_item()
    native = (Path(torch.__file__).parent / "lib" / "libc10_cuda.so").exists()
    assert item.name == "current-stream reads"
    assert item.value == ("native (c10::cuda)" if native else "torch's"), item
