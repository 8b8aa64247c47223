"""Global-store backend: KV blocks on a networked Redis/Valkey-protocol server.

Any engine that can reach the server shares the blocks, which is what makes a prefix computed on
one worker reusable on another. Uses the ``redis`` client library (``pip install
'streamcheck[connector]'``).

Commit protocol. A save runs one MULTI/EXEC transaction: ``SETRANGE`` the payload at offset
``HEADER_NBYTES`` of a unique staging key (which creates the value at its exact size, the header
bytes zero), ``SETRANGE`` the header over those first bytes, then a server-side script that
renames the staging key onto the final key only if it holds exactly header + payload bytes and
starts with that header, and deletes it otherwise. The server applies the transaction all at
once, so ``EXISTS`` on the final key (the lookup) sees either nothing or a complete block; if
the connection drops before EXEC the server discards the queued commands, so a failed save
leaves nothing behind. A command that fails *inside* the transaction (a value over the server's
``proto-max-bulk-len``, a full server) does not stop the others: the length and header checks
are what keep a header-only or headerless value from replacing a good block then. The payload is
sent from the caller's buffer without a copy (``redis`` writes memoryview arguments straight to
the socket), hence the buffer lifetime rule in ``base``. (Until 2026-11-30 the staging value was
``SET`` to the header and the payload ``APPEND``-ed; the server grows an appended string
greedily, doubling it below 1 MiB, so every 64 KiB block held 160 KiB of server memory;
``SETRANGE`` on a new key allocates the value once, at its size: 80 KiB per block, the same as a
plain ``SET``.)

A load is one ``GET``, verified (header, length, key-seeded CRC-32) before a byte is copied into
the caller's buffer.

Failure behaviour. Every socket operation has a timeout (``timeout_s``; ``lookup_timeout_s`` for
lookups, which have their own small connection pool so they never queue behind bulk IO), and a
command is retried once, on a fresh connection, which is how the backend reconnects after the
server restarts. A server that dies mid-transfer turns the in-flight transfers ``FAILED``
(connection reset or refused, or a timeout if it hangs); lookups answer ``False`` until it is
back. Retrying a save is safe: it is idempotent (same bytes, same key).

One case no networked store can rule out: a save whose whole transaction reached the server
but whose reply was lost (the server froze past ``timeout_s``, then thawed) ends ``FAILED`` here
and is still applied there. The block is then complete and verified, exactly what a successful
save would have stored; what can never become visible is a partial or unverified block. Keys
name content (a hash of the token prefix), so a late commit cannot put other data under a key.

Durability is the store's: a block whose save ended ``DONE`` stays readable while the server keeps
running, unless the server itself evicts it (run it with ``maxmemory-policy noeviction``, or
accept evictions as misses). A server with persistence off (``--save '' --appendonly no``) loses
everything on restart; lookups then answer ``False``, never stale data.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from streamcheck.connector.backends.base import (
    BackendError,
    Transfer,
    as_block_view,
    validate_key,
    validate_keys,
)
from streamcheck.connector.backends.blockformat import decode_block, encode_header
from streamcheck.connector.backends.transfers import Counters, IOPool

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised only without the optional extra
    redis = None  # type: ignore[assignment]


LOG = logging.getLogger(__name__)

# KEYS[1] staging, KEYS[2] final; ARGV[1] the expected length, ARGV[2] the header. Returns 1 if
# the final key existed before, 0 if not, -1 (staging deleted, nothing committed) on a length or
# header mismatch.
COMMIT_SCRIPT = """
local length = redis.call('STRLEN', KEYS[1])
if length ~= tonumber(ARGV[1])
    or redis.call('GETRANGE', KEYS[1], 0, #ARGV[2] - 1) ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return -1
end
local existed = redis.call('EXISTS', KEYS[2])
redis.call('RENAME', KEYS[1], KEYS[2])
return existed
"""


def _pool(url: str, connections: int, timeout_s: float) -> Any:
    """A bounded pool: callers wait (up to ``timeout_s``) for a connection, never pile up."""
    return redis.BlockingConnectionPool.from_url(
        url,
        max_connections=connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),  # one retry on a fresh connection: reconnect, don't stall
    )


class RedisBackend:
    """KV blocks under ``<namespace>:b:<key>`` on the server at ``url`` (``redis://host:port/db``)."""

    name = "redis"

    def __init__(self, url: str, block_nbytes: int, namespace: str = "streamcheck",
                 timeout_s: float = 2.0, io_threads: int = 4,
                 lookup_timeout_s: float = 0.1) -> None:
        if redis is None:
            raise ImportError("RedisBackend needs the redis client: pip install 'redis>=5'")
        if block_nbytes < 1:
            raise ValueError("block_nbytes must be >= 1")
        self.namespace = validate_key(namespace)
        self.block_nbytes = block_nbytes
        self.timeout_s = timeout_s
        self.lookup_timeout_s = lookup_timeout_s
        self._counters = Counters()
        self._blocks_lock = threading.Lock()
        self._blocks = 0  # net blocks this client created (see stats)
        self._data_pool = _pool(url, io_threads + 2, timeout_s)
        self._lookup_pool = _pool(url, 4, lookup_timeout_s)
        self._client = redis.Redis(connection_pool=self._data_pool)
        self._lookup_client = redis.Redis(connection_pool=self._lookup_pool)
        self._io = IOPool(io_threads, "kv-redis-io", self._counters)
        self._reported: set[str] = set()  # kinds of store trouble already logged

    def _report(self, what: str, exc: BaseException) -> None:
        """Log store trouble once per kind (auth, connection, timeout...): a lookup that turns
        it into a miss must not make it invisible, nor flood the log."""
        kind = f"{what}:{type(exc).__name__}"
        if kind not in self._reported:
            self._reported.add(kind)
            LOG.warning("streamcheck redis backend %r: %s failed (%s: %s); lookups answer "
                        "'miss' until it works again", self, what, type(exc).__name__, exc)

    def __repr__(self) -> str:
        kwargs = self._data_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"RedisBackend({where}, namespace={self.namespace!r})"

    def final_key(self, key: str) -> str:
        """The Redis key that holds the committed block of ``key``."""
        return f"{self.namespace}:b:{validate_key(key)}"

    def _staging_key(self, key: str) -> str:
        return f"{self.namespace}:s:{key}:{uuid.uuid4().hex}"

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        names = [self.final_key(k) for k in validate_keys(keys)]
        if not names:
            return []
        if self._io.closed:
            return [False] * len(names)
        try:
            pipe = self._lookup_client.pipeline(transaction=False)
            for name in names:
                pipe.exists(name)
            found = [bool(n) for n in pipe.execute()]
        except Exception as exc:  # down, refused, timed out: a miss, recomputed by the engine
            self._report("lookup", exc)
            found = [False] * len(names)
        return self._counters.lookup(found)

    def save(self, key: str, block: memoryview | bytes) -> Transfer:
        """Zero-copy: keep ``block`` alive and unchanged until the transfer is not PENDING."""
        key = validate_key(key)
        source = as_block_view(block, self.block_nbytes, writable=False)
        return self._io.submit(lambda: self._save(key, source), "bytes_saved")

    def load(self, key: str, into: memoryview) -> Transfer:
        """``into`` is filled on an IO thread, only after the block verified; leave it alone."""
        key = validate_key(key)
        target = as_block_view(into, self.block_nbytes, writable=True)
        return self._io.submit(lambda: self._load(key, target), "bytes_loaded")

    def _save(self, key: str, source: memoryview) -> int:
        final, staging = self.final_key(key), self._staging_key(key)
        header = encode_header(key, source)
        pipe = self._client.pipeline(transaction=True)
        # payload first, on the new key: the value is allocated once at its final size (the
        # header's bytes zero until the next command fills them)
        pipe.setrange(staging, len(header), source)  # sent straight from the caller's buffer
        pipe.setrange(staging, 0, header)
        pipe.eval(COMMIT_SCRIPT, 2, staging, final, len(header) + len(source), header)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            self._report("save", exc)
            raise BackendError(f"save of {key!r} failed: {type(exc).__name__}: {exc}") from exc
        errors = [r for r in results if isinstance(r, Exception)]
        existed = results[-1]
        if errors or existed == -1:
            why = (f"{type(errors[0]).__name__}: {errors[0]}" if errors
                   else "staged value short or without its header")
            raise BackendError(f"save of {key!r} failed inside the transaction ({why}); "
                               "nothing was committed")
        if not existed:
            with self._blocks_lock:
                self._blocks += 1
        return self.block_nbytes

    def _load(self, key: str, target: memoryview) -> int:
        try:
            data = self._client.get(self.final_key(key))
        except redis.RedisError as exc:
            raise BackendError(f"load of {key!r} failed: {type(exc).__name__}: {exc}") from exc
        if data is None:
            raise BackendError(f"block {key!r} not found")
        target[:] = decode_block(key, data, self.block_nbytes)
        return self.block_nbytes

    def delete(self, keys: Sequence[str]) -> None:
        """Delete synchronously (bounded by ``timeout_s``); raises ``BackendError`` if down."""
        names = [self.final_key(k) for k in validate_keys(keys)]
        if not names:
            return
        try:
            removed = int(self._client.delete(*names))
        except redis.RedisError as exc:
            raise BackendError(f"delete failed: {type(exc).__name__}: {exc}") from exc
        with self._blocks_lock:
            self._blocks -= removed

    def stats(self) -> dict[str, int | float]:
        """Local counters; ``blocks`` is the net number of keys THIS client created (others'
        writes to the shared store are not counted, and counting them would need a scan)."""
        stats = self._counters.snapshot()
        with self._blocks_lock:
            stats["blocks"] = self._blocks
        return stats

    def close(self, drain: bool = True) -> None:
        """Finish queued transfers (``drain``) or cancel those not started, then disconnect."""
        if self._io.closed:
            return
        self._io.close(drain=drain)
        self._data_pool.disconnect()
        self._lookup_pool.disconnect()
