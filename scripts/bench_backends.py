"""CPU throughput of the KV backends against anchors measured in the same run, in GB/s.

Each backend gets the same random blocks (2048 x 64 KiB = 128 MiB by default), all saves
submitted at once and then waited for, then all loads; every loaded block is compared with what
was saved, so a fast-but-wrong backend cannot post a number. Host memory is a memcpy plus
CRC-32. Tables show the best of ``--repeat`` rounds (after one warm-up round); each ratio line
shows the ratio of the best rates and the median (and range) of the ratios within each round,
where anchor and backend ran seconds apart; a target's verdict goes by that median.

Disk runs in one temp dir (``--disk-dir``, default under ``$TMPDIR``), and every round measures,
in that dir and with the same bytes, the anchors next to the backend (so they share the
filesystem's state of the moment):

* anchor A, the machine's sequential rate: one file written with ``os.write`` in block-sized
  chunks and fsynced once at the end; read back with ``readv`` after fsync +
  ``posix_fadvise(DONTNEED)`` (page cache dropped; the share still resident is checked with
  ``mincore`` and printed), and again with ``O_DIRECT`` where the filesystem allows it;
* anchor B, the disk backend's former layout: one file per block in 256 fan-out dirs (as the
  backend kept them until it moved to segment files of fixed-size slots), each created,
  written, fsynced and closed by one thread (no checksum, no rename); read back file by file
  after the same cache drop.

The disk backend's load is timed after the same cache drop of its segment files (``load``),
then once more with the blocks now in the page cache (``load warm``). The ratios backend /
anchor A are the issue's target (>= 70 %); anchor B says what a file per block costs on this
filesystem.

Redis runs against a local ``redis-server`` on loopback that this script starts (persistence
off), or ``--redis-url``; the same blocks go through a plain redis-py loop of ``SET``/``GET``
(one connection, one command at a time), and the same loop pipelined in batches (the backend
pipelines the commands of one save into a MULTI/EXEC transaction), against the same server.

    python scripts/bench_backends.py [--blocks 2048] [--block-kib 64] [--io-threads 4]
                                     [--repeat 3] [--disk-dir /mnt/nvme]
                                     [--redis-url redis://host:6379/0]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import hashlib
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from streamcheck.connector.backends import (
    DiskBackend,
    HostBackend,
    KVBackend,
    RedisBackend,
    TransferState,
)
from streamcheck.connector.backends.redis_server import (
    INSTALL_HINT,
    LocalRedisServer,
    find_server,
)

TARGET = 0.70  # the target: disk backend >= 70 % of the sequential anchor
PIPELINE_BATCH = 64  # blocks per pipelined batch in the Redis client-loop anchor


# ----------------------------------------------------------------------------- backends


@dataclass
class Times:
    """Seconds of one round; ``None`` where not measured."""

    save: float | None = None
    load: float | None = None
    load_warm: float | None = None
    resident: float | None = None  # page-cache share of the block files just before ``load``


def run_one(backend: KVBackend, blocks: list[memoryview], keys: list[str],
            before_load: Callable[[], float | None] | None = None,
            warm_reload: bool = False) -> Times:
    """Save all blocks, then (after ``before_load``, untimed) load them all back, verified;
    with ``warm_reload`` load them a second time."""
    nbytes = backend.block_nbytes
    times = Times()
    start = time.perf_counter()
    saves = [backend.save(k, b) for k, b in zip(keys, blocks, strict=True)]
    results = [t.wait() for t in saves]
    times.save = time.perf_counter() - start
    bad = [r.error for r in results if r.state is not TransferState.DONE]
    if bad:
        raise RuntimeError(f"{len(bad)} saves failed, first: {bad[0]}")
    if before_load is not None:
        times.resident = before_load()

    dest = bytearray(nbytes * len(blocks))
    view = memoryview(dest)
    for attr in ("load", "load_warm") if warm_reload else ("load",):
        view[:] = bytes(len(dest))  # nothing left over from the previous pass can verify
        start = time.perf_counter()
        loads = [backend.load(k, view[i * nbytes:(i + 1) * nbytes]) for i, k in enumerate(keys)]
        results = [t.wait() for t in loads]
        setattr(times, attr, time.perf_counter() - start)
        bad = [r.error for r in results if r.state is not TransferState.DONE]
        if bad:
            raise RuntimeError(f"{len(bad)} loads failed, first: {bad[0]}")
        for i, block in enumerate(blocks):
            if view[i * nbytes:(i + 1) * nbytes] != block:
                raise RuntimeError(f"block {i} came back different")
    return times


# ----------------------------------------------------------------------------- page cache


def drop_cache(paths: Sequence[str]) -> None:
    """Write back, then drop from the page cache, every file in ``paths``."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages are not dropped; the fsynced ones are clean already
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        return libc
    except (OSError, AttributeError):
        return None


