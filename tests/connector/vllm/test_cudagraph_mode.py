"""The connector and vLLM's CUDA graph modes, under vLLM 0.33's real config classes, on CPU.

A full CUDA graph replays a forward without its Python, so the connector's per-layer calls
(``wait_for_layer_load``, ``save_kv_layer``) are skipped there. With async loads (the default)
that skips nothing the KV depends on: a request's forward is scheduled only after its load was
seen complete, and saves are queued after the forward, in ``wait_for_save``. With sync loads the
forward reads blocks loaded in its own step, and only the per-layer wait orders it after them:
the connector asks vLLM for piecewise graphs (vLLM's factory finds the class through
``kv_connector_module_path``, as an engine does), and a vLLM that does not ask leaves full
graphs on, where the connector must refuse to start. The switch itself happens only on a CUDA
platform (the engine checks on the GPU show it: ``scripts/engine_check.py`` ``*_graphs*``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vllm.conftest import run_in_vllm

VERSION = "0.33.0"
HERE = Path(__file__).resolve().parent
CHILD = """
import os, sys
os.environ.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
sys.path.insert(0, {here!r})
import streamcheck_vllm_stubs  # vLLM's compiled modules, as empty stand-ins
from vllm_lifecycle_harness import make_vllm_config
from vllm.config.compilation import CUDAGraphMode
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

facts = {{}}
for load, policy in (("async", "recompute"), ("sync", "fail")):
    config = make_vllm_config({{"backend": "host", "capacity_blocks": 64, "load": load}},
                              num_blocks=64, max_batched=256, prefix_caching=False,
                              policy=policy, long_prefill=0)
    transfer = config.kv_transfer_config
    cls = KVConnectorFactory.get_connector_class(transfer)
    outcomes = {{}}
    for mode in ("NONE", "PIECEWISE", "FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "FULL"):
        config.compilation_config.cudagraph_mode = CUDAGraphMode[mode]
        for role in ("SCHEDULER", "WORKER"):
            try:
                cls(config, KVConnectorRole[role])
                outcomes[mode + "/" + role] = "started"
            except ValueError as exc:
                outcomes[mode + "/" + role] = "refused: " + str(exc)
    facts[load] = {{"class": cls.__name__, "outcomes": outcomes,
                   "asks_piecewise": cls.requires_piecewise_for_cudagraph(
                       transfer.kv_connector_extra_config)}}
emit(facts)
"""


@pytest.fixture(scope="module")
def facts() -> dict:
    return run_in_vllm(VERSION, CHILD.format(here=str(HERE)), timeout=200)


FULL = ("FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "FULL")


@pytest.mark.parametrize("load", ["async", "sync"])
def test_vllms_factory_finds_the_connector_and_hears_whether_it_needs_piecewise_graphs(
        facts: dict, load: str):
    assert facts[load]["class"] == "StreamcheckConnector"
    assert facts[load]["asks_piecewise"] is (load == "sync")


@pytest.mark.parametrize("role", ["SCHEDULER", "WORKER"])
def test_async_loads_start_under_every_graph_mode(facts: dict, role: str):
    for mode in ("NONE", "PIECEWISE", *FULL):
        assert facts["async"]["outcomes"][f"{mode}/{role}"] == "started"


@pytest.mark.parametrize("role", ["SCHEDULER", "WORKER"])
def test_sync_loads_start_under_piecewise_graphs_or_none(facts: dict, role: str):
    for mode in ("NONE", "PIECEWISE"):
        assert facts["sync"]["outcomes"][f"{mode}/{role}"] == "started"


@pytest.mark.parametrize("role", ["SCHEDULER", "WORKER"])
@pytest.mark.parametrize("mode", FULL)
def test_sync_loads_under_full_graphs_left_on_by_a_vllm_that_does_not_ask_are_refused(
        facts: dict, mode: str, role: str):
    outcome = facts["sync"]["outcomes"][f"{mode}/{role}"]
    assert outcome.startswith("refused: ")
    assert mode in outcome and '"cudagraph_mode": "PIECEWISE"' in outcome
