"""``StreamcheckConnector``: the reference async KV connector as a real vLLM v1 connector.

Register it with ``streamcheck.connector.vllm_adapter.register()`` (``KVConnectorFactory``) or
point vLLM at it: ``--kv-transfer-config '{"kv_connector": "StreamcheckConnector",
"kv_connector_module_path": "streamcheck.connector.vllm_adapter", "kv_role": "kv_both",
"kv_connector_extra_config": {"backend": "disk", "path": "/data/kv", "streamcheck": "assert"}}'``.

Scheduler side: :class:`~streamcheck.connector.scheduler_side.SchedulerSide` (lookups from an
index of committed blocks; async loads park the request in ``WAITING_FOR_REMOTE_KVS`` until a
worker reports them). Worker side: :class:`~streamcheck.connector.worker_side.ConnectorRuntime`
(own thread and stream, event ordering, gathered copies). A CUDA worker installs streamcheck in
the configured mode (``assert`` by default), so every collective in the worker process and every
launch of the connector is audited.

How the two sides agree without sharing memory (they live in different processes):

* saves: a save group (one request, one step) is closed by a worker only when every layer it
  holds was queued (``wait_for_save`` seals it in the runtime) and every one of those
  transfers ended, so a group can never look done while layers are still being queued. The
  scheduler commits the group's hashes when all workers closed it without failure.
* block lifetime: a worker reports a request in ``finished_sending`` only if the scheduler said
  it delayed that request's free (``StepMeta.delayed``): vLLM frees everything else itself, and
  a report for a request it already dropped fails vLLM's own bookkeeping.
* loads: a failed block is reported (``get_block_ids_with_load_errors``) in the same step as its
  request's ``finished_recving``, so vLLM recomputes it before anything reads it; its hash goes
  back to the scheduler (``missing``) and leaves the index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

try:
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (
        KVConnectorBase_V1,
        KVConnectorMetadata,
        KVConnectorRole,
        KVConnectorWorkerMetadata,
    )
except ImportError as exc:  # pragma: no cover - exercised where vLLM is absent
    raise ImportError(
        f"streamcheck's vLLM connector needs vLLM's KV connector API ({exc}); install vLLM "
        "(pip install 'streamcheck[vllm]')"
    ) from exc

import streamcheck
from streamcheck.connector.config import ConnectorConfig
from streamcheck.connector.keys import layer_key
from streamcheck.connector.placement import Placement
from streamcheck.connector.scheduler_side import SchedulerSide, StepMeta
from streamcheck.connector.slab import key_tag
from streamcheck.connector.timeline import Timeline
from streamcheck.connector.worker_side import ConnectorRuntime, SlabLoad


@dataclass
class StreamcheckMeta(KVConnectorMetadata):
    step: StepMeta = field(default_factory=StepMeta)


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


@dataclass
class StreamcheckWorkerMeta(KVConnectorWorkerMetadata):
    """One worker's news for one step: save groups it ended (count 1 each), ok or failed, and
    block hashes its loads found missing or corrupt."""

    saves_ok: dict[str, int] = field(default_factory=dict)
    saves_failed: dict[str, int] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        """Counts add up: workers end a group in different steps, so the scheduler counts
        reports until every worker ended it (an intersection per step would lose them)."""
        assert isinstance(other, StreamcheckWorkerMeta)
        return StreamcheckWorkerMeta(_add(self.saves_ok, other.saves_ok),
                                     _add(self.saves_failed, other.saves_failed),
                                     self.missing | other.missing)

    def __bool__(self) -> bool:
        return bool(self.saves_ok or self.saves_failed or self.missing)


def _shard(vllm_config: Any) -> str:
    """Which slice of every block this worker holds, for its keys. With tensor or pipeline
    parallelism each worker saves its own heads or layers under the same block hash, and a
    shared store (disk, Redis) must never hand one worker another worker's slice."""
    parallel = vllm_config.parallel_config
    if parallel.world_size == 1:
        return ""
    from vllm.distributed import parallel_state as ps

    shard = f".p{ps.get_pp_group().rank_in_group}t{ps.get_tp_group().rank_in_group}"
    if getattr(parallel, "prefill_context_parallel_size", 1) > 1:
        shard += f"c{ps.get_pcp_group().rank_in_group}"
    return shard


def _cache_hit_source(backend: str) -> Any:
    try:
        from vllm.v1.metrics.cache_hit_source import CacheHitSource
    except ImportError:  # older vLLM: no per-tier hit metrics
        return None
    return {"host": CacheHitSource.HOST, "disk": CacheHitSource.DISK}.get(
        backend, CacheHitSource.EXTERNAL_UNSPECIFIED)


