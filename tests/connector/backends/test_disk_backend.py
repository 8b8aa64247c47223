"""Disk backend: atomic commit, a crash before the rename, keys that try to leave the root."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from streamcheck.connector.backends import BackendError, DiskBackend, TransferState
from streamcheck.connector.backends.blockformat import HEADER_NBYTES, encode_header

DONE, FAILED, PENDING = TransferState.DONE, TransferState.FAILED, TransferState.PENDING
N = 4096


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_is_fanned_out_under_root(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path / "s", N)
    assert backend.save("abc", os.urandom(N)).wait(10).state is DONE
    (path,) = _files(tmp_path / "s")
    assert path == backend.path("abc")
    assert path.name == "abc.kv" and len(path.parent.name) == 2
    assert path.stat().st_size == HEADER_NBYTES + N
    backend.close()


def test_pending_save_is_invisible_until_renamed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold a save after its temp file is fully written: lookup must still say False."""
    gate, reached = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        real_fsync(fd)
        reached.set()
        assert gate.wait(10)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    backend = DiskBackend(tmp_path, N)
    transfer = backend.save("k", os.urandom(N))
    assert reached.wait(10)
    assert transfer.poll().state is PENDING
    assert transfer.wait(0.05).state is PENDING
    (tmp,) = _files(tmp_path)
    assert tmp.name.startswith(".k.") and tmp.name.endswith(".tmp")
    assert tmp.stat().st_size == HEADER_NBYTES + N  # complete, yet not a block
    assert backend.lookup(["k"]) == [False]
    assert backend.load("k", memoryview(bytearray(N))).wait(10).state is FAILED
    gate.set()
    assert transfer.wait(10).state is DONE
    assert backend.lookup(["k"]) == [True]
    assert [p.name for p in _files(tmp_path)] == ["k.kv"]
    backend.close()


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    backend = DiskBackend(tmp_path, N)
    monkeypatch.setattr(os, "fsync", broken_fsync)
    result = backend.save("k", os.urandom(N)).wait(10)
    assert result.state is FAILED and "Input/output error" in result.error
    assert _files(tmp_path) == []
    assert backend.lookup(["k"]) == [False]
    backend.close()


CRASH = textwrap.dedent("""
    import os, sys
    from streamcheck.connector.backends import DiskBackend
    os.replace = lambda src, dst: os._exit(17)   # the process dies between write and rename
    backend = DiskBackend(sys.argv[1], {n})
    backend.save("victim", os.urandom({n})).wait(30)
    sys.exit(1)  # not reached
""")


