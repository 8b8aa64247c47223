"""Redis backend against a real server: crashes, hangs, dropped connections, reconnects."""

from __future__ import annotations

import os
import time

import pytest

from streamcheck.connector.backends import RedisBackend, Transfer, TransferResult, TransferState
from streamcheck.connector.backends.blockformat import HEADER_NBYTES
from streamcheck.connector.backends.redis_server import LocalRedisServer, free_port
from streamcheck.connector.backends.redis_store import COMMIT_SCRIPT

from .conftest import raw_client, require_redis_server

DONE, FAILED, PENDING = TransferState.DONE, TransferState.FAILED, TransferState.PENDING
BIG = 64 * 1024


@pytest.fixture(autouse=True)
def _needs_server() -> None:
    require_redis_server()


def _backend(url: str, **kwargs: object) -> RedisBackend:
    kwargs.setdefault("namespace", "kill")
    kwargs.setdefault("timeout_s", 2.0)
    kwargs.setdefault("io_threads", 4)
    return RedisBackend(url, BIG, **kwargs)  # type: ignore[arg-type]


def _settle(transfers: list[Transfer], deadline_s: float) -> list[TransferResult]:
    """Every transfer must end (DONE or FAILED) before the deadline: none may hang."""
    deadline = time.monotonic() + deadline_s
    results = [t.wait(max(0.0, deadline - time.monotonic())) for t in transfers]
    assert PENDING not in {r.state for r in results}, "a transfer hung after the server died"
    return results


