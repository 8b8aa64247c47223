"""vLLM's real v1 ``Scheduler`` driving ``StreamcheckConnector`` on CPU, with an emulated runner.

Imported only inside a process that has vLLM 0.33's Python modules on its path (the test module
starts one); never by pytest itself.

Why an emulated model runner rather than vLLM's: the runner needs compiled kernels. What matters
to the connector is the order of the runner's calls and what it reads and writes, and that is
copied here from ``KVConnectorModelRunnerMixin`` and ``maybe_transfer_kv_layer``:
``handle_preemptions`` -> ``bind_connector_metadata`` -> per layer ``wait_for_layer_load``,
attention, ``save_kv_layer`` -> ``start_load_kv`` (async loads start after the forward) ->
``wait_for_save`` -> ``get_transfer_results`` -> ``get_block_ids_with_load_errors`` ->
``build_connector_worker_meta`` -> ``clear_connector_metadata``.

The "attention" writes, for every scheduled token, KV rows that are a pure function of the token
prefix ending there (or, when it read any wrong context row, rows that are off too, as a real
forward's would be), and before writing it reads back the KV of every token the scheduler says is
already computed and compares it bit for bit with that function. So any KV the forward consumes
that was loaded stale, torn, from another prefix, or not loaded at all (the caches start as NaN)
shows up as a ``stale_reads`` entry; nothing depends on timing.

One read of wrong KV is allowed, as vLLM allows it: a synchronous load feeds the forward of the
step it is issued in, and a block that fails its check is only known after that forward. The
worker reports it (``invalid_block_ids``) in the same step's output and vLLM's scheduler drops
that step's output for every request holding the block and recomputes from it. Such a read is
kept apart (``excused_reads``) when the step reported its block invalid, and the runner then
drops the request's sampled token as vLLM does; any other wrong read stays a ``stale_reads``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

BLOCK = 16  # tokens per KV block
LAYERS = ("model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn")
HEADS, HEAD_DIM = 2, 8
GATE_TIMEOUT_S = 30.0


# ---- the KV an honest forward writes --------------------------------------------------------

def prefix_ids(tokens: list[int], start: int = 0, previous: int = 0) -> list[int]:
    """One 63-bit id per position: a chained hash of the tokens up to and including it."""
    out = []
    for t in tokens[start:]:
        previous = int.from_bytes(hashlib.blake2b(struct.pack("<qq", previous, t),
                                                  digest_size=8).digest(), "little") >> 1
        out.append(previous)
    return out


def kv_rows(ids: list[int], layer: int, plane: int) -> torch.Tensor:
    """KV rows (len(ids), HEADS, HEAD_DIM) for these prefix ids; exact in float32."""
    h = torch.tensor(ids, dtype=torch.int64).unsqueeze(1) % 1_000_003
    lane = torch.arange(HEADS * HEAD_DIM, dtype=torch.int64).unsqueeze(0)
    vals = (h * 7 + lane * 13 + layer * 101 + plane * 17) % 65536
    return (vals.to(torch.float32) / 8.0).view(len(ids), HEADS, HEAD_DIM)


# ---- a backend wrapper that holds, slows or fails transfers ------------------------------

class GatedBackend:
    """Wraps a real backend. ``save_gate``/``load_gate`` hold transfers (in the connector's
    worker thread, never the engine's) until set; ``fail_save(key)`` makes a save fail."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.block_nbytes = inner.block_nbytes
        self.save_gate = threading.Event()
        self.load_gate = threading.Event()
        self.save_gate.set()
        self.load_gate.set()
        self.save_delay_s = 0.0
        self.fail_save: Callable[[str], bool] = lambda key: False

    def lookup(self, keys: Any) -> list[bool]:
        return self.inner.lookup(keys)

    def save(self, key: str, block: Any) -> Any:
        from streamcheck.connector.backends.base import TransferResult, TransferState
        from streamcheck.connector.backends.transfers import CompletedTransfer

        self.save_gate.wait(GATE_TIMEOUT_S)
        if self.save_delay_s:
            time.sleep(self.save_delay_s)
        if self.fail_save(key):
            return CompletedTransfer(TransferResult(TransferState.FAILED, error="injected"))
        return self.inner.save(key, block)

    def load(self, key: str, into: Any) -> Any:
        self.load_gate.wait(GATE_TIMEOUT_S)
        return self.inner.load(key, into)

    def delete(self, keys: Any) -> None:
        self.inner.delete(keys)

    def stats(self) -> dict[str, int | float]:
        return self.inner.stats()

    def close(self, drain: bool = True) -> None:
        self.inner.close(drain=drain)


class HeldTransfer:
    """A CPU stand-in for a slab load still in flight on the device. The engine thread issues
    slab loads itself and polls their event: the slots and sums are read at the issue, but a
    device copy reads the slab's bytes when it runs. So the copies run (``issue``) when the
    gate is open and the event is asked about (``query``/``synchronize``), and until then the
    load is in flight: the request stays parked, and the slab's bytes can change under it."""

    def __init__(self, gate: threading.Event, issue: Callable[[], Any]) -> None:
        self.gate, self.issue = gate, issue
        self.inner: Any = None
        self.ran = False

    def _run(self) -> None:
        if not self.ran:
            self.ran = True
            self.inner = self.issue()

    def query(self) -> bool:
        if not self.gate.is_set():
            return False
        self._run()
        return True

    def synchronize(self) -> None:
        self.gate.wait(GATE_TIMEOUT_S)
        self._run()

    def retire(self) -> None:
        if self.inner is not None:
            self.inner.retire()


class GatedSlab(GatedBackend):
    """The same gates over the connector's host slab, which moves whole runs of slots on the
    device instead of calling ``save``/``load`` per key: its two transfer methods are wrapped on
    the runtime, and key-level access (lookup, delete, direct loads for the store audit) goes
    through the scheduler's placement (hash -> slot) and the slab's tags and sums."""

    def __init__(self, runtime: Any, placement: Callable[[], Any]) -> None:
        super().__init__(runtime.slab)
        self.runtime = runtime
        self.placement = placement
        issue_save, issue_load = runtime._slab_save, runtime._slab_load

        def gated_save(job: Any) -> Any:
            """A save in flight on the "device" until the gate opens, as a load is: held
            saves are issued by the engine thread, which must not wait here. Its copies read
            the KV cache when they run, as a device copy queued behind other work would."""
            from streamcheck.connector.worker_side import _InFlight

            def run() -> Any:
                if self.save_delay_s:
                    time.sleep(self.save_delay_s)
                if any(self.fail_save(key) for key in self._keys_of(job)):
                    raise RuntimeError("injected save failure")
                return issue_save(job)

            if not runtime.hold_saves:  # a worker thread's save: it may wait for the gate
                self.save_gate.wait(GATE_TIMEOUT_S)
                return run()
            held = HeldTransfer(self.save_gate, lambda: runtime._run_job(job, run))
            return _InFlight(held, held.retire, job)

        def gated_load(job: Any, stream: Any, plan: Any = None, polled: bool = False) -> Any:
            """(Its in-flight record is untimed whatever ``polled`` says: the gate, not the
            device, decides when it completes.)"""
            from streamcheck.connector.worker_side import _InFlight

            # As the runtime does at the issue: which slots hold the blocks, and their sums,
            # now; the copies (which read the slab) when the "device" runs them.
            planes = job.planes or [job.layer]
            plan = plan or runtime._plan_slab_load(planes, job.block_ids, job.slots, job.tags)
            held = HeldTransfer(self.load_gate, lambda: runtime._run_job(
                job, lambda: issue_load(job, stream, plan)))
            return _InFlight(held, held.retire, job)

        runtime._slab_save, runtime._slab_load = gated_save, gated_load

    def _keys_of(self, job: Any) -> list[str]:
        """The block keys a slab job moves, from the placement (slots -> hashes)."""
        placement = self.placement()
        by_slot = {slot: h for h, slot in {**placement._committed, **placement._saving}.items()}
        planes = job.planes or [job.layer]
        return [f"{by_slot.get(slot, '?')}.L{plane}" for plane in planes for slot in job.slots]

    def _where(self, key: str) -> tuple[int, int] | None:
        from streamcheck.connector.placement import copy_name
        from streamcheck.connector.slab import key_tag

        block_hash, _, plane = key.partition(".L")
        placement = self.placement()
        slot = placement.slot(block_hash)
        plane_index = int(plane.split(".")[0])
        tag = key_tag(copy_name(block_hash, placement.owner(block_hash)))
        if slot is None or self.inner.tags[plane_index, slot] != tag:
            return None
        return plane_index, slot

    def lookup(self, keys: Any) -> list[bool]:
        return [self._where(k) is not None for k in keys]

    def delete(self, keys: Any) -> None:
        for key in keys:
            where = self._where(key)
            if where is not None:
                self.inner.forget(where[0], [where[1]])

    def corrupt(self, key: str) -> None:
        where = self._where(key)
        assert where is not None, f"{key} is not in the slab"
        self.inner.data[where[0], where[1], 100] ^= 0x40

    def read(self, key: str, into: torch.Tensor) -> str:
        """Copy the block of ``key`` into ``into`` after the slab's own checks; "" or why not."""
        from streamcheck.connector.slab import block_sums

        where = self._where(key)
        if where is None:
            return f"{key}: not in the slab"
        into.copy_(self.inner.data[where[0], where[1]])
        if int(block_sums(into.view(torch.int64).unsqueeze(0))[0]) != int(
                self.inner.sums[where]):
            return f"{key}: checksum mismatch"
        return ""


# ---- vLLM objects ------------------------------------------------------------------------

_MODEL_DIR: str | None = None


def _model_dir() -> str:
    """A tiny local HF config whose architecture is registered below: no download, no weights,
    and no import of vLLM's model modules (they need packages this env does not carry)."""
    global _MODEL_DIR
    if _MODEL_DIR is None:
        import torch.nn as nn
        from vllm import ModelRegistry

        class StreamcheckTinyLM(nn.Module):
            def __init__(self, *, vllm_config: Any = None, prefix: str = "") -> None:
                super().__init__()

            def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
                return input_ids

            def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                        **kwargs: Any) -> torch.Tensor:
                return input_ids

            def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
                return hidden_states

        ModelRegistry.register_model("StreamcheckTinyLM", StreamcheckTinyLM)
        _MODEL_DIR = tempfile.mkdtemp(prefix="streamcheck-tiny-lm-")
        atexit.register(shutil.rmtree, _MODEL_DIR, ignore_errors=True)
        config = {
            "architectures": ["StreamcheckTinyLM"], "model_type": "llama",
            "hidden_size": HEADS * HEAD_DIM * 2, "intermediate_size": 64,
            "num_attention_heads": HEADS * 2, "num_key_value_heads": HEADS,
            "head_dim": HEAD_DIM, "num_hidden_layers": len(LAYERS), "vocab_size": 1000,
            "max_position_embeddings": 2048, "torch_dtype": "float32", "rms_norm_eps": 1e-5,
        }
        with open(os.path.join(_MODEL_DIR, "config.json"), "w") as f:
            json.dump(config, f)
    return _MODEL_DIR