def _warn_if_loads_can_fail(config: ConnectorConfig, transfer_config: Any) -> None:
    """A store the scheduler cannot bound (Redis evicts on its own) can lose a block between
    lookup and load; under ``kv_load_failure_policy="fail"`` vLLM then ends that request with
    an error instead of recomputing it. Say so once, at start-up."""
    policy = getattr(transfer_config, "kv_load_failure_policy", None)
    if config.placement_capacity() is None and policy == "fail":
        import logging

        logging.getLogger(__name__).warning(
            "streamcheck connector: the %s store can drop blocks the scheduler counted as hits "
            "and kv_load_failure_policy is 'fail': such a request ends with an error. Set "
            "kv_load_failure_policy='recompute' to recompute those blocks instead.",
            config.backend)


class StreamcheckConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra(
            self._kv_transfer_config.kv_connector_extra_config)
        self.timeline = Timeline(self.config.trace)
        source = _cache_hit_source(self.config.backend)
        if source is not None:
            self._cache_hit_source = source
        self.block_size = vllm_config.cache_config.block_size
        self.scheduler: SchedulerSide | None = None
        self.runtime: ConnectorRuntime | None = None
        self._group_req: dict[str, str] = {}  # open save group -> its request (worker side)
        self._req_groups: dict[str, set[str]] = {}  # request -> its open save groups
        self._finishing: set[str] = set()  # delayed by the scheduler: report when saved
        self._recving: set[str] = set()
        self._load_errors: set[int] = set()
        self._load_blocks: dict[str, dict[int, str]] = {}  # loads in flight: block -> hash
        # issued this step: (the load, its blocks' hashes)
        self._sync_loads: list[tuple[SlabLoad, dict[int, str]]] = []
        self._report = StreamcheckWorkerMeta()
        self._planes: list[int] = []
        self._step_tags: dict[str, list[int]] = {}
        self.shard = ""
        if role == KVConnectorRole.SCHEDULER:
            capacity = self.config.placement_capacity()
            self.scheduler = SchedulerSide(
                self.block_size, self.config.namespace,
                workers=vllm_config.parallel_config.world_size,
                placement=Placement(capacity) if capacity is not None else None,
                sync_loads=self.config.sync_loads)
            _warn_if_loads_can_fail(self.config, self._kv_transfer_config)
            self.config.check_failure_policy(
                getattr(self._kv_transfer_config, "kv_load_failure_policy", None))
        else:
            self.shard = _shard(vllm_config)

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        """No: a full CUDA graph's replay skips the Python vLLM runs inside attention
        (``wait_for_layer_load``, ``save_kv_layer``), and nothing the KV depends on runs there.
        Saves are queued after the forward (:meth:`wait_for_save`); an async load is reported
        to vLLM, and its request scheduled, only after the host saw it complete; a sync load is
        queued on the engine's stream ahead of the forward; the wait for completed loads and
        the declaration of their reads are made in :meth:`start_load_kv`, which vLLM calls
        every step, outside the graphs. So vLLM's default graphs stay on."""
        return False

    @property
    def requires_kv_delivery(self) -> bool:
        """A cache, not a hand-off: a save lost to preemption is only a future miss."""
        return False

    # ---- scheduler side ----------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int
                                   ) -> tuple[int | None, bool]:
        assert self.scheduler is not None
        prompt = list(request.prompt_token_ids or [])
        return self.scheduler.matched_tokens(request.request_id, prompt, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int
                                 ) -> None:
        """Also called with ``num_external_tokens == 0`` (after a finished load, and for
        requests without a hit): nothing to plan then."""
        assert self.scheduler is not None
        if num_external_tokens > 0:
            self.scheduler.after_alloc(request.request_id, list(blocks.get_block_ids()[0]),
                                       num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        assert self.scheduler is not None
        scheduled: list[tuple[str, list[int] | None, bool, int]] = []
        counts = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            self.scheduler.track(new.req_id, list(new.prompt_token_ids or []))
            scheduled.append((new.req_id, list(new.block_ids[0]), True,
                              new.num_computed_tokens + counts.get(new.req_id, 0)))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            blocks = cached.new_block_ids[i]
            scheduled.append((req_id, list(blocks[0]) if blocks else None,
                              req_id in cached.resumed_req_ids,
                              cached.num_computed_tokens[i] + counts.get(req_id, 0)))
        for req_id in scheduler_output.preempted_req_ids or ():
            self.scheduler.preempted(req_id)
        step = self.scheduler.build(scheduled)
        step.idle = not scheduler_output.total_num_scheduled_tokens
        return StreamcheckMeta(step)

    def update_connector_output(self, connector_output: Any) -> None:
        assert self.scheduler is not None
        meta = connector_output.kv_connector_worker_meta
        if not isinstance(meta, StreamcheckWorkerMeta):
            meta = StreamcheckWorkerMeta()
        self.scheduler.on_worker_report(meta.saves_ok, meta.saves_failed, meta.missing,
                                        connector_output.finished_recving or ())

    def request_finished(self, request: Any, block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        assert self.scheduler is not None
        return self.scheduler.finished(request.request_id), None

    # ---- worker side -------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Blocks along dim 0, or (k, v) planes first then blocks (FlashAttention's layout)."""
        planes: list[torch.Tensor] = []
        for kv in kv_caches.values():
            planes += [kv[0], kv[1]] if kv.dim() >= 3 and kv.shape[0] == 2 else [kv]
        self._planes = list(range(len(planes)))  # every layer's planes, saved and loaded together
        device = next(iter(kv_caches.values())).device
        if device.type == "cuda":  # on CPU there is no stream to audit
            streamcheck.install(self.config.streamcheck)
        nbytes = planes[0][0].numel() * planes[0].element_size()
        self.runtime = ConnectorRuntime(self.config.make_backend(nbytes, len(planes)), planes,
                                        device, staging_blocks=self.config.staging_blocks,
                                        hold_saves=True)
        self.runtime.timeline = self.timeline

    def block_key(self, block_hash: str, plane: int) -> str:
        """The store key of one plane of one block, as this worker saves and loads it."""
        return layer_key(block_hash, plane) + self.shard

    def _meta(self) -> StepMeta:
        meta = self._get_connector_metadata()
        assert isinstance(meta, StreamcheckMeta)
        return meta.step

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        self._step_tags = {}
        if isinstance(connector_metadata, StreamcheckMeta):
            step = connector_metadata.step
            self._finishing.update(step.delayed)
            if step.evicted and self.runtime is not None and self.runtime.slab is None:
                # a key store the scheduler bounds: drop what it evicted before this step's
                # saves are queued (a slab's slot is simply overwritten)
                self.runtime.backend.delete([self.block_key(h, plane) for h in step.evicted
                                             for plane in self._planes])

    def handle_preemptions(self, kv_connector_metadata: Any) -> None:
        """vLLM already freed the preempted requests' blocks and this step may overwrite
        them: finish reading them first. Called every step; blocks only when needed."""
        assert self.runtime is not None
        if isinstance(kv_connector_metadata, StreamcheckMeta) and (
                kv_connector_metadata.step.preempted):
            self.runtime.flush()

    def _tags(self, name: str, hashes: list[str]) -> list[int]:
        """The slab tags of a plan's blocks (of the copies it names: ``SavePlan.copies``),
        made once per step (every layer reuses them)."""
        tags = self._step_tags.get(name)
        if tags is None:
            tags = self._step_tags[name] = [key_tag(h) for h in hashes]
        return tags

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        assert self.runtime is not None
        loads = self._meta().loads
        self.timeline.note("start_load_kv", len(loads))
        self.runtime.wait_for_loads()  # the loads completed so far, before any forward reads them
        for plan in loads:
            blocks = dict(zip(plan.block_ids, plan.hashes, strict=True))
            if self.runtime.slab is not None and self.config.sync_loads:
                # here, on the engine's stream, ahead of the forward that reads the blocks
                self._sync_loads.append((self.runtime.load_planes_now(
                    self._planes, plan.block_ids, plan.slots,
                    self._tags(plan.req_id, plan.copies or plan.hashes)), blocks))
                continue
            self._load_blocks[plan.req_id] = blocks
            if self.runtime.slab is not None:  # one job for every plane of the request
                self.runtime.load_planes(plan.req_id, self._planes, plan.block_ids, plan.slots,
                                         self._tags(plan.req_id, plan.copies or plan.hashes))
                continue
            self.runtime.start_load(plan.req_id, {
                plane: (plan.block_ids, [self.block_key(h, plane) for h in plan.hashes])
                for plane in self._planes})

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Nothing to do per layer: the engine's stream is ordered after every completed
        load, and the reads of its blocks declared, once a step in :meth:`start_load_kv`, a
        step before any forward reads them (vLLM is told a load is done, and schedules its
        request, only after it completed)."""

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any,
                      **kwargs: Any) -> None:
        """Nothing to do per layer: a step's saves are queued once, for every layer, by
        :meth:`wait_for_save`, after the forward, so a full CUDA graph's replay, which skips
        this call, skips nothing (only the trace notes the layer)."""
        self.timeline.note("save_kv_layer", layer_name)

    def _queue_saves(self, plans: list[Any]) -> None:
        """Every layer's K and V of each save plan, queued after the forward: with the slab,
        one job a plan (one declaration of the forward's writes, one event, one transfer);
        otherwise one job a plane."""
        assert self.runtime is not None
        slab = self.runtime.slab is not None
        for plan in plans:
            self._open_group(plan.group, plan.req_id)
            if slab:
                self.runtime.save_planes(plan.group, self._planes, plan.block_ids, plan.slots,
                                         self._tags(plan.group, plan.copies or plan.hashes))
                continue
            for plane in self._planes:
                self.runtime.save_layer(plan.group, plane, plan.block_ids,
                                        [self.block_key(h, plane) for h in plan.hashes])

    def _open_group(self, name: str, req_id: str) -> None:
        if name not in self._group_req:
            self._group_req[name] = req_id
            self._req_groups.setdefault(req_id, set()).add(name)

    def wait_for_save(self) -> None:
        """Queues this step's saves, every layer, now that the forward is queued (vLLM calls
        this after every forward, after the draft model's under speculative decoding), and
        seals their groups; saves stay asynchronous (their blocks are held until reported).
        Before sealing, the step's sync loads are settled: a request whose load failed
        computed this step from wrong KV, so its saves of this step are dropped before they
        are issued, never committed."""
        assert self.runtime is not None
        plans = self._meta().saves
        self.timeline.note("wait_for_save", len(plans))
        self._queue_saves(plans)
        self._settle_sync_loads()
        for plan in plans:
            self._open_group(plan.group, plan.req_id)
        self.runtime.seal(plan.group for plan in plans)

    def _settle_sync_loads(self) -> None:
        """Wait for this step's sync loads alone (the forward is queued behind them) so their
        failed blocks are reported in this step's output, which vLLM then drops and recomputes;
        then fail every save of this step: the request that loaded a failed block computed this
        step from it, and so may any other request that found the block in vLLM's own prefix
        cache (vLLM caches a sync-loaded block at once and does not evict it under the
        recompute policy). Failures are rare; a lost save is only a later miss."""
        assert self.runtime is not None
        sync, self._sync_loads = self._sync_loads, []
        spoiled = False
        for load, blocks in sync:
            failed = self.runtime.settle_now(load)
            if failed:
                spoiled = True
                self._load_errors.update(failed)
                self._report.missing.update(blocks[b] for b in failed if b in blocks)
        if spoiled:
            self.runtime.fail_groups(plan.group for plan in self._meta().saves)

    def _collect(self) -> None:
        """Take in what the runtime finished. In a step that computes nothing, wait for the
        loads already issued: vLLM parks a request until a load is reported, and sees a report
        only in a later step, so a load that completes just after this step's poll would cost
        the request a further engine step; with no forward queued, waiting delays no one but
        a request that arrives meanwhile (by at most ``idle_wait_ms``)."""
        assert self.runtime is not None
        if self._sync_loads:  # wait_for_save was skipped (vLLM defers it in some steps)
            self._settle_sync_loads()
        meta = getattr(self, "_connector_metadata", None)  # bound by vLLM for this step
        idle = isinstance(meta, StreamcheckMeta) and meta.step.idle
        news = self.runtime.poll(self.config.idle_wait_ms / 1e3 if idle else 0.0)
        for name in news.saves_ok | news.saves_failed:
            report = self._report.saves_ok if name in news.saves_ok else self._report.saves_failed
            report[name] = 1
            req_id = self._group_req.pop(name, None)
            if req_id is not None:
                open_groups = self._req_groups[req_id]
                open_groups.discard(name)
                if not open_groups:
                    del self._req_groups[req_id]
        self._load_errors |= news.failed_load_blocks
        for req_id in news.loads_done:
            blocks = self._load_blocks.pop(req_id, {})
            self._report.missing.update(h for b, h in blocks.items()
                                        if b in news.failed_load_blocks)
            self._recving.add(req_id)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        self._collect()
        sending = {r for r in self._finishing if r not in self._req_groups}
        self._finishing -= sending
        recving, self._recving = self._recving, set()
        if recving:
            self.timeline.note("loads.reported", len(recving))
        return sending or None, recving or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Failed blocks of the loads ``get_finished`` just reported, never later."""
        failed, self._load_errors = self._load_errors, set()
        return failed

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        report, self._report = self._report, StreamcheckWorkerMeta()
        return report if report else None

    def get_kv_connector_stats(self) -> Any:
        return None

    def metrics(self) -> dict[str, Any]:
        """The runtime's metrics, and the timeline's records when ``trace`` keeps any."""
        assert self.runtime is not None
        snapshot: dict[str, Any] = dict(self.runtime.metrics.snapshot(self.runtime.pending()))
        if self.timeline.on:
            snapshot["timeline"] = self.timeline.records()
        return snapshot

    def shutdown(self) -> None:
        if self.runtime is not None:
            self.runtime.shutdown(drain=True)


def register() -> None:
    """Make ``kv_connector="StreamcheckConnector"`` known to vLLM's factory."""
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    KVConnectorFactory.register_connector(
        "StreamcheckConnector", "streamcheck.connector.vllm_adapter", "StreamcheckConnector")
