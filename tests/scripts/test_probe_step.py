"""``scripts/probe_step.py`` (its probes need a GPU): what it prints from what it counted or
timed, and how it refuses what it cannot run."""

from __future__ import annotations

import collections
import sys

import pytest

from tests.scripts.script_modules import load_script

probe = load_script("probe_step")


def test_calls_are_reported_per_step_most_called_first():
    counts = collections.Counter({("MainThread", "wrappers/user_launch.py", "handoff"): 50,
                                  ("kv-saver", "wrappers/user_launch.py", "__enter__"): 50,
                                  ("MainThread", "wrappers/events.py", "take_in"): 100})
    rows = probe.per_step(counts, 50)
    assert rows[0] == ("MainThread", "wrappers/events.py", "take_in", 2.0)
    assert sorted(rows[1:]) == [("MainThread", "wrappers/user_launch.py", "handoff", 1.0),
                                ("kv-saver", "wrappers/user_launch.py", "__enter__", 1.0)]
    assert probe.per_step(collections.Counter(), 50) == []


def test_a_handoff_row_gives_each_handoffs_median_and_90th_percentile_and_the_collections():
    rows = [(1000, 200, 150, 0)] * 9 + [(5000, 900, 150, 1)]
    line = probe.handoff_row("assert", rows)
    assert line.startswith("assert ")
    assert "first     1000 (p90     5000)" in line
    assert "second      200 (p90      900)" in line
    assert "third      150 (p90      150)" in line
    assert line.endswith("steps with a collection inside: 1/10")


def test_it_refuses_what_it_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["probe_step.py", "handoffs", "--steps", "0"])
    with pytest.raises(SystemExit) as stopped:
        probe.main()
    assert stopped.value.code == 2 and "at least 1" in capsys.readouterr().err
    monkeypatch.setattr(probe.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["probe_step.py", "handoffs"])
    assert probe.main() == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out
    monkeypatch.delattr(probe.threading, "setprofile_all_threads", raising=False)
    monkeypatch.setattr(sys, "argv", ["probe_step.py", "calls"])
    assert probe.main() == 2
    assert "needs Python 3.12" in capsys.readouterr().out
