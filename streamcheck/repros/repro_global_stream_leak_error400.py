"""The seed incident, error-400 variant: the leaked stream lives on another device.

As the NaN variant, but the connector thread creates S itself. A fresh thread's current device
is cuda:0, so on rank 1 the engine's all-reduce launches on a stream of cuda:0:
``Cuda failure 400 'invalid resource handle'``. Rank 0 launched its half and then waits in
NCCL for rank 1 forever: the runner dumps its stacks and kills it.

buggy: rank 1 fails with error 400 (rank 0 hangs until killed).
fixed: the communicator resolves the thread's real current stream, and the connector thread
binds its device before it creates S: clean on both ranks.
guarded: on rank 1 ``stream-on-unbound-device`` stops the connector when it creates S on
cuda:0, before anything is queued on it (without that rule, ``device-mismatch`` stops the
all-reduce on S); rank 0, whose S is on its own device, is stopped by ``foreign-stream``;
nobody hangs.
"""

from __future__ import annotations

from streamcheck.repro.context import RankContext
from streamcheck.repro.scenarios import leaked_stream_allreduce_loop
from streamcheck.repro.spec import Expectation, ReproSpec

SPEC = ReproSpec(
    name="repro_global_stream_leak_error400",
    hazard="device-mismatch",
    summary="global _current_stream cache + connector thread that creates S without set_device "
            "-> rank 1 launches NCCL on a cuda:0 stream -> error 400, rank 0 hangs",
    expect={
        "buggy": Expectation(symptom=("error-400",), peers_hang=True),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("stream-on-unbound-device", "foreign-stream")),
    },
    min_gpus=2,
    max_world=2,
)


def run_rank(ctx: RankContext) -> None:
    leaked_stream_allreduce_loop(ctx, stream_made_in_connector=True)
