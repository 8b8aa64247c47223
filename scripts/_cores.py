"""Which audited hooks a benchmark times: the compiled core (where built) and the Python one,
or the one ``--core`` names. Timing one core leaves a round fewer runs, so the same device
time holds more rounds and the interval narrows (``bench_audit.py``,
``bench_stream_loop.py``)."""

from __future__ import annotations

import argparse

from streamcheck.wrappers import speedups

CORE_CHOICES = ("both", "compiled", "python")


def add_core_option(parser: argparse.ArgumentParser) -> None:
    """The ``--core`` option, as every benchmark that times the hooks spells it."""
    parser.add_argument("--core", choices=CORE_CHOICES, default="both",
                        help="the audited hooks timed: both (the default), or only one of them")


def chosen_cores(core: str, script: str) -> list[str]:
    """The cores to time, the compiled one first; a ``core`` that is not built here stops the
    run with the reason (``script`` names the benchmark in it)."""
    built = ["compiled", "python"] if speedups.built() else ["python"]
    if core == "both":
        return built
    if core not in built:
        raise SystemExit(f"{script}: --core {core}: the compiled hooks are not built here "
                         "(scripts/build_speedups.sh)")
    return [core]
