"""Where the audit's cost lands inside the stream-heavy loop: a sampling profile, audited vs not.

``bench_stream_loop.py`` says how much slower the audited loop is; its ``--phases`` says which
parts of a step got slower, by wall time. Neither says why a part the audit does not hook (a
matmul, the all-reduce's own C++) got slower. This runs the loop under py-spy
(``--spy-iters``: the same steps unaudited and audited, in functions py-spy can tell apart, in
alternating blocks so that a drift of the host's speed hits both) and compares the samples of
the ranks' main threads in the two phases (one rank where one GPU is visible):

* by part of a step (the line of ``step`` it was in, shown as the source line);
* with ``--native``, by native function (every frame below ``step``, counted once a sample):
  what inside torch, the CUDA driver, libc and the interpreter took the extra samples;
* with ``--native``, the samples in a condition wait (``pthread_cond_timedwait``, or CPython's
  ``take_gil`` where its symbols show): inside a step that is the main thread taking the GIL
  back after a torch call released it, i.e. waiting for the connector thread's Python;
* by innermost frame (where the sample's thread was running itself): the rows that grew;
* the samples in streamcheck's own frames (its Python files and the compiled hooks), by the
  outermost one (inclusive: a compiled hook's count holds the torch call it wraps), and those
  whose innermost frame is streamcheck's (its own work, nothing it called).

py-spy's sampling slows the loop (``--native`` most), so the counts are shares of a phase,
not microseconds; each phase runs the same number of iterations, so the audited phase's
extra samples over the unaudited one's total is the audit's cost as this profile sees it.

    python scripts/profile_stream_loop.py [--iters 3000] [--blocks 6] [--rate 100] [--native]
                                          [--raw FILE]
    python scripts/profile_stream_loop.py --from-raw FILE [--source OLD_LOOP]  # recorded

``--raw`` keeps py-spy's raw (collapsed) stacks; ``--from-raw`` reads such a file (plain or
gzip) instead of running anything, its parts named from ``--source`` (the
``bench_stream_loop.py`` it was recorded with, when the lines of ``step`` have moved since).
Needs a CUDA GPU and ``py-spy`` on PATH to run the loop.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

LOOP = Path(__file__).with_name("bench_stream_loop.py")
PHASES = {"steps_unaudited": "unaudited", "steps_audited": "audited"}
# A step's condition waits: taking the GIL back after a torch call released it (the frames
# above are torch's: a matmul's gil_scoped_release, THCPEvent_record/wait/dealloc).
GIL_WAIT = re.compile(r"^(take_gil|pthread_cond_timedwait) ")
_ADDRESS = re.compile(r"0x[0-9a-f]+ ")
_STEP_LINE = re.compile(r"^step \(.*bench_stream_loop\.py:(\d+)\)$")

Stack = tuple[str, ...]
Counts = collections.Counter  # a phase's name -> its samples
Table = dict[str, "collections.Counter[str]"]  # a part or frame -> its Counts


def _table() -> Table:
    return collections.defaultdict(collections.Counter)


def parse_raw(lines: Iterable[str]) -> Iterator[tuple[Stack, int]]:
    """py-spy's raw format: one sample stack a line, ``frame;frame;... count``."""
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            yield tuple(stack.split(";")), int(count)


def phase_of(stack: Stack) -> str | None:
    """``unaudited``/``audited`` for a sample inside one of the two phases, else None."""
    for frame in stack:
        name = frame.split(" (", 1)[0]
        if name in PHASES:
            return PHASES[name]
    return None


def is_python(frame: str) -> bool:
    return ".py:" in frame or "<frozen " in frame


def is_ours(frame: str) -> bool:
    """A frame of streamcheck's Python files or of its compiled hooks (its _speedups module's
    path names the package too)."""
    return "streamcheck/" in frame


def native_name(frame: str) -> str:
    """A native frame without its address (py-spy names unsymbolled ones by address)."""
    return _ADDRESS.sub("", frame)


class Profile:
    """The two phases' samples, counted the ways the module docstring lists."""

    def __init__(self, source: list[str]) -> None:
        self.source = source  # bench_stream_loop.py's lines: a part's label
        self.total, self.gil, self.ours, self.ours_self = (Counts() for _ in range(4))
        self.parts, self.native, self.ours_frames, self.innermost = (
            _table() for _ in range(4))

    def add(self, stack: Stack, count: int) -> None:
        phase = phase_of(stack)
        if phase is None:
            return
        self.total[phase] += count
        at = next((i for i, f in enumerate(stack) if _STEP_LINE.match(f)), None)
        if at is None:
            self.parts["(outside step: the run's own loop, its waits)"][phase] += count
            return
        line = int(_STEP_LINE.match(stack[at]).group(1))  # type: ignore[union-attr]
        self.parts[self.label(line)][phase] += count
        below = stack[at + 1:]
        leaf = stack[-1]
        self.innermost[leaf if is_python(leaf) else native_name(leaf)][phase] += count
        if is_ours(leaf):
            self.ours_self[phase] += count
        for name in {native_name(f) for f in below if not is_python(f)}:
            self.native[name][phase] += count
        if any(GIL_WAIT.match(f) for f in below):
            self.gil[phase] += count
        ours = [f for f in below if is_ours(f)]
        if ours:
            self.ours[phase] += count
            self.ours_frames[ours[0].split(" (", 1)[0]][phase] += count

    def label(self, line: int) -> str:
        text = self.source[line - 1].strip() if 0 < line <= len(self.source) else "?"
        return f"{text} (line {line})"

    def summary(self, top: int) -> dict[str, object]:
        def rows(table: Table) -> list[dict[str, object]]:
            ranked = sorted(table.items(),
                            key=lambda kv: -(kv[1]["audited"] - kv[1]["unaudited"]))
            return [{"name": name, "unaudited": c["unaudited"], "audited": c["audited"],
                     "added": c["audited"] - c["unaudited"]} for name, c in ranked[:top]]

        return {"samples": dict(self.total),
                "added": self.total["audited"] - self.total["unaudited"],
                "parts": rows(self.parts), "native": rows(self.native),
                "innermost": rows(self.innermost), "gil_wait": dict(self.gil),
                "streamcheck": dict(self.ours), "streamcheck_self": dict(self.ours_self),
                "streamcheck_outermost": rows(self.ours_frames)}


