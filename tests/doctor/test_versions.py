"""The probe against real vLLM Python modules, per version, on the CPU simulator.

Each version is probed in its own child (a prepared ``.vllm/VERSION`` tree on PYTHONPATH), the
way ``streamcheck doctor --vllm-path`` does it. Observed behaviour per version:

* 0.9.2 — module-global cache: a stream made current in one thread is what every thread gets.
  A fresh thread therefore gets the main thread's stream (on the main thread's device), so the
  fresh-thread-device probe reads "not affected" there; the stale cache is affected.
* 0.13.0 — per-thread cache; a fresh thread gets cuda:0's default stream; stale cache.
* 0.33.0 — per-thread cache; a fresh thread gets a NEW stream on its current device (cuda:0);
  stale cache.
"""

from __future__ import annotations

import pytest

from streamcheck.doctor.model import ProbeOutcome, Verdict
from tests.doctor.conftest import PROBE_TIMEOUT_S
from tools.vllm_env.layout import prepare_command

A, N = Verdict.AFFECTED, Verdict.NOT_AFFECTED

EXPECTED = {
    "0.9.2": {"module-global-cache": A, "fresh-thread-device": N, "stale-cache": A},
    "0.13.0": {"module-global-cache": N, "fresh-thread-device": A, "stale-cache": A},
    "0.33.0": {"module-global-cache": N, "fresh-thread-device": A, "stale-cache": A},
}
FRESH_THREAD_EVIDENCE = {
    "0.9.2": "returned cuda:1's default stream: on the main thread's device (the same "
             "stream the main thread's",
    "0.13.0": "returned cuda:0's default stream",
    "0.33.0": "returned a new stream on cuda:0",
}
ACCESSOR = {
    "0.9.2": "vllm.utils.current_stream",
    "0.13.0": "vllm.utils.torch_utils.current_stream",
    "0.33.0": "vllm.utils.torch_utils.current_stream",
}


def outcome_for(version: str, version_outcomes: dict) -> ProbeOutcome:
    future = version_outcomes.get(version)
    if future is None:  # the fixture found no prepared, current env for it
        pytest.skip(f"vLLM {version} env not prepared (or stale): run "
                    f"`{prepare_command(version)}`")
    return future.result(timeout=PROBE_TIMEOUT_S + 30)


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_verdicts_per_version(version: str, version_outcomes: dict) -> None:
    outcome = outcome_for(version, version_outcomes)
    assert outcome.error is None, outcome.error
    assert outcome.vllm.version == version
    assert outcome.vllm.accessor == ACCESSOR[version]
    assert outcome.backend == "sim" and outcome.devices == 2
    got = {r.hazard: r.verdict for r in outcome.results}
    assert got == EXPECTED[version], {r.hazard: r.evidence for r in outcome.results}
    fresh = next(r for r in outcome.results if r.hazard == "fresh-thread-device")
    assert FRESH_THREAD_EVIDENCE[version] in fresh.evidence


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_stale_cache_evidence_names_both_switches(version: str, version_outcomes: dict) -> None:
    outcome = outcome_for(version, version_outcomes)
    stale = next(r for r in outcome.results if r.hazard == "stale-cache")
    assert "inside `with torch.Stream(...)`" in stale.evidence
    assert "after torch.accelerator.set_stream(s)" in stale.evidence
    assert stale.evidence.count("(the stream from before the switch)") == 2


def test_probe_went_through_the_platform_shim(version_outcomes: dict) -> None:
    """Without the shim, vLLM >= 0.13 would answer with its CPU placeholder, not a stream."""
    version = "0.33.0"
    outcome = outcome_for(version, version_outcomes)
    assert outcome.vllm.platform == "StreamcheckCudaPlatformShim"
    assert outcome.vllm.cache_kind_by_source == "thread-local-new-stream"
    assert "vllm._C_stable_libtorch" in outcome.stubs


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_launch_sites_each_version_exposes(version: str, version_outcomes: dict) -> None:
    """The doctor lists the targets the audit would instrument, found in this very vLLM."""
    targets = {t["name"]: t for t in outcome_for(version, version_outcomes).targets}
    pynccl = targets["vllm.pynccl"]
    assert pynccl["state"] == "available"
    assert {"all_reduce", "send", "recv", "broadcast"} <= set(pynccl["stream_param"])
    assert targets["vllm.kv_connector"]["state"] == "available"
    assert targets["sglang.pynccl"]["state"] == "not installed"
    assert targets["streamcheck.nccl"]["state"] == "available"