LIBC = _libc()


def resident_share(paths: Sequence[str]) -> float | None:
    """Share of these files' pages in the page cache (``mincore``); ``None`` if unknown."""
    if LIBC is None:
        return None
    page = mmap.PAGESIZE
    resident = total = 0
    for path in paths:
        size = os.path.getsize(path)
        if not size:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                pages = (size + page - 1) // page
                vec = ctypes.create_string_buffer(pages)
                if LIBC.mincore(addr, size, vec) != 0:
                    return None
                resident += sum(b & 1 for b in vec.raw)
                total += pages
            finally:
                LIBC.munmap(addr, size)
        finally:
            os.close(fd)
    return resident / total if total else None


# ----------------------------------------------------------------------------- disk anchors


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_all(fd: int, target: memoryview) -> None:
    got = 0
    while got < len(target):
        n = os.readv(fd, [target[got:]])
        if n == 0:
            raise RuntimeError("anchor file ended early")
        got += n


def anchor_seq_write(path: str, blocks: list[memoryview]) -> float:
    """One file, ``os.write`` of each block in turn, fsync once at the end (timed)."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in blocks:
            _write_all(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def anchor_seq_read(path: str, total: int, chunk: int) -> float:
    """Read the file back in ``chunk``-sized ``readv`` calls into one preallocated buffer."""
    dest = memoryview(bytearray(total))
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, total, chunk):
            _read_all(fd, dest[off:off + chunk])
    finally:
        os.close(fd)
    return time.perf_counter() - start


def anchor_direct_read(path: str, total: int, chunk: int) -> float | str:
    """The same read with ``O_DIRECT`` into a page-aligned buffer; a reason string if the
    filesystem (or the chunk size) does not allow it."""
    if not hasattr(os, "O_DIRECT"):
        return "no O_DIRECT on this OS"
    if chunk % 4096 or total % 4096:
        return "block size not a multiple of 4 KiB"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        return f"O_DIRECT refused ({errno.errorcode.get(exc.errno, exc.errno)})"
    buf = mmap.mmap(-1, total)  # anonymous, page aligned
    try:
        dest = memoryview(buf)
        start = time.perf_counter()
        try:
            for off in range(0, total, chunk):
                _read_all(fd, dest[off:off + chunk])
        except OSError as exc:
            return f"O_DIRECT read refused ({errno.errorcode.get(exc.errno, exc.errno)})"
        elapsed = time.perf_counter() - start
        dest.release()
        return elapsed
    finally:
        os.close(fd)
        buf.close()


def anchor_files_write(paths: list[str], blocks: list[memoryview]) -> float:
    """The former layout without the backend: a file per block (``paths``: in 256 fan-out
    dirs), each created, written, fsynced and closed in turn by one thread."""
    start = time.perf_counter()
    for path, block in zip(paths, blocks, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - start


def anchor_files_read(paths: list[str], nbytes: int) -> float:
    dest = memoryview(bytearray(nbytes * len(paths)))
    start = time.perf_counter()
    for i, path in enumerate(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            _read_all(fd, dest[i * nbytes:(i + 1) * nbytes])
        finally:
            os.close(fd)
    return time.perf_counter() - start


def fan_dir(key: str) -> str:
    """The former layout's fan-out dir of a key: two hex digits of its hash."""
    return hashlib.blake2b(key.encode("ascii"), digest_size=1).hexdigest()


def fs_type(path: str) -> str:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


# ----------------------------------------------------------------------------- redis anchors


