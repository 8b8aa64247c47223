"""Disk backend: slots in segment files, the commit marker written last, a crash mid-save, the
index rebuilt at open, slot reuse, and a shared host (links, FIFOs, modes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from streamcheck.connector.backends import BackendError, DiskBackend, TransferState, disk
from streamcheck.connector.backends.disk import (
    MARKER_OFFSET,
    SLOT_HEADER_NBYTES,
    encode_slot_header,
    slot_nbytes,
)

DONE, FAILED, PENDING = TransferState.DONE, TransferState.FAILED, TransferState.PENDING
N = 4096
SLOT = slot_nbytes(N)
SEGMENT = f"b{N}-00000.kvs"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink() or p.is_fifo())


def _save(backend: DiskBackend, key: str, data: bytes | None = None) -> bytes:
    data = os.urandom(N) if data is None else data
    assert backend.save(key, data).wait(10).state is DONE
    return data


def _load(backend: DiskBackend, key: str) -> tuple[TransferState, bytes, str]:
    out = bytearray(N)
    result = backend.load(key, memoryview(out)).wait(10)
    return result.state, bytes(out), result.error


def _offset(backend: DiskBackend, key: str) -> int:
    where = backend.locate(key)
    assert where is not None
    return where[1]


def test_layout_is_one_segment_of_slots_under_root(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path / "s", N)
    for key in ("a", "b", "c"):
        _save(backend, key)
    (segment,) = _files(tmp_path / "s")  # no file per block, no fan-out dirs
    assert segment.name == SEGMENT
    assert segment.stat().st_size == 3 * SLOT
    assert SLOT % 4096 == 0 and SLOT >= SLOT_HEADER_NBYTES + N
    assert [backend.locate(k) for k in "abc"] == [(segment, i * SLOT) for i in range(3)]
    backend.close()


def test_pending_save_is_invisible_until_committed(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold a save at its fdatasync, payload fully written: nothing may see it yet."""
    gate, reached = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        real(fd)
        reached.set()
        assert gate.wait(10)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    backend = DiskBackend(tmp_path, N)
    data = os.urandom(N)
    transfer = backend.save("k", data)
    assert reached.wait(10)
    assert transfer.poll().state is PENDING
    assert transfer.wait(0.05).state is PENDING
    raw = (tmp_path / SEGMENT).read_bytes()
    assert raw[SLOT_HEADER_NBYTES:SLOT_HEADER_NBYTES + N] == data  # complete, yet not a block
    assert raw[MARKER_OFFSET:MARKER_OFFSET + 4] == bytes(4)  # no commit marker yet
    assert backend.lookup(["k"]) == [False]
    assert backend.load("k", memoryview(bytearray(N))).wait(10).state is FAILED
    assert backend.scan_committed() == []
    gate.set()
    assert transfer.wait(10).state is DONE
    assert backend.lookup(["k"]) == [True]
    assert backend.scan_committed() == ["k"]
    backend.close()


def test_failed_fdatasync_fails_the_save_and_frees_its_slot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    backend = DiskBackend(tmp_path, N)
    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", broken)
        result = backend.save("k", os.urandom(N)).wait(10)
    assert result.state is FAILED and "Input/output error" in result.error
    assert backend.lookup(["k"]) == [False]
    assert backend.scan_committed() == []
    _save(backend, "k")
    assert _offset(backend, "k") == 0  # the failed save's slot, reused
    backend.close()


CRASH = textwrap.dedent("""
    import os, sys
    from streamcheck.connector.backends import DiskBackend
    backend = DiskBackend(sys.argv[1], {n})
    backend.save("kept", b"k" * {n}).wait(30)  # committed before the crash
    os.fdatasync = lambda fd: os._exit(17)  # the process dies after writing, before the commit
    backend.save("victim", os.urandom({n})).wait(30)
    sys.exit(1)  # not reached
""")


