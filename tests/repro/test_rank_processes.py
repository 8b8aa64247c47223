"""The CUDA path's process handling, on the CPU: one process per rank, each started with the
same rendezvous id; a rank's error record starts the grace; the peer left hanging is dumped and
killed with whatever it started. Stand-in ranks write real records but run no CUDA."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from streamcheck.repro import runner
from streamcheck.repro.discover import ReproFile
from streamcheck.repro.records import Error, Start

FAKE_RANK = '''
import faulthandler, os, signal, subprocess, sys, time
from pathlib import Path
from streamcheck.repro.records import Error, ResultLog, Start, record_path

faulthandler.register(signal.SIGUSR1, all_threads=True)
repro, variant, rank, world, uid, out = sys.argv[1:]
rank, out = int(rank), Path(out)
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(out / f"pids{rank}").write_text(f"{os.getpid()} {kid.pid} {uid}")
log = ResultLog(record_path(out, rank), rank)
log.write(Start, variant=variant, backend="cuda", device=rank, world_size=int(world))
if rank == 1:
    log.write(Error, error_kind="error-400", message="invalid resource handle")
    log.close()
    os._exit(0)


def all_reduce():
    time.sleep(600)  # the peer that never comes


all_reduce()
'''

SPEC = '''
from streamcheck.repro.spec import Expectation, ReproSpec

SPEC = ReproSpec(
    name="repro_fake_ranks", hazard="foreign-stream", summary="stand-in ranks",
    expect={"buggy": Expectation(symptom=("error-400",), peers_hang=True),
            "fixed": Expectation(clean=True),
            "guarded": Expectation(blocked=("foreign-stream",))},
    max_world=2, hang_grace_s={"cuda": 1.0, "sim": 1.0},
)


def run_rank(ctx):
    pass
'''


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def test_cuda_ranks_are_processes_that_meet_and_a_hung_peer_is_dumped_and_killed(
        tmp_path, monkeypatch):
    (tmp_path / "fake_rank.py").write_text(FAKE_RANK)
    (tmp_path / "repro_fake_ranks.py").write_text(SPEC)
    monkeypatch.setattr(runner, "RANK_MODULE", "fake_rank")
    monkeypatch.setattr(runner, "_nccl_unique_id", lambda: "c0ffee")
    root = str(Path(runner.__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), root]))
    repro = ReproFile("repro_fake_ranks", tmp_path / "repro_fake_ranks.py")
    t0 = time.monotonic()
    result = runner.run_variant(repro, "buggy", "cuda", 2, 120, tmp_path / "work")
    assert time.monotonic() - t0 < 60  # the 1 s grace after rank 1's error, not the 120 s
    out = tmp_path / "work" / "repro_fake_ranks.buggy.cuda.w2"
    pids = {r: (out / f"pids{r}").read_text().split() for r in range(2)}
    assert {p[2] for p in pids.values()} == {"c0ffee"}  # one rendezvous id for every rank
    assert pids[0][0] != pids[1][0]  # a process per rank
    assert result.verdict == "pass", (result.observed, result.reason)
    assert "error-400" in result.observed and "rank(s) 0 stuck until killed" in result.observed
    assert [type(r) for r in result.ranks[1]] == [Start, Error]
    assert pids[0][0] in result.dumps  # the hung rank was dumped
    assert set(result.stderr) == {"rank0.stderr", "rank1.stderr"}
    # without py-spy, faulthandler writes the stacks into the rank's own output
    text = result.dumps[pids[0][0]] if shutil.which("py-spy") else result.stderr["rank0.stderr"]
    assert "all_reduce" in text, text
    deadline = time.monotonic() + 10
    everyone = [int(p) for r in pids.values() for p in r[:2]]
    while not all(map(_gone, everyone)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(_gone, everyone)), "a rank or what it started outlived the variant"