def redis_client_loop(client: object, blocks: list[memoryview], keys: list[str],
                      batch: int | None) -> tuple[float, float, int | None]:
    """``SET`` then ``GET`` every block with plain redis-py calls: one command at a time
    (``batch=None``) or pipelined ``batch`` blocks per round trip (no transaction). Each GET's
    bytes are length-checked and dropped: nothing is copied on or CRC-checked (the backend does
    both, into a preallocated buffer)."""
    start = time.perf_counter()
    if batch is None:
        for key, block in zip(keys, blocks, strict=True):
            client.set(key, block)  # type: ignore[attr-defined]
    else:
        for i in range(0, len(keys), batch):
            pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
            for key, block in zip(keys[i:i + batch], blocks[i:i + batch], strict=True):
                pipe.set(key, block)
            pipe.execute()
    t_set = time.perf_counter() - start
    nbytes, good = len(blocks[0]), 0
    start = time.perf_counter()
    if batch is None:
        for key in keys:
            value = client.get(key)  # type: ignore[attr-defined]
            good += value is not None and len(value) == nbytes
    else:
        for i in range(0, len(keys), batch):
            pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
            for key in keys[i:i + batch]:
                pipe.get(key)
            good += sum(v is not None and len(v) == nbytes for v in pipe.execute())
    t_get = time.perf_counter() - start
    if good != len(keys):
        raise RuntimeError("client loop: a GET came back missing or short")
    memory = client.memory_usage(keys[0])  # type: ignore[attr-defined]
    client.delete(*keys)  # type: ignore[attr-defined]
    return t_set, t_get, memory


@contextmanager
def redis_url(given: str | None) -> Iterator[str | None]:
    if given:
        yield given
        return
    if find_server() is None:
        print(f"redis: skipped, redis-server not installed ({INSTALL_HINT})")
        yield None
        return
    with LocalRedisServer() as server:
        yield server.url


# ----------------------------------------------------------------------------- report


@dataclass
class Rounds:
    """Seconds per measured quantity, one per timed round (in order); tables show the best."""

    rounds: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    resident: list[float] = field(default_factory=list)

    def add(self, name: str, value: float | str | None) -> None:
        if isinstance(value, str):
            self.notes[name] = value
        elif value is not None:
            self.rounds.setdefault(name, []).append(value)

    def gbps(self, name: str, total: int) -> float | None:
        return total / min(self.rounds[name]) / 1e9 if name in self.rounds else None

    def ratios(self, num: str, den: str) -> list[float]:
        """Rate of ``num`` over rate of ``den`` within each round (measured seconds apart)."""
        pairs = zip(self.rounds.get(num, []), self.rounds.get(den, []), strict=False)
        return [t_den / t_num for t_num, t_den in pairs]


def fmt(value: float | None, width: int = 9) -> str:
    return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def row(label: str, first: float | None, second: float | None, third: float | None = None,
        note: str = "", cols: int = 2) -> None:
    third_col = f" {fmt(third)}" if cols == 3 else ""
    print(f"  {label:<58} {fmt(first)} {fmt(second)}{third_col}  {note}".rstrip())


def ratio_line(what: str, best: Rounds, num: str, den: str, total: int, target: bool) -> None:
    """The ratio of the best rates, and the same ratio within each round; the target's verdict
    goes by the median of the rounds' ratios (a best anchor and a best backend round may be
    minutes apart on a noisy machine)."""
    rates, per_round = (best.gbps(num, total), best.gbps(den, total)), best.ratios(num, den)
    if None in rates or not per_round:
        print(f"  {what}: not measured")
        return
    median = statistics.median(per_round)
    line = (f"  {what}: best {rates[0]:.2f} / {rates[1]:.2f} GB/s = {rates[0] / rates[1]:.1%}; "
            f"per round median {median:.1%} ({min(per_round):.1%}-{max(per_round):.1%})")
    if target:
        line += f"  target >= {TARGET:.0%}: {'met' if median >= TARGET else 'NOT met'}"
    print(line)


# ----------------------------------------------------------------------------- main


def bench_host(args: argparse.Namespace, blocks: list[memoryview], nbytes: int,
               total: int) -> None:
    backend = HostBackend(args.blocks, nbytes)
    best = Rounds()
    try:
        for run in range(args.repeat + 1):
            keys = [f"bench{run}.{i:06d}" for i in range(args.blocks)]
            t = run_one(backend, blocks, keys)
            backend.delete(keys)
            if run:
                best.add("save", t.save)
                best.add("load", t.load)
    finally:
        backend.close()
    print(f"\nhost memory, best of {args.repeat}")
    print(f"  {'':<58} {'save GB/s':>9} {'load GB/s':>9}")
    row("host backend (memcpy + CRC-32 per block)", best.gbps("save", total),
        best.gbps("load", total))


