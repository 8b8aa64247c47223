"""The CUDA path's process handling, on the CPU: one process per rank, meeting through the
unique id rank 0 publishes in the variant's directory; a rank's error record starts the grace;
the peer left hanging is dumped and killed with whatever it started. Stand-in ranks write real
records and meet through launch_cuda's own rendezvous, but run no CUDA."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from streamcheck.repro import runner
from streamcheck.repro.discover import ReproFile
from streamcheck.repro.launch_cuda import UID_FILE, shared_unique_id
from streamcheck.repro.records import Error, Start
from streamcheck.runtime.procgroup import RendezvousError
from tests.processes import process_gone

FAKE_RANK = '''
import faulthandler, os, signal, subprocess, sys, time
from pathlib import Path
from streamcheck.repro.launch_cuda import shared_unique_id
from streamcheck.repro.records import Error, ResultLog, Start, record_path

faulthandler.register(signal.SIGUSR1, all_threads=True)
repro, variant, rank, world, out = sys.argv[1:]
rank, out = int(rank), Path(out)
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def make():  # stands in for ncclGetUniqueId; only rank 0 may call it
    (out / f"made-by{rank}").touch()
    return bytes.fromhex("c0ffee")


uid = shared_unique_id(out, rank, make).hex()
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



def test_cuda_ranks_are_processes_that_meet_and_a_hung_peer_is_dumped_and_killed(
        tmp_path, monkeypatch):
    (tmp_path / "fake_rank.py").write_text(FAKE_RANK)
    (tmp_path / "repro_fake_ranks.py").write_text(SPEC)
    monkeypatch.setattr(runner, "RANK_MODULE", "fake_rank")
    root = str(Path(runner.__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), root]))
    repro = ReproFile("repro_fake_ranks", tmp_path / "repro_fake_ranks.py")
    t0 = time.monotonic()
    result = runner.run_variant(repro, "buggy", "cuda", 2, 120, tmp_path / "work")
    assert time.monotonic() - t0 < 60  # the 1 s grace after rank 1's error, not the 120 s
    out = tmp_path / "work" / "repro_fake_ranks.buggy.cuda.w2"
    pids = {r: (out / f"pids{r}").read_text().split() for r in range(2)}
    assert {p[2] for p in pids.values()} == {"c0ffee"}  # one rendezvous id for every rank
    assert [p.name for p in out.glob("made-by*")] == ["made-by0"]  # made by rank 0 alone
    assert (out / UID_FILE).exists()
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
    while not all(map(process_gone, everyone)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(process_gone, everyone)), "a rank or what it started outlived the variant"


def test_rank_0_publishes_the_id_and_the_others_read_it(tmp_path):
    made = []
    assert shared_unique_id(tmp_path, 0, lambda: made.append(0) or b"\x01\x02") == b"\x01\x02"
    assert shared_unique_id(tmp_path, 1, lambda: made.append(1) or b"other") == b"\x01\x02"
    assert made == [0]  # rank 1 only read it
    assert [p.name for p in tmp_path.iterdir()] == [UID_FILE]  # no temporary file left


def test_a_missing_id_times_out_with_a_clear_error(tmp_path):
    with pytest.raises(RendezvousError,
                       match=r"rank 1: rank 0 did not publish the NCCL unique id within 0\.2 s"):
        shared_unique_id(tmp_path, 1, timeout=0.2)


def test_rank_0_failing_to_make_the_id_fails_the_others_at_once_with_its_error(tmp_path):
    def unloadable() -> bytes:
        raise OSError("libnccl.so.2: cannot open shared object file")

    with pytest.raises(OSError, match="libnccl"):
        shared_unique_id(tmp_path, 0, unloadable)
    # the peer reads rank 0's error instead of waiting out its (here an hour long) deadline
    with pytest.raises(RendezvousError, match=r"rank 0 could not make the NCCL unique id: "
                                              r"OSError: libnccl\.so\.2: cannot open"):
        shared_unique_id(tmp_path, 1, timeout=3600)