def make_vllm_config(extra: dict[str, Any], *, num_blocks: int, max_batched: int,
                     prefix_caching: bool, policy: str, long_prefill: int) -> Any:
    from vllm.config import (
        CacheConfig,
        DeviceConfig,
        KVTransferConfig,
        ModelConfig,
        SchedulerConfig,
        VllmConfig,
    )

    model = ModelConfig(model=_model_dir(), skip_tokenizer_init=True, dtype="float32",
                        max_model_len=1024, seed=0)
    config = VllmConfig(
        model_config=model,
        scheduler_config=SchedulerConfig(
            max_num_seqs=8, max_num_batched_tokens=max_batched, max_model_len=1024,
            enable_chunked_prefill=True, is_encoder_decoder=False,
            long_prefill_token_threshold=long_prefill),
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=prefix_caching),
        kv_transfer_config=KVTransferConfig(
            kv_connector="StreamcheckConnector",
            kv_connector_module_path="streamcheck.connector.vllm_adapter",
            kv_role="kv_both", kv_connector_extra_config=extra,
            kv_load_failure_policy=policy),
        device_config=DeviceConfig("cpu"),
    )
    config.cache_config.num_gpu_blocks = num_blocks
    return config


def _across_processes(obj: Any) -> Any:
    """What a multiprocess executor does to the metadata and the outputs: a pickled copy, so
    the scheduler and each worker never share an object."""
    return pickle.loads(pickle.dumps(obj))


