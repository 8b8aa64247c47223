"""Source: public GitHub file found through the code index (stored file id
66121069334; several near-identical versions stored: 65888993036,
65714813844, 65957347147). Module header: "Thin C++ launcher adapters for
the hot FLA NPU operators" (package fla_npu). The index does not name the
repository or path. Lines 1-50 of that file, verbatim minimization.

The patch is installed lazily inside a function and the replacement stores
int(stream.npu_stream) -- the raw handle of the stream it is given -- in a
module global that _current_stream_ptr() then hands back as "the current
stream" to every thread. Judgment call: storing the handle of the stream is
treated as storing the stream.
"""
from __future__ import annotations

import os

_CURRENT_STREAM_PTR = None
_STREAM_PATCHED = False


def _ensure_stream_tracking() -> None:
    """Track torch.npu.set_stream so thin ops avoid the expensive
    torch.npu.current_stream() object construction on every call."""

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
