"""Local-disk backend: one file per block, written atomically, checked on load.

Layout: ``root/<fan>/<key>.kv`` where ``<fan>`` is two hex characters of a hash of the key. The
fan-out keeps directories small (256 of them) however keys are spelled: keys that share a long
prefix (``<digest>.L0``, ``<digest>.L1``...) still spread evenly. The key is validated first
(``[A-Za-z0-9_.:-]``, no ``/``), and the ``.kv`` suffix means even the key ``..`` names a plain
file, so no key can reach outside ``root``.

A save writes header + payload to a unique hidden temp file in the SAME directory, fsyncs it,
then ``os.replace``-s it onto the final name. Rename within one directory is atomic on POSIX, so
the final name either does not exist or names a complete, fsynced block; ``lookup`` only checks
the final name. A crash before the rename leaves a ``.<key>.<id>.tmp`` file that nothing reads
and that the next backend opened on this root removes once it is ``stale_tmp_s`` old (a live
writer in another process is never that slow). The directory itself is not fsynced: after a
power loss a just-committed block may be missing, which is a miss (recompute), never bad data.

Capacity (optional): the least recently used blocks are deleted past ``capacity_blocks``. The
count is this process's view, so give each backend with a capacity its own ``root``. (In the
connector the scheduler bounds the disk store itself; see ``connector.placement``.)

On a shared host the store trusts nothing it did not make. The root and every fan-out directory
must be real directories (not symbolic links) owned by this user and not writable by group or
others (they are created 0700, files 0600): whoever can write there could plant blocks, and the
CRC-32 of each block guards against accidents (torn writes, flipped bits, a block under the
wrong key), not against someone forging a block with a matching checksum. Files are opened
with ``O_NOFOLLOW`` and ``O_NONBLOCK`` and must be regular files, so a planted link cannot send
a read or write elsewhere and a planted FIFO cannot hang an IO thread. The default root is
private to the user (``default_root()``, under ``$XDG_CACHE_HOME``), never ``/tmp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from streamcheck.connector.backends.base import (
    BackendError,
    Transfer,
    as_block_view,
    validate_key,
    validate_keys,
)
from streamcheck.connector.backends.blockformat import (
    HEADER_NBYTES,
    decode_header,
    encode_header,
    verify_payload,
)
from streamcheck.connector.backends.transfers import Counters, IOPool

SUFFIX = ".kv"
TMP_SUFFIX = ".tmp"
_OPEN_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


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


def fan_dir(key: str) -> str:
    """The two-character fan-out directory of a key."""
    return hashlib.blake2b(key.encode("ascii"), digest_size=1).hexdigest()


def _write_all(fd: int, parts: list[memoryview | bytes]) -> None:
    views = [memoryview(p) for p in parts]
    while views:
        written = os.writev(fd, views)
        if written == 0:
            raise OSError("writev wrote nothing")
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _read_exact(fd: int, parts: list[memoryview]) -> int:
    """Fill ``parts`` in order (one ``readv`` unless the read comes back short) until all are
    full or the file ends; return the bytes read."""
    want = sum(len(p) for p in parts)
    got = 0
    while got < want:
        n = os.readv(fd, parts)
        if n == 0:
            break
        got += n
        while parts and n >= len(parts[0]):
            n -= len(parts[0])
            parts = parts[1:]
        if parts and n:
            parts = [parts[0][n:], *parts[1:]]
    return got


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class DiskBackend:
    """KV blocks as checksummed files under ``root``, with ``io_threads`` threads doing the IO."""

    name = "disk"

    def __init__(self, root: str | os.PathLike[str], block_nbytes: int, io_threads: int = 2,
                 capacity_blocks: int | None = None, fsync: bool = True,
                 stale_tmp_s: float = 600.0) -> None:
        if block_nbytes < 1:
            raise ValueError("block_nbytes must be >= 1")
        if capacity_blocks is not None and capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1 or None")
        self.root = Path(root).resolve()
        self.block_nbytes = block_nbytes
        self.capacity_blocks = capacity_blocks
        self.fsync = fsync
        self._lock = threading.Lock()  # orders commits (rename), evictions and deletes
        self._index: OrderedDict[str, None] = OrderedDict()  # committed keys, oldest use first
        self._counters = Counters()
        private_dir(self.root)
        for i in range(256):
            private_dir(self.root / f"{i:02x}")
        # the per-block paths are plain strings built from these: a pathlib object per save or
        # load cost about as much main-thread time as the rest of the call
        self._fans = {f"{i:02x}": os.path.join(self.root, f"{i:02x}") for i in range(256)}
        self._scan(stale_tmp_s)
        self._io = IOPool(io_threads, "kv-disk-io", self._counters)

    def path(self, key: str) -> Path:
        """The final file of ``key`` (validated; always directly inside a fan-out dir)."""
        return Path(self._final(validate_key(key)))

    def _final(self, key: str) -> str:
        """``path`` of an already validated key, as a string."""
        fan = self._fans[fan_dir(key)]
        final = os.path.join(fan, key + SUFFIX)
        if os.path.dirname(final) != fan:  # cannot happen for a valid key; refuse, never trust
            raise ValueError(f"key {key!r} does not map inside {self.root}")
        return final

    def _scan(self, stale_tmp_s: float) -> None:
        """Index the blocks a previous run left (oldest first); drop stale temp files."""
        now = time.time()
        found: list[tuple[float, str]] = []
        for fan in self.root.iterdir():
            if not fan.is_dir() or len(fan.name) != 2:
                continue
            with os.scandir(fan) as entries:
                entries_list = list(entries)
            for entry in entries_list:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue  # links, FIFOs, directories: never a block
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
                    if now - mtime >= stale_tmp_s:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                elif entry.name.endswith(SUFFIX):
                    key = entry.name[: -len(SUFFIX)]
                    try:
                        if self.path(key).parent.name == fan.name:
                            found.append((mtime, key))
                    except ValueError:
                        continue
        for _, key in sorted(found):
            self._index[key] = None

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        keys = validate_keys(keys)
        paths = [self._final(k) for k in keys]
        if self._io.closed:
            return [False] * len(paths)
        found = [_is_regular(p) for p in paths]  # the final name only, never a temp file
        with self._lock:
            for key, present in zip(keys, found, strict=True):
                if present and key in self._index:
                    self._index.move_to_end(key)
        return self._counters.lookup(found)

    def save(self, key: str, block: memoryview | bytes) -> Transfer:
        """Zero-copy: keep ``block`` alive and unchanged until the transfer is not PENDING."""
        key = validate_key(key)
        final = self._final(key)
        source = as_block_view(block, self.block_nbytes, writable=False)
        return self._io.submit(lambda: self._save(key, final, source), "bytes_saved")

    def load(self, key: str, into: memoryview) -> Transfer:
        """Zero-copy: ``into`` is filled in place on an IO thread; leave it alone until done."""
        key = validate_key(key)
        final = self._final(key)
        target = as_block_view(into, self.block_nbytes, writable=True)
        return self._io.submit(lambda: self._load(key, final, target), "bytes_loaded")

    def _save(self, key: str, final: str, source: memoryview) -> int:
        tmp = os.path.join(os.path.dirname(final), f".{key}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        header = encode_header(key, source)
        try:
            fd = os.open(tmp, _OPEN_WRITE, 0o600)
            try:
                _write_all(fd, [header, source])
                if self.fsync:
                    os.fsync(fd)  # the data is on disk before the name can point at it
            finally:
                os.close(fd)
            with self._lock:
                os.replace(tmp, final)  # commit: the block becomes visible here, whole
                self._index[key] = None
                self._index.move_to_end(key)
                evicted = self._evict_locked()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._counters.add(evictions=evicted)
        return self.block_nbytes

    def _evict_locked(self) -> int:
        evicted = 0
        while self.capacity_blocks is not None and len(self._index) > self.capacity_blocks:
            victim, _ = self._index.popitem(last=False)
            with contextlib.suppress(OSError):  # a failed unlink must not fail the save
                os.unlink(self._final(victim))
            evicted += 1
        return evicted

    def _load(self, key: str, final: str, target: memoryview) -> int:
        try:
            fd = os.open(final, _OPEN_READ)
        except FileNotFoundError:
            raise BackendError(f"block {key!r} not found") from None
        except OSError as exc:  # ELOOP: a symbolic link planted under the block's name
            raise BackendError(f"block {key!r}: refusing to open {final} "
                               f"({exc.strerror or exc})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BackendError(f"block {key!r}: {final} is not a regular file")
            os.set_blocking(fd, True)  # a regular file: reads block as usual from here
            # header and payload in one readv (a committed block file is never written again,
            # so its size from fstat tells trailing bytes without a read past the end)
            header = bytearray(HEADER_NBYTES)
            got = _read_exact(fd, [memoryview(header), target])
        finally:
            os.close(fd)
        crc = decode_header(header[:got], self.block_nbytes)
        if got != HEADER_NBYTES + self.block_nbytes:
            raise BackendError(f"corrupt block {key!r}: truncated "
                               f"({got - HEADER_NBYTES} payload bytes)")
        if st.st_size != got:
            raise BackendError(f"corrupt block {key!r}: trailing bytes "
                               f"({st.st_size - got} past the payload)")
        verify_payload(key, target, crc)
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)
        return self.block_nbytes

    def delete(self, keys: Sequence[str]) -> None:
        keys = validate_keys(keys)
        paths = [self._final(k) for k in keys]
        with self._lock:
            for key, p in zip(keys, paths, strict=True):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                self._index.pop(key, None)

    def stats(self) -> dict[str, int | float]:
        stats = self._counters.snapshot()
        with self._lock:
            stats["blocks"] = len(self._index)
        if self.capacity_blocks is not None:
            stats["capacity_blocks"] = self.capacity_blocks
        return stats

    def close(self, drain: bool = True) -> None:
        """Finish queued saves and loads (``drain``), or cancel those not started; idempotent."""
        self._io.close(drain=drain)