def read_profile(raw: Path, source: list[str]) -> Profile:
    opener = gzip.open if raw.suffix == ".gz" else open
    profile = Profile(source)
    with opener(raw, "rt") as lines:  # type: ignore[operator]
        for stack, count in parse_raw(lines):
            profile.add(stack, count)
    return profile


def print_summary(summary: dict[str, object]) -> None:
    samples = summary["samples"]
    base = samples.get("unaudited", 0)  # type: ignore[union-attr]
    print(f"main-thread samples: unaudited {base}, audited "
          f"{samples.get('audited', 0)}, added {summary['added']}"  # type: ignore[union-attr]
          + (f" ({summary['added'] / base:+.1%} of the unaudited phase)" if base else ""))
    for key, title in (("parts", "by part of a step (the line of step)"),
                       ("native", "by native function below step (inclusive)"),
                       ("innermost", "by innermost frame (self)"),
                       ("streamcheck_outermost",
                        "streamcheck's outermost frame (inclusive of what it calls)")):
        rows = summary[key]
        if not rows:
            continue
        print(f"{title}, most added first:  unaudited  audited  added")
        for row in rows:  # type: ignore[union-attr]
            print(f"  {row['name'][:88]:<88} {row['unaudited']:>7} {row['audited']:>8} "
                  f"{row['added']:>+6}")
    for key, what in (("gil_wait", "in a condition wait (the GIL; --native only)"),
                      ("streamcheck", "with a streamcheck frame"),
                      ("streamcheck_self", "with streamcheck's frame innermost (its own work)")):
        counts: dict[str, int] = summary[key]  # type: ignore[assignment]
        print(f"samples {what}: unaudited {counts.get('unaudited', 0)}, audited "
              f"{counts.get('audited', 0)}")


def record(raw: Path, iters: int, rate: int, native: bool, blocks: int) -> None:
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not on PATH: pip install py-spy")
    command = [spy, "record", "--subprocesses", "--threads", "--idle", "-r", str(rate),
               "-f", "raw", "-o", str(raw), *(["--native"] if native else []), "--",
               sys.executable, str(LOOP), "--rounds", "1", "--iters", "20",
               "--spy-iters", str(iters), "--spy-blocks", str(blocks)]
    done = subprocess.run(command, check=False)
    if done.returncode != 0 or not raw.exists():
        sys.exit(f"py-spy or the loop failed (exit {done.returncode}); nothing to read")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=3000, help="iterations in each phase")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples a second")
    p.add_argument("--blocks", type=int, default=6,
                   help="alternating blocks of each phase (unaudited, audited, ...)")
    p.add_argument("--native", action="store_true", help="native frames too (py-spy --native)")
    p.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    p.add_argument("--from-raw", type=Path, help="read a recorded raw file; run nothing")
    p.add_argument("--source", type=Path, default=LOOP,
                   help="the bench_stream_loop.py a recorded file was made with (part names)")
    p.add_argument("--top", type=int, default=25, help="rows a table")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    args = p.parse_args()
    if min(args.iters, args.rate, args.top, args.blocks) < 1:
        p.error("--iters, --rate, --blocks and --top must be at least 1")
    if args.iters % args.blocks:
        p.error("--iters must be a multiple of --blocks (each phase runs exactly --iters)")
    if not args.source.is_file():
        p.error(f"--source: no file {args.source}")
    source = args.source.read_text().splitlines()
    if args.from_raw is not None:
        if not args.from_raw.is_file():
            p.error(f"--from-raw: no file {args.from_raw}")
        raw = args.from_raw
    else:
        raw = args.raw or Path(tempfile.mkdtemp(prefix="streamcheck-spy-")) / "spy.txt"
        record(raw, args.iters, args.rate, args.native, args.blocks)
    summary = read_profile(raw, source).summary(args.top)
    if not summary["samples"]:
        print(f"{raw}: no sample inside steps_unaudited/steps_audited (was it a "
              f"--spy-iters run of {LOOP.name}?)")
        return 1
    print_summary(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
