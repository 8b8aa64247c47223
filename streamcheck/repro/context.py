"""What a repro's ``run_rank`` gets: one rank's runtime, sizes, communicator and a log.

The same repro code runs on real CUDA and on the simulator because the context hands it a
``torch.cuda``-shaped ``api``, tensor factories with poisoned (NaN) fresh memory, and a
communicator with pynccl's calling convention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamcheck.repro.records import Progress, ResultLog


class RankContext:
    """One rank of one variant of one repro."""

    def __init__(self, *, repro: str, variant: str, backend: str, rank: int, world_size: int,
                 iterations: int, api: Any, device: int, log: ResultLog,
                 randn: Callable[..., Any], poisoned_like: Callable[[Any], Any],
                 make_communicator: Callable[[Callable[[], Any]], Any],
                 engine: str = "", engine_current_stream: Callable[[], Any] | None = None
                 ) -> None:
        self.repro = repro
        self.variant = variant
        self.backend = backend
        self.rank = rank
        self.world_size = world_size
        self.iterations = iterations
        self.api = api
        self.device = device
        self.log = log
        self._randn = randn
        self._poisoned_like = poisoned_like
        self._make_communicator = make_communicator
        #: "" (the faithful models in repro.patterns) or e.g. "vllm 0.9.2": the real engine's
        #: ``current_stream`` below, and ``communicator()`` is its own ``PyNcclCommunicator``.
        self.engine = engine
        self.engine_current_stream = engine_current_stream
        self.observed: dict[str, Any] = {
            "iterations_done": 0, "nan_iters": 0, "wrong_iters": 0, "foreign_launches": 0,
        }

    def pick(self, *, cuda: Any, sim: Any) -> Any:
        """A size or count that fits the backend (the simulator computes on the CPU)."""
        return cuda if self.backend == "cuda" else sim

    def randn(self, *shape: int, scale: float = 1.0) -> Any:
        """Random values on this rank's device (whatever thread asks)."""
        return self._randn(*shape, scale=scale)

    def poisoned_like(self, t: Any) -> Any:
        """Fresh memory filled with NaN, so an unordered read shows as NaN, not as luck."""
        return self._poisoned_like(t)

    def communicator(self, current_stream: Callable[[], Any]) -> Any:
        """A communicator whose ``stream=None`` resolves through ``current_stream``."""
        return self._make_communicator(current_stream)

    def count(self, key: str, by: int = 1) -> None:
        self.observed[key] = self.observed.get(key, 0) + by

    def note(self, **fields: Any) -> None:
        self.observed.update(fields)

    def iteration_done(self, index: int, **fields: Any) -> None:
        self.observed["iterations_done"] = index + 1
        self.log.write(Progress, iteration=index, observed=dict(self.observed), extra=fields)
