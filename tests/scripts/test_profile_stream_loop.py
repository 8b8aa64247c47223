"""``scripts/profile_stream_loop.py``: how it reads py-spy's raw stacks, on a made-up profile and
on the two recorded on an H200 (docs/measurements.md, twelfth session, table P12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts.script_modules import SCRIPTS, load_script

profile = load_script("profile_stream_loop")
RECORDED = Path(__file__).parent / "recorded" / "loop_profile12"
SOURCE = [f"line {n}" for n in range(1, 200)]
STEP = "step (scripts/bench_stream_loop.py:{})"


def _stack(phase: str, *frames: str) -> str:
    return ";".join(("process 1:\"python\"", "thread (1): MainThread", "run (x.py:1)",
                     f"{phase} (scripts/bench_stream_loop.py:300)", *frames))


MADE_UP = [
    _stack("steps_unaudited", STEP.format(151), "wait_stream (torch/cuda/streams.py:77)") + " 10",
    _stack("steps_audited", STEP.format(151), "wait_stream (torch/cuda/streams.py:77)",
           "guarded_vectorcall (streamcheck/_speedups.cpython-312.so)") + " 4",
    _stack("steps_audited", STEP.format(151), "wait_stream (torch/cuda/streams.py:77)") + " 9",
    _stack("steps_audited", STEP.format(159), "cuLaunchKernel (libcuda.so)",
           "0x7ffb6f899050 (libc.so.6)") + " 3",
    _stack("steps_unaudited", STEP.format(159), "cuLaunchKernel (libcuda.so)") + " 2",
    _stack("steps_audited", STEP.format(153),
           "pybind11::gil_scoped_release::~gil_scoped_release (libtorch_python.so)",
           "pthread_cond_timedwait (libc.so.6)") + " 5",
    _stack("steps_audited", "run (scripts/bench_stream_loop.py:255)") + " 1",
    _stack("steps_audited", STEP.format(159), "all_reduce (streamcheck/wrappers/x.py:3)",
           "~TensorImpl (libc10.so)", "guarded_vectorcall (streamcheck/_speedups.so)",
           "~TensorImpl (libc10.so)", "0x7f01 (libc.so.6)") + " 2",
    "process 1:\"python\";thread (2): kv-saver;run (scripts/bench_stream_loop.py:92) 50",
    "not a sample line",
]


def _read(lines: list[str]):
    p = profile.Profile(SOURCE)
    for stack, count in profile.parse_raw(lines):
        p.add(stack, count)
    return p.summary(top=10)


def test_samples_outside_the_two_phases_are_left_out():
    summary = _read(MADE_UP)
    assert summary["samples"] == {"unaudited": 12, "audited": 24}
    assert summary["added"] == 12


def test_parts_are_the_lines_of_step_and_the_rest_is_said_to_be_outside_it():
    parts = {row["name"]: row for row in _read(MADE_UP)["parts"]}
    assert parts["line 151 (line 151)"]["unaudited"] == 10
    assert parts["line 151 (line 151)"]["audited"] == 13
    assert parts["line 153 (line 153)"]["added"] == 5
    assert parts["(outside step: the run's own loop, its waits)"]["audited"] == 1
    ranked = [row["added"] for row in _read(MADE_UP)["parts"]]
    assert ranked == sorted(ranked, reverse=True)


def test_native_frames_are_counted_without_their_address_and_once_a_sample():
    native = {row["name"]: row for row in _read(MADE_UP)["native"]}
    assert native["(libc.so.6)"]["audited"] == 3 + 2
    assert native["~TensorImpl (libc10.so)"]["audited"] == 2  # twice in one stack: once
    assert native["cuLaunchKernel (libcuda.so)"] == {
        "name": "cuLaunchKernel (libcuda.so)", "unaudited": 2, "audited": 3, "added": 1}
    assert "wait_stream (torch/cuda/streams.py:77)" not in native  # a Python frame


def test_condition_waits_and_streamcheck_frames_are_counted_apart():
    summary = _read(MADE_UP)
    assert summary["gil_wait"] == {"audited": 5}
    assert summary["streamcheck"] == {"audited": 4 + 2}
    assert summary["streamcheck_self"] == {"audited": 4}  # the hook is the innermost frame
    outermost = {row["name"]: row["audited"] for row in summary["streamcheck_outermost"]}
    assert outermost == {"guarded_vectorcall": 4, "all_reduce": 2}  # the outer one of two


def test_the_innermost_frame_is_counted_by_name_without_a_native_address():
    innermost = {row["name"]: (row["unaudited"], row["audited"])
                 for row in _read(MADE_UP)["innermost"]}
    assert innermost["(libc.so.6)"] == (0, 3 + 2)
    assert innermost["guarded_vectorcall (streamcheck/_speedups.cpython-312.so)"] == (0, 4)
    assert innermost["wait_stream (torch/cuda/streams.py:77)"] == (10, 9)
    assert innermost["cuLaunchKernel (libcuda.so)"] == (2, 0)


def test_the_recorded_profiles_give_the_documented_table():
    """Calls 2 and 3 (one unaudited phase, then one audited) with 3e52815's loop; call 6 (six
    blocks of each, in turn first) with 31e52b6's."""
    then = (RECORDED / "bench_stream_loop_3e52815.py.txt").read_text().splitlines()
    python = profile.read_profile(RECORDED / "python.txt.gz", then).summary(top=40)
    native = profile.read_profile(RECORDED / "native.txt.gz", then).summary(top=400)
    assert python["samples"] == {"unaudited": 2747, "audited": 3298}
    assert native["samples"] == {"unaudited": 1430, "audited": 1583}
    parts = {row["name"]: row["added"] for row in python["parts"]}
    assert parts["dist.all_reduce(x) (line 159)"] == 186
    assert parts["y = x @ w (line 153)"] == 118
    assert parts["x = torch.tanh(x @ w + y) (line 157)"] == 89
    handoff = 'handoff = streamcheck.handoff(kv) if "handoff" in parts else None (line 162)'
    assert parts[handoff] == 34
    later = (RECORDED / "bench_stream_loop_31e52b6.py.txt").read_text().splitlines()
    in_turn = profile.read_profile(RECORDED / "native_in_turn.txt.gz", later).summary(top=40)
    assert in_turn["samples"] == {"unaudited": 2003, "audited": 2163}
    assert in_turn["gil_wait"] == {"unaudited": 83, "audited": 106}
    assert in_turn["streamcheck_self"] == {"unaudited": 3, "audited": 95}
    parts = {row["name"]: row["added"] for row in in_turn["parts"]}
    assert parts["main.wait_stream(side) (line 156)"] == 44
    assert native["gil_wait"] == {"unaudited": 50, "audited": 80}
    assert native["streamcheck_self"] == {"unaudited": 1, "audited": 69}
    native_rows = {row["name"]: row for row in native["native"]}
    launches = native_rows["cuLaunchKernel (libcuda.so.580.159.04)"]
    assert (launches["unaudited"], launches["audited"]) == (138, 169)


