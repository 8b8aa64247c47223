"""Fixtures for the backend tests: a real redis-server per test process, and backend factories.

The Redis tests run against a real ``redis-server`` started here on a free loopback port; each
pytest-xdist worker is its own process, so each gets its own server. Without the binary those
tests are skipped with the install command, never faked.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streamcheck.connector.backends import DiskBackend, HostBackend, KVBackend, RedisBackend
from streamcheck.connector.backends.blockformat import HEADER_NBYTES
from streamcheck.connector.backends.disk import SLOT_HEADER_NBYTES
from streamcheck.connector.backends.redis_server import (
    INSTALL_HINT,
    LocalRedisServer,
    find_server,
)

if TYPE_CHECKING:
    import redis

BLOCK = 4096
KINDS = ("host", "disk", "redis")


def require_redis_server() -> str:
    binary = find_server()
    if binary is None:
        pytest.skip(f"redis-server is not installed; install it with: {INSTALL_HINT}")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis client is not installed; install it with: pip install 'redis>=5'")
    return binary


def _running_server() -> Iterator[LocalRedisServer]:
    """A started server, stopped at the end whatever happens."""
    server = LocalRedisServer(require_redis_server())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedisServer]:
    """One server for this test process (xdist worker)."""
    yield from _running_server()


@pytest.fixture
def redis_url(redis_server: LocalRedisServer) -> str:
    if not redis_server.running:  # a test may have crashed it on purpose
        redis_server.start()
    return redis_server.url


@pytest.fixture
def own_redis_server() -> Iterator[LocalRedisServer]:
    """A private server for a test that kills, pauses or reconfigures it."""
    yield from _running_server()


def raw_client(url: str) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5)


class Kit:
    """Makes backends of one kind and reaches into their store the way a fault would."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.request = request
        self.made: list[KVBackend] = []
        self.url = request.getfixturevalue("redis_url") if kind == "redis" else ""

    def make(self, block_nbytes: int = BLOCK, **kwargs: object) -> KVBackend:
        backend: KVBackend
        if self.kind == "host":
            kwargs.setdefault("capacity_blocks", 1024)
            backend = HostBackend(block_nbytes=block_nbytes, pin_memory=False, **kwargs)
        elif self.kind == "disk":
            kwargs.setdefault("root", self.tmp_path / "store")
            backend = DiskBackend(block_nbytes=block_nbytes, **kwargs)
        else:
            kwargs.setdefault("namespace", f"t{uuid.uuid4().hex[:12]}")
            backend = RedisBackend(self.url, block_nbytes=block_nbytes, **kwargs)
        self.made.append(backend)
        return backend

    def stored(self, backend: KVBackend, key: str) -> bytes:
        """The raw stored bytes of a block (payload only for host, header + payload else)."""
        if isinstance(backend, HostBackend):
            slot = backend._slots[key]
            return bytes(backend.slab[slot].numpy())
        if isinstance(backend, DiskBackend):  # the slot: its header, then the payload
            where = backend.locate(key)
            assert where is not None, key
            path, offset = where
            with path.open("rb") as f:
                f.seek(offset)
                return f.read(SLOT_HEADER_NBYTES + backend.block_nbytes)
        return raw_client(self.url).get(backend.final_key(key))

    def overwrite(self, backend: KVBackend, key: str, data: bytes) -> None:
        """Replace the raw stored bytes of a block behind the backend's back."""
        if isinstance(backend, HostBackend):
            slot = backend._slots[key]
            backend.slab[slot].numpy()[:] = memoryview(data)
        elif isinstance(backend, DiskBackend):
            # a torn or short write in place: what the slot does not get is zeros
            where = backend.locate(key)
            assert where is not None, key
            path, offset = where
            size = SLOT_HEADER_NBYTES + backend.block_nbytes
            assert len(data) <= size, "a slot has no room for trailing bytes"
            with path.open("r+b") as f:
                f.seek(offset)
                f.write(data + bytes(size - len(data)))
        else:
            raw_client(self.url).set(backend.final_key(key), data)

    def flip_payload_byte(self, backend: KVBackend, key: str, index: int = 100) -> None:
        data = bytearray(self.stored(backend, key))
        offset = self.header_nbytes(backend)
        data[offset + index] ^= 0x40
        self.overwrite(backend, key, bytes(data))

    def header_nbytes(self, backend: KVBackend) -> int:
        """Bytes in front of the payload in ``stored``."""
        if isinstance(backend, HostBackend):
            return 0
        return SLOT_HEADER_NBYTES if isinstance(backend, DiskBackend) else HEADER_NBYTES

    def store_keys(self, backend: KVBackend) -> list[str]:
        """Every name the store holds for this backend (files, Redis keys, slots)."""
        if isinstance(backend, HostBackend):
            return list(backend._slots)
        if isinstance(backend, DiskBackend):  # committed slots, read back from the segments
            return backend.scan_committed()
        return sorted(k.decode() for k in raw_client(self.url).keys(f"{backend.namespace}:*"))

    @contextlib.contextmanager
    def failing_saves(self, backend: KVBackend, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        """Make the store refuse saves for real where we can: a full disk at the fdatasync before
        the commit, a
        Redis server out of memory. Host saves are a memcpy and cannot fail this way."""
        if isinstance(backend, HostBackend):
            pytest.skip("host saves are a synchronous memcpy: nothing fails before the commit")
        if isinstance(backend, DiskBackend):
            def no_space(fd: int) -> None:
                raise OSError(28, "No space left on device")

            with monkeypatch.context() as m:
                m.setattr(os, "fdatasync", no_space)
                yield
            return
        client = raw_client(self.url)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
        try:
            yield
        finally:
            client.config_set("maxmemory", "0")


@pytest.fixture(params=KINDS)
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    kit = Kit(request.param, tmp_path, request)
    try:
        yield kit
    finally:
        for backend in kit.made:
            backend.close()


@pytest.fixture
def random_block() -> Callable[[int], bytes]:
    return lambda n=BLOCK: os.urandom(n)
