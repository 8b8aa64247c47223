"""The backend contract, checked on every backend (host memory, disk, a real Redis server)."""

from __future__ import annotations

import os
import random
import threading

import pytest
import torch

from streamcheck.connector.backends import KVBackend, Transfer, TransferState

from .conftest import BLOCK, Kit

DONE, FAILED, PENDING = TransferState.DONE, TransferState.FAILED, TransferState.PENDING
STAT_KEYS = {"bytes_saved", "bytes_loaded", "hits", "misses", "failures", "evictions", "blocks"}
BAD_KEYS = ["", "a/b", "../etc", "/abs", "a b", "k\n", "k\r\nSET x y", "kö", "x" * 201,
            "a\\b", "k\x00", "*", "{k}"]


def test_is_a_kv_backend(kit: Kit) -> None:
    backend = kit.make()
    assert isinstance(backend, KVBackend)
    assert backend.block_nbytes == BLOCK
    assert backend.name == kit.kind
    assert isinstance(backend.save("k", bytes(BLOCK)), Transfer)


def test_round_trip_is_bit_exact(kit: Kit) -> None:
    backend = kit.make()
    blocks = {f"{os.urandom(8).hex()}.L{i}": os.urandom(BLOCK) for i in range(32)}
    saves = [backend.save(k, v) for k, v in blocks.items()]
    assert [t.wait(10).state for t in saves] == [DONE] * len(saves)
    assert all(t.poll().nbytes == BLOCK for t in saves)
    outs = {k: bytearray(BLOCK) for k in blocks}
    loads = [backend.load(k, memoryview(outs[k])) for k in blocks]
    assert [t.wait(10).state for t in loads] == [DONE] * len(loads)
    for key, data in blocks.items():
        assert outs[key] == data, key


