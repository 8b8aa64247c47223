"""Audit processes without code changes: environment variables plus a start-up hook.

As coverage.py measures subprocesses, a child process is audited when its environment says so:

* ``STREAMCHECK=<mode>`` turns the audit on at interpreter start-up (the other settings,
  :mod:`streamcheck.settings`, travel the same way: targets, rule selection, strictness);
* ``STREAMCHECK_REPORT_DIR=<dir>`` makes every audited process keep its own report there,
  named ``host.pid.random.json`` and written as it goes (:mod:`streamcheck.report_writer`);
  ``streamcheck report DIR`` merges them.

The start-up hook is the ``sitecustomize`` in :mod:`streamcheck.startup`, which
:func:`child_env` (and ``streamcheck env``) put first on PYTHONPATH; it chains to any other
``sitecustomize``, so a site's own one still runs. vLLM processes are also reached through the
``vllm.general_plugins`` entry point. :func:`process_startup` is idempotent: both may run.

Bad settings are found here, at start-up, not at exit: a bad mode or an unwritable report
directory prints one line naming the variable; with ``STREAMCHECK_STRICT=1`` the process
refuses to start instead of running unaudited.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import wrapt

from streamcheck.core.modes import ConfigError, Mode, parse_mode
from streamcheck.settings import ENV_MODE, ENV_STRICT, TRUE_WORDS, AuditSettings

STARTUP_DIR = str(Path(__file__).parent / "startup")
EXIT_REFUSED = 2

_started = False
_writer = None  # this process's report writer, once its audit started


def child_env(mode: str | Mode, report_dir: str | os.PathLike[str] | None = None,
              base: dict[str, str] | None = None,
              settings: AuditSettings | None = None) -> dict[str, str]:
    """An environment in which Python child processes start audited in ``mode``.

    ``settings`` (default: this process's, from its environment and pyproject) travel whole,
    so children audit the same targets with the same rules.
    """
    env = dict(os.environ if base is None else base)
    if settings is None:
        settings = AuditSettings.load(env)
    settings = dataclasses.replace(
        settings, mode=parse_mode(mode, "child_env(mode=...)"),
        report_dir=str(report_dir) if report_dir is not None else settings.report_dir)
    env.update(settings.to_env())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if STARTUP_DIR not in parts:
        env["PYTHONPATH"] = os.pathsep.join([STARTUP_DIR, *parts])
    return env


def strict_requested(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """``STREAMCHECK_STRICT`` read leniently: it must work even when other settings do not."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_STRICT, "").strip().lower() in TRUE_WORDS


def refuse_or_warn(message: str) -> None:
    """Say why this process is not audited; under ``STREAMCHECK_STRICT`` refuse to run."""
    if strict_requested():
        print(f"streamcheck: {message}; {ENV_STRICT} is set: refusing to run unaudited",
              file=sys.stderr)
        raise SystemExit(EXIT_REFUSED)
    print(f"streamcheck: {message}; this process runs unaudited", file=sys.stderr)


def process_startup() -> bool:
    """Install the audit if the environment asks for it. Returns whether it did (this call)."""
    global _started
    if _started or not os.environ.get(ENV_MODE):
        return False
    try:
        settings = AuditSettings.load()
        writer = None
        if settings.mode.active and settings.report_dir:
            from streamcheck.report_writer import ProcessReportWriter, check_writable

            check_writable(settings.report_dir, f"{settings.source_of('report_dir')}")
            writer = ProcessReportWriter(settings.report_dir)
    except ConfigError as exc:
        refuse_or_warn(str(exc))
        return False
    if not settings.mode.active:
        return False
    _started = True

    def install(_torch: object = None) -> None:
        from streamcheck import installer

        try:
            installer.install(settings=settings)
        except Exception as exc:  # never break the process's own import of torch
            refuse_or_warn(f"could not start the audit: {type(exc).__name__}: {exc}")
            return
        if writer is not None:
            global _writer
            writer.start()
            _writer = writer

    # A child that never imports torch launches nothing to audit: do not make it pay for
    # importing torch (~1.5 s). Install right after its own ``import torch`` instead.
    wrapt.register_post_import_hook(install, "torch")
    return True


def flush_report(final: bool = True) -> Path | None:
    """Write this process's report now, for a process about to leave through ``os._exit``
    (rank processes skipping NCCL teardown do). None when it keeps no report."""
    return _writer.write(final=final) if _writer is not None else None

