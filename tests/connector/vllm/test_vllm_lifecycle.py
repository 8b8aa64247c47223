"""The connector under vLLM 0.33's real ``Scheduler``: whole request lifecycles, on CPU.

vLLM's scheduler (scheduler role) and worker-role ``StreamcheckConnector`` s over CPU KV caches
run in ONE child process with vLLM's Python modules on its path (other tests in this session use
other vLLM versions or none); an emulated model runner makes the calls vLLM's runner makes, and
its attention checks every KV it reads against the KV its token prefix must have. The child
reports facts as JSON; each test below asserts one part of the lifecycle on them. Under
pytest-xdist the child runs once per session, shared through a file lock.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

from tests.connector.backends.conftest import require_redis_server
from tests.vllm.conftest import require_prepared, run_in_vllm

VERSION = "0.33.0"
HERE = Path(__file__).resolve().parent
LOCAL = ("host", "disk")
ALL = ("host", "disk", "redis")
RUN = (*ALL, "host-sync")
BLOCK = 16
CHILD = """
import os, sys
os.environ.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
sys.path.insert(0, {here!r})
import streamcheck_vllm_stubs  # vLLM's compiled modules, as empty stand-ins
import vllm_lifecycle_scenarios
emit(vllm_lifecycle_scenarios.run({backends!r}))
"""


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The child's facts: computed by the first xdist worker that asks, read by the rest."""
    require_prepared(VERSION)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    cache = root / "streamcheck-vllm-lifecycles.json"
    with FileLock(str(cache) + ".lock"):
        if not cache.exists():
            try:
                facts = run_in_vllm(VERSION, CHILD.format(here=str(HERE), backends=list(RUN)),
                                    timeout=280)
            except AssertionError as exc:
                facts = {"child_error": str(exc)}
            cache.write_text(json.dumps(facts))
        facts = json.loads(cache.read_text())
    if "child_error" in facts:
        pytest.fail(facts["child_error"], pytrace=False)
    return facts


def scenario(report: dict, backend: str, name: str) -> dict:
    """One scenario's facts, after the checks every lifecycle must pass."""
    if backend == "redis":
        require_redis_server()
        assert "skipped" not in report["redis"], report["redis"]
    facts = report[backend][name]
    assert "error" not in facts, facts["error"]
    assert facts.get("stale_reads", []) == [], "the forward read KV its prefix never produced"
    assert facts.get("store_audit", []) == [], "the store serves blocks that are not true KV"
    if "blocks_held_after" in facts:
        assert facts["blocks_held_after"] == 0, "KV blocks never returned to vLLM's pool"
        assert facts["side_requests_left"] == [] and facts["side_parked_left"] == []
    assert facts["shutdown"] == {"runtime_thread_alive": False, "pending_after_shutdown": 0}
    return facts


@pytest.mark.parametrize("backend", ALL)
def test_miss_computes_everything_and_saves_full_prompt_blocks(report: dict, backend: str):
    f = scenario(report, backend, "lifecycles")
    assert f["miss_first_compute"] == [0, 4 * BLOCK + 8]
    assert f["miss_committed_blocks"] == 4  # the partial fifth block is not saved
    assert f["miss_keys_in_store"] == 4 * 2 * 2  # blocks x layers x (k, v)


@pytest.mark.parametrize("backend", ALL)
def test_hit_parks_loads_asynchronously_and_is_bit_exact(report: dict, backend: str):
    f = scenario(report, backend, "lifecycles")
    assert f["hit_status_after_lookup"] == "WAITING_FOR_REMOTE_KVS"
    assert f["hit_parked_in_side"]
    assert f["hit_steps_parked"] >= 1
    assert f["hit_first_compute"] == [4 * BLOCK, 10]  # rescheduled after the load
    assert f["hit_bit_exact_to_writer"], "loaded KV differs from what the first request wrote"
    # a step is marked idle (its worker may wait for loads) exactly when vLLM computes nothing
    assert f["idle_marks"] == [[False, False], [True, True]]


@pytest.mark.parametrize("backend", LOCAL)
def test_forwards_replayed_from_full_cuda_graphs_still_save_and_load_bit_exact(
        report: dict, backend: str):
    """No connector call inside attention (a full CUDA graph's replay skips them): the same
    blocks are saved and the hit is as exact as with them."""
    graphs, eager = (scenario(report, backend, name) for name in ("full_graphs", "lifecycles"))
    assert graphs["miss_committed_blocks"] == eager["miss_committed_blocks"] == 4
    assert graphs["miss_keys_in_store"] == 4 * 2 * 2
    assert graphs["hit_first_compute"] == [4 * BLOCK, 10]
    assert graphs["hit_bit_exact_to_writer"]