def test_round_trip_through_tensor_views(kit: Kit) -> None:
    """The runtime hands over rows of pinned staging tensors: any dtype, viewed as bytes."""
    backend = kit.make()
    src = torch.randn(4, BLOCK // 2).to(torch.float16)  # 2 bytes per element: one block a row
    for i in range(4):
        assert backend.save(f"row{i}", memoryview(src[i].numpy())).wait(10).state is DONE
    dst = torch.zeros_like(src)
    for i in range(4):
        assert backend.load(f"row{i}", memoryview(dst[i].numpy())).wait(10).state is DONE
    assert torch.equal(src.view(torch.int16), dst.view(torch.int16))


def test_lookup_only_sees_committed_blocks(kit: Kit) -> None:
    backend = kit.make()
    assert backend.lookup(["a", "b"]) == [False, False]
    assert backend.save("a", os.urandom(BLOCK)).wait(10).state is DONE
    for _ in range(3):  # repeatable, and a lookup changes nothing
        assert backend.lookup(["a", "b", "a"]) == [True, False, True]
    assert backend.lookup([]) == []
    backend.delete(["a", "never-saved"])
    assert backend.lookup(["a"]) == [False]
    assert backend.load("a", memoryview(bytearray(BLOCK))).wait(10).state is FAILED


def test_failed_save_is_never_visible(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = kit.make()
    with kit.failing_saves(backend, monkeypatch):
        result = backend.save("doomed", os.urandom(BLOCK)).wait(10)
    assert result.state is FAILED and result.error
    assert backend.lookup(["doomed"]) == [False]
    assert backend.load("doomed", memoryview(bytearray(BLOCK))).wait(10).state is FAILED
    assert kit.store_keys(backend) == []  # no staging key, no temp file left behind
    assert backend.stats()["failures"] == 2
    # and the store works again once the fault is gone
    assert backend.save("doomed", os.urandom(BLOCK)).wait(10).state is DONE
    assert backend.lookup(["doomed"]) == [True]


def test_missing_key_load_fails(kit: Kit) -> None:
    backend = kit.make()
    into = bytearray(b"\xaa" * BLOCK)
    result = backend.load("nope", memoryview(into)).wait(10)
    assert result.state is FAILED
    assert "not found" in result.error
    assert result.nbytes == 0
    assert backend.stats()["failures"] == 1


def test_corrupted_payload_fails_with_checksum_message(kit: Kit) -> None:
    backend = kit.make()
    data = os.urandom(BLOCK)
    assert backend.save("k", data).wait(10).state is DONE
    kit.flip_payload_byte(backend, "k")
    assert backend.lookup(["k"]) == [True]  # still there; only a load can tell
    result = backend.load("k", memoryview(bytearray(BLOCK))).wait(10)
    assert result.state is FAILED
    assert "checksum mismatch" in result.error
    assert backend.stats()["failures"] == 1


def test_block_under_the_wrong_key_fails(kit: Kit) -> None:
    """The CRC is seeded with the key: intact bytes filed under another key are rejected."""
    backend = kit.make()
    assert backend.save("k1", os.urandom(BLOCK)).wait(10).state is DONE
    assert backend.save("k2", os.urandom(BLOCK)).wait(10).state is DONE
    if kit.kind == "host":
        pytest.skip("host slots keep their key in memory; there is nothing to misfile")
    kit.overwrite(backend, "k2", kit.stored(backend, "k1"))
    result = backend.load("k2", memoryview(bytearray(BLOCK))).wait(10)
    # disk slots also name their key in the header, so the load says so before the CRC does
    assert result.state is FAILED
    assert "checksum mismatch" in result.error or "under the wrong key" in result.error


@pytest.mark.parametrize("damage", ["magic", "truncated", "length", "trailing", "empty"])
def test_damaged_stored_block_fails(kit: Kit, damage: str) -> None:
    if kit.kind == "host":
        pytest.skip("host blocks have no stored header (the slab holds payloads only)")
    if kit.kind == "disk" and damage == "trailing":
        pytest.skip("disk slots are fixed-size: there is no end of file to append past")
    backend = kit.make()
    assert backend.save("k", os.urandom(BLOCK)).wait(10).state is DONE
    raw = kit.stored(backend, "k")
    header = kit.header_nbytes(backend)
    assert len(raw) == header + BLOCK
    damaged = {
        "magic": b"XXXX" + raw[4:],
        "truncated": raw[: header + BLOCK // 2],
        "length": raw[:8] + (BLOCK * 2).to_bytes(8, "little") + raw[16:],
        "trailing": raw + b"\x00",
        "empty": b"",
    }[damage]
    kit.overwrite(backend, "k", damaged)
    into = bytearray(BLOCK)
    result = backend.load("k", memoryview(into)).wait(10)
    assert result.state is FAILED, damage
    assert "corrupt" in result.error or "format" in result.error


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_raise_before_touching_the_store(kit: Kit, key: str) -> None:
    backend = kit.make()
    before = backend.stats()
    with pytest.raises(ValueError):
        backend.lookup(["good", key])
    with pytest.raises(ValueError):
        backend.save(key, bytes(BLOCK))
    with pytest.raises(ValueError):
        backend.load(key, memoryview(bytearray(BLOCK)))
    with pytest.raises(ValueError):
        backend.delete(["good", key])
    assert backend.stats() == before
    assert kit.store_keys(backend) == []


def test_non_string_keys_raise(kit: Kit) -> None:
    backend = kit.make()
    for key in (b"abc", 12, None):
        with pytest.raises(ValueError):
            backend.save(key, bytes(BLOCK))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        backend.lookup("abc")  # a bare string is not a list of keys


def test_wrong_buffer_size_or_readonly_target_raises(kit: Kit) -> None:
    backend = kit.make()
    with pytest.raises(ValueError):
        backend.save("k", bytes(BLOCK - 1))
    with pytest.raises(ValueError):
        backend.load("k", memoryview(bytearray(BLOCK + 1)))
    with pytest.raises(ValueError):
        backend.load("k", memoryview(bytes(BLOCK)))  # read-only


def test_concurrent_threads_never_see_torn_blocks(kit: Kit) -> None:
    """Threads save and load their own keys, and overwrite shared keys with whole versions;
    every DONE load is bit-exact: its own data, or exactly one version of a shared key."""
    backend = kit.make(**({"io_threads": 4} if kit.kind != "host" else {}))
    versions = [os.urandom(BLOCK) for _ in range(4)]
    shared = [f"shared{i}" for i in range(4)]
    for key in shared:
        assert backend.save(key, versions[0]).wait(10).state is DONE
    errors: list[str] = []
    start = threading.Barrier(8)

    def worker(w: int) -> None:
        rng = random.Random(w)
        start.wait()
        for i in range(25):
            own, data = f"w{w}.b{i}", rng.randbytes(BLOCK)
            if backend.save(own, data).wait(10).state is not DONE:
                errors.append(f"save {own}")
            out = bytearray(BLOCK)
            if backend.load(own, memoryview(out)).wait(10).state is not DONE or out != data:
                errors.append(f"load {own}")
            key = rng.choice(shared)
            if rng.random() < 0.5:
                backend.save(key, rng.choice(versions)).wait(10)
            else:
                out = bytearray(BLOCK)
                result = backend.load(key, memoryview(out)).wait(10)
                if result.state is DONE and bytes(out) not in versions:
                    errors.append(f"torn {key}")
            backend.lookup([own, key])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert backend.stats()["failures"] == 0


def test_close_drains_in_flight_saves(kit: Kit) -> None:
    backend = kit.make(**({"io_threads": 1} if kit.kind != "host" else {}))
    blocks = {f"k{i}": os.urandom(BLOCK) for i in range(64)}
    transfers = [backend.save(k, v) for k, v in blocks.items()]
    backend.close()
    assert [t.poll().state for t in transfers] == [DONE] * len(transfers)  # no wait needed
    backend.close()  # idempotent
    assert backend.lookup(list(blocks)) == [False] * len(blocks)  # closed: nothing to offer
    assert backend.save("late", bytes(BLOCK)).poll().state is FAILED
    assert backend.load("k0", memoryview(bytearray(BLOCK))).poll().state is FAILED
    if kit.kind != "host":  # the drained saves really reached the store
        again = kit.make()
        if kit.kind == "redis":
            again = kit.make(namespace=backend.namespace)
        out = bytearray(BLOCK)
        assert again.load("k63", memoryview(out)).wait(10).state is DONE
        assert out == blocks["k63"]


def test_close_without_drain_cancels_queued_work(kit: Kit) -> None:
    backend = kit.make(**({"io_threads": 1} if kit.kind != "host" else {}))
    transfers = [backend.save(f"k{i}", os.urandom(BLOCK)) for i in range(200)]
    backend.close(drain=False)  # type: ignore[call-arg]
    states = [t.poll() for t in transfers]
    assert all(s.state in (DONE, FAILED) for s in states)
    cancelled = [s for s in states if s.state is FAILED]
    assert all("cancelled" in s.error for s in cancelled)
    if kit.kind != "host":
        assert cancelled, "one IO thread cannot have finished 200 saves before close"
        assert backend.stats()["failures"] == len(cancelled)


def test_stats_count_what_happened(kit: Kit) -> None:
    backend = kit.make()
    for i in range(3):
        assert backend.save(f"k{i}", os.urandom(BLOCK)).wait(10).state is DONE
    assert backend.load("k0", memoryview(bytearray(BLOCK))).wait(10).state is DONE
    assert backend.load("zz", memoryview(bytearray(BLOCK))).wait(10).state is FAILED
    assert backend.lookup(["k0", "k1", "zz"]) == [True, True, False]
    backend.delete(["k2"])
    stats = backend.stats()
    assert set(stats) >= STAT_KEYS
    assert stats["bytes_saved"] == 3 * BLOCK
    assert stats["bytes_loaded"] == BLOCK
    assert (stats["hits"], stats["misses"], stats["failures"]) == (2, 1, 1)
    assert stats["evictions"] == 0
    assert stats["blocks"] == 2
