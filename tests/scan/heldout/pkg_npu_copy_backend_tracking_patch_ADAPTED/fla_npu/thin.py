"""Source: same public file as c07 (code-index file id 66121069334, fla_npu
"Thin C++ launcher adapters for the hot FLA NPU operators"; repository not
named by the index), lines 1-50, verbatim minimization. The module name
the name thin.py is chosen here (the real file name is unknown).

Installs a torch.npu.set_stream patch that stores the handle of the stream
it is given into a module global.
"""
from __future__ import annotations

_CURRENT_STREAM_PTR = None
_STREAM_PATCHED = False


def _ensure_stream_tracking() -> None:
    global _STREAM_PATCHED, _CURRENT_STREAM_PTR
    if _STREAM_PATCHED:
        return
    import torch

    original = torch.npu.set_stream

    def tracking_set_stream(stream):
        global _CURRENT_STREAM_PTR
        _CURRENT_STREAM_PTR = int(stream.npu_stream)
        return original(stream)

    torch.npu.set_stream = tracking_set_stream  # expect: SC102
    _STREAM_PATCHED = True


def _current_stream_ptr() -> int:  # expect: SC101
    import torch

    global _CURRENT_STREAM_PTR
    _ensure_stream_tracking()
    if _CURRENT_STREAM_PTR is None:
        _CURRENT_STREAM_PTR = int(torch.npu.current_stream().npu_stream)
    return _CURRENT_STREAM_PTR