@pytest.mark.parametrize("backend", [*LOCAL, "host-sync"])
def test_a_block_aligned_full_hit_loads_every_block_and_computes_one_token(
        report: dict, backend: str):
    """The one-token step (vLLM runs it as a decode, from a full CUDA graph under its default
    compilation) reads all the loaded blocks bit for bit; the next prompt on them goes on."""
    f = scenario(report, backend, "aligned_full_hit")
    assert f["first_compute"] == [4 * BLOCK - 1, 1]
    assert f["bit_exact_to_writer"]
    assert f["longer_first_compute"] == [4 * BLOCK, BLOCK + 3]
    assert f["longer_committed"] == 5
    assert f.get("excused_reads", []) == []


def test_an_idle_step_waits_for_its_slab_load_and_reports_it_there(report: dict):
    f = scenario(report, "host", "idle_wait")
    assert f["waits_reported_in_issuing_step"]
    assert not f["no_wait_reported_in_issuing_step"]  # left to a later step's poll
    assert f["waits_first_compute"] == f["no_wait_first_compute"] == [4 * BLOCK, 6]


@pytest.mark.parametrize("backend", ALL)
def test_partial_hit_loads_the_shared_blocks_only(report: dict, backend: str):
    f = scenario(report, backend, "lifecycles")
    assert f["partial_first_compute"] == [2 * BLOCK, f["partial_prompt_len"] - 2 * BLOCK]
    assert f["all_gone"] == ["GONE"] * 3


@pytest.mark.parametrize("backend", LOCAL)
def test_load_starts_after_vllms_own_prefix_cache_hit(report: dict, backend: str):
    f = scenario(report, backend, "local_plus_external")
    assert f["reset_local_cache"]
    assert f["status_after_lookup"] == "WAITING_FOR_REMOTE_KVS"
    assert f["load_starts_at_block"] == 1  # block 0 came from vLLM's prefix cache
    assert f["first_compute"] == [4 * BLOCK, 6]


@pytest.mark.parametrize("backend", LOCAL)
def test_parked_request_does_not_hold_up_the_others(report: dict, backend: str):
    f = scenario(report, backend, "async_timing")
    assert f["parked_statuses"] == ["WAITING_FOR_REMOTE_KVS"]
    assert f["parked_in_side"]
    progress = f["other_progress"]
    assert [b - a for a, b in itertools.pairwise(progress)] == [1] * (len(progress) - 1)
    assert f["first_compute"] == [4 * BLOCK, 5]


@pytest.mark.parametrize("backend", ALL)
def test_failed_load_is_recomputed_never_read(report: dict, backend: str):
    f = scenario(report, backend, "load_failure")
    for damage in ("deleted", "corrupt"):
        assert f[f"{damage}_status_after_lookup"] == "WAITING_FOR_REMOTE_KVS"
        computed, _ = f[f"{damage}_first_compute"]
        assert computed == f[f"{damage}_expected_computed"], damage  # cut at the bad block
        assert not f[f"{damage}_bad_hash_served_after"], "a failed block stayed a hit"
        assert f[f"{damage}_committed_after_recompute"] == 4  # recomputed and saved again


@pytest.mark.parametrize("backend", LOCAL)
def test_failed_save_never_becomes_a_hit(report: dict, backend: str):
    f = scenario(report, backend, "store_failure")
    assert f["committed_blocks"] == 2  # the group holding the failed block is not served
    assert f["failed_hashes_served"] == [False, False]
    assert f["next_first_compute"] == [2 * BLOCK, 2 * BLOCK]  # chunked: 32 tokens a step
    assert f["committed_after_resave"] == 4


@pytest.mark.parametrize("backend", LOCAL)
def test_preemption_reads_freed_blocks_before_they_are_reused(report: dict, backend: str):
    """Without the flush the forward overwrites the preempted request's blocks under its
    queued saves: the store audit and the reload of that request both catch it."""
    f = scenario(report, backend, "preemption")
    assert f["preempted_in_second_step"] == {"Y": 1}
    assert f["all_gone"] == ["GONE", "GONE"]
    flushes = f["saves_pending_at_flushes"]
    assert len(flushes) == 1 and flushes[0] > 0  # once, when it mattered; not every step
    assert f["resumed"] == [["Y", 2 * BLOCK]]  # came back with its prompt blocks loaded


@pytest.mark.parametrize("backend", ALL)
def test_abort_keeps_blocks_until_the_connector_reports(report: dict, backend: str):
    f = scenario(report, backend, "abort")
    assert f["statuses_before_abort"] == ["RUNNING", "WAITING_FOR_REMOTE_KVS"]
    assert f["held_while_in_flight"] == [True, True, True]
    assert f["gone"] == ["GONE", "GONE"]
    assert f["worker_state_left"] == [0, 0, 0, 0]


