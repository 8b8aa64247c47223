"""Source: sglang 0.5.23, sglang/multimodal_gen/runtime/entrypoints/utils.py,
lines 422-645 (class CudaVideoEncoder: __init__ and _pipe_frames; verbatim
minimization, ffmpeg plumbing cut).

The helper thread creates torch.cuda.Stream() with no device argument, but
inside `with torch.cuda.device(self._device)`, so it lands on the right
device. The helper thread also makes copy_stream current; the real module's
imports (sglang.multimodal_gen.*) were cut, untraced whether they
reach sglang 0.5.23's global set_stream patch in
multimodal_gen/runtime/distributed/device_communicators/pynccl.py -- within
this self-contained case no patching module is imported, so no SC104.
No finding.
"""
import queue
import threading

import torch


class CudaVideoEncoder:
    def __init__(self, command, save_file_path, *, device: torch.device,
                 height: int, width: int, chunk_frames: int, queued_chunks: int):
        self.save_file_path = save_file_path
        self._device = device
        self._height = height
        self._width = width
        self._chunk_frames = chunk_frames
        self._error = None
        self._queue: queue.Queue = queue.Queue(maxsize=queued_chunks)
        self._thread = threading.Thread(
            target=self._pipe_frames, name="sglang-video-encoder", daemon=True
        )
        self._thread.start()

    def _pipe_frames(self) -> None:
        try:
            with (
                torch.cuda.device(self._device),
                _acquire_cuda_video_buffer(
                    (self._chunk_frames, self._height, self._width, 3)
                ) as buffer,
            ):
                copy_stream = torch.cuda.Stream()
                while (item := self._queue.get()) is not None:
                    chunk, ready = item
                    del item
                    count = int(chunk.shape[0])
                    copy_stream.wait_event(ready)
                    with torch.cuda.stream(copy_stream):
                        buffer.tensor[:count].copy_(chunk, non_blocking=True)
                    copy_stream.synchronize()
                    del chunk, ready
        except BaseException as exc:
            self._error = exc
            while self._queue.get() is not None:
                pass


def _acquire_cuda_video_buffer(shape):
    raise NotImplementedError
