"""Install streamcheck's CPU stream simulator as ``torch.cuda`` in the probe child.

Why: without CUDA, vLLM's ``current_stream()`` has no streams to cache, yet the hazards live in
its *Python* logic (which thread's stream it hands out, when it notices a switch). Giving it a
``torch.cuda`` whose streams are simulated lets that logic run unchanged, on any machine.

Only for a throw-away child process: this replaces attributes of the real ``torch.cuda`` and
``torch.accelerator`` modules and never restores them. It must run BEFORE vLLM is imported,
because vLLM captures ``prev_set_stream = torch.cuda.set_stream`` at import and patches it.

What is replaced, and why each:

* ``Stream`` (plus ``wait_stream``, which vLLM >= 0.14 calls on the stream it creates),
  ``Event``, ``current_stream``, ``default_stream``, ``set_stream``, ``set_device``,
  ``current_device``, ``device_count``, ``synchronize``: the stream surface vLLM's
  ``current_stream()`` and the probes use;
* ``stream(s)``: a context that calls ``torch.cuda.set_stream`` looked up at entry, as torch's
  ``StreamContext`` does, so vLLM's patch sees it;
* ``torch.accelerator.set_stream``: switches the simulated thread state directly, the way the
  real one switches in C++ without passing through ``torch.cuda.set_stream``.

``torch.cuda.is_available`` is left alone: vLLM's import path branches on it and would then try
real CUDA calls that no simulator answers. The probes do not need it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamcheck.runtime.cuda import StreamReader, use_reader
from streamcheck.runtime.sim import SimCuda, SimMachine
from streamcheck.runtime.sim.api import SimStreamBase, SimStreamContext

DEFAULT_DEVICES = 2


@dataclass
class FakeCuda:
    """A simulated ``torch.cuda`` surface, not yet installed anywhere.

    ``namespace`` holds the replacement attributes; ``sim`` is the simulator's own namespace,
    which nothing patches, so it always tells the thread's real current stream.
    """

    sim: SimCuda
    namespace: types.SimpleNamespace
    accelerator_set_stream: Callable[[SimStreamBase], None]


def build(device_count: int = DEFAULT_DEVICES, seed: int = 0) -> FakeCuda:
    """The surface alone; :func:`install` puts it on torch. Tests use it without torch."""
    sim = SimCuda(SimMachine(device_count=device_count, seed=seed))

    class Stream(sim.Stream):  # type: ignore[name-defined, misc]
        """``torch.cuda.Stream`` stand-in with ``wait_stream`` (ordering via an event)."""

        def wait_stream(self, other: SimStreamBase) -> None:
            self.wait_event(other.record_event())

    ns = types.SimpleNamespace(
        Stream=Stream, Event=sim.Event, current_stream=sim.current_stream,
        default_stream=sim.default_stream, set_stream=sim.set_stream,
        set_device=sim.set_device, current_device=sim.current_device,
        device_count=sim.device_count, synchronize=sim.synchronize,
    )
    # Like torch's StreamContext: ``set_stream`` is looked up on the namespace at entry, so a
    # patch of it (vLLM's) sees every ``with torch.cuda.stream(s)``.
    ns.stream = lambda stream: SimStreamContext(ns, stream)

    def accelerator_set_stream(stream: SimStreamBase) -> None:
        """The C++ path: the simulator's own setter, which vLLM never patched."""
        sim.set_stream(stream)

    return FakeCuda(sim=sim, namespace=ns, accelerator_set_stream=accelerator_set_stream)


def install(fake: FakeCuda) -> None:
    """Put ``fake`` on ``torch.cuda`` and ``torch.accelerator.set_stream`` (child only)."""
    import torch

    from streamcheck import installer

    audited = installer.release_torch_hooks()  # an audit started first follows the surface over
    cuda: Any = torch.cuda
    for name, value in vars(fake.namespace).items():
        setattr(cuda, name, value)
    cuda.stream = lambda stream: SimStreamContext(cuda, stream)
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        accelerator.set_stream = fake.accelerator_set_stream
    use_reader(reader_of(fake))
    if audited:
        installer.rehook_torch()


def reader_of(fake: FakeCuda) -> StreamReader:
    """The audit's stream reader for the simulated CUDA: the sim's per-thread truth."""
    machine = fake.sim.machine
    return StreamReader(machine.current_stream_tuple, machine.current_device, name="sim",
                        current_raw_stream=machine.current_raw_stream,
                        # torch's reader of an event's device finds none on a simulated one
                        event_takes_stream_device=False)