@dataclass
class RunnerRequest:
    """What vLLM's model runner caches per request."""

    tokens: list[int]
    block_ids: list[int]
    ids: list[int] = field(default_factory=list)  # prefix ids, grown lazily

    def prefix(self, n: int) -> list[int]:
        if len(self.ids) < n:
            self.ids.extend(prefix_ids(self.tokens[:n], len(self.ids),
                                       self.ids[-1] if self.ids else 0))
        return self.ids[:n]


class Worker:
    """One worker: its connector, its shard of the KV caches, its (wrapped) backend."""

    def __init__(self, config: Any, kv_cache_config: Any, num_blocks: int, index: int,
                 shard: str | None, placement: Callable[[], Any]) -> None:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

        self.index = index
        self.connector = KVConnectorFactory.create_connector(
            config, KVConnectorRole.WORKER, kv_cache_config)
        if shard is not None:  # emulated tensor-parallel rank (no process group here)
            self.connector.shard = shard
        # FlashAttention's layout: (k/v, blocks, tokens, heads, head dim). NaN = never written.
        self.kv = {name: torch.full((2, num_blocks, BLOCK, HEADS, HEAD_DIM), float("nan"))
                   for name in LAYERS}
        self.connector.register_kv_caches(self.kv)
        self.runtime = self.connector.runtime
        if self.runtime.slab is not None:
            self.backend: GatedBackend = GatedSlab(self.runtime, placement)
        else:
            self.backend = GatedBackend(self.runtime.backend)
            self.runtime.backend = self.backend
        self.flushes: list[int] = []  # saves pending at each flush
        flush = self.runtime.flush

        def counted_flush(*args: Any, **kwargs: Any) -> None:
            self.flushes.append(self.runtime.pending())
            flush(*args, **kwargs)

        self.runtime.flush = counted_flush

    def rows(self, ids: list[int], layer: int, plane: int) -> torch.Tensor:
        """This worker's slice of the true KV (each shard holds different numbers)."""
        return kv_rows(ids, layer, plane + 2 * self.index)


