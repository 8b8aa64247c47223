"""The compiled launch wrappers' native read of a device's current stream
(streamcheck/_native_streams.c): used only once it agreed with torch's reader on a non-default
stream, for a device torch's reader answered for, and never again after one disagreement.

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

pytestmark = pytest.mark.skipif(not speedups.built() or shutil.which("cc") is None,
                                reason="needs streamcheck._speedups and a C compiler")

ROOT = Path(__file__).resolve().parents[2]

STAND_IN = r"""
#include <stdint.h>
typedef struct { int8_t device_type; int8_t device_index; int64_t stream_id; } CudaStream;
CudaStream answer = {1, 0, 0};  /* what getCurrentCUDAStream answers */
int64_t handle_offset = 0x7000;  /* CUDAStream::stream(): the id plus this */
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
    return s->stream_id == 0 ? (void *)0 : (void *)(intptr_t)(s->stream_id + handle_offset);
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


def test_torch_without_its_cuda_library_is_read_through_python(monkeypatch):
    """On the CPU machine torch has no libc10_cuda: the wrappers keep torch's reader."""
    torch = pytest.importorskip("torch")
    reader = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if (Path(torch.__file__).parent / "lib" / "libc10_cuda.so").exists():
        pytest.skip("this torch has its CUDA library")
    assert speedups.read_streams_natively(reader) is False
    assert speedups.read_streams_natively(print) is False  # not torch's reader


def test_torch_streams_read_natively_agree_with_torch_on_cuda():
    """On real CUDA: the native reads are found in torch's libc10_cuda, trusted after the
    first side stream, and then answer every stream's handle as torch's reader does."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from streamcheck import _speedups as c

    reader = torch._C._cuda_getCurrentRawStream
    assert speedups.read_streams_natively(reader)
    device = torch.cuda.current_device()
    assert c.raw_stream(reader, device) == reader(device)
    streams = [torch.cuda.Stream() for _ in range(3)]
    for stream in streams:
        with torch.cuda.stream(stream):
            assert c.raw_stream(reader, device) == stream.cuda_stream == reader(device)
    found, proven, answered, off = c.native_raw_streams_state()
    assert found and proven and answered >> device & 1 and not off
    assert c.raw_stream(reader, device) == reader(device)  # back on the thread's own stream


def test_the_doctor_says_how_current_streams_are_read():
    from streamcheck.doctor.environment import stream_reads_item

    torch = pytest.importorskip("torch")
    item = stream_reads_item()
    native = (Path(torch.__file__).parent / "lib" / "libc10_cuda.so").exists()
    assert item.name == "current-stream reads"
    assert item.value == ("native (c10::cuda)" if native else "torch's"), item