def test_crash_between_write_and_commit_leaves_a_free_slot(tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", CRASH.format(n=N), str(root)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 17, proc.stderr
    assert (root / SEGMENT).stat().st_size == 2 * SLOT  # the victim's payload is there

    backend = DiskBackend(root, N)  # a fresh process over the same root
    assert backend.lookup(["victim", "kept"]) == [False, True]
    assert backend.load("victim", memoryview(bytearray(N))).wait(10).state is FAILED
    assert _load(backend, "kept")[:2] == (DONE, b"k" * N)
    assert backend.stats()["blocks"] == 1
    _save(backend, "next")
    assert _offset(backend, "next") == SLOT  # the crashed writer's slot is reused
    backend.close()


def test_a_slot_whose_commit_marker_was_not_written_is_not_served(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    _save(backend, "k")
    segment, offset = backend.locate("k")  # type: ignore[misc]
    with segment.open("r+b") as f:  # as if the marker never reached the disk
        f.seek(offset + MARKER_OFFSET)
        f.write(bytes(4))
    state, _, error = _load(backend, "k")
    assert state is FAILED and "not committed" in error
    backend.close()
    again = DiskBackend(tmp_path, N)
    assert again.lookup(["k"]) == [False]
    assert again.stats()["blocks"] == 0
    _save(again, "other")
    assert _offset(again, "other") == 0  # an uncommitted slot is a free slot
    again.close()


def test_a_stale_marker_never_commits_a_new_header(tmp_path: Path) -> None:
    """A slot's old marker is tied to the old header's CRC: a new header written over it (the
    crash case: header and payload written, marker not yet) is not committed."""
    backend = DiskBackend(tmp_path, N)
    _save(backend, "old")
    backend.close()
    with (tmp_path / SEGMENT).open("r+b") as f:
        f.write(encode_slot_header("new", 0, N, 99)[:MARKER_OFFSET])  # marker bytes left as is
    again = DiskBackend(tmp_path, N)
    assert again.lookup(["old", "new"]) == [False, False]
    again.close()


def test_damaged_slot_headers_are_not_indexed(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    for key in ("a", "b", "c"):
        _save(backend, key)
    backend.close()
    with (tmp_path / SEGMENT).open("r+b") as f:
        f.seek(SLOT + 40)  # a bit of b's key (the header CRC catches it)
        byte = f.read(1)
        f.seek(SLOT + 40)
        f.write(bytes([byte[0] ^ 0x01]))
        f.seek(2 * SLOT)  # c: magic gone
        f.write(b"XXXX")
    again = DiskBackend(tmp_path, N)
    assert again.lookup(["a", "b", "c"]) == [True, False, False]
    again.close()


def test_torn_payload_under_a_committed_header_fails_the_load(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    data = _save(backend, "k")
    backend.close()
    with (tmp_path / SEGMENT).open("r+b") as f:
        f.seek(SLOT_HEADER_NBYTES + N // 2)
        f.write(bytes(N // 2))  # the second half of the payload never made it
    again = DiskBackend(tmp_path, N)
    assert again.lookup(["k"]) == [True]  # the header is fine; only the load can tell
    state, out, error = _load(again, "k")
    assert state is FAILED and "checksum mismatch" in error and out != data
    again.close()


def test_a_block_that_fails_its_check_is_forgotten(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    _save(backend, "k")
    keep = _save(backend, "other")
    with (tmp_path / SEGMENT).open("r+b") as f:  # a flipped bit under the live backend
        f.seek(_offset(backend, "k") + SLOT_HEADER_NBYTES + 7)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    state, _, error = _load(backend, "k")
    assert state is FAILED and "checksum mismatch" in error
    assert backend.lookup(["k", "other"]) == [False, True]  # no promise every load breaks
    assert _load(backend, "other")[:2] == (DONE, keep)
    _save(backend, "k")  # the bad slot cleared and reusable
    assert _load(backend, "k")[0] is DONE
    backend.close()
    again = DiskBackend(tmp_path, N)
    assert again.lookup(["k", "other"]) == [True, True]
    again.close()


class _PausedRead:
    """Stands in for ``disk._pread_all``: the first read of a header and a payload (a load)
    stops after the header until ``resume`` is set, as a reader preempted there would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paused, self.resume = threading.Event(), threading.Event()
        self.armed = True
        self.real = disk._pread_all
        monkeypatch.setattr(disk, "_pread_all", self)

    def __call__(self, fd: int, parts: list[memoryview], offset: int) -> int:
        if not self.armed or len(parts) < 2:
            return self.real(fd, parts, offset)
        self.armed = False
        got = self.real(fd, parts[:1], offset)
        self.paused.set()
        assert self.resume.wait(10)
        return got + self.real(fd, parts[1:], offset + got)


def _load_in_thread(backend: DiskBackend, key: str, out: bytearray
                    ) -> tuple[threading.Thread, list[object]]:
    """``backend._load(key, out)`` on a thread of its own (started), and where its result or
    its BackendError will be."""
    results: list[object] = []

    def run() -> None:
        try:
            results.append(backend._load(key, memoryview(out)))
        except BackendError as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


@pytest.mark.parametrize("path", ["load", "_load"])
def test_a_slot_reused_under_a_paused_load_never_serves_the_other_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The reader has read a's header; meanwhile a is deleted and b saved into the same slot.
    Even with b's checksum passing for a (forced here), the load must not return b's bytes
    as a's."""
    monkeypatch.setattr(disk, "block_crc", lambda key, buf: 0)  # every payload CRC "matches"
    backend = DiskBackend(tmp_path, N, io_threads=2, fsync=False)
    _save(backend, "a")
    pause = _PausedRead(monkeypatch)
    out = bytearray(N)
    if path == "load":
        transfer = backend.load("a", memoryview(out))
    else:  # the single-block path, which the batch path falls back to
        thread, results = _load_in_thread(backend, "a", out)
    assert pause.paused.wait(10)
    backend.delete(["a"])
    other = _save(backend, "b")
    assert _offset(backend, "b") == 0  # a's slot
    pause.resume.set()
    if path == "load":
        result = transfer.wait(10)
        assert result.state is FAILED and "not found" in result.error
    else:
        thread.join(10)
        assert isinstance(results[0], BackendError) and "not found" in str(results[0])
    assert bytes(out) == other  # the bytes were read: only the header re-check caught them
    backend.close()


def test_a_slot_reused_by_another_process_under_a_paused_load_is_caught(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader does not own the segment, so it cannot know of the reuse: it always
    re-reads the header (its own releases only vouch for its own segments)."""
    monkeypatch.setattr(disk, "block_crc", lambda key, buf: 0)  # every payload CRC "matches"
    writer = DiskBackend(tmp_path, N, fsync=False)
    _save(writer, "a")
    reader = DiskBackend(tmp_path, N)  # the segment is held by the writer: read only here
    pause = _PausedRead(monkeypatch)
    transfer = reader.load("a", memoryview(bytearray(N)))
    assert pause.paused.wait(10)
    writer.delete(["a"])
    _save(writer, "b")
    assert _offset(writer, "b") == 0  # a's slot
    pause.resume.set()
    result = transfer.wait(10)
    assert result.state is FAILED and "holds 'b'" in result.error
    assert reader.lookup(["a"]) == [False]
    reader.close()
    writer.close()


def test_a_key_resaved_into_its_slot_under_a_paused_load_is_loaded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete + re-save of the same key into the same slot while a read is in flight: the
    index points at the slot again, yet the read mixed two versions; look again, not fail."""
    backend = DiskBackend(tmp_path, N, io_threads=2, fsync=False)
    _save(backend, "k")
    pause = _PausedRead(monkeypatch)
    out = bytearray(N)
    thread, results = _load_in_thread(backend, "k", out)
    assert pause.paused.wait(10)
    backend.delete(["k"])
    new = _save(backend, "k")
    assert _offset(backend, "k") == 0
    pause.resume.set()
    thread.join(10)
    assert results == [N] and bytes(out) == new
    assert backend.lookup(["k"]) == [True]
    backend.close()


def test_index_is_rebuilt_at_open(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    blocks = {f"k{i}": _save(backend, f"k{i}") for i in range(10)}
    backend.delete(["k3", "k7"])
    blocks["k5"] = _save(backend, "k5")  # a re-save goes to a new slot; the newest wins
    backend.close()
    again = DiskBackend(tmp_path, N, capacity_blocks=8)
    assert again.stats()["blocks"] == 8
    assert again.lookup([f"k{i}" for i in range(10)]) == [i not in (3, 7) for i in range(10)]
    for key in blocks:
        if key not in ("k3", "k7"):
            assert _load(again, key)[:2] == (DONE, blocks[key]), key
    # the rebuilt LRU order follows the saves: k0 is the oldest, k5 (re-saved) the newest
    _save(again, "new")
    assert again.lookup(["k0", "k5", "new"]) == [False, True, True]
    again.close()


def test_a_deleted_slot_is_reused(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    for key in ("a", "b", "c"):
        _save(backend, key)
    freed = _offset(backend, "b")
    backend.delete(["b"])
    assert backend.scan_committed() == ["a", "c"]  # cleared on disk, not only forgotten
    # the slot is reused once its cleared header is durable (the next commit fdatasyncs it)
    _save(backend, "d")
    _save(backend, "e")
    assert freed in (_offset(backend, "d"), _offset(backend, "e"))
    assert (tmp_path / SEGMENT).stat().st_size == 4 * SLOT
    backend.close()


def test_a_deleted_slot_is_reused_at_once_without_fsync(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N, fsync=False)
    for key in ("a", "b", "c"):
        _save(backend, key)
    freed = _offset(backend, "b")
    backend.delete(["b"])
    data = _save(backend, "d")
    assert _offset(backend, "d") == freed
    assert _load(backend, "d")[:2] == (DONE, data)
    assert backend.lookup(["b"]) == [False]
    backend.close()


def test_segments_fill_then_a_new_one_starts(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N, slots_per_segment=2)
    blocks = {f"k{i}": _save(backend, f"k{i}") for i in range(5)}
    assert [p.name for p in _files(tmp_path)] == [f"b{N}-0000{i}.kvs" for i in range(3)]
    backend.close()
    again = DiskBackend(tmp_path, N, slots_per_segment=2)
    for key, data in blocks.items():
        assert _load(again, key)[:2] == (DONE, data)
    again.close()


def test_a_reopen_with_fewer_slots_per_segment_still_finds_every_block(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N, slots_per_segment=8)
    blocks = {f"k{i}": _save(backend, f"k{i}") for i in range(6)}
    backend.close()
    again = DiskBackend(tmp_path, N, slots_per_segment=2)
    assert again.stats()["blocks"] == 6
    _save(again, "new")  # segment 0 counts as full: a new one starts
    assert again.locate("new")[0].name == f"b{N}-00001.kvs"  # type: ignore[index]
    for key, data in blocks.items():
        assert _load(again, key)[:2] == (DONE, data)
    again.close()


def test_another_block_size_on_the_same_root_is_separate(tmp_path: Path) -> None:
    small, big = DiskBackend(tmp_path, N), DiskBackend(tmp_path, 2 * N)
    a = _save(small, "k")
    big_data = os.urandom(2 * N)
    assert big.save("k", big_data).wait(10).state is DONE
    assert _load(small, "k")[:2] == (DONE, a)
    out = bytearray(2 * N)
    assert big.load("k", memoryview(out)).wait(10).state is DONE and out == big_data
    small.close()
    big.close()


def test_two_live_backends_on_one_root_write_their_own_segments(tmp_path: Path) -> None:
    """The workers of one engine share a root: each holds (flock) the segments it writes."""
    one, two = DiskBackend(tmp_path, N), DiskBackend(tmp_path, N)
    blocks = {}
    for i in range(4):
        blocks[f"r0.{i}"] = _save(one, f"r0.{i}")
        blocks[f"r1.{i}"] = _save(two, f"r1.{i}")
    assert len(_files(tmp_path)) == 2
    assert one.locate("r0.0")[0] != two.locate("r1.0")[0]  # type: ignore[index]
    for key, data in blocks.items():
        assert _load(one if key.startswith("r0") else two, key)[:2] == (DONE, data)
    one.close()
    two.close()
    third = DiskBackend(tmp_path, N)  # finds both, and may write to both now
    for key, data in blocks.items():
        assert _load(third, key)[:2] == (DONE, data)
    third.close()


@pytest.mark.parametrize("key", ["..", ".", "...", "a..b", ":", "-", "_.kv", "x" * 200])
def test_odd_but_valid_keys_round_trip_and_persist(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    backend = DiskBackend(root, N)
    data = _save(backend, key)
    assert [p.name for p in _files(tmp_path)] == [SEGMENT]  # a key never names a file
    assert _load(backend, key)[:2] == (DONE, data)
    backend.close()
    again = DiskBackend(root, N)
    assert _load(again, key)[:2] == (DONE, data)
    again.close()


@pytest.mark.parametrize("key", ["../escape", "../../etc/passwd", "/tmp/abs", "a/../../b", "~"])
def test_bad_keys_touch_nothing(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    backend = DiskBackend(root, N)
    with pytest.raises(ValueError):
        backend.save(key, bytes(N))
    with pytest.raises(ValueError):
        backend.locate(key)
    assert _files(tmp_path) == []
    backend.close()


def test_blocks_survive_a_reopen(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    data = _save(backend, "k")
    backend.close()
    again = DiskBackend(tmp_path, N)
    assert again.stats()["blocks"] == 1
    assert again.lookup(["k"]) == [True]
    assert _load(again, "k")[:2] == (DONE, data)
    again.close()


def test_capacity_evicts_least_recently_used(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N, capacity_blocks=3)
    for k in "abc":
        _save(backend, k)
    assert backend.lookup(["a"]) == [True]  # touch a
    _save(backend, "d")  # evicts b
    assert backend.lookup(list("abcd")) == [True, False, True, True]
    assert backend.scan_committed() == ["a", "c", "d"]
    stats = backend.stats()
    assert (stats["evictions"], stats["blocks"], stats["capacity_blocks"]) == (1, 3, 3)
    backend.close()


def test_no_fsync_mode_round_trips(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N, fsync=False)
    data = _save(backend, "k")
    assert _load(backend, "k")[:2] == (DONE, data)
    backend.close()


def test_many_saves_share_few_fdatasyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    backend = DiskBackend(tmp_path, N, io_threads=2)
    transfers = [backend.save(f"k{i}", os.urandom(N)) for i in range(200)]
    assert all(t.wait(10).state is DONE for t in transfers)
    assert 1 <= len(calls) < 200
    backend.close()


def test_commit_markers_are_synced_before_done(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """DONE means durable: the marker writes of a group are followed by an fdatasync of
    their segment before any save of the group is reported."""
    events: list[tuple[str, int]] = []
    real_pwrite, real_sync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if offset % SLOT == MARKER_OFFSET and len(data) == 4:
            events.append(("marker", fd))
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        real_sync(fd)
        events.append(("sync", fd))

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    backend = DiskBackend(tmp_path, N)
    real_finish = backend._finish

    def finish(ops, result=None):  # type: ignore[no-untyped-def]
        if any(op.buf.readonly for op in ops):  # saves (a load's target is writable)
            events.append(("done", -1))
        real_finish(ops, result)

    monkeypatch.setattr(backend, "_finish", finish)
    transfers = [backend.save(f"k{i}", os.urandom(N)) for i in range(20)]
    assert all(t.wait(10).state is DONE for t in transfers)
    backend.close()
    assert ("done", -1) in events
    for i, (what, fd) in enumerate(events):
        if what == "marker":
            rest = events[i + 1:]
            done = rest.index(("done", -1))
            assert ("sync", fd) in rest[:done], events


def test_a_new_segment_is_fsynced_into_its_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", fsync)
    backend = DiskBackend(tmp_path / "s", N, slots_per_segment=2)
    for key in "abc":
        _save(backend, key)
    backend.close()
    assert synced == [str(tmp_path / "s")] * 2  # once per segment created


class _Boom(BaseException):
    pass


def test_a_base_exception_in_an_io_thread_does_not_stall_later_transfers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = DiskBackend(tmp_path, N, io_threads=1)
    real = backend._save_batch
    calls = []

    def save_batch(saves):  # type: ignore[no-untyped-def]
        calls.append(len(saves))
        if len(calls) == 1:
            raise _Boom("simulated")
        real(saves)

    monkeypatch.setattr(backend, "_save_batch", save_batch)
    result = backend.save("a", os.urandom(N)).wait(10)
    assert result.state is FAILED and "_Boom" in result.error
    assert backend.save("b", os.urandom(N)).wait(10).state is DONE  # a runner started again
    assert _load(backend, "b")[0] is DONE
    backend.close()


def test_saves_written_during_a_commit_that_raises_are_not_left_pending(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = DiskBackend(tmp_path, N, io_threads=2)
    committing, more_written = threading.Event(), threading.Event()
    real_commit = backend._commit

    def commit(saves):  # type: ignore[no-untyped-def]
        if not committing.is_set():
            committing.set()
            assert more_written.wait(10)
            raise RuntimeError("simulated commit bug")
        real_commit(saves)

    real_save_batch = backend._save_batch

    def save_batch(saves):  # type: ignore[no-untyped-def]
        real_save_batch(saves)
        if committing.is_set():  # handed to the committing thread, which is stuck
            more_written.set()

    monkeypatch.setattr(backend, "_commit", commit)
    monkeypatch.setattr(backend, "_save_batch", save_batch)
    first = backend.save("a", os.urandom(N))
    assert committing.wait(10)
    second = backend.save("b", os.urandom(N))
    assert first.wait(10).state is FAILED
    assert second.wait(10).state is not PENDING
    assert backend.save("c", os.urandom(N)).wait(10).state is DONE
    backend.close()


def test_a_failed_open_leaves_no_file_descriptor(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    backend = DiskBackend(tmp_path, N, slots_per_segment=1)
    for key in "abc":
        _save(backend, key)
    backend.close()
    before = len(os.listdir("/proc/self/fd"))

    def broken(self, segment):  # type: ignore[no-untyped-def]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(DiskBackend, "_scan_segment", broken)
    with pytest.raises(OSError, match="Input/output error"):
        DiskBackend(tmp_path, N)
    assert len(os.listdir("/proc/self/fd")) == before


# ---- a shared host: trust nothing the store did not make ------------------------------------

def test_files_and_directories_are_private(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path / "s", N)
    _save(backend, "k")
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "s" / SEGMENT).stat().st_mode & 0o777 == 0o600
    backend.close()


def test_a_root_others_can_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(BackendError, match="writable by group or others"):
        DiskBackend(root, N)


def test_a_root_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(private)
    for root in (link, str(link) + "/", os.path.relpath(link)):
        with pytest.raises(BackendError, match="symbolic link"):
            DiskBackend(root, N)
    assert list(private.iterdir()) == []
    DiskBackend(private, N).close()  # the directory itself is fine


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_a_root_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    os.chown(root, 12345, 12345)
    with pytest.raises(BackendError, match="owned by uid 12345"):
        DiskBackend(root, N)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_segment_owned_by_another_user_is_ignored(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    _save(backend, "k")
    backend.close()
    os.chown(tmp_path / SEGMENT, 12345, 12345)
    again = DiskBackend(tmp_path, N)
    assert again.lookup(["k"]) == [False]
    again.close()


def test_a_link_planted_as_a_segment_is_neither_followed_nor_served(tmp_path: Path) -> None:
    root = tmp_path / "s"
    backend = DiskBackend(root, N)
    _save(backend, "k")
    backend.close()
    secret = tmp_path / "secret"
    os.replace(root / SEGMENT, secret)  # a valid segment, now outside the root
    before = secret.read_bytes()
    (root / SEGMENT).symlink_to(secret)
    again = DiskBackend(root, N)
    assert again.lookup(["k"]) == [False]
    result = again.load("k", memoryview(bytearray(N))).wait(10)
    assert result.state is FAILED and "not found" in result.error
    _save(again, "k")  # goes to a new segment, never through the link
    assert again.locate("k")[0].name == f"b{N}-00001.kvs"  # type: ignore[index]
    assert (root / SEGMENT).is_symlink() and secret.read_bytes() == before
    again.close()


def test_a_fifo_planted_as_a_segment_does_not_hang_the_backend(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir(mode=0o700)
    os.mkfifo(root / SEGMENT)
    backend = DiskBackend(root, N)  # opening a FIFO without a writer would block: it must not
    assert backend.lookup(["k"]) == [False]
    data = _save(backend, "k")
    assert _load(backend, "k")[:2] == (DONE, data)
    assert backend.locate("k")[0].name == f"b{N}-00001.kvs"  # type: ignore[index]
    backend.close()


def test_the_connectors_default_disk_root_is_private(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from streamcheck.connector.backends.disk import default_root
    from streamcheck.connector.config import ConnectorConfig

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache" / "streamcheck" / "kv"
    backend = ConnectorConfig.from_extra({"backend": "disk"}).make_backend(N)
    assert backend.root == (tmp_path / "cache" / "streamcheck" / "kv").resolve()
    assert not str(backend.root).startswith("/tmp/streamcheck")
    backend.close()
