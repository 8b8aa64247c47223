"""Audit processes without code changes: environment variables plus a start-up hook.

As coverage.py measures subprocesses, a child process is audited when its environment says so:

* ``STREAMCHECK=<mode>`` turns the audit on at interpreter start-up;
* ``STREAMCHECK_REPORT_DIR=<dir>`` makes every audited process write its own report there at
  exit, named ``host.pid.random.json``; ``streamcheck report DIR`` merges them.

The start-up hook is the ``sitecustomize`` in :mod:`streamcheck.startup`, which
:func:`child_env` (and ``streamcheck env``) put first on PYTHONPATH; it chains to any other
``sitecustomize``, so a site's own one still runs. vLLM processes are also reached through the
``vllm.general_plugins`` entry point. :func:`process_startup` is idempotent: both may run.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from streamcheck.core.modes import ConfigError, parse_mode

ENV_MODE = "STREAMCHECK"
ENV_REPORT_DIR = "STREAMCHECK_REPORT_DIR"
STARTUP_DIR = str(Path(__file__).parent / "startup")

_started = False


def child_env(mode: str, report_dir: str | os.PathLike[str] | None = None,
              base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which Python child processes start audited in ``mode``."""
    env = dict(os.environ if base is None else base)
    env[ENV_MODE] = parse_mode(mode, "child_env(mode=...)").value
    if report_dir is not None:
        env[ENV_REPORT_DIR] = str(report_dir)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if STARTUP_DIR not in parts:
        env["PYTHONPATH"] = os.pathsep.join([STARTUP_DIR, *parts])
    return env


def report_path(report_dir: str | os.PathLike[str]) -> Path:
    name = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}.json"
    return Path(report_dir) / name


def process_startup() -> bool:
    """Install the audit if the environment asks for it. Returns whether it did (this call)."""
    global _started
    if _started or not os.environ.get(ENV_MODE):
        return False
    try:
        mode = parse_mode(os.environ[ENV_MODE], f"environment variable {ENV_MODE}")
    except ConfigError as exc:
        print(f"streamcheck: {exc}; not auditing this process", file=sys.stderr)
        return False
    if not mode.active:
        return False
    _started = True
    report_dir = os.environ.get(ENV_REPORT_DIR)
    if report_dir:
        atexit.register(write_process_report, report_dir)

    def install() -> None:
        from streamcheck import audit

        audit.install(mode)

    if "torch" in sys.modules:
        install()
    else:
        # A child that never imports torch launches nothing to audit: do not make it pay for
        # importing torch (~1.5 s). Install right after its own ``import torch`` instead.
        sys.meta_path.insert(0, _AfterImport("torch", install))
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback`` once, right after module ``name`` has been executed."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self._name = name
        self._callback = callback
        self._finding = False

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)  # the normal finders, not this one
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        execute = loader.exec_module

        def exec_module(module: object) -> None:
            execute(module)
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            self._callback()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def write_process_report(report_dir: str) -> Path | None:
    """Write this process's findings to its own file in ``report_dir`` (used at exit)."""
    from streamcheck.audit import current_auditor
    from streamcheck.core.report import build_report, write_report

    auditor = current_auditor()
    if auditor is None:
        return None
    return write_report(build_report(auditor), report_path(report_dir))
