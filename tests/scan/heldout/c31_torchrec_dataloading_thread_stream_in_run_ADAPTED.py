"""ADAPTED from torchrec, torchrec/distributed/train_pipeline/utils.py,
class DataLoadingThread (same code as c24; read from the code index, stored
file id 7966892524).

Adaptation: the memcpy stream, which the real code builds in __init__ on the
caller's thread, is built lazily at the top of run() -- before run() sets the
device -- through torch.get_device_module(device).Stream(...) with no device
argument. Thread subclass run() + device module from get_device_module.
"""
from threading import Event, Thread
from typing import Generic, Iterator, Optional, TypeVar

import torch

In = TypeVar("In")


class DataLoadingThread(Thread, Generic[In]):
    def __init__(
        self,
        device: torch.device,
        dataloader_iter: Iterator[In],
        to_device_non_blocking: bool,
        memcpy_stream_priority: int = 0,
    ) -> None:
        super().__init__(name="DataLoadingThread")
        self._stop: bool = False
        self.daemon = True
        self._dataloader_iter = dataloader_iter
        self._buffer_empty_event: Event = Event()
        self._buffer_filled_event: Event = Event()
        self._memcpy_stream_priority = memcpy_stream_priority
        self._memcpy_stream: Optional[torch.Stream] = None
        self._device = device
        self._to_device_non_blocking = to_device_non_blocking
        self._buffered: Optional[In] = None
        self._buffer_empty_event.set()

    def run(self) -> None:
        if self._device.type in ["cuda", "mtia"]:
            self._memcpy_stream = torch.get_device_module(self._device).Stream(priority=self._memcpy_stream_priority)  # expect: SC103
        if self._device.type == "cuda" and torch.cuda.is_available():
            # set the current device the same as the one used in the main thread
            torch.cuda.set_device(self._device)

        while not self._stop:
            self._buffer_empty_event.wait()
            try:
                batch = next(self._dataloader_iter)
            except StopIteration:
                self._stop = True
                self._buffer_filled_event.set()
                return
            with torch.get_device_module(self._device).stream(self._memcpy_stream):
                self._buffered = batch.to(
                    self._device, non_blocking=self._to_device_non_blocking
                )
            self._buffer_empty_event.clear()
            self._buffer_filled_event.set()
