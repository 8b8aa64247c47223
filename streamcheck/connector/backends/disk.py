"""Local-disk backend: blocks in fixed-size slots of a few segment files, checked on load.

Layout: ``root/b<block_nbytes>-<n>.kvs`` segment files of ``slots_per_segment`` slots each. A
slot is a header page (4 KiB, so the payload is page aligned) followed by the payload, padded
to 4 KiB. The header holds a magic, the payload length, the key-seeded CRC-32 of the payload
(``blockformat.block_crc``), the key itself, a sequence number, a CRC of the header, and last a
commit marker derived from that header CRC. Saves and loads are one ``pwritev``/``preadv`` at
the slot's offset into file descriptors opened once: no file is created or opened per block (on
ext4 the per-file inode allocation bounded the former one-file-per-block layout to a few % of
the disk's sequential rate; files of that layout left under a root are ignored, not migrated).
The in-memory index (key -> slot, in LRU order of sequence numbers) is rebuilt at open by
reading every slot's header, so a new backend on the same root finds the blocks committed
before.

A save writes header (commit marker zero) + payload into a free slot (one ``pwritev``). Saves
are group-committed: one IO thread at a time commits every save written so far (by any thread):
one fdatasync of the segments they wrote, then each slot's commit marker, then a second
fdatasync of those segments (it writes back only the marker pages), then the slots go into the
index, and only then are the saves reported DONE; the other IO threads keep writing meanwhile.
The marker reaches the disk only after the payload it vouches for did, so after a crash a slot
is either committed and whole, or uncommitted and free (a miss); and a save reported DONE (with
``fsync``) is durable: its payload and its marker were fdatasynced, and a segment file's
directory entry is fsynced when the file is created, before any slot in it is used. (If the
second fdatasync fails, the saves are reported FAILED and their headers cleared; a marker of
such a save that did reach the disk may still commit the block after a crash, whole.) Without
``fsync`` nothing is synced: a crash may lose any recent save, and a slot may then hold a
marker over a torn payload, which the payload CRC rejects at load. A load checks the header
CRC, the marker, the key and the length, then the payload's CRC: a torn write, a flipped bit or
a block under the wrong key fails the load, never returns wrong bytes. A block that fails its
checks while its slot is unchanged (not a race, below) is forgotten: dropped from the index,
its slot cleared and reused if this backend owns the segment. After the payload a load reads
the slot's header again (unless no slot of this backend's own segments was released meanwhile)
and requires it unchanged (same key, sequence number and marker): a slot cleared or reused (by
a delete and another save) while its payload was read is never vouched for by the payload CRC
alone; such a load, or one that failed its checks because of such a race, looks the key up
again. Sequence numbers are a counter in the high 32 bits (the newest copy of a key wins at
open) and a random tag of the backend in the low 32, so two processes never write the same one.
``lookup`` answers from the index and only sees published (committed) slots. Loads of
consecutive slots are read with one ``preadv``, by at most ``LOAD_STREAMS`` threads at once.

A delete (or an eviction, or a re-save of the key, which goes to a new slot) overwrites the
slot's header page with zeros; the slot is reused only after that has been fdatasynced (by the
next commit), so a crash can never revive an old header over a half-written new payload. A
crashed writer leaves only uncommitted slots, which the next backend on the root frees at open
(older copies of a key saved again are cleared then too).

Processes: every segment a backend writes to is held with ``flock(LOCK_EX)``: a backend writes
only to segments it holds (those it created, or found unheld at open), so two processes on one
root (the workers of one engine) never write the same slot. It indexes committed blocks of
every segment at open, and may load blocks from segments another live process holds (a mixed
read is caught by the checks above); deleting such a block only forgets it here.

Capacity (optional): the least recently used blocks are deleted past ``capacity_blocks``. The
count is this process's view, so give each backend with a capacity its own ``root``. (In the
connector the scheduler bounds the disk store itself; see ``connector.placement``.)

On a shared host the store trusts nothing it did not make. The root must be a real directory
(not a symbolic link) owned by this user and not writable by group or others (it is created
0700, segment files 0600): whoever can write there could plant blocks, and the CRC-32 of each
block guards against accidents (torn writes, flipped bits, a block under the wrong key), not
against someone forging a block with a matching checksum. Segment files are opened with
``O_NOFOLLOW`` and ``O_NONBLOCK`` and must be regular files owned by this user, so a planted
link cannot send a read or write elsewhere and a planted FIFO cannot hang a thread; anything
else under the root is ignored. The default root is private to the user (``default_root()``,
under ``$XDG_CACHE_HOME``), never ``/tmp``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import ctypes.util
import fcntl
import heapq
import os
import re
import stat
import struct
import sys
import threading
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamcheck.connector.backends.base import (
    KEY_PATTERN,
    PENDING_RESULT,
    BackendError,
    Transfer,
    TransferResult,
    TransferState,
    as_block_view,
    validate_key,
    validate_keys,
)
from streamcheck.connector.backends.blockformat import block_crc
from streamcheck.connector.backends.transfers import Counters, failed

ALIGN = 4096
SLOT_MAGIC = b"SCKS"
SLOT_VERSION = 1
# the payload starts here in every slot: on a page boundary, so writing a block never has the
# kernel read back a partly overwritten page (measured: 2-5x slower saves into reused slots
# with a 512-byte header)
SLOT_HEADER_NBYTES = ALIGN
# magic, version, header length, payload length, payload CRC, key length, seq, key, header CRC
_SLOT = struct.Struct("<4sHHQIH2xQ200sI")
_MARKER = struct.Struct("<I")
MARKER_OFFSET = _SLOT.size  # the commit marker follows the header, written last
_COMMIT_XOR = 0x5C0A11ED
_HEADER_CRC_SPAN = _SLOT.size - 4
SEGMENT_TARGET_NBYTES = 256 << 20
SEGMENT_SUFFIX = ".kvs"
SAVE_BATCH = 64  # saves one IO thread writes before its one fdatasync
LOAD_BATCH = 64
# threads reading loads at once: each reads up to LOAD_BATCH slots in order, and the kernel's
# readahead of a segment follows one or two such streams, not four (measured on the 2-core
# machine, cold page cache: 1-2 readers 2.0-2.4 GB/s, 4 readers 1.2-1.9 GB/s)
LOAD_STREAMS = 2
_RUN_SLOTS = 256  # slots in one preadv: 3 buffers each, under IOV_MAX (1024)
_OPEN_SEGMENT = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_CLEARED = bytes(SLOT_HEADER_NBYTES)  # a whole header page: no read-modify-write to clear
_HEADER_CHECK_NBYTES = MARKER_OFFSET + _MARKER.size  # the header through its commit marker


def default_root() -> Path:
    """A directory private to this user: ``$XDG_CACHE_HOME/streamcheck/kv``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "streamcheck" / "kv"