def bench_disk(args: argparse.Namespace, tmp: str, blocks: list[memoryview], nbytes: int,
               total: int) -> None:
    backends = {
        "disk": DiskBackend(f"{tmp}/fsync", nbytes, io_threads=args.io_threads),
        "disk-nofsync": DiskBackend(f"{tmp}/nofsync", nbytes, io_threads=args.io_threads,
                                    fsync=False),
    }
    best = Rounds()
    seq_path = f"{tmp}/anchor-seq.bin"
    try:
        # round 0 warms up (first-touch page faults, directory entries); every round measures
        # the anchors and both backends back to back, so they share the filesystem's state
        for run in range(args.repeat + 1):
            keep = best if run else Rounds()
            keep.add("A write", anchor_seq_write(seq_path, blocks))
            drop_cache([seq_path])
            share = resident_share([seq_path])
            if share is not None:
                keep.resident.append(share)
            keep.add("A read", anchor_seq_read(seq_path, total, nbytes))
            drop_cache([seq_path])
            keep.add("A direct", anchor_direct_read(seq_path, total, nbytes))
            os.unlink(seq_path)

            # the former one-file-per-block layout: 256 fan-out dirs, two hex digits of a hash
            fans = [f"{tmp}/anchor-b/{fan_dir(f'bench{run}.{i:06d}')}" for i in range(args.blocks)]
            for fan in set(fans):
                os.makedirs(fan, mode=0o700, exist_ok=True)
            paths = [f"{fan}/anchor.{i:06d}.bin" for i, fan in enumerate(fans)]
            keep.add("B write", anchor_files_write(paths, blocks))
            drop_cache(paths)
            keep.add("B read", anchor_files_read(paths, nbytes))
            for path in paths:
                os.unlink(path)

            for name, backend in backends.items():
                keys = [f"bench{run}.{i:06d}" for i in range(args.blocks)]

                def before_load(backend: KVBackend = backend) -> float | None:
                    files = [str(p) for p in backend.segment_paths()]  # type: ignore[attr-defined]
                    drop_cache(files)
                    return resident_share(files)

                t = run_one(backend, blocks, keys, before_load=before_load, warm_reload=True)
                backend.delete(keys)
                keep.add(f"{name} save", t.save)
                keep.add(f"{name} load", t.load)
                keep.add(f"{name} load warm", t.load_warm)
                if t.resident is not None:
                    keep.resident.append(t.resident)
    finally:
        for backend in backends.values():
            backend.close()

    g = best.gbps
    kib = nbytes // 1024
    resident = f"{max(best.resident):.1%}" if best.resident else "unknown (no mincore)"
    print(f"\ndisk: {tmp} ({fs_type(tmp)}), best of {args.repeat}; page cache dropped "
          f"(fsync + FADV_DONTNEED) before every 'read'/'load'; resident after the drop: at "
          f"most {resident}")
    print(f"  {'':<58} {'write GB/s':>9} {'read GB/s':>9} {'read warm':>9}")
    row(f"anchor A: 1 file, os.write {kib} KiB chunks, 1 fsync at end", g("A write", total),
        g("A read", total), note=f"read: readv {kib} KiB, buffered", cols=3)
    row(f"anchor A, read with O_DIRECT ({kib} KiB reads)", None, g("A direct", total),
        note=best.notes.get("A direct", ""), cols=3)
    row(f"anchor B: {args.blocks} files in 256 fan-out dirs, create+write+fsync",
        g("B write", total), g("B read", total),
        note="1 thread; read: open+readv+close per file", cols=3)
    for name in backends:
        row(f"{name} backend ({args.io_threads} io threads, CRC-32, slots)",
            g(f"{name} save", total), g(f"{name} load", total), g(f"{name} load warm", total),
            note="" if name == "disk" else "no fsync: its save may end in the page cache",
            cols=3)
    print("ratios (anchor A is the issue's 'sequential rate'; B is a file per block):")
    ratio_line("disk save / anchor A write", best, "disk save", "A write", total, True)
    ratio_line("disk load / anchor A read ", best, "disk load", "A read", total, True)
    ratio_line("disk save / anchor B write", best, "disk save", "B write", total, False)
    ratio_line("disk load / anchor B read ", best, "disk load", "B read", total, False)


