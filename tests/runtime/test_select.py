"""One backend choice for `run` (ranks over NCCL) and `doctor` (one probe process)."""

from __future__ import annotations

import pytest

from streamcheck.runtime import cuda, select
from streamcheck.runtime.select import BackendUnavailable, choose_backend


def test_unknown_backend_is_refused():
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu'"):
        choose_backend("tpu")


def test_sim_is_sim_for_both_callers():
    for collectives in (True, False):
        assert choose_backend("sim", collectives=collectives).name == "sim"


def test_without_a_gpu_auto_falls_back_and_cuda_says_why(monkeypatch):
    monkeypatch.setattr(cuda, "device_count", lambda: 0)
    for collectives in (True, False):
        choice = choose_backend("auto", collectives=collectives)
        assert choice.name == "sim" and "no CUDA GPU is visible" in choice.note
        with pytest.raises(BackendUnavailable, match="no CUDA GPU is visible"):
            choose_backend("cuda", collectives=collectives)


def test_nccl_matters_only_to_ranks_that_talk_through_it(monkeypatch):
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(select, "_nccl_problem", lambda: "GPUs are visible but NCCL did not load")
    assert choose_backend("auto").name == "sim"
    with pytest.raises(BackendUnavailable, match="NCCL did not load"):
        choose_backend("cuda")
    probe = choose_backend("auto", collectives=False)  # the doctor's probe needs no NCCL
    assert (probe.name, probe.gpus) == ("cuda", 2)
    assert choose_backend("cuda", collectives=False).name == "cuda"
