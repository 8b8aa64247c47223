"""Where each connector load's time went, from the connector's timeline in a real engine.

    python scripts/connector_timeline.py ENGINE_CHECK_RESULT.json [--all]

Reads the timeline a ``trace``-enabled connector returns with its metrics (``engine_check.py``
writes it under ``stats.workers[i].timeline``) and splits each load into the phases a warm
request passes through, in milliseconds:

``issue``        ``load.issue`` to ``load.issued``: the copies, checks and scatters queued by
                 the engine's thread;
``to_retire``    to the poll that retired it: the device's work and the engine's polling;
``to_reported``  to the ``get_finished`` that reported it to vLLM;
``to_forward``   to the start of the first step that runs a forward (vLLM's scheduler sees a
                 reported load one step later);
``to_layer0``    to the first layer's ``save_kv_layer``;
``layers``       the first to the last layer's ``save_kv_layer`` of that forward;
``to_save``      to that step's ``wait_for_save``.

Prints the median of each phase over the loads (``--all``: every load). A load whose phases
cannot all be found (the trace ended first, or nothing was issued) is left out and counted.
Then each forward's time a layer, the first forwards after a load apart from the others
(:func:`layer_times`).
The forward phases are those of the first forward after the report, whichever requests it
runs: meaningful for requests sent one at a time (``engine_check.py``'s warm pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

Record = list[Any]  # [ns since the connector started, thread, what, detail]
PHASES = ("issue", "to_retire", "to_reported", "to_forward", "to_layer0", "layers", "to_save")


def _next(records: list[Record], start: int, what: str, detail: str | None = None,
          stop: int | None = None) -> int | None:
    for i in range(start, len(records) if stop is None else stop):
        if records[i][2] == what and (detail is None or records[i][3] == detail):
            return i
    return None


def _forward_step(records: list[Record], start: int) -> tuple[int, int, int, int] | None:
    """(step start, first layer, last layer, wait_for_save) of the first step at or after
    ``start`` whose forward saved layers."""
    step = _next(records, start, "start_load_kv")
    while step is not None:
        end = _next(records, step + 1, "start_load_kv")
        stop = len(records) if end is None else end
        save = _next(records, step, "wait_for_save", stop=stop)
        layers = [i for i in range(step, stop if save is None else save)
                  if records[i][2] == "save_kv_layer"]
        if layers and save is not None:
            return step, layers[0], layers[-1], save
        step = end
    return None


def phases(records: list[Record]) -> tuple[list[dict[str, float]], int]:
    """Each load's phases (ms), and how many loads were left out for lack of records."""
    ms = lambda a, b: (records[b][0] - records[a][0]) / 1e6  # noqa: E731
    out: list[dict[str, float]] = []
    missed = 0
    for begin, record in enumerate(records):
        if record[2] != "load.issue":
            continue
        req = record[3]
        again = _next(records, begin + 1, "load.issue", req)  # the same request loading again
        issued = _next(records, begin, "load.issued", req, stop=again)
        retired = _next(records, begin, "retire", f"load {req}", stop=again)
        reported = None if retired is None else _next(records, retired, "loads.reported")
        forward = None if reported is None else _forward_step(records, reported)
        if issued is None or retired is None or reported is None or forward is None:
            missed += 1
            continue
        step, first, last, save = forward
        out.append({"issue": ms(begin, issued), "to_retire": ms(issued, retired),
                    "to_reported": ms(retired, reported), "to_forward": ms(reported, step),
                    "to_layer0": ms(step, first), "layers": ms(first, last),
                    "to_save": ms(last, save)})
    return out, missed


def layer_times(records: list[Record]) -> dict[str, list[float]]:
    """Each forward's time a layer (ms: its first to its last ``save_kv_layer``, over the
    layers between), under ``after_load`` for the first forward after a load was reported
    (it waits for the loaded blocks and declares their reads, a layer at a time) and
    ``other`` for the rest: the connector's per-layer cost in that forward, against the same
    engine's other forwards."""
    out: dict[str, list[float]] = {"after_load": [], "other": []}
    reported = False  # a load reported since the last forward
    step: list[int] = []  # this step's save_kv_layer times
    for ns, _thread, what, _detail in [*records, (0, "", "start_load_kv", "")]:
        if what == "start_load_kv":
            if len(step) > 1:
                out["after_load" if reported else "other"].append(
                    (step[-1] - step[0]) / (len(step) - 1) / 1e6)
                reported = False
            step = []
        elif what == "save_kv_layer":
            step.append(ns)
        elif what == "loads.reported":
            reported = True
    return out


def timelines(result: dict[str, Any]) -> list[list[Record]]:
    """The timelines in an ``engine_check.py`` result file (one per worker)."""
    body = result.get("result", result)
    workers = body.get("stats", {}).get("workers", [])
    return [w["timeline"] for w in workers if isinstance(w, dict) and w.get("timeline")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--all", action="store_true", help="print every load, not only medians")
    args = parser.parse_args(argv)
    try:
        found = timelines(json.loads(args.result.read_text()))
    except (OSError, ValueError) as exc:
        print(f"connector_timeline: cannot read {args.result}: {exc}", file=sys.stderr)
        return 2
    if not found:
        print(f"connector_timeline: {args.result} holds no timeline (run the connector with "
              "'trace' in its config)", file=sys.stderr)
        return 2
    for worker, records in enumerate(found):
        loads, missed = phases(records)
        print(f"worker {worker}: {len(records)} records, {len(loads)} loads timed, "
              f"{missed} left out (records missing)")
        print("  " + " ".join(f"{p:>11}" for p in PHASES) + "   (ms)")
        rows = loads if args.all else []
        for load in rows:
            print("  " + " ".join(f"{load[p]:11.2f}" for p in PHASES))
        if loads:
            print("  " + " ".join(f"{statistics.median(x[p] for x in loads):11.2f}"
                                  for p in PHASES) + "   median")
        for kind, times in layer_times(records).items():
            if times:
                print(f"  a layer, {kind.replace('_', ' ')} forwards ({len(times)}): median "
                      f"{statistics.median(times):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
