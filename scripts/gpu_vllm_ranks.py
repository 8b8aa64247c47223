"""On real GPUs: vLLM's own PyNcclCommunicator, imported only AFTER the audit was turned on.

Two rank processes (one per GPU), each turned on the way a user turns it on:

* ``--activation env``: ``STREAMCHECK=assert`` + the start-up hook (``streamcheck.activation
  .child_env``), a report directory; the rank code never calls streamcheck to start it;
* ``--activation pytest``: each rank runs ``pytest --streamcheck=assert`` on
  ``gpu_vllm_rank_test.py``, whose test body does the same work.

Then each rank imports vLLM (whatever ``PYTHONPATH`` holds: 0.9.2's Python modules, or a
compiled thread-local release) and drives every collective its ``PyNcclCommunicator`` offers
through four forms: ``clean`` (must run, exact results, no finding), ``nan`` (a connector
thread holds ``with torch.cuda.stream(S)``: the seed incident, a bug only with 0.9's
module-global cache; with a thread-local cache these launches must run), ``error400`` (the
stream of the launch lives on the other GPU) and ``stale`` (a switch vLLM's cache never sees).
In ``assert`` mode every launch of a leaking form must be stopped before NCCL on every rank:
nothing runs, so nothing can hang. One JSON line per rank; exit 1 on any miss.

    python scripts/gpu_vllm_ranks.py --activation env|pytest [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LEAKS = ("nan", "error400", "stale")
EXPECTED = {"nan": ("foreign-stream",), "error400": ("device-mismatch",),
            "stale": ("stale-stream-cache", "foreign-stream")}


def _calls(comm: Any, rank: int, world: int, x: Any) -> dict[str, Any]:
    """One call per collective this pynccl offers, with tensors on this rank's device."""
    import torch

    out: dict[str, Any] = {"all_reduce": lambda s=None: comm.all_reduce(x, stream=s)}
    gathered = torch.empty(world * x.numel(), device=x.device)
    out["all_gather"] = lambda s=None: comm.all_gather(gathered, x, stream=s)
    part = torch.empty(x.numel() // world, device=x.device)
    out["reduce_scatter"] = lambda s=None: comm.reduce_scatter(part, x, stream=s)
    out["broadcast"] = lambda s=None: comm.broadcast(x, 0, stream=s)
    peer = (rank + 1) % world
    out["send_recv"] = (lambda s=None: comm.send(x, peer, stream=s)) if rank % 2 == 0 else (
        lambda s=None: comm.recv(x, peer, stream=s))
    if hasattr(comm, "all_gatherv"):
        whole = [x.numel()] * world
        out["all_gatherv"] = lambda s=None: comm.all_gatherv(gathered, x, whole, stream=s)
    if hasattr(comm, "reduce_scatterv"):
        parts = [x.numel() // world] * world
        out["reduce_scatterv"] = lambda s=None: comm.reduce_scatterv(part, x, parts, stream=s)
    return out


@contextlib.contextmanager
def _connector_holding(stream: Any):
    import torch

    inside, leave = threading.Event(), threading.Event()

    def run() -> None:
        with torch.cuda.stream(stream):
            inside.set()
            leave.wait(120)

    t = threading.Thread(target=run, name="kv-connector")
    t.start()
    inside.wait(30)
    try:
        yield
    finally:
        leave.set()
        t.join(30)


def rank_forms(rank: int, world: int, port: int) -> dict[str, Any]:
    """The work of one rank; the audit must already be on (this never starts it)."""
    import torch
    import torch.distributed as dist

    import streamcheck
    from streamcheck import StreamHazardError
    from streamcheck.repro.actors import run_in_thread

    auditor = streamcheck.current_auditor()
    result: dict[str, Any] = {"rank": rank, "world": world,
                              "audit_on_at_start": auditor is not None}
    torch.cuda.set_device(rank)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=world,
                            rank=rank)
    with contextlib.suppress(ImportError):
        import streamcheck_vllm_stubs  # noqa: F401  (a Python-module tree: stand-ins)
    import vllm
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

    from streamcheck.vllm_compat import cache_kind

    result["vllm"] = vllm.__version__
    result["cache"] = cache_kind(vllm.__version__)
    comm = PyNcclCommunicator(dist.group.WORLD, device=torch.device("cuda", rank))
    result["comm_disabled"] = bool(comm.disabled)
    x = torch.ones(1024, device="cuda") * (rank + 1)

    def each() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, call in _calls(comm, rank, world, x).items():
            try:
                value = call()
                torch.cuda.synchronize()
                out[name] = {"ran": True}
                if name == "all_reduce" and value is not None:
                    out[name]["value"] = float(value[0].item())
            except StreamHazardError as exc:
                out[name] = {"stopped": sorted(exc.rule_ids)}
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return out

    forms: dict[str, Any] = {"clean": each()}
    with _connector_holding(torch.cuda.Stream()):
        forms["nan"] = each()
    if result["cache"] == "module-global":
        with _connector_holding(torch.cuda.Stream(device=(rank + 1) % world)):
            forms["error400"] = each()
    else:
        def wrong_device() -> dict[str, Any]:
            torch.cuda.set_device((rank + 1) % world)  # a helper thread on the other GPU
            return each()

        forms["error400"] = run_in_thread(wrong_device, "fresh-thread", timeout=120)
    from vllm.distributed.device_communicators import pynccl

    pynccl.current_stream()  # vLLM's cache holds this thread's stream now
    torch.accelerator.set_stream(torch.cuda.Stream())  # a switch its patch never sees
    forms["stale"] = each()
    torch.accelerator.set_stream(torch.cuda.default_stream())
    result["forms"] = forms
    auditor = streamcheck.current_auditor()
    if auditor is not None:
        result["launches_by_op"] = auditor.coverage.launches_by_op()
        result["targets"] = {t.name: t.state for t in auditor.coverage.targets()}
    return result


def verdict(r: dict[str, Any]) -> list[str]:
    """What is wrong with one rank's result (empty: everything as it must be)."""
    problems = []
    if not r.get("audit_on_at_start"):
        problems.append("the audit was not on before vLLM was imported")
    forms = r.get("forms", {})
    for name, res in forms.get("clean", {}).items():
        if not res.get("ran"):
            problems.append(f"clean {name}: {res}")
    if r.get("comm_disabled"):
        problems.append("vLLM disabled its communicator: no collective reached NCCL")
    value = forms.get("clean", {}).get("all_reduce", {}).get("value")
    if value != sum(range(1, r.get("world", 2) + 1)):
        problems.append(f"clean all_reduce = {value}")
    for form in LEAKS:
        if form == "nan" and r.get("cache") != "module-global":
            # a thread-local cache does not leak across threads: the launches must run
            problems += [f"nan {name}: {res}" for name, res in forms.get(form, {}).items()
                         if not res.get("ran")]
            continue
        for name, res in forms.get(form, {}).items():
            stopped = res.get("stopped")
            if not stopped or not any(rule in stopped for rule in EXPECTED[form]):
                problems.append(f"{form} {name}: not stopped before launch ({res})")
    if r.get("targets", {}).get("vllm.pynccl") != "instrumented":
        problems.append(f"vllm.pynccl target: {r.get('targets', {}).get('vllm.pynccl')}")
    return problems


def rank_entry() -> None:
    """A rank process (``env`` activation): the start-up hook turned the audit on."""
    rank, world, port = (int(os.environ[k]) for k in ("SC_RANK", "SC_WORLD", "SC_PORT"))
    try:
        result = rank_forms(rank, world, port)
    except Exception as exc:
        result = {"rank": rank, "error": f"{type(exc).__name__}: {exc}"}
    Path(os.environ["SC_OUT"]).write_text(json.dumps(result))
    from streamcheck.activation import flush_report

    flush_report()
    os._exit(0)  # skip NCCL teardown


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activation", choices=("env", "pytest"), required=True)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-vllm-ranks"))
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--timeout", type=float, default=240)
    args = p.parse_args()
    from streamcheck.activation import child_env

    out = Path(args.out) / f"ranks-{args.activation}-{int(time.time())}"
    out.mkdir(parents=True, exist_ok=True)
    port = 29000 + os.getpid() % 1000
    procs = []
    for rank in range(args.world):
        env = child_env("assert", out / "reports")
        env.update(SC_RANK=str(rank), SC_WORLD=str(args.world), SC_PORT=str(port),
                   SC_OUT=str(out / f"rank{rank}.json"))
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])
        if args.activation == "env":
            cmd = [sys.executable, "-c", "import gpu_vllm_ranks as g; g.rank_entry()"]
        else:
            for key in ("STREAMCHECK", "STREAMCHECK_REPORT_DIR"):
                env.pop(key)  # only the plugin turns it on
            # the plugin comes from the installed wheel's pytest11 entry point, as for a user
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--streamcheck=assert",
                   f"--streamcheck-report={out / f'pytest-rank{rank}.json'}",
                   str(HERE / "gpu_vllm_rank_test.py")]
        log = open(out / f"rank{rank}.log", "w")  # noqa: SIM115 - the child owns it
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    deadline = time.time() + args.timeout
    hung = []
    for rank, proc in enumerate(procs):
        try:
            proc.wait(max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            hung.append(rank)
            os.killpg(proc.pid, 9)
            proc.wait()
    ok = not hung
    for rank in range(args.world):
        path = out / f"rank{rank}.json"
        result = json.loads(path.read_text()) if path.exists() else {"rank": rank,
                                                                     "error": "no result"}
        problems = verdict(result) if "error" not in result else [result["error"]]
        if args.activation == "pytest":
            report = out / f"pytest-rank{rank}.json"
            if report.exists():
                doc = json.loads(report.read_text())
                result["pytest_report_launches"] = doc.get("launches_audited")
                result["pytest_report_rules"] = sorted({f["rule"] for f in doc["findings"]})
            else:
                problems.append("no pytest report")
        result["problems"] = problems
        ok &= not problems
        print(json.dumps(result))
    if args.activation == "env":
        reports = list((out / "reports").glob("*.json"))
        print(json.dumps({"process_reports": len(reports), "launches": [
            json.loads(r.read_text())["launches_audited"] for r in reports]}))
    print(f"vLLM pynccl after {args.activation} activation: "
          f"{'PASS' if ok else 'FAIL'}{' (hung: ' + str(hung) + ')' if hung else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