def test_the_script_reads_a_recorded_file_and_says_when_it_holds_no_phase(tmp_path):
    script = str(SCRIPTS / "profile_stream_loop.py")
    done = subprocess.run([sys.executable, script, "--from-raw",
                           str(RECORDED / "python.txt.gz"), "--top", "3", "--json"],
                          capture_output=True, text=True, check=True)
    assert "main-thread samples: unaudited 2747, audited 3298, added 551" in done.stdout
    assert '"added": 551' in done.stdout
    empty = tmp_path / "other.txt"
    empty.write_text(MADE_UP[-2] + "\n")
    done = subprocess.run([sys.executable, script, "--from-raw", str(empty)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "no sample inside" in done.stdout
    done = subprocess.run([sys.executable, script, "--from-raw", str(tmp_path / "missing")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "no file" in done.stderr
    done = subprocess.run([sys.executable, script, "--iters", "1000", "--blocks", "6"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "must be a multiple of --blocks" in done.stderr


def test_a_recording_runs_the_loop_in_alternating_blocks_under_py_spy(tmp_path, monkeypatch):
    ran = []

    def fake_run(command, check):
        ran.append(command)
        Path(command[command.index("-o") + 1]).write_text("")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(profile.shutil, "which", lambda name: "/bin/py-spy")
    monkeypatch.setattr(profile.subprocess, "run", fake_run)
    profile.record(tmp_path / "raw.txt", 600, 50, True, 4)
    command = ran[0]
    assert command[:2] == ["/bin/py-spy", "record"] and "--native" in command
    loop = command[command.index("--") + 1:]
    assert loop[1].endswith("bench_stream_loop.py")
    assert loop[loop.index("--spy-iters") + 1] == "600"
    assert loop[loop.index("--spy-blocks") + 1] == "4"
    monkeypatch.setattr(profile.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="py-spy is not on PATH"):
        profile.record(tmp_path / "raw2.txt", 600, 50, False, 4)
