"""CPU throughput of the KV backends: save then load N blocks, reported in GB/s.

Each backend gets the same random blocks (2048 x 64 KiB = 128 MiB by default), all saves
submitted at once and then waited for, then all loads; every loaded block is compared with what
was saved, so a fast-but-wrong backend cannot post a number. Disk runs in a temp dir (with fsync,
and without, to show what durability costs); Redis runs against a local ``redis-server`` on
loopback that this script starts (or ``--redis-url``). Host memory is a memcpy plus CRC-32.

    python scripts/bench_backends.py [--blocks 2048] [--block-kib 64] [--io-threads 4]
                                     [--disk-dir /mnt/nvme] [--redis-url redis://host:6379/0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


def run_one(backend: KVBackend, blocks: list[memoryview], keys: list[str]) -> tuple[float, float]:
    """Seconds to save all blocks, seconds to load them all back (verified)."""
    nbytes = backend.block_nbytes
    start = time.perf_counter()
    saves = [backend.save(k, b) for k, b in zip(keys, blocks, strict=True)]
    results = [t.wait() for t in saves]
    t_save = time.perf_counter() - start
    bad = [r.error for r in results if r.state is not TransferState.DONE]
    if bad:
        raise RuntimeError(f"{len(bad)} saves failed, first: {bad[0]}")

    dest = bytearray(nbytes * len(blocks))
    view = memoryview(dest)
    start = time.perf_counter()
    loads = [backend.load(k, view[i * nbytes:(i + 1) * nbytes]) for i, k in enumerate(keys)]
    results = [t.wait() for t in loads]
    t_load = time.perf_counter() - start
    bad = [r.error for r in results if r.state is not TransferState.DONE]
    if bad:
        raise RuntimeError(f"{len(bad)} loads failed, first: {bad[0]}")
    for i, block in enumerate(blocks):
        if view[i * nbytes:(i + 1) * nbytes] != block:
            raise RuntimeError(f"block {i} came back different")
    return t_save, t_load


@contextmanager
def redis_url(given: str | None) -> Iterator[str | None]:
    if given:
        yield given
        return
    if find_server() is None:
        print(f"redis: skipped, redis-server not installed ({INSTALL_HINT})", file=sys.stderr)
        yield None
        return
    with LocalRedisServer() as server:
        yield server.url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2048)
    parser.add_argument("--block-kib", type=int, default=64)
    parser.add_argument("--io-threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3,
                        help="best of N timed runs per backend, after one warm-up run")
    parser.add_argument("--redis-url", default=None, help="use this server instead of a local one")
    parser.add_argument("--disk-dir", default=None,
                        help="where the disk backend writes (default: a temp dir under $TMPDIR)")
    args = parser.parse_args()

    nbytes = args.block_kib * 1024
    data = memoryview(os.urandom(nbytes * args.blocks))
    blocks = [data[i * nbytes:(i + 1) * nbytes] for i in range(args.blocks)]
    total = nbytes * args.blocks
    print(f"{args.blocks} blocks x {args.block_kib} KiB = {total / 2**20:.0f} MiB, "
          f"io_threads={args.io_threads}, best of {args.repeat}, cpus={os.cpu_count()}")
    print(f"{'backend':<14} {'save GB/s':>10} {'load GB/s':>10} {'save+load GB/s':>15}")

    with tempfile.TemporaryDirectory(prefix="bench-kv-", dir=args.disk_dir) as tmp, \
            redis_url(args.redis_url) as url:
        makers: dict[str, Callable[[], KVBackend]] = {
            "host": lambda: HostBackend(args.blocks, nbytes),
            "disk": lambda: DiskBackend(f"{tmp}/fsync", nbytes, io_threads=args.io_threads),
            "disk-nofsync": lambda: DiskBackend(f"{tmp}/nofsync", nbytes,
                                                io_threads=args.io_threads, fsync=False),
        }
        if url is not None:
            makers["redis"] = lambda: RedisBackend(url, nbytes, namespace="bench",
                                                   io_threads=args.io_threads)
        for name, make in makers.items():
            backend = make()
            best_save = best_load = float("inf")
            try:
                # run 0 warms up (first-touch page faults, connections, directory entries)
                for run in range(args.repeat + 1):
                    keys = [f"bench{run}.{i:06d}" for i in range(args.blocks)]
                    t_save, t_load = run_one(backend, blocks, keys)
                    backend.delete(keys)  # keep memory and disk use flat across runs
                    if run:
                        best_save, best_load = min(best_save, t_save), min(best_load, t_load)
            finally:
                backend.close()
            print(f"{name:<14} {total / best_save / 1e9:>10.2f} {total / best_load / 1e9:>10.2f} "
                  f"{2 * total / (best_save + best_load) / 1e9:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
