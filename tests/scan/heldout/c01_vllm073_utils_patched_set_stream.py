"""Source: vllm 0.7.3, vllm/utils.py, lines 920-955 (verbatim minimization).

Module-global cache of the current stream, filled by a monkey-patched
torch.cuda.set_stream and handed back by current_stream().
"""
import torch

prev_set_stream = torch.cuda.set_stream

_current_stream = None


def _patched_set_stream(stream: torch.cuda.Stream) -> None:
    global _current_stream
    _current_stream = stream
    prev_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream  # expect: SC102


def current_stream() -> torch.cuda.Stream:  # expect: SC101
    """
    replace `torch.cuda.current_stream()` with `vllm.utils.current_stream()`.
    """
    from vllm.platforms import current_platform
    global _current_stream
    if _current_stream is None:
        # On ROCm using the default 0 stream in combination with RCCL
        # is hurting performance. Therefore creating a dedicated stream
        # per process
        _current_stream = torch.cuda.Stream() if current_platform.is_rocm(
        ) else torch.cuda.current_stream()
    return _current_stream
