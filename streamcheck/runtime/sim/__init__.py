"""A deterministic CPU simulator of CUDA devices, streams, events and an NCCL communicator.

It models exactly what the stream hazards need, and labels every result ``sim``:

* per-thread current device and current stream per device; a fresh thread starts on device 0
  and its legacy default stream, as in CUDA;
* streams are FIFO queues executed lazily, only when the host waits (``synchronize``,
  ``.item()``, an event wait). Work on a stream nobody waits for simply has not run yet, which
  is the most adversarial legal schedule: a read that is not ordered after a write sees the
  poisoned (NaN) memory every time, not 28 times in 30;
* when several streams must drain, the scheduler runs first the op that reads memory another
  stream has yet to write, breaking ties with a seeded RNG, so runs repeat exactly;
* events record a position in a stream; waiting on one forces the recording stream up to it;
* a communicator whose ``all_reduce`` raises CUDA error 400 'invalid resource handle' when given
  a stream of another device, and whose peers then wait forever, like NCCL.
"""

from streamcheck.runtime.sim.api import SimCuda
from streamcheck.runtime.sim.comm import SimCommGroup, SimCommunicator, SimCudaError
from streamcheck.runtime.sim.machine import SimMachine
from streamcheck.runtime.sim.tensor import SimTensor

__all__ = [
    "SimCommGroup",
    "SimCommunicator",
    "SimCuda",
    "SimCudaError",
    "SimMachine",
    "SimTensor",
]
