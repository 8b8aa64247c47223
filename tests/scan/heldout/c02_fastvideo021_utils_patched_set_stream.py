"""Source: fastvideo 0.2.1, fastvideo/utils.py, lines 104-144 (verbatim minimization).

Same global-cache shape as vLLM <=0.9.2, with an Optional stream and a
non-CUDA early return.
"""
import torch

prev_set_stream = torch.cuda.set_stream

_current_stream = None


def _patched_set_stream(stream: torch.cuda.Stream | None) -> None:
    global _current_stream
    _current_stream = stream
    if stream is not None:
        prev_set_stream(stream)


torch.cuda.set_stream = _patched_set_stream  # expect: SC102


def current_stream() -> torch.cuda.Stream | None:  # expect: SC101
    from fastvideo.platforms import current_platform

    # For non-CUDA platforms, return None
    if not current_platform.is_cuda_alike():
        return None

    global _current_stream
    if _current_stream is None:
        _current_stream = torch.cuda.Stream() if current_platform.is_rocm() else torch.cuda.current_stream()
    return _current_stream
