"""A throwaway local ``redis-server`` (or ``valkey-server``) for tests and benchmarks.

The global-store backend is only worth trusting if it is tested against a real server, killed
and restarted for real. This starts one on a free loopback port with persistence off and a
private temp dir, and makes sure it does not outlive its owner: ``stop()`` (also on ``with`` exit
and at interpreter exit), plus, where ``setpriv`` exists and we are on the main thread, the
kernel's parent-death signal, which covers an owner killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

INSTALL_HINT = "apt-get install -y redis-server"


def find_server() -> str | None:
    """Path of ``redis-server`` (or ``valkey-server``), or ``None``."""
    return shutil.which("redis-server") or shutil.which("valkey-server")


def free_port() -> int:
    """A loopback port that was free a moment ago (start() retries if someone takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """True if a server answers PING on ``127.0.0.1:port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``; ``url`` is what clients use."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        found = binary or find_server()
        if found is None:
            raise FileNotFoundError(f"redis-server not found; install it: {INSTALL_HINT}")
        self.binary = found
        self.port = port
        self._fixed_port = port is not None
        self._dir = Path(tempfile.mkdtemp(prefix="streamcheck-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _command(self, port: int) -> list[str]:
        cmd = [
            self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self._dir), "--daemonize", "no",
            "--logfile", str(self._dir / "redis.log"),
        ]
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "KILL", *cmd]  # dies with us, even on SIGKILL
        return cmd

    def start(self, timeout: float = 10.0) -> LocalRedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.running:
            return self
        for _ in range(1 if self._fixed_port else 5):
            port = self.port if self._fixed_port else (self.port or free_port())
            assert port is not None
            self._proc = subprocess.Popen(
                self._command(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, cwd=self._dir)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if ping(port):
                    self.port = port
                    return self
                time.sleep(0.02)
            self._reap()
            if not self._fixed_port:
                self.port = None  # probably lost the port to someone else: pick another
        raise RuntimeError(f"redis-server did not start; log:\n{self.log[-2000:]}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL: a crash) and reap the process; the port is kept for restart."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its sockets open (the timeout path)."""
        if self.running:
            os.kill(self._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.running:
            os.kill(self._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def _reap(self, grace: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:  # still ours (not reaped), so its pid cannot have been reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Terminate the server and remove its temp dir; idempotent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._reap()
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
