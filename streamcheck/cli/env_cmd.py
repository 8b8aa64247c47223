"""``streamcheck env MODE``: shell exports that audit every Python process started after them.

    eval "$(streamcheck env assert --report-dir /tmp/sc)"
    python serve.py
    streamcheck report /tmp/sc
"""

from __future__ import annotations

import argparse
import shlex

from rich.console import Console

from streamcheck.activation import child_env
from streamcheck.core.modes import Mode
from streamcheck.settings import (
    ENV_CORE,
    ENV_MODE,
    ENV_REPORT_DIR,
    ENV_SELECT,
    ENV_STRICT,
    ENV_TARGETS,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=[m.value for m in Mode], help="audit mode for the processes")
    p.add_argument("--report-dir", metavar="DIR",
                   help="each audited process writes its report here at exit")


def command(args: argparse.Namespace, console: Console) -> int:
    env = child_env(args.mode, args.report_dir, base={})
    for key in (ENV_MODE, ENV_REPORT_DIR, ENV_TARGETS, ENV_SELECT, ENV_STRICT, ENV_CORE):
        if key in env:
            print(f"export {key}={shlex.quote(env[key])}")
    print(f"export PYTHONPATH={shlex.quote(env['PYTHONPATH'])}${{PYTHONPATH:+:$PYTHONPATH}}")
    return 0