def bench_redis(args: argparse.Namespace, url: str, blocks: list[memoryview], nbytes: int,
                total: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    version = client.info("server").get("redis_version", "?")
    backend = RedisBackend(url, nbytes, namespace="bench", io_threads=args.io_threads)
    best = Rounds()
    memory: dict[str, int | None] = {}
    try:
        for run in range(args.repeat + 1):
            keep = best if run else Rounds()
            keys = [f"plain{run}.{i:06d}" for i in range(args.blocks)]
            t_set, t_get, memory["loop"] = redis_client_loop(client, blocks, keys, None)
            keep.add("loop set", t_set)
            keep.add("loop get", t_get)
            t_set, t_get, _ = redis_client_loop(client, blocks, keys, PIPELINE_BATCH)
            keep.add("pipe set", t_set)
            keep.add("pipe get", t_get)
            keys = [f"bench{run}.{i:06d}" for i in range(args.blocks)]
            t = run_one(backend, blocks, keys)
            memory["backend"] = client.memory_usage(backend.final_key(keys[0]))
            backend.delete(keys)
            keep.add("save", t.save)
            keep.add("load", t.load)
    finally:
        backend.close()
        client.close()

    g = best.gbps
    print(f"\nredis: server {version} at {url} (loopback, persistence off), best of "
          f"{args.repeat}")
    print(f"  {'':<58} {'SET/save':>9} {'GET/load':>9}")
    row("client loop: redis-py SET/GET, 1 connection, 1 at a time", g("loop set", total),
        g("loop get", total), note="GET: bytes length-checked, dropped")
    row(f"client loop, pipelined {PIPELINE_BATCH} per round trip (no MULTI)",
        g("pipe set", total), g("pipe get", total))
    row(f"redis backend ({args.io_threads} io threads)", g("save", total), g("load", total),
        note="save: MULTI SETRANGE payload, SETRANGE header, EVAL commit; "
             "load: GET, CRC-32, copy")
    print("ratios:")
    ratio_line("redis save / client loop SET     ", best, "save", "loop set", total, False)
    ratio_line("redis load / client loop GET     ", best, "load", "loop get", total, False)
    ratio_line("redis save / pipelined client SET", best, "save", "pipe set", total, False)
    ratio_line("redis load / pipelined client GET", best, "load", "pipe get", total, False)
    print(f"server memory per stored block (MEMORY USAGE): backend {memory.get('backend')} B, "
          f"plain SET {memory.get('loop')} B ({nbytes} B payload)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2048)
    parser.add_argument("--block-kib", type=int, default=64)
    parser.add_argument("--io-threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3,
                        help="best of N timed rounds, after one warm-up round")
    parser.add_argument("--redis-url", default=None, help="use this server instead of a local one")
    parser.add_argument("--disk-dir", default=None,
                        help="where the disk backend and its anchors write "
                             "(default: a temp dir under $TMPDIR)")
    parser.add_argument("--only", choices=("host", "disk", "redis"), action="append",
                        help="run only these sections (repeatable; default: all)")
    args = parser.parse_args()
    only = set(args.only or ("host", "disk", "redis"))

    nbytes = args.block_kib * 1024
    data = memoryview(os.urandom(nbytes * args.blocks))
    blocks = [data[i * nbytes:(i + 1) * nbytes] for i in range(args.blocks)]
    total = nbytes * args.blocks
    print(f"{args.blocks} blocks x {args.block_kib} KiB = {total / 2**20:.0f} MiB each way, "
          f"io_threads={args.io_threads}, best of {args.repeat} after a warm-up, "
          f"cpus={os.cpu_count()}")

    if "host" in only:
        bench_host(args, blocks, nbytes, total)
    if "disk" in only:
        with tempfile.TemporaryDirectory(prefix="bench-kv-", dir=args.disk_dir) as tmp:
            bench_disk(args, tmp, blocks, nbytes, total)
    if "redis" in only:
        with redis_url(args.redis_url) as url:
            if url is not None:
                bench_redis(args, url, blocks, nbytes, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