def _wait_some_done(transfers: list[Transfer], count: int = 100, timeout: float = 30.0) -> None:
    """Return once ``count`` transfers ended: a kill now lands with many still in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(t.poll().state is not PENDING for t in transfers) >= count:
            return
        time.sleep(0.0005)
    pytest.fail("transfers did not finish")


def test_sigkill_mid_load_never_yields_bad_data(own_redis_server: LocalRedisServer) -> None:
    backend = _backend(own_redis_server.url)
    blocks = {f"b{i}": os.urandom(BIG) for i in range(600)}
    assert {t.wait(30).state for t in [backend.save(k, v) for k, v in blocks.items()]} == {DONE}
    outs = {k: bytearray(BIG) for k in blocks}
    loads = {k: backend.load(k, memoryview(outs[k])) for k in blocks}
    _wait_some_done(list(loads.values()))
    own_redis_server.kill()  # SIGKILL, mid-transfer
    results = dict(zip(loads, _settle(list(loads.values()), 30), strict=True))
    done = [k for k, r in results.items() if r.state is DONE]
    failed = [k for k, r in results.items() if r.state is FAILED]
    assert failed, "the kill landed after every load finished; nothing was tested"
    for key in done:
        assert outs[key] == blocks[key], f"{key} DONE with wrong data"
    assert backend.lookup(list(blocks)[:50]) == [False] * 50  # down: misses, no exception
    backend.close()


def test_sigkill_mid_save_then_restart_and_reconnect(own_redis_server: LocalRedisServer) -> None:
    backend = _backend(own_redis_server.url)
    blocks = {f"s{i}": os.urandom(BIG) for i in range(600)}
    saves = [backend.save(k, v) for k, v in blocks.items()]
    _wait_some_done(saves)
    own_redis_server.kill()
    results = _settle(saves, 30)
    assert FAILED in {r.state for r in results}
    assert all(r.error for r in results if r.state is FAILED)

    start = time.monotonic()
    assert backend.lookup(list(blocks)) == [False] * len(blocks)  # down
    assert time.monotonic() - start < 2.0
    assert backend.load("s0", memoryview(bytearray(BIG))).wait(10).state is FAILED

    own_redis_server.start()  # same port, empty: persistence is off
    assert backend.lookup(list(blocks)) == [False] * len(blocks)  # lost, never stale
    data = os.urandom(BIG)
    assert backend.save("after", data).wait(10).state is DONE  # reconnected
    out = bytearray(BIG)
    assert backend.load("after", memoryview(out)).wait(10).state is DONE and out == data
    assert backend.lookup(["after"]) == [True]
    backend.close()


def test_dropped_connections_lose_nothing_acknowledged(own_redis_server: LocalRedisServer) -> None:
    """The server keeps running but every client connection is cut mid-save: every DONE save
    is readable and exact; a FAILED one is absent, or whole (its commit may have landed)."""
    backend = _backend(own_redis_server.url)
    admin = raw_client(own_redis_server.url)
    blocks = {f"c{i}": os.urandom(BIG) for i in range(600)}
    saves = dict(zip(blocks, [backend.save(k, v) for k, v in blocks.items()], strict=True))
    _wait_some_done(list(saves.values()))
    for _ in range(5):
        admin.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.005)
    results = dict(zip(saves, _settle(list(saves.values()), 30), strict=True))
    present = dict(zip(blocks, backend.lookup(list(blocks)), strict=True))
    for key, result in results.items():
        if result.state is DONE:
            assert present[key], f"{key}: DONE save lost while the server kept running"
        if present[key]:
            out = bytearray(BIG)
            assert backend.load(key, memoryview(out)).wait(10).state is DONE
            assert out == blocks[key], f"{key}: stored block differs"
    leftovers = [k for k in admin.keys("kill:*") if not k.startswith(b"kill:b:")]
    assert leftovers == []  # no staging key survives a cut connection
    backend.close()


def test_hung_server_times_out_and_recovers(own_redis_server: LocalRedisServer) -> None:
    backend = _backend(own_redis_server.url, timeout_s=0.5, lookup_timeout_s=0.1)
    data = os.urandom(BIG)
    assert backend.save("k", data).wait(10).state is DONE
    own_redis_server.pause()  # SIGSTOP: sockets stay open, nothing answers
    try:
        start = time.monotonic()
        assert backend.lookup(["k"]) == [False]
        assert time.monotonic() - start < 1.0
        load = backend.load("k", memoryview(bytearray(BIG)))
        save = backend.save("hung", os.urandom(BIG))
        assert load.wait(10).state is FAILED and "Timeout" in load.poll().error
        assert save.wait(10).state is FAILED
    finally:
        own_redis_server.resume()
    assert backend.lookup(["k"]) == [True]
    out = bytearray(BIG)
    assert backend.load("k", memoryview(out)).wait(10).state is DONE and out == data
    # The timed-out save was sent whole before the server froze, so the thawed server may still
    # apply its transaction: then the block is complete and verified, never partial.
    if backend.lookup(["hung"]) == [True]:
        assert backend.load("hung", memoryview(out)).wait(10).state is DONE
    backend.close()


def test_unreachable_server_is_a_miss_not_an_error() -> None:
    backend = _backend(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    start = time.monotonic()
    assert backend.lookup(["a", "b"]) == [False, False]
    assert backend.save("a", bytes(BIG)).wait(10).state is FAILED
    result = backend.load("a", memoryview(bytearray(BIG))).wait(10)
    assert result.state is FAILED and "ConnectionError" in result.error
    assert time.monotonic() - start < 5.0
    with pytest.raises(Exception, match="delete failed"):
        backend.delete(["a"])
    backend.close()


def test_namespaces_are_isolated(redis_url: str) -> None:
    one = _backend(redis_url, namespace="ns1")
    two = _backend(redis_url, namespace="ns2")
    assert one.save("k", os.urandom(BIG)).wait(10).state is DONE
    assert two.lookup(["k"]) == [False]
    assert one.lookup(["k"]) == [True]
    one.delete(["k"])
    one.close()
    two.close()


def test_a_stored_block_holds_no_more_server_memory_than_a_plain_set(redis_url: str) -> None:
    """The staged value is created at its size: before, SET header + APPEND payload let the
    server grow it greedily, and every 64 KiB block held 160 KiB (a plain SET: 80 KiB)."""
    backend = _backend(redis_url, namespace="mem")
    assert backend.save("k", os.urandom(BIG)).wait(10).state is DONE
    client = raw_client(redis_url)
    client.set("mem:plain", os.urandom(HEADER_NBYTES + BIG))
    used, plain = client.memory_usage(backend.final_key("k")), client.memory_usage("mem:plain")
    client.delete("mem:plain")
    backend.delete(["k"])
    backend.close()
    assert used <= plain + 1024, (used, plain)


def test_the_commit_refuses_a_staged_value_without_its_header(redis_url: str) -> None:
    """The payload is staged first (the header's bytes zero) and the header written over it:
    a value of the right length whose header write did not land is never committed."""
    client = raw_client(redis_url)
    client.setrange("hdr:s:k", HEADER_NBYTES, os.urandom(BIG))
    header = b"SCKV" + bytes(HEADER_NBYTES - 4)
    assert client.eval(COMMIT_SCRIPT, 2, "hdr:s:k", "hdr:b:k", HEADER_NBYTES + BIG, header) == -1
    assert client.exists("hdr:s:k", "hdr:b:k") == 0


def test_bad_namespace_is_rejected(redis_url: str) -> None:
    with pytest.raises(ValueError):
        _backend(redis_url, namespace="a b")


def test_each_process_gets_its_own_server(redis_server: LocalRedisServer) -> None:
    """The session server belongs to this test process (one per xdist worker)."""
    assert redis_server.running
    assert os.getpid() != redis_server.pid
    info = raw_client(redis_server.url).info("server")
    assert int(info["tcp_port"]) == redis_server.port
    assert int(info["process_id"]) == redis_server.pid


def test_a_save_that_fails_inside_the_transaction_leaves_the_good_block(
        own_redis_server: LocalRedisServer) -> None:
    """A staging write whose result would exceed the server's proto-max-bulk-len (the payload's
    SETRANGE after the header; an APPEND before 2026-11-30) fails inside MULTI/EXEC while the
    other commands run: the commit must notice the short value and keep the previous good block
    (before: a header-only value was renamed over it, and every load failed). The payload alone
    fits the limit; header + payload does not."""
    size = 1024 * 1024
    backend = RedisBackend(own_redis_server.url, size, namespace="bulk")
    good = os.urandom(size)
    assert backend.save("k", good).wait(30).state is DONE
    raw_client(own_redis_server.url).config_set("proto-max-bulk-len", 1024 * 1024)
    result = backend.save("k", os.urandom(size)).wait(30)
    assert result.state is FAILED and "nothing was committed" in result.error
    out = bytearray(size)
    assert backend.load("k", memoryview(out)).wait(30).state is DONE
    assert bytes(out) == good
    assert not [k for k in raw_client(own_redis_server.url).keys("bulk:s:*")]  # no staging left
    backend.close()


def test_store_trouble_is_logged_once_not_only_turned_into_misses(
        own_redis_server: LocalRedisServer, caplog: pytest.LogCaptureFixture) -> None:
    raw_client(own_redis_server.url).config_set("requirepass", "secret")
    backend = _backend(own_redis_server.url, namespace="auth")
    with caplog.at_level("WARNING"):
        assert backend.lookup(["a", "b"]) == [False, False]
        assert backend.lookup(["a"]) == [False]
    warnings = [r for r in caplog.records if "lookup failed" in r.getMessage()]
    assert len(warnings) == 1 and "Authentication" in warnings[0].getMessage()
    backend.close()
