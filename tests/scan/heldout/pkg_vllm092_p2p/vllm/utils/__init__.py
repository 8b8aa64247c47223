"""Source: vllm 0.9.2, vllm/utils/__init__.py, lines 1156-1191
(verbatim minimization; get_ip() and get_distributed_init_method()
abbreviated).

The process-wide set_stream patch and global current-stream cache that the
p2p engine in this package imports.
"""
import socket

import torch

prev_set_stream = torch.cuda.set_stream

_current_stream = None


def _patched_set_stream(stream: torch.cuda.Stream) -> None:
    global _current_stream
    _current_stream = stream
    prev_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream  # expect: SC102


def current_stream() -> torch.cuda.Stream:  # expect: SC101
    from vllm.platforms import current_platform
    global _current_stream
    if _current_stream is None:
        # when this function is called before any stream is set,
        # we return the default stream.
        _current_stream = torch.cuda.Stream() if current_platform.is_rocm(
        ) else torch.cuda.current_stream()
    return _current_stream


def get_ip() -> str:
    return socket.gethostbyname(socket.gethostname())


def get_distributed_init_method(ip: str, port: int) -> str:
    return f"tcp://{ip}:{port}"