def test_crash_between_temp_write_and_rename_leaves_nothing_visible(tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", CRASH.format(n=N), str(root)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 17, proc.stderr
    (tmp,) = _files(root)  # the written, fsynced temp file survived the crash
    assert tmp.name.endswith(".tmp")

    backend = DiskBackend(root, N)  # a fresh process over the same root
    assert backend.lookup(["victim"]) == [False]
    assert backend.load("victim", memoryview(bytearray(N))).wait(10).state is FAILED
    assert backend.stats()["blocks"] == 0
    assert tmp.exists()  # young temp files are left alone: another writer may own them
    backend.close()

    backend = DiskBackend(root, N, stale_tmp_s=0)  # old enough: cleaned up on open
    assert _files(root) == []
    assert backend.save("victim", os.urandom(N)).wait(10).state is DONE
    assert backend.lookup(["victim"]) == [True]
    backend.close()


def test_lookup_ignores_a_complete_temp_file(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    payload = os.urandom(N)
    final = backend.path("k")
    (final.parent / ".k.deadbeef.tmp").write_bytes(encode_header("k", payload) + payload)
    assert backend.lookup(["k"]) == [False]
    backend.close()


@pytest.mark.parametrize("key", ["..", ".", "...", "a..b", ":", "-", "_.kv", "x" * 200])
def test_odd_but_valid_keys_stay_inside_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    backend = DiskBackend(root, N)
    data = os.urandom(N)
    assert backend.save(key, data).wait(10).state is DONE
    (path,) = _files(tmp_path)
    assert path.resolve().is_relative_to(root.resolve())
    assert path.parent.parent == root.resolve()
    assert path.name == key + ".kv"
    out = bytearray(N)
    assert backend.load(key, memoryview(out)).wait(10).state is DONE and out == data
    backend.close()


@pytest.mark.parametrize("key", ["../escape", "../../etc/passwd", "/tmp/abs", "a/../../b", "~"])
def test_keys_cannot_escape_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    backend = DiskBackend(root, N)
    with pytest.raises(ValueError):
        backend.save(key, bytes(N))
    with pytest.raises(ValueError):
        backend.path(key)
    assert _files(tmp_path) == []
    backend.close()


def test_blocks_survive_a_reopen(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N)
    data = os.urandom(N)
    backend.save("k", data).wait(10)
    backend.close()
    again = DiskBackend(tmp_path, N)
    assert again.stats()["blocks"] == 1
    assert again.lookup(["k"]) == [True]
    out = bytearray(N)
    assert again.load("k", memoryview(out)).wait(10).state is DONE and out == data
    again.close()


def test_capacity_evicts_least_recently_used(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N, capacity_blocks=3)
    for k in "abc":
        assert backend.save(k, os.urandom(N)).wait(10).state is DONE
    assert backend.lookup(["a"]) == [True]  # touch a
    assert backend.save("d", os.urandom(N)).wait(10).state is DONE  # evicts b
    assert backend.lookup(list("abcd")) == [True, False, True, True]
    assert len(_files(tmp_path)) == 3
    stats = backend.stats()
    assert (stats["evictions"], stats["blocks"], stats["capacity_blocks"]) == (1, 3, 3)
    backend.close()


def test_no_fsync_mode_round_trips(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path, N, fsync=False)
    data = os.urandom(N)
    assert backend.save("k", data).wait(10).state is DONE
    out = bytearray(N)
    assert backend.load("k", memoryview(out)).wait(10).state is DONE and out == data
    backend.close()


# ---- a shared host: trust nothing the store did not make ------------------------------------

def test_files_and_directories_are_private(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path / "s", N)
    assert backend.save("k", os.urandom(N)).wait(10).state is DONE
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert backend.path("k").parent.stat().st_mode & 0o777 == 0o700
    assert backend.path("k").stat().st_mode & 0o777 == 0o600
    backend.close()


def test_a_root_others_can_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(BackendError, match="writable by group or others"):
        DiskBackend(root, N)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_a_root_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    os.chown(root, 12345, 12345)
    with pytest.raises(BackendError, match="owned by uid 12345"):
        DiskBackend(root, N)


def test_a_fan_out_directory_replaced_by_a_link_is_refused(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path / "s", N)
    fan = backend.path("k").parent
    backend.close()
    outside = tmp_path / "elsewhere"
    outside.mkdir(mode=0o700)
    fan.rmdir()
    fan.symlink_to(outside)
    with pytest.raises(BackendError, match="symbolic link"):
        DiskBackend(tmp_path / "s", N)


def test_a_link_planted_as_a_block_is_neither_followed_nor_served(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path / "s", N)
    secret = tmp_path / "secret"
    secret.write_bytes(encode_header("k", b"\0" * N) + b"\0" * N)  # a valid-looking block
    backend.path("k").symlink_to(secret)
    assert backend.lookup(["k"]) == [False]
    result = backend.load("k", memoryview(bytearray(N))).wait(10)
    assert result.state is FAILED and "refusing to open" in result.error
    assert backend.save("k", os.urandom(N)).wait(10).state is DONE  # replaces the link
    assert not backend.path("k").is_symlink() and secret.stat().st_size == HEADER_NBYTES + N
    backend.close()


def test_a_fifo_planted_as_a_block_does_not_hang_the_io_threads(tmp_path: Path) -> None:
    backend = DiskBackend(tmp_path / "s", N)
    os.mkfifo(backend.path("k"))
    assert backend.lookup(["k"]) == [False]
    result = backend.load("k", memoryview(bytearray(N))).wait(5)
    assert result.state is FAILED and "not a regular file" in result.error
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
