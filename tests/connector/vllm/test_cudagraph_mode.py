"""The connector and vLLM's CUDA graph modes, under vLLM 0.33's real config classes, on CPU.

A full CUDA graph replays a forward without its Python: the connector's per-layer calls
(``wait_for_layer_load``, ``save_kv_layer``) would be skipped, so a forward would read loaded
blocks before their copies ended and a step's saves would never be issued. vLLM asks each
connector class whether it needs piecewise graphs (which keep attention, and these calls,
eager) and switches to them; a vLLM that does not ask leaves full graphs on, and the connector
must refuse to start there. vLLM's factory finds the class through ``kv_connector_module_path``
as an engine does; the switch itself happens only on a CUDA platform (the engine check on the
GPU shows it: ``scripts/engine_check.py`` ``ttft_graphs_*``).
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

config = make_vllm_config({{"backend": "host", "capacity_blocks": 64}}, num_blocks=64,
                          max_batched=256, prefix_caching=False, policy="recompute",
                          long_prefill=0)
transfer = config.kv_transfer_config
cls = KVConnectorFactory.get_connector_class(transfer)
facts = {{"class": cls.__name__,
          "asks_piecewise": cls.requires_piecewise_for_cudagraph(
              transfer.kv_connector_extra_config)}}
outcomes = {{}}
for mode in ("NONE", "PIECEWISE", "FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "FULL"):
    config.compilation_config.cudagraph_mode = CUDAGraphMode[mode]
    for role in ("SCHEDULER", "WORKER"):
        try:
            cls(config, KVConnectorRole[role])
            outcomes[mode + "/" + role] = "started"
        except ValueError as exc:
            outcomes[mode + "/" + role] = "refused: " + str(exc)
facts["outcomes"] = outcomes
emit(facts)
"""


@pytest.fixture(scope="module")
def facts() -> dict:
    return run_in_vllm(VERSION, CHILD.format(here=str(HERE)), timeout=200)


def test_vllms_factory_finds_the_connector_and_hears_it_needs_piecewise_graphs(facts: dict):
    assert facts["class"] == "StreamcheckConnector"
    assert facts["asks_piecewise"] is True


@pytest.mark.parametrize("role", ["SCHEDULER", "WORKER"])
def test_the_connector_starts_under_piecewise_graphs_or_none(facts: dict, role: str):
    for mode in ("NONE", "PIECEWISE"):
        assert facts["outcomes"][f"{mode}/{role}"] == "started"


@pytest.mark.parametrize("role", ["SCHEDULER", "WORKER"])
@pytest.mark.parametrize("mode", ["FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "FULL"])
def test_full_graphs_left_on_by_a_vllm_that_does_not_ask_are_refused(facts: dict, mode: str,
                                                                     role: str):
    outcome = facts["outcomes"][f"{mode}/{role}"]
    assert outcome.startswith("refused: ")
    assert mode in outcome and '"cudagraph_mode": "PIECEWISE"' in outcome