@pytest.mark.parametrize("backend", LOCAL)
def test_shutdown_drains_queued_saves_and_stops_the_thread(report: dict, backend: str):
    f = scenario(report, backend, "shutdown_in_flight")
    assert f["pending_at_shutdown"] > 0


@pytest.mark.parametrize("backend", ALL)
def test_two_workers_keep_their_slices_and_commit_together(report: dict, backend: str):
    f = scenario(report, backend, "two_workers")
    assert f["served_while_one_rank_saving"] == 0
    assert f["writer_status_while_one_rank_saving"] == "FINISHED_LENGTH_CAPPED"
    assert f["served_after_both"] == 4
    assert f["hit_first_compute"] == [4 * BLOCK, 5]


@pytest.mark.parametrize("backend", LOCAL)
def test_capacity_pressure_never_serves_a_block_the_store_dropped(report: dict, backend: str):
    """Working set larger than the store, vLLM's strict failure policy: the scheduler places
    and evicts blocks itself, so every hit it plans is still there to load."""
    f = scenario(report, backend, "capacity_pressure")
    assert f["errors"] == [], "a request ended with an error: a planned load failed"
    assert f["finished"] == 16
    assert f["failed_loads"] == 0
    assert f["evictions"] > 0  # the pressure was real
    assert f["blocks_placed"] <= f["capacity"]
    assert f["second_pass_hits"] >= 1  # the store still serves what it has room for


def test_redis_server_killed_mid_transfer(report: dict):
    f = scenario(report, "redis", "server_killed")
    assert f["acknowledged_audit_while_up"] == []
    assert f["acknowledged_audit_after_restart"] == []
    assert f["committed_before_kill"] == 4
    assert f["killed_save_committed"] == 0
    assert f["load_status_after_lookup"] == "WAITING_FOR_REMOTE_KVS"
    assert f["killed_load_first_compute"] == [0, 4 * BLOCK + 5]
    assert f["served_after_killed_load"] == 0
    assert f["lost_on_restart_status_after_lookup"] == "WAITING_FOR_REMOTE_KVS"
    assert f["lost_on_restart_first_compute"] == [0, 4 * BLOCK + 5]
    assert f["served_after_resave"] == 4


def test_no_connector_thread_outlives_its_engine(report: dict):
    assert report["threads_left"] == []


# ---- sync loads (the host slab's default): a hit is loaded in the step that computes it ----


def test_sync_hit_is_computed_in_its_lookup_step_and_is_bit_exact(report: dict):
    f = scenario(report, "host-sync", "sync_hit")
    assert f["status_after_first_step"] == "RUNNING" and not f["parked"]
    assert f["first_compute"] == [4 * BLOCK, 10]  # the loaded prefix, then its own 10 tokens
    assert f["bit_exact_to_writer"]
    assert f["pins_after_next_step"] == []  # released once the load's step has run
    assert f["excused_reads"] == []


def test_sync_failed_load_ends_its_request_and_the_next_one_recomputes(report: dict):
    f = scenario(report, "host-sync", "sync_load_failure")
    for name in ("corrupt", "deleted"):
        assert "error" in f[f"{name}_finish"].lower()  # the "fail" policy: no wrong output
        assert not f[f"{name}_bad_hash_served_after"]
        assert f[f"{name}_committed_after_failure"] == f[f"{name}_expected_loaded"] // BLOCK
        # the next request loads the good prefix, recomputes from the failed block, saves it
        assert f[f"{name}_retry_first_compute"] == f[f"{name}_expected_loaded"]
        assert f[f"{name}_committed_after_retry"] == 4
    assert f["failed_loads"] == 2
    # the failing step computed two more full blocks from the wrong KV; their saves were
    # dropped (the common checks' store audit finds no block that is not true KV); the
    # corrupt block reached the forward of its step, whose output vLLM discards
    assert f["excused_reads"] and all("block" in r for r in f["excused_reads"])


@pytest.mark.parametrize("name", ["store_failure", "preemption", "shutdown_in_flight",
                                  "two_workers", "capacity_pressure"])
def test_sync_loads_pass_the_shared_lifecycles(report: dict, name: str):
    f = scenario(report, "host-sync", name)
    assert f.get("excused_reads", []) == []
    if name == "capacity_pressure":
        assert f["errors"] == [] and f["failed_loads"] == 0 and f["evictions"] > 0
        assert f["second_pass_hits"] > 0
