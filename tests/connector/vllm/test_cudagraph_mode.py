"""The connector and vLLM's CUDA graph modes, under vLLM 0.33's real config classes, on CPU.

A full CUDA graph replays a forward without its Python, so the connector's per-layer calls
(``wait_for_layer_load``, ``save_kv_layer``) are skipped there, and nothing the KV depends on
may run in them: a step's saves are queued after the forward, in ``wait_for_save``; an async
load is reported, and its request scheduled, only once it completed; a sync load runs on the
engine's stream ahead of the forward. So the connector tells vLLM it needs no piecewise graphs
(vLLM's factory finds the class through ``kv_connector_module_path``, as an engine does) and
starts under every graph mode, sync loads too. Under full graphs in the real engine:
``scripts/engine_check.py`` ``*_graphs*`` on the GPU (docs/measurements.md, T8).
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


MODES = ("NONE", "PIECEWISE", "FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "FULL")


@pytest.mark.parametrize("load", ["async", "sync"])
def test_vllms_factory_finds_the_connector_and_hears_it_needs_no_piecewise_graphs(
        facts: dict, load: str):
    assert facts[load]["class"] == "StreamcheckConnector"
    assert facts[load]["asks_piecewise"] is False


@pytest.mark.parametrize("role", ["SCHEDULER", "WORKER"])
@pytest.mark.parametrize("load", ["async", "sync"])
def test_the_connector_starts_under_every_graph_mode(facts: dict, load: str, role: str):
    assert {mode: facts[load]["outcomes"][f"{mode}/{role}"] for mode in MODES} == {
        mode: "started" for mode in MODES}