class Engine:
    """vLLM's scheduler + ``workers`` worker connectors over CPU KV caches, stepped like
    ``EngineCore.step``; several workers stand for tensor-parallel ranks, their outputs merged
    by vLLM's own ``KVOutputAggregator``."""

    def __init__(self, extra: dict[str, Any], *, num_blocks: int = 64, max_batched: int = 256,
                 prefix_caching: bool = False, policy: str | None = None,
                 workers: int = 1, long_prefill: int = 0, layer_calls: bool = True) -> None:
        """``layer_calls`` False: every forward as a full CUDA graph replays it, without the
        Python vLLM runs inside attention (``wait_for_layer_load``, ``save_kv_layer``)."""
        from vllm.distributed.kv_transfer.kv_connector.utils import KVOutputAggregator
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.structured_output import StructuredOutputManager

        self.layer_calls = layer_calls
        if policy is None:  # the connector refuses sync loads under "recompute"
            policy = "fail" if extra.get("load") == "sync" else "recompute"
        self.config = make_vllm_config(extra, num_blocks=num_blocks, max_batched=max_batched,
                                       prefix_caching=prefix_caching, policy=policy,
                                       long_prefill=long_prefill)
        spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=HEADS, head_size=HEAD_DIM,
                                 dtype=torch.float32)
        self.kv_cache_config = KVCacheConfig(
            num_blocks=num_blocks, kv_cache_tensors=[],
            kv_cache_groups=[KVCacheGroupSpec(list(LAYERS), spec)])
        self.scheduler = Scheduler(
            vllm_config=self.config, kv_cache_config=self.kv_cache_config,
            structured_output_manager=StructuredOutputManager(self.config),
            block_size=BLOCK, log_stats=True)
        if workers > 1:  # what parallel_config.world_size would say
            self.side.workers = workers
        self.workers = [Worker(self.config, self.kv_cache_config, num_blocks, i,
                               f".p0t{i}" if workers > 1 else None,
                               lambda: self.side.placement) for i in range(workers)]
        self.aggregator = KVOutputAggregator(workers)
        self.worker, self.backend = self.workers[0].connector, self.workers[0].backend
        self.reqs: dict[str, RunnerRequest] = {}
        self.stale_reads: list[str] = []
        # per step: (vLLM scheduled no tokens, the connector's metadata says the step is idle)
        self.idle_marks: list[tuple[bool, bool]] = []
        self.excused_reads: list[str] = []  # wrong KV read in a step that reported it invalid
        # this step's wrong reads: (request, the blocks read wrong, what)
        self._step_reads: list[tuple[str, set[int], str]] = []
        self.finish_reasons: dict[str, str] = {}  # request -> why it finished (error: a failure)
        self.steps = 0
        self.preemptions: dict[str, int] = {}
        self.resumed: list[tuple[str, int]] = []  # (request, tokens computed when resumed)
        self.first_compute: dict[str, tuple[int, int]] = {}  # req -> (computed, scheduled)
        self.computes: dict[str, list[int]] = {}  # req -> tokens computed before each step
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}
        self.prompts: dict[str, list[int]] = {}
        self._computed: dict[str, int] = {}  # this step: tokens computed before it, per request
        self._sampled: dict[str, list[int]] = {}  # this step: the token each request samples
        self.idle_blocks = self.block_usage()  # vLLM's null block

    # -- requests ---------------------------------------------------------------------------

    def add(self, req_id: str, prompt: list[int], max_tokens: int = 4) -> None:
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.request import Request

        init_none_hash(sha256)  # vLLM's own prefix-cache hashes (not the connector's)
        self.prompts[req_id] = list(prompt)
        self.scheduler.add_request(Request(
            request_id=req_id, prompt_token_ids=list(prompt),
            sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
            pooling_params=None, block_hasher=get_request_block_hasher(BLOCK, sha256)))

    def status(self, req_id: str) -> str:
        req = self.scheduler.requests.get(req_id)
        return req.status.name if req is not None else "GONE"

    @property
    def side(self) -> Any:
        """The scheduler-role connector's vLLM-free half."""
        return self.scheduler.connector.scheduler

    # -- one engine step --------------------------------------------------------------------

    def step(self) -> Any:
        """schedule -> execute on every worker -> update_from_output (``EngineCore.step``)."""
        out = self.scheduler.schedule()
        self.steps += 1
        for req_id in out.preempted_req_ids or ():
            self.preemptions[req_id] = self.preemptions.get(req_id, 0) + 1
        model_output = self._execute(out)
        engine_outputs = self.scheduler.update_from_output(out, model_output)
        for outputs in engine_outputs.values():
            for o in outputs.outputs:
                if o.finish_reason is not None:
                    self.finish_reasons[o.request_id] = str(o.finish_reason)
        return out

    def run_until(self, done: Callable[[], bool], timeout_s: float = 20.0) -> int:
        """Step until ``done()``; returns the steps taken. A step that scheduled nothing
        yields the GIL for a moment, as the engine's idle loop would, so the connector's
        thread is not starved by a busy test loop."""
        deadline = time.monotonic() + timeout_s
        steps = 0
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done after {steps} steps: "
                                     f"{ {r: self.status(r) for r in self.scheduler.requests} }")
            out = self.step()
            steps += 1
            if not out.total_num_scheduled_tokens:
                time.sleep(0.001)
        return steps

    def drain(self, timeout_s: float = 20.0) -> int:
        """Step until the scheduler holds nothing (when EngineCore stops stepping)."""
        return self.run_until(lambda: not self.scheduler.has_requests(), timeout_s)

    def _execute(self, out: Any) -> Any:
        self._update_states(out)
        self._step_reads = []
        outputs = [self._execute_worker(w, out) for w in self.workers]
        invalid: set[int] = set()
        for o in outputs:
            if o.kv_connector_output is not None:
                invalid |= set(o.kv_connector_output.invalid_block_ids or ())
        dropped = {r for r in self._sampled if invalid & set(self.reqs[r].block_ids)}
        for _req, wrong, what in self._step_reads:
            (self.excused_reads if wrong <= invalid else self.stale_reads).append(what)
        for req_id, sampled in self._sampled.items():
            if req_id not in dropped:  # vLLM drops the output of a request it recomputes
                self.reqs[req_id].tokens.extend(sampled)
        return self.aggregator.aggregate(outputs) if len(outputs) > 1 else outputs[0]

    def _execute_worker(self, worker: Worker, out: Any) -> Any:
        from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput

        w = worker.connector
        meta = _across_processes(out.kv_connector_metadata)
        self.idle_marks.append((not out.total_num_scheduled_tokens, meta.step.idle))
        w.handle_preemptions(meta)
        w.bind_connector_metadata(meta)
        if out.has_sync_kv_loads:
            w.start_load_kv(None)
        if out.total_num_scheduled_tokens:
            for layer, name in enumerate(LAYERS):
                if self.layer_calls:
                    w.wait_for_layer_load(name)
                for req_id, n in out.num_scheduled_tokens.items():
                    self._attention(worker, req_id, layer, name, n)
                if self.layer_calls:
                    w.save_kv_layer(name, worker.kv[name], attn_metadata=object())
        if not out.has_sync_kv_loads:
            w.start_load_kv(None)
        w.wait_for_save()
        results = w.get_transfer_results(out.finished_req_ids)
        kv_out = KVConnectorOutput(
            finished_sending=results.finished_sending or None,
            finished_recving=results.finished_recving or None,
            failed_recving=results.failed_recving,
            invalid_block_ids=w.get_block_ids_with_load_errors(),
            kv_connector_stats=w.get_kv_connector_stats(),
            kv_connector_worker_meta=w.build_connector_worker_meta(),
        )
        w.clear_connector_metadata()
        kv_out = _across_processes(kv_out)
        req_ids = list(out.num_scheduled_tokens)
        # A fresh object even for an empty step: vLLM's EMPTY_MODEL_RUNNER_OUTPUT is a shared
        # singleton that KVOutputAggregator writes into (harmless across processes, not here).
        return ModelRunnerOutput(req_ids=req_ids,
                                 req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                 sampled_token_ids=[self._sampled[r] for r in req_ids],
                                 kv_connector_output=None if kv_out.is_empty() else kv_out)

    def _update_states(self, out: Any) -> None:
        """What GPUModelRunner._update_states keeps: tokens and block tables per request."""
        for req_id in out.finished_req_ids:
            self.reqs.pop(req_id, None)
        self._computed, self._sampled = {}, {}
        for new in out.scheduled_new_reqs:
            self.reqs[new.req_id] = RunnerRequest(list(new.prompt_token_ids),
                                                  list(new.block_ids[0]))
            self._computed[new.req_id] = new.num_computed_tokens
            self.first_compute.setdefault(
                new.req_id, (new.num_computed_tokens, out.num_scheduled_tokens[new.req_id]))
        cached = out.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self.reqs[req_id]
            if req_id in cached.all_token_ids:
                state.tokens = list(cached.all_token_ids[req_id])
                state.ids = []
            blocks = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                state.block_ids = list(blocks[0]) if blocks else []
                self.resumed.append((req_id, cached.num_computed_tokens[i]))
            elif blocks:
                state.block_ids.extend(blocks[0])
            self._computed[req_id] = cached.num_computed_tokens[i]
        for req_id, n in out.num_scheduled_tokens.items():
            self.computes.setdefault(req_id, []).append(self._computed[req_id])
            state, end = self.reqs[req_id], self._computed[req_id] + n
            if end >= len(state.tokens):  # the chunk reached the end: a token is sampled
                self._sampled[req_id] = [100 + state.prefix(end)[-1] % 800]
            else:
                self._sampled[req_id] = []

    def _attention(self, worker: Worker, req_id: str, layer: int, name: str, n: int) -> None:
        state, computed = self.reqs[req_id], self._computed[req_id]
        ids = state.prefix(computed + n)
        cache = worker.kv[name]
        for plane in (0, 1):
            if computed:  # read the context: must be exactly what its prefix produces
                pos = torch.arange(computed)
                blocks = torch.tensor(state.block_ids)[pos // BLOCK]
                got = cache[plane][blocks, pos % BLOCK]
                want = worker.rows(ids[:computed], layer, plane)
                bad = (got.view(torch.int32) != want.view(torch.int32)).flatten(1).any(1)
                if bool(bad.any()):
                    first = int(bad.nonzero()[0])
                    wrong = {int(b) for b in blocks[bad].tolist()}  # every block read wrong
                    self._step_reads.append((req_id, wrong, (
                        f"{req_id} worker {worker.index} layer {layer} plane {plane}: token "
                        f"{first} of {computed} (blocks {sorted(wrong)})")))
            pos = torch.arange(computed, computed + n)
            blocks = torch.tensor(state.block_ids)[pos // BLOCK]
            rows = worker.rows(ids[computed:], layer, plane)
            if computed and bool(bad.any()):
                rows = rows + 0.5  # computed from wrong context: wrong too (a real forward's is)
            cache[plane][blocks, pos % BLOCK] = rows

    # -- inspection -------------------------------------------------------------------------

    def snapshot(self, req_id: str, nblocks: int) -> None:
        """Keep a copy of a request's first blocks (as its forward wrote them)."""
        ids = self.reqs[req_id].block_ids[:nblocks]
        self.snapshots[req_id] = {name: kv[:, ids].clone()
                                  for name, kv in self.workers[0].kv.items()}

    def same_as_snapshot(self, req_id: str, other: str, nblocks: int) -> bool:
        """Bit-exact: ``req_id``'s first blocks now hold what ``other`` wrote into its own."""
        ids = self.reqs[req_id].block_ids[:nblocks]
        return all(torch.equal(self.workers[0].kv[name][:, ids].view(torch.int32),
                               snap[:, :nblocks].view(torch.int32))
                   for name, snap in self.snapshots[other].items())

    def block_hashes(self, prompt: list[int]) -> list[str]:
        from streamcheck.connector.keys import block_hashes

        return block_hashes(prompt, BLOCK, self.worker.config.namespace)

    def committed(self, prompt: list[int]) -> int:
        """How many leading full blocks of ``prompt`` the scheduler side would serve."""
        hits = 0
        for h in self.block_hashes(prompt):
            if h not in self.side.committed:
                break
            hits += 1
        return hits

    def audit_store(self) -> list[str]:
        """Every block the scheduler may serve must load, verified, with exactly the KV its
        prefix produces, for every worker, layer and plane."""
        from streamcheck.connector.backends.base import TransferState

        known = {}
        for prompt in self.prompts.values():
            for i, h in enumerate(self.block_hashes(prompt)):
                known[h] = (prompt, i)
        problems = []
        buf = torch.empty(self.backend.block_nbytes, dtype=torch.uint8)
        for h in sorted(self.side.committed):
            if h not in known:
                problems.append(f"{h}: committed but no prompt has it")
                continue
            prompt, i = known[h]
            ids = prefix_ids(prompt[:(i + 1) * BLOCK])[i * BLOCK:]
            for worker in self.workers:
                for layer in range(len(LAYERS)):
                    for plane in (0, 1):
                        key = worker.connector.block_key(h, 2 * layer + plane)
                        if isinstance(worker.backend, GatedSlab):
                            error = worker.backend.read(key, buf)
                        else:
                            result = worker.backend.inner.load(key, memoryview(buf.numpy()))
                            result = result.wait()
                            error = "" if result.state is TransferState.DONE else result.error
                        if error:
                            problems.append(f"{key}: {error}")
                        elif not torch.equal(buf, worker.rows(ids, layer, plane)
                                             .view(torch.uint8).flatten()):
                            problems.append(f"{key}: stored KV differs from its prefix's")
        return problems

    def block_usage(self) -> int:
        """Blocks not in vLLM's free pool."""
        pool = self.scheduler.kv_cache_manager.block_pool
        return pool.num_gpu_blocks - pool.get_num_free_blocks()

    def shutdown(self) -> dict[str, Any]:
        for worker in self.workers:
            worker.connector.shutdown()
        self.scheduler.shutdown()
        return {"runtime_thread_alive": any(w.runtime._thread.is_alive() for w in self.workers),
                "pending_after_shutdown": sum(w.runtime.pending() for w in self.workers)}