def private_dir(path: Path) -> None:
    """Make ``path`` (0700) if it is missing, then refuse it unless it is a real directory of
    this user's that nobody else can write."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise BackendError(f"refusing {path}: it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise BackendError(f"refusing {path}: not a directory")
    if st.st_uid != os.getuid():
        raise BackendError(f"refusing {path}: owned by uid {st.st_uid}, not by this user "
                           f"({os.getuid()}); its owner could plant blocks that load as valid")
    if st.st_mode & 0o022:
        raise BackendError(f"refusing {path}: writable by group or others "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); use a private directory")


def slot_nbytes(block_nbytes: int) -> int:
    """Bytes of one slot: the header, the payload, padding to 4 KiB."""
    return -(-(SLOT_HEADER_NBYTES + block_nbytes) // ALIGN) * ALIGN


def encode_slot_header(key: str, crc: int, nbytes: int, seq: int) -> bytearray:
    """The slot header (one 4 KiB page) with its commit marker still zero."""
    raw = key.encode("ascii")
    header = bytearray(SLOT_HEADER_NBYTES)
    _SLOT.pack_into(header, 0, SLOT_MAGIC, SLOT_VERSION, SLOT_HEADER_NBYTES, nbytes, crc,
                    len(raw), seq, raw, 0)
    struct.pack_into("<I", header, _HEADER_CRC_SPAN,
                     zlib.crc32(memoryview(header)[:_HEADER_CRC_SPAN]))
    return header


def commit_marker(header: bytes | bytearray | memoryview) -> bytes:
    """The marker that commits ``header``: tied to its CRC, so a stale marker of an earlier
    occupant of the slot never commits a new header."""
    (header_crc,) = struct.unpack_from("<I", header, _HEADER_CRC_SPAN)
    return _MARKER.pack(header_crc ^ _COMMIT_XOR)


@dataclass(frozen=True)
class SlotHeader:
    key: str
    nbytes: int
    crc: int
    seq: int
    committed: bool


def decode_slot_header(header: bytes | bytearray | memoryview) -> SlotHeader:
    """Parse and check a slot header (not the payload); ``BackendError`` says what is wrong."""
    if len(header) < MARKER_OFFSET + _MARKER.size:
        raise BackendError(f"corrupt block: truncated slot header ({len(header)} bytes)")
    magic, version, header_nbytes, nbytes, crc, key_len, seq, raw, header_crc = (
        _SLOT.unpack_from(header))
    if magic != SLOT_MAGIC:
        raise BackendError(f"corrupt block: bad magic {magic!r}")
    if version != SLOT_VERSION or header_nbytes != SLOT_HEADER_NBYTES:
        raise BackendError(f"unsupported slot format version {version} (header {header_nbytes})")
    if zlib.crc32(memoryview(header)[:_HEADER_CRC_SPAN]) != header_crc:
        raise BackendError("corrupt block: slot header checksum mismatch")
    key = raw[:key_len].decode("ascii", "replace")
    if key_len > len(raw) or KEY_PATTERN.fullmatch(key) is None:
        raise BackendError("corrupt block: invalid key in slot header")
    (marker,) = _MARKER.unpack_from(header, MARKER_OFFSET)
    return SlotHeader(key, nbytes, crc, seq, marker == header_crc ^ _COMMIT_XOR)


@dataclass
class _Segment:
    number: int
    path: str
    fd: int
    owned: bool  # held with flock(LOCK_EX): this backend may write here
    used: int = 0  # slots below this index exist in the file (or are being written)


class _Op:
    """One queued save or load, and its own transfer handle.

    One small object per block, no ``concurrent.futures.Future`` (a condition, a lock and a
    deque each): the IO threads finish a whole batch and wake its waiters through the
    backend's one condition. Fewer objects for the garbage collector to track mattered: with
    torch imported, a full collection took ~100 ms on the 2-core machine and came every few
    thousand blocks."""

    __slots__ = ("_cond", "buf", "error", "fd", "header", "key", "result", "seq", "slot")

    def __init__(self, key: str, buf: memoryview, cond: threading.Condition) -> None:
        self.key = key
        self.buf = buf
        self.slot: tuple[int, int] | None = None
        self.seq = 0
        self.fd = -1
        self.header = b""
        self.error = ""
        self.result = PENDING_RESULT
        self._cond = cond

    def poll(self) -> TransferResult:
        return self.result

    def wait(self, timeout: float | None = None) -> TransferResult:
        if self.result is PENDING_RESULT:
            with self._cond:
                self._cond.wait_for(lambda: self.result is not PENDING_RESULT, timeout)
        return self.result

    def __repr__(self) -> str:
        return f"DiskTransfer({self.key!r}, {self.result})"


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` (not in ``os``), or ``None`` where it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Have the kernel start writing this range to disk now (no wait, no durability): the
    fdatasync of the commit then finds most of a batch on disk already. Best effort."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _past(parts: list[memoryview], n: int) -> list[memoryview]:
    """What is left of ``parts`` once a vectored call moved its first ``n`` bytes."""
    while parts and n >= len(parts[0]):
        n -= len(parts[0])
        parts = parts[1:]
    if parts and n:
        parts = [parts[0][n:], *parts[1:]]
    return parts


def _pwrite_all(fd: int, parts: list[memoryview], offset: int) -> None:
    while parts:
        written = os.pwritev(fd, parts, offset)
        if written == 0:
            raise OSError("pwritev wrote nothing")
        offset += written
        parts = _past(parts, written)


def _pread_all(fd: int, parts: list[memoryview], offset: int) -> int:
    """Fill ``parts`` in order from ``offset`` (one ``preadv`` unless it comes back short)
    until all are full or the file ends; return the bytes read."""
    want = sum(len(p) for p in parts)
    got = 0
    while got < want:
        n = os.preadv(fd, parts, offset + got)
        if n == 0:
            break
        got += n
        parts = _past(parts, n)
    return got


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskBackend:
    """KV blocks in checksummed slots of segment files under ``root``; ``io_threads`` threads
    do the IO (saves in batches that share one fdatasync)."""

    name = "disk"

    def __init__(self, root: str | os.PathLike[str], block_nbytes: int, io_threads: int = 2,
                 capacity_blocks: int | None = None, fsync: bool = True,
                 stale_tmp_s: float = 600.0, slots_per_segment: int | None = None) -> None:
        """``stale_tmp_s`` is accepted for compatibility: this layout has no temp files (a
        crashed writer's uncommitted slots are freed at open, see the module docstring)."""
        if block_nbytes < 1:
            raise ValueError("block_nbytes must be >= 1")
        if capacity_blocks is not None and capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1 or None")
        if io_threads < 1:
            raise ValueError("io_threads must be >= 1")
        # as given, not resolved: a symbolic link as the root itself is refused (private_dir
        # lstat()s it), not followed
        self.root = Path(root).absolute()
        self.block_nbytes = block_nbytes
        self.capacity_blocks = capacity_blocks
        self.fsync = fsync
        self.slot_nbytes = slot_nbytes(block_nbytes)
        self.slots_per_segment = slots_per_segment or max(
            1, SEGMENT_TARGET_NBYTES // self.slot_nbytes)
        self._prefix = f"b{block_nbytes}-"
        self._lock = threading.Lock()  # the index, the free slots and the segment table
        self._index: OrderedDict[str, tuple[int, int]] = OrderedDict()  # oldest use first
        self._segments: dict[int, _Segment] = {}
        self._free: list[tuple[int, int]] = []  # a heap: the lowest slot is reused first
        self._freeing: list[tuple[int, int]] = []  # header cleared, not yet fdatasynced
        # slots of owned segments released so far: while this is unchanged, no slot this
        # backend indexed in its own segments was cleared or reused (loads skip the re-check)
        self._releases = 0
        # sequence numbers: a counter (newest wins at open) in the high 32 bits, a tag of this
        # backend in the low 32, so two processes never write the same number
        self._seq = 0
        self._seq_tag = int.from_bytes(os.urandom(4), "little")
        self._counters = Counters()
        private_dir(self.root)
        try:
            self._open_segments()
        except BaseException:
            for segment in self._segments.values():  # no file descriptor left behind
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
            self._segments.clear()
            raise
        # the IO threads: saves and loads queue here; up to io_threads runners drain them
        self._queue_lock = threading.Lock()
        self._saves: deque[_Op] = deque()
        self._loads: deque[_Op] = deque()
        self._done = threading.Condition()  # notified when a batch of transfers ends
        self._done_result = TransferResult(TransferState.DONE, nbytes=block_nbytes)
        self._runners = 0
        self._loading = 0  # runners reading a batch of loads now (at most LOAD_STREAMS)
        self._max_runners = io_threads
        self._commit_lock = threading.Lock()
        self._written: list[_Op] = []  # written into their slots, not yet committed
        self._committing = False
        self._closed = False
        self._executor = cf.ThreadPoolExecutor(max_workers=io_threads,
                                               thread_name_prefix="kv-disk-io")

    # ------------------------------------------------------------------ opening the store

    def _open_segments(self) -> None:
        """Open, lock where unheld, and scan every segment of this block size; index the
        committed blocks (newest sequence number wins), free the other slots of held ones."""
        pattern = re.compile(re.escape(self._prefix) + r"(\d{5,9})" + re.escape(SEGMENT_SUFFIX))
        found: dict[str, tuple[int, tuple[int, int]]] = {}
        committed: set[tuple[int, int]] = set()
        for name in sorted(os.listdir(self.root)):
            match = pattern.fullmatch(name)
            if match is None:
                continue
            segment = self._open_segment(int(match.group(1)), create=False)
            if segment is None:
                continue
            for index, header in self._scan_segment(segment):
                if header is not None and header.committed:
                    committed.add((segment.number, index))
                    seen = found.get(header.key)
                    if seen is None or header.seq > seen[0]:
                        found[header.key] = (header.seq, (segment.number, index))
                    self._seq = max(self._seq, header.seq >> 32)
        live = {slot for _, slot in found.values()}
        stale: set[int] = set()
        for segment in self._segments.values():
            if segment.owned:
                for index in range(segment.used):
                    slot = (segment.number, index)
                    if slot in live:
                        continue
                    if slot in committed:  # an older copy of a key saved again since
                        os.pwrite(segment.fd, _CLEARED, index * self.slot_nbytes)
                        stale.add(segment.number)
                    self._free.append(slot)
        if self.fsync:  # cleared for good before any of these slots is written again
            for number in stale:
                os.fdatasync(self._segments[number].fd)
        heapq.heapify(self._free)
        for key, (_, slot) in sorted(found.items(), key=lambda item: item[1][0]):
            self._index[key] = slot

    def _open_segment(self, number: int, create: bool) -> _Segment | None:
        """Open one segment file (``create``: a new one, exclusively); ``None`` for anything
        that is not a regular file of this user's (links, FIFOs...), which is never used."""
        path = os.path.join(self.root, f"{self._prefix}{number:05d}{SEGMENT_SUFFIX}")
        flags = _OPEN_SEGMENT | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            if create:
                raise
            return None
        except OSError:  # ELOOP: a symbolic link planted under a segment's name; or gone
            if create:
                raise
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                os.close(fd)
                return None
            os.set_blocking(fd, True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                owned = True
            except BlockingIOError:
                owned = False  # another live backend writes here: read only
            if create and self.fsync:  # the new file's directory entry is durable before
                _fsync_dir(self.root)  # any block in it is reported saved
        except BaseException:
            os.close(fd)
            raise
        used = -(-st.st_size // self.slot_nbytes)  # full at slots_per_segment, not capped
        segment = _Segment(number, path, fd, owned, used)
        self._segments[number] = segment
        return segment

    def _scan_segment(self, segment: _Segment) -> list[tuple[int, SlotHeader | None]]:
        headers: list[tuple[int, SlotHeader | None]] = []
        buf = bytearray(SLOT_HEADER_NBYTES)
        for index in range(segment.used):
            got = _pread_all(segment.fd, [memoryview(buf)], index * self.slot_nbytes)
            try:
                header = decode_slot_header(buf[:got])
            except BackendError:
                header = None
            if header is not None and header.nbytes != self.block_nbytes:
                header = None
            headers.append((index, header))
        return headers

    # ------------------------------------------------------------------ public API

    def segment_paths(self) -> list[Path]:
        """The segment files this backend has open (for benchmarks and tests)."""
        with self._lock:
            return [Path(s.path) for s in self._segments.values()]

    def locate(self, key: str) -> tuple[Path, int] | None:
        """The segment file and byte offset of ``key``'s committed slot, or ``None``."""
        key = validate_key(key)
        with self._lock:
            slot = self._index.get(key)
            if slot is None or slot[0] not in self._segments:
                return None
            return Path(self._segments[slot[0]].path), slot[1] * self.slot_nbytes

    def scan_committed(self) -> list[str]:
        """Keys of every committed slot in the open segments, read from disk now (not from
        the index): what a new backend on this root would find."""
        with self._lock:
            segments = list(self._segments.values())
        return sorted(h.key for s in segments for _, h in self._scan_segment(s)
                      if h is not None and h.committed)

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        keys = validate_keys(keys)
        if self._closed:
            return [False] * len(keys)
        found = []
        with self._lock:
            for key in keys:
                present = key in self._index
                if present:
                    self._index.move_to_end(key)
                found.append(present)
        return self._counters.lookup(found)

    def save(self, key: str, block: memoryview | bytes) -> Transfer:
        """Zero-copy: keep ``block`` alive and unchanged until the transfer is not PENDING."""
        source = as_block_view(block, self.block_nbytes, writable=False)
        return self._enqueue(self._saves, validate_key(key), source)

    def load(self, key: str, into: memoryview) -> Transfer:
        """Zero-copy: ``into`` is filled in place on an IO thread; leave it alone until done."""
        target = as_block_view(into, self.block_nbytes, writable=True)
        return self._enqueue(self._loads, validate_key(key), target)

    def _enqueue(self, queue: deque[_Op], key: str, view: memoryview) -> Transfer:
        """One save or load for the IO threads (failed at once once the backend is closed)."""
        op = _Op(key, view, self._done)
        with self._queue_lock:
            if self._closed:
                return failed(self._counters, "backend closed")
            queue.append(op)
            self._wake_locked()
        return op

    def delete(self, keys: Sequence[str]) -> None:
        keys = validate_keys(keys)
        with self._lock:
            for key in keys:
                slot = self._index.pop(key, None)
                if slot is not None:
                    self._release_locked(slot)

    def stats(self) -> dict[str, int | float]:
        stats = self._counters.snapshot()
        with self._lock:
            stats["blocks"] = len(self._index)
        if self.capacity_blocks is not None:
            stats["capacity_blocks"] = self.capacity_blocks
        return stats

    def close(self, drain: bool = True) -> None:
        """Finish queued saves and loads (``drain``), or cancel those not started; idempotent.
        Releases the segment files (and their locks)."""
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
            cancelled: list[_Op] = []
            if not drain:
                cancelled = [*self._saves, *self._loads]
                self._saves.clear()
                self._loads.clear()
        if cancelled:
            result = TransferResult(TransferState.FAILED, error="cancelled: backend closed")
            self._finish(cancelled, result)
            self._counters.add(failures=len(cancelled))
        self._executor.shutdown(wait=True)
        with self._lock:
            for segment in self._segments.values():
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
            self._segments.clear()

    # ------------------------------------------------------------------ slots

    def _release_locked(self, slot: tuple[int, int]) -> None:
        """Forget a committed slot: clear its header; reusable once that is durable."""
        segment = self._segments.get(slot[0])
        if segment is None or not segment.owned:
            return  # another process writes that segment (or closed): forget it here only
        self._releases += 1
        try:
            os.pwrite(segment.fd, _CLEARED, slot[1] * self.slot_nbytes)
        except OSError:
            return  # a slot we cannot clear is never reused
        if self.fsync:
            self._freeing.append(slot)
        else:
            heapq.heappush(self._free, slot)

    def _allocate_locked(self) -> tuple[int, int]:
        if self._free:
            return heapq.heappop(self._free)
        tail = max((s for s in self._segments.values() if s.owned and
                    s.used < self.slots_per_segment), key=lambda s: s.number, default=None)
        if tail is None:
            number = max(self._segments, default=-1)
            while tail is None or not tail.owned:
                number += 1
                if number > 10**9:
                    raise BackendError(f"no segment number left under {self.root}")
                with contextlib.suppress(FileExistsError):  # another process's, or planted
                    tail = self._open_segment(number, create=True)
        tail.used += 1
        return tail.number, tail.used - 1

    def _evict_locked(self) -> int:
        evicted = 0
        while self.capacity_blocks is not None and len(self._index) > self.capacity_blocks:
            _, slot = self._index.popitem(last=False)
            self._release_locked(slot)
            evicted += 1
        return evicted

    # ------------------------------------------------------------------ IO threads

    def _wake_locked(self) -> None:
        if self._runners < self._max_runners:
            self._runners += 1
            self._executor.submit(self._run)

    def _run(self) -> None:
        loading = 0
        while True:
            with self._queue_lock:
                self._loading -= loading
                loads = []
                if self._loading < LOAD_STREAMS:
                    share = max(1, -(-len(self._loads) // LOAD_STREAMS))
                    loads = [self._loads.popleft()
                             for _ in range(min(LOAD_BATCH, share, len(self._loads)))]
                loading = 1 if loads else 0
                self._loading += loading
                share = max(1, -(-len(self._saves) // self._max_runners))
                saves = [self._saves.popleft()
                         for _ in range(min(SAVE_BATCH, share, len(self._saves)))]
                if not loads and not saves:
                    self._runners -= 1
                    return
            try:
                if loads:
                    self._load_batch(loads)
                if saves:
                    self._save_batch(saves)
            except BaseException as exc:  # a bug, not a store error: never leave a handle hanging
                stuck = [op for op in (*loads, *saves) if op.result is PENDING_RESULT
                         and op not in self._written]
                self._counters.add(failures=len(stuck))
                self._finish(stuck, TransferResult(TransferState.FAILED,
                                                   error=f"{type(exc).__name__}: {exc}"))
                if not isinstance(exc, Exception):
                    with self._queue_lock:  # this runner ends: let the next save start one
                        self._loading -= loading
                        self._runners -= 1
                    raise

    def _finish(self, ops: list[_Op], result: TransferResult | None = None) -> None:
        """Publish the results of ``ops`` (each its own ``result`` unless one is given) and
        wake whoever waits on them."""
        if result is not None:
            for op in ops:
                op.result = result
        with self._done:
            self._done.notify_all()

    def _load_batch(self, loads: list[_Op]) -> None:
        """Load a batch: blocks in consecutive slots of one segment are read with one
        ``preadv`` (headers, payloads straight into their targets, padding into scratch), then
        each is verified; any that fails is tried once more on its own (it may have moved)."""
        with self._lock:
            planned = sorted(((slot, n) for n, op in enumerate(loads)
                              if (slot := self._index.get(op.key)) is not None))
            fds = {number: seg.fd for number, seg in self._segments.items()}
            owned = {number for number, seg in self._segments.items() if seg.owned}
            releases = self._releases
        runs: list[list[tuple[tuple[int, int], int]]] = []
        for slot, n in planned:
            last = runs[-1][-1][0] if runs else None
            if (last is not None and last[0] == slot[0] and last[1] + 1 == slot[1]
                    and len(runs[-1]) < _RUN_SLOTS):
                runs[-1].append((slot, n))
            else:
                runs.append([(slot, n)])
        headers = {n: bytearray(SLOT_HEADER_NBYTES) for _, n in planned}
        tail = self.slot_nbytes - SLOT_HEADER_NBYTES - self.block_nbytes
        pad = memoryview(bytearray(tail)) if tail else None
        verified: list[tuple[int, tuple[int, int]]] = []
        for run in runs:
            parts: list[memoryview] = []
            for i, (_, n) in enumerate(run):
                parts += [memoryview(headers[n]), loads[n].buf]
                if pad is not None and i + 1 < len(run):
                    parts.append(pad)
            first = run[0][0]
            try:
                got = _pread_all(fds[first[0]], parts, first[1] * self.slot_nbytes)
            except OSError:
                continue  # each is retried on its own below, which reports the error
            for i, (slot, n) in enumerate(run):
                key, target = loads[n].key, loads[n].buf
                mine = max(0, min(got - i * self.slot_nbytes, SLOT_HEADER_NBYTES +
                                  self.block_nbytes))
                try:
                    self._verify(key, headers[n], mine, target)
                except BackendError:
                    continue
                verified.append((n, slot))
        with self._lock:
            stable = self._releases == releases
        good: list[tuple[str, tuple[int, int]]] = []
        for n, slot in verified:
            if not (stable and slot[0] in owned) and self._header_changed(
                    fds[slot[0]], slot, headers[n]):
                continue  # the slot moved while it was read: retried on its own below
            loads[n].result = self._done_result
            good.append((loads[n].key, slot))
        with self._lock:
            for key, slot in good:
                if self._index.get(key) == slot:
                    self._index.move_to_end(key)
        self._counters.add(bytes_loaded=len(good) * self.block_nbytes)
        for op in loads:
            if op.result is PENDING_RESULT:
                op.result = self._load_one(op.key, op.buf)
        self._finish(loads)

    def _load_one(self, key: str, target: memoryview) -> TransferResult:
        try:
            nbytes = self._load(key, target)
        except Exception as exc:  # a load must end FAILED, never leave a handle hanging
            self._counters.add(failures=1)
            error = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
            return TransferResult(TransferState.FAILED, error=error)
        self._counters.add(bytes_loaded=nbytes)
        return self._done_result

    def _load(self, key: str, target: memoryview) -> int:
        header = bytearray(SLOT_HEADER_NBYTES)
        for _attempt in range(3):  # the slot may be re-used under us: follow the index
            with self._lock:
                slot = self._index.get(key)
                if slot is None:
                    raise BackendError(f"block {key!r} not found")
                segment = self._segments[slot[0]]
                fd = segment.fd
                releases = self._releases
            got = _pread_all(fd, [memoryview(header), target], slot[1] * self.slot_nbytes)
            try:
                self._verify(key, header, got, target)
            except BackendError:
                with self._lock:
                    if self._index.get(key) != slot or self._header_changed(fd, slot, header):
                        continue  # deleted or re-saved (the slot cleared or reused) meanwhile
                    # the slot is still as it was read, and bad: forget it, or every lookup
                    # would promise a block that every load fails
                    del self._index[key]
                    self._release_locked(slot)
                raise
            with self._lock:
                stable = segment.owned and self._releases == releases
            if not stable and self._header_changed(fd, slot, header):
                continue  # the payload may be another block's (a slot reused): look again
            with self._lock:
                if self._index.get(key) == slot:
                    self._index.move_to_end(key)
            return self.block_nbytes
        raise BackendError(f"block {key!r} kept moving while it was read")

    def _header_changed(self, fd: int, slot: tuple[int, int], header: bytearray) -> bool:
        """Whether the slot's header (through its commit marker: key, sequence number, CRCs)
        differs now from ``header``, read before its payload was: then the slot was cleared or
        reused while the payload was read, and the payload proves nothing, even if its CRC-32
        matches."""
        now = bytearray(_HEADER_CHECK_NBYTES)
        try:
            got = _pread_all(fd, [memoryview(now)], slot[1] * self.slot_nbytes)
        except OSError:
            return True
        return got != _HEADER_CHECK_NBYTES or now != header[:_HEADER_CHECK_NBYTES]

    def _verify(self, key: str, header: bytearray, got: int, target: memoryview) -> None:
        try:
            parsed = decode_slot_header(header[:min(got, SLOT_HEADER_NBYTES)])
        except BackendError as exc:
            raise BackendError(f"block {key!r}: {exc}") from None
        if not parsed.committed:
            raise BackendError(f"corrupt block {key!r}: slot not committed")
        if parsed.key != key:
            raise BackendError(f"corrupt block {key!r}: the slot holds {parsed.key!r} "
                               "(a block under the wrong key)")
        if parsed.nbytes != self.block_nbytes:
            raise BackendError(f"corrupt block {key!r}: payload is {parsed.nbytes} bytes, "
                               f"expected {self.block_nbytes}")
        if got != SLOT_HEADER_NBYTES + self.block_nbytes:
            raise BackendError(f"corrupt block {key!r}: truncated "
                               f"({got - SLOT_HEADER_NBYTES} payload bytes)")
        actual = block_crc(key, target)
        if actual != parsed.crc:
            raise BackendError(f"corrupt block {key!r}: checksum mismatch: stored crc32 "
                               f"{parsed.crc:#010x}, got {actual:#010x}")

    def _save_batch(self, saves: list[_Op]) -> None:
        """Write every save of the batch into its slot, then hand it to the commit: this
        thread commits (fdatasync, markers, publish) everything written so far unless another
        thread is committing already, which then takes this batch too (group commit: one
        fdatasync for all saves written meanwhile, and no IO thread idles behind it)."""
        if not saves:
            return
        with self._lock:
            for s in saves:
                try:
                    s.slot = self._allocate_locked()
                except Exception as exc:
                    s.error = str(exc) if isinstance(exc, BackendError) else (
                        f"{type(exc).__name__}: {exc}")
                    continue
                self._seq += 1
                s.seq = self._seq << 32 | self._seq_tag
            fds = {n: seg.fd for n, seg in self._segments.items()}
        for s in saves:
            if s.slot is None or s.error:
                continue
            try:
                s.header = encode_slot_header(s.key, block_crc(s.key, s.buf),
                                              self.block_nbytes, s.seq)
                s.fd = fds[s.slot[0]]
                _pwrite_all(s.fd, [memoryview(s.header), s.buf],
                            s.slot[1] * self.slot_nbytes)
            except Exception as exc:
                s.error = f"{type(exc).__name__}: {exc}"
        if self.fsync:
            spans: dict[int, tuple[int, int]] = {}
            for s in saves:
                if s.slot is not None and not s.error:
                    lo, hi = spans.get(s.fd, (s.slot[1], s.slot[1]))
                    spans[s.fd] = (min(lo, s.slot[1]), max(hi, s.slot[1]))
            for fd, (lo, hi) in spans.items():
                start_writeback(fd, lo * self.slot_nbytes, (hi - lo + 1) * self.slot_nbytes)
        with self._commit_lock:
            self._written.extend(saves)
            if self._committing:
                return  # the committing thread takes these before it stops
            self._committing = True
        while True:
            with self._commit_lock:
                batch, self._written = self._written, []
                if not batch:
                    self._committing = False
                    return
            try:
                self._commit(batch)
            except BaseException as exc:
                with self._commit_lock:  # saves written meanwhile count on this thread: fail
                    left, self._written = self._written, []  # them too, never leave them
                    self._committing = False  # PENDING (their slots are not reused)
                stuck = [op for op in (*batch, *left) if op.result is PENDING_RESULT]
                self._counters.add(failures=len(stuck))
                self._finish(stuck, TransferResult(TransferState.FAILED,
                                                   error=f"{type(exc).__name__}: {exc}"))
                raise

    def _commit(self, saves: list[_Op]) -> None:
        """fdatasync what the saves wrote (and the cleared markers of freed slots), then write
        their commit markers, publish them in the index and report them."""
        with self._lock:
            freeing, self._freeing = self._freeing, []
            fds = {n: seg.fd for n, seg in self._segments.items()}
        written = [s for s in saves if not s.error]
        sync_error = ""
        if self.fsync:
            try:  # the payloads are on disk before any marker vouches for them
                for number in sorted({s.slot[0] for s in written if s.slot} |
                                     {f[0] for f in freeing}):
                    os.fdatasync(fds[number])
            except Exception as exc:
                sync_error = f"{type(exc).__name__}: {exc}"
                for s in written:
                    s.error = sync_error
        unsure: list[tuple[int, int]] = []  # a marker written, not known durable: clear it
        if not sync_error:
            for s in written:
                assert s.slot is not None
                try:  # commit: the marker vouches for a payload that is durable already
                    os.pwrite(s.fd, commit_marker(s.header),
                              s.slot[1] * self.slot_nbytes + MARKER_OFFSET)
                except Exception as exc:
                    s.error = f"{type(exc).__name__}: {exc}"
            marked = [s for s in written if not s.error]
            if self.fsync and marked:
                try:  # the markers themselves are durable before any save is reported DONE
                    for number in sorted({s.slot[0] for s in marked if s.slot}):
                        os.fdatasync(fds[number])
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    for s in marked:
                        assert s.slot is not None
                        s.error = error
                        with contextlib.suppress(OSError):
                            os.pwrite(s.fd, _CLEARED, s.slot[1] * self.slot_nbytes)
                        unsure.append(s.slot)
        with self._lock:
            self._freeing.extend(unsure)  # reused only after a later sync clears them
            if sync_error:
                self._freeing.extend(freeing)
            else:
                for slot in freeing:
                    heapq.heappush(self._free, slot)
            for s in saves:
                if s.slot is None:
                    continue
                if s.slot in unsure:
                    continue
                if s.error:  # allocated, never committed (marker zero): free at once
                    heapq.heappush(self._free, s.slot)
                    continue
                old = self._index.get(s.key)
                self._index[s.key] = s.slot
                self._index.move_to_end(s.key)
                if old is not None:
                    self._release_locked(old)
            evicted = self._evict_locked()
        done = [s for s in saves if not s.error]
        self._counters.add(bytes_saved=len(done) * self.block_nbytes,
                           failures=len(saves) - len(done), evictions=evicted)
        for s in saves:
            s.result = (TransferResult(TransferState.FAILED, error=s.error) if s.error
                        else self._done_result)
        self._finish(saves)
