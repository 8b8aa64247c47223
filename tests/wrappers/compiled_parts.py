"""What the tests of the compiled connector parts share (the launch check,
test_compiled_launch_check.py, and the handoff, test_compiled_handoff.py): the two cores to run
them under, the streams and the CUDA-shaped tensor they use, and how a kept site is read back.
The ``audit`` fixture they take is in this folder's conftest.py."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from streamcheck.core.ids import line_of
from streamcheck.wrappers import speedups

needs_build = pytest.mark.skipif(not speedups.built(),
                                 reason="streamcheck._speedups is not built here")
CORES = ["python", pytest.param("compiled", marks=needs_build)]

MAIN_ID, SIDE_ID = 3, 5
SIDE = SimpleNamespace(device_index=0, stream_id=SIDE_ID, cuda_stream=0x7F05)


class FakeTensor:
    """A CUDA-shaped tensor: a device (an exception: its read raises it) and an address."""

    def __init__(self, address: int = 0x1000, device: object = 0) -> None:
        self.address, self.device = address, device

    def get_device(self) -> object:
        if isinstance(self.device, BaseException):
            raise self.device
        return self.device

    def data_ptr(self) -> int:
        return self.address


def current_line() -> int:
    """The caller's line."""
    return sys._getframe(1).f_lineno


def site_line(handoff) -> tuple[str, int]:
    """The file and line of the first frame the site kept: the exact frame, no audit frame
    filtered out, so a site taken one frame too deep or too shallow shows."""
    code, offset = handoff.stack[0], handoff.stack[1]
    return code.co_filename, line_of(code, offset)


def young_objects_added(call: Callable[[], object], times: int) -> int:
    """How much the collector's young-generation count grew over ``times`` calls of ``call``:
    what the calls left alive for it to count (collected first, then held off, so no
    collection resets the count in between)."""
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for _ in range(times):
            call()
        return gc.get_count()[0] - before
    finally:
        gc.enable()
