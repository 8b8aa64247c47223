"""streamcheck's rules over vLLM's REAL ``current_stream()``, on CPU.

The CPU stream simulator stands in for ``torch.cuda`` (as ``streamcheck doctor`` does), vLLM's
own module is imported on top of it (so its patched ``set_stream`` and its cache are the real
code), and each launch resolves its stream through vLLM's accessor exactly as pynccl would, then
goes through streamcheck's audit:

* 0.9.2 (module-global cache): a connector thread's ``with torch.cuda.stream(S)`` is reported
  as ``foreign-stream`` at the engine thread's launch;
* 0.33 (thread-local cache): the same is clean; a ``with stream:`` (torch.Stream-style, a C++
  switch) or ``torch.accelerator.set_stream`` in the launching thread is ``stale-stream-cache``.
"""

from __future__ import annotations

import functools

import pytest

from tests.vllm.conftest import run_in_vllm

CHILD = """
import threading
from streamcheck.doctor import fake_cuda, platform_shim
fake_cuda.install(fake_cuda.build(device_count=2))
import streamcheck
auditor = streamcheck.install("record")  # before vLLM: its set_stream patch wraps our hook
import torch
try:
    import streamcheck_vllm_stubs  # noqa: F401
except ImportError:
    pass
platform_shim.force_cuda_platform()
from streamcheck.vllm_compat import find_current_stream_accessor
module, name = find_current_stream_accessor()
current_stream = getattr(module, name)

def launch(op):
    stream = current_stream()
    auditor.clear()
    streamcheck.launch(op, stream=stream, device=0,
                       resolved_from=f"{module.__name__}.{name}").check()
    return sorted({f.rule_id for f in auditor.findings()})

out = {"clean_start": launch("pynccl.all_reduce")}
S = torch.cuda.Stream()
inside, leave = threading.Event(), threading.Event()
def connector():
    with torch.cuda.stream(S):
        inside.set()
        leave.wait()
t = threading.Thread(target=connector, name="kv-connector")
t.start(); inside.wait()
out["connector_in_stream_context"] = launch("pynccl.all_reduce")
leave.set(); t.join()
current_stream()
with torch.cuda.Stream():  # torch.Stream-style context: switches without set_stream
    out["inside_stream_object_context"] = launch("pynccl.all_reduce")
torch.accelerator.set_stream(torch.cuda.Stream())
out["after_accelerator_set_stream"] = launch("pynccl.all_reduce")
emit(out)
"""


@functools.cache
def findings(version: str) -> dict:
    return run_in_vllm(version, CHILD)


@pytest.mark.parametrize("version,expected", [("0.9.2", ["foreign-stream"]), ("0.33.0", [])])
def test_foreign_stream_only_with_the_module_global_cache(version: str, expected: list) -> None:
    out = findings(version)
    assert out["clean_start"] == []
    assert out["connector_in_stream_context"] == expected


def test_stale_cache_in_the_thread_local_release() -> None:
    out = findings("0.33.0")
    assert out["inside_stream_object_context"] == ["stale-stream-cache"]
    assert out["after_accelerator_set_stream"] == ["stale-stream-cache"]
