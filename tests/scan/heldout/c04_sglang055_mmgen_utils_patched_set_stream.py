"""Source: sglang 0.5.5, sglang/multimodal_gen/utils.py, lines 81-125
(verbatim minimization; the body of current_stream() continues past the
excerpt exactly as in fastvideo, abbreviated here).
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
    from sglang.multimodal_gen.runtime.platforms import current_platform

    # For non-CUDA platforms, return None
    if not current_platform.is_cuda_alike():
        return None

    global _current_stream
    if _current_stream is None:
        _current_stream = (
            torch.cuda.Stream()
            if current_platform.is_rocm()
            else torch.cuda.current_stream()
        )
    return _current_stream
