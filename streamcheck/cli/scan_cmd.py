"""``streamcheck scan PATH|PACKAGE...``: the static analysis (see :mod:`streamcheck.scan`)."""

from __future__ import annotations

import argparse

from rich.console import Console

from streamcheck.scan.cli import add_scan_arguments, run_scan_command


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_scan_arguments(p)


def command(args: argparse.Namespace, console: Console) -> int:
    return run_scan_command(args, console)
