"""The connector's settings, read from vLLM's ``kv_connector_extra_config`` (one table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamcheck.core.modes import Mode, parse_mode

STORE_BACKENDS = ("host", "disk", "redis")
LOAD_MODES = ("auto", "sync", "async")


DEFAULT_HOST_CAPACITY = 4096


@dataclass(frozen=True)
class ConnectorConfig:
    """``capacity_blocks`` counts token blocks (every layer of a block together). It bounds
    the host store (default 4096) and, when given, the disk store; the scheduler then decides
    placement and eviction (``placement``), so a hit is never a block the store dropped.

    ``load``: ``"sync"`` (host slab only) loads a hit inside the step that computes the
    request (issued on the engine's stream before the forward: no extra engine steps, which
    is what a warm request's time to first token is made of); ``"async"`` parks the request
    until a worker thread has loaded it (a slow store then never holds up a step). ``"auto"``
    is async. Sync loads are refused under vLLM's ``kv_load_failure_policy="recompute"``: in
    the real engine (vLLM 0.24, TP=2, a corrupt block injected every 7th load and caught by
    the device check) vLLM's recovery of a failed in-step load went on to read the block (46
    of 72 outputs changed, most to NaN logits): its Model Runner V2 keeps its own count of a
    running request's computed tokens and ignores the scheduler's rollback to the failed
    block, so the block is never recomputed. Async loads under the same faults changed 0
    and 1 of 72 in two runs without preemption; with preemption they changed outputs where
    vLLM's own OffloadingConnector changed them too (docs/measurements.md).

    ``idle_wait_ms``: in an engine step that computes nothing, how long a worker waits for
    the host slab's loads it issued before it answers (0: never). vLLM sees a load's report
    one step after the step that reported it, so a load that completes just after a step's
    poll costs its request a whole engine step more; with no forward in the step, waiting
    costs no one else anything (a request arriving meanwhile waits at most this long).

    ``trace``: how many records of the connector's timeline to keep (``timeline.py``: every
    engine call and worker job, with times and threads; 0, the default, keeps none). The
    records come back with the worker's metrics."""

    backend: str = "host"
    capacity_blocks: int | None = None
    path: str = ""  # disk backend; "": private to the user (disk.default_root())
    url: str = "redis://127.0.0.1:6379/0"  # redis backend
    namespace: str = "streamcheck"
    staging_blocks: int = 256
    streamcheck: Mode = Mode.ASSERT
    load: str = "auto"
    trace: int = 0  # records of the connector's timeline to keep (0: none; ``timeline``)
    idle_wait_ms: int = 20

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> ConnectorConfig:
        """Validate ``kv_connector_extra_config``; errors name the key that is wrong."""
        extra = dict(extra or {})
        source = "kv_connector_extra_config"
        known = set(cls.__dataclass_fields__)
        unknown = set(extra) - known
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        if "backend" in extra:
            if extra["backend"] not in STORE_BACKENDS:
                raise ValueError(f"{source}['backend']={extra['backend']!r}: "
                                 f"choose {STORE_BACKENDS}")
            values["backend"] = extra["backend"]
        for key in ("capacity_blocks", "staging_blocks"):
            if key in extra:
                value = extra[key]
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"{source}[{key!r}]={value!r}: must be a positive integer")
                values[key] = value
        for key, what in (("trace", "records of the timeline to keep"),
                          ("idle_wait_ms", "milliseconds")):
            if key in extra:
                value = extra[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{source}[{key!r}]={value!r}: must be an integer >= 0 "
                                     f"({what})")
                values[key] = value
        if "load" in extra:
            if extra["load"] not in LOAD_MODES:
                raise ValueError(f"{source}['load']={extra['load']!r}: choose {LOAD_MODES}")
            values["load"] = extra["load"]
        for key in ("path", "url", "namespace"):
            if key in extra:
                values[key] = str(extra[key])
        if "streamcheck" in extra:
            values["streamcheck"] = parse_mode(extra["streamcheck"], f"{source}['streamcheck']")
        config = cls(**values)
        if config.load == "sync" and config.backend != "host":
            raise ValueError(f"{source}['load']='sync' needs the host backend (a {config.backend} "
                             "store is loaded by the worker thread: 'async')")
        return config

    @property
    def sync_loads(self) -> bool:
        """Whether hits are loaded inside the step that computes them (``load``)."""
        return self.load == "sync"

    def check_failure_policy(self, policy: str | None) -> None:
        """Refuse sync loads unless vLLM's ``kv_load_failure_policy`` is ``"fail"`` (None: a
        vLLM without the setting). Under ``"recompute"``, vLLM's recovery of a failed in-step
        load was measured reading the failed block (see the class docstring); under ``"fail"``
        such a request ends with an error instead, never with a wrong output."""
        if not self.sync_loads or policy == "fail":
            return
        if policy is None:
            raise ValueError(
                "streamcheck connector: load='sync' needs vLLM's kv_load_failure_policy='fail', "
                "which this vLLM does not have; use load='async' (the default)")
        raise ValueError(
            f"streamcheck connector: load='sync' needs kv_load_failure_policy='fail', not "
            f"{policy!r}: vLLM's recovery from a failed in-step load was measured to read the "
            "failed block (changed outputs). Use load='async' (the default), which recomputes "
            "failed blocks safely, or set kv_load_failure_policy='fail'.")

    def placement_capacity(self) -> int | None:
        """Blocks the scheduler places and evicts in, or None for a store it cannot bound."""
        if self.backend == "host":
            return self.capacity_blocks or DEFAULT_HOST_CAPACITY
        if self.backend == "disk":
            return self.capacity_blocks
        return None

    def make_backend(self, block_nbytes: int, planes: int = 1) -> Any:
        """The worker's store: the host slab (``planes`` per block), disk or Redis."""
        from streamcheck.connector import backends

        if self.backend == "host":
            from streamcheck.connector.slab import HostSlab

            capacity = self.placement_capacity()
            assert capacity is not None
            return HostSlab(planes, capacity, block_nbytes)
        if self.backend == "disk":
            from streamcheck.connector.backends.disk import default_root

            return backends.DiskBackend(self.path or default_root(), block_nbytes=block_nbytes)
        return backends.RedisBackend(self.url, block_nbytes=block_nbytes,
                                     namespace=self.namespace)
