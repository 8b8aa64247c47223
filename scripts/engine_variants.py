"""Which of a run's differing outputs the engine also gives without a connector's KV.

    python scripts/engine_variants.py REF.json --control A.json [--control B.json ...] RUN.json ...

The real engine does not answer a prompt the same way every time, even with batch-invariant
kernels: a preempted request recomputed as a prefill, a partial prefill after a prefix hit, a
server under concurrent load each change some greedy outputs, by themselves (a no-connector
server gave 20 of 600 answers otherwise). So an output that differs from the reference is only
suspect if no control run gave that exact output: a run without a connector, with vLLM's own
connector, or one whose every load failed and was recomputed. This reads the JSON files
``engine_check.py`` writes (a TP=2 case's ``tokens``, a soak's ``variants``) and prints each
differing output of each RUN with the controls that also gave it; it exits 1 if any output is
one no control gave.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # its sibling modules, also when loaded from a file path
    sys.path.insert(0, str(HERE))

from serve_soak import first_difference  # noqa: E402 (needs the path above)

Output = tuple[str, tuple[int, ...]]  # (prompt, tokens)
Row = tuple[str, int, tuple[int, ...], int]  # (prompt, pass or -1, tokens, count)


def load_result(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return data.get("result", data)


def outputs(result: dict[str, Any]) -> Iterator[Row]:
    """(prompt, pass or -1, tokens, count) of every output a case's result holds: a TP=2
    case's token lists by pass, a soak's distinct wrong answers with their counts."""
    for prompt, passes in result.get("tokens", {}).items():
        if isinstance(passes, list) and passes and isinstance(passes[0], list):
            for p, tokens in enumerate(passes):
                yield prompt, p, tuple(tokens), 1
    for prompt, tokens, count in result.get("variants", []):
        yield str(prompt), -1, tuple(tokens), count


def differing(result: dict[str, Any], ref: dict[str, Any]) -> list[Row]:
    """The outputs of ``result`` that are not the reference's first pass for their prompt."""
    expected = {k: tuple(v[0]) for k, v in ref["tokens"].items()}
    return [o for o in outputs(result) if expected.get(o[0]) != o[2]]


def known_variants(controls: dict[str, dict[str, Any]], ref: dict[str, Any]
                   ) -> dict[Output, set[str]]:
    """Each differing output any control gave, with the controls that gave it."""
    known: dict[Output, set[str]] = {}
    for name, result in controls.items():
        for prompt, _p, tokens, _n in differing(result, ref):
            known.setdefault((prompt, tokens), set()).add(name)
    return known


def classify(runs: dict[str, dict[str, Any]], controls: dict[str, dict[str, Any]],
             ref: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per differing output of each run: where it parts from the reference, how
    often it came, and which controls also gave it (none: suspect)."""
    known = known_variants(controls, ref)
    rows = []
    for run, result in runs.items():
        for prompt, p, tokens, count in differing(result, ref):
            rows.append({"run": run, "prompt": int(prompt), "pass": p, "count": count,
                         "first_difference": first_difference(tokens,
                                                              tuple(ref["tokens"][prompt][0])),
                         "also_given_by": sorted(known.get((prompt, tokens), ()))})
    return rows


def labelled(paths: list[Path]) -> dict[Path, str]:
    """A name for each result file: ``case (directory)``, or its whole path where two files
    would share that name (two runs of one case are two controls, not one)."""
    short = {p: f"{p.stem} ({p.parent.name})" for p in paths}
    taken = [short[p] for p in dict.fromkeys(paths)]
    return {p: str(p) if taken.count(short[p]) > 1 else short[p] for p in paths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", type=Path, help="the no-connector reference case (ref_tp2.json)")
    parser.add_argument("runs", type=Path, nargs="+", help="the cases whose outputs to check")
    parser.add_argument("--control", type=Path, action="append", default=[],
                        help="a case that loaded no connector KV (repeatable)")
    args = parser.parse_args(argv)
    try:
        ref = load_result(args.ref)
        labels = labelled([*args.control, *args.runs])
        controls = {labels[p]: load_result(p) for p in args.control}
        runs = {labels[p]: load_result(p) for p in args.runs}
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read a result: {exc}")
    if "tokens" not in ref:
        parser.error(f"{args.ref} holds no tokens: not a reference case's result")
    rows = classify(runs, controls, ref)
    for row in rows:
        given = ", ".join(row["also_given_by"]) or "NO CONTROL: suspect"
        where = f"pass {row['pass']}" if row["pass"] >= 0 else f"{row['count']} x"
        print(f"{row['run']}: prompt {row['prompt']} ({where}), parts at token "
              f"{row['first_difference']}: {given}")
    suspect = [r for r in rows if not r["also_given_by"]]
    print(f"{len(rows)} differing outputs, {len(suspect)} that no control gave "
          f"({len(controls)} controls)")
    return 1 if suspect else 0


if __name__ == "__main__":
    sys.exit(main())
