"""The seed incident, NaN variant: a module-global current-stream cache leaks a connector's stream.

The engine thread computes and all-reduces through a ``current_stream()`` backed by a module
global (vLLM <= 0.9.2). A KV-connector thread holds ``with torch.cuda.stream(S)`` and records an
event; S was created in the engine thread, so it lives on the rank's device. The patched
``set_stream`` stores S in the global, and the engine's all-reduce launches on S: it is not
ordered after the compute that produces its input, nor before the op that reads its output.

buggy: NaN in the all-reduced output (outputs are NaN-poisoned, so the race shows as NaN).
fixed: the communicator resolves the thread's real current stream: no NaN, no finding.
guarded: buggy code under ``assert``: ``foreign-stream`` stops the first all-reduce before it
launches, and no NaN follows.
"""

from __future__ import annotations

from streamcheck.repro.context import RankContext
from streamcheck.repro.scenarios import leaked_stream_allreduce_loop
from streamcheck.repro.spec import Expectation, ReproSpec

SPEC = ReproSpec(
    name="repro_global_stream_leak_nan",
    hazard="foreign-stream",
    summary="global _current_stream cache + connector thread in `with stream(S)`, "
            "S made in the engine thread -> all-reduce on S -> NaN",
    expect={
        "buggy": Expectation(symptom=("nan", "wrong")),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("foreign-stream",)),
    },
    min_gpus=1,
    max_world=2,
)


def run_rank(ctx: RankContext) -> None:
    leaked_stream_allreduce_loop(ctx, stream_made_in_connector=False)
