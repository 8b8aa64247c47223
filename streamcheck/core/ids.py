"""Small typed vocabulary shared by every record: streams, threads and stack frames.

Streams are identified the way the runtime identifies them (device index + stream id), never by
the Python object, because the same stream reaches us through different wrapper objects
(``torch.cuda.Stream``, ``torch.Stream``, an accessor's cached value).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType

#: The id every runtime gives the legacy default stream of a device.
DEFAULT_STREAM_ID = 0


# Not frozen, on purpose: made on the hot path (every declared access or stream switch), and a
# frozen dataclass's __init__ sets each field through object.__setattr__ (about 65 ns a
# field). Hashed and compared by value as a frozen one; never assigned after creation.
@dataclass(slots=True, unsafe_hash=True)
class StreamRef:
    """One stream: where it lives and how the runtime names it."""

    device: int
    stream_id: int
    handle: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.device, self.stream_id)

    @property
    def is_default(self) -> bool:
        return self.stream_id == DEFAULT_STREAM_ID

    def describe(self) -> str:
        kind = "legacy default stream" if self.is_default else "stream"
        return f"{kind} {self.stream_id:#x} on cuda:{self.device} (handle {self.handle:#x})"


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see StreamRef
class ThreadRef:
    """A thread as a report names it."""

    ident: int
    name: str
    role: str = ""

    def describe(self) -> str:
        role = f", {self.role}" if self.role else ""
        return f"thread '{self.name}' ({self.ident:#x}{role})"


Frame = tuple[str, int, str]
"""(filename, line number, function name): enough to print, cheap to capture."""

Stack = tuple[Frame, ...]


def capture_stack(skip: int = 1, limit: int = 16) -> Stack:
    """The caller's stack, innermost first, without building ``traceback`` objects.

    Walking ``f_back`` costs about a microsecond for a dozen frames; ``traceback.extract_stack``
    reads source lines and costs tens. The audit's own frames (core, wrappers) are left out so a
    report starts at the code that launched.
    """
    try:
        frame = sys._getframe(skip)
    except ValueError:  # a shallower stack than asked for
        return ()
    frames: list[Frame] = []
    while frame is not None and len(frames) < limit:
        code = frame.f_code
        if not is_audit_frame(code.co_filename):
            frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return tuple(frames)


_AUDIT_PARTS = ("/streamcheck/core/", "/streamcheck/wrappers/", "/streamcheck/installer.py",
                "<streamcheck wrapper of ")


def capture_site(skip: int = 1, depth: int = 4) -> tuple[object, ...]:
    """A cheap stand-in for a stack: (code object, instruction offset) of up to ``depth``
    frames, flat, starting ``skip`` frames above the caller.

    No file names, no strings, no filtering, and no line numbers: ``f_lineno`` decodes the
    code's line table on every read, ``f_lasti`` is a field. What a hot path can afford;
    :func:`frames_of` turns it into a :data:`Stack` (offsets into lines) when a finding
    needs it.
    """
    try:
        frame = sys._getframe(skip + 1)
    except ValueError:
        return ()
    out: list[object] = []
    while frame is not None and len(out) < 2 * depth:
        out += (frame.f_code, frame.f_lasti)
        frame = frame.f_back
    return tuple(out)


#: What the records call for a site: :func:`capture_site`, or the same tuple made in C, which
#: the hooks layer puts here with the compiled core (``wrappers.speedups``; every declared
#: access and stream creation keeps a site, and the Python walk costs about 0.4 us a frame on
#: a slow host). Called as ``ids.site_capture(...)``, looked up at each call.
site_capture: Callable[..., tuple[object, ...]] = capture_site


def line_of(code: CodeType, offset: int) -> int:
    """The source line of the instruction at byte ``offset`` of ``code`` (a frame's
    ``f_lasti``): what ``f_lineno`` would have said then."""
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno


def frames_of(stack_or_site: tuple[object, ...]) -> Stack:
    """A :data:`Stack` from either a Stack or a :func:`capture_site` tuple (audit frames out)."""
    if not stack_or_site or isinstance(stack_or_site[0], tuple):
        return stack_or_site  # type: ignore[return-value]
    frames = []
    for i in range(0, len(stack_or_site) - 1, 2):
        code = stack_or_site[i]
        if isinstance(code, CodeType) and not is_audit_frame(code.co_filename):
            offset = stack_or_site[i + 1]
            frames.append((code.co_filename, line_of(code, offset),  # type: ignore[arg-type]
                           code.co_name))
    return tuple(frames)  # type: ignore[return-value]


def is_audit_frame(filename: str) -> bool:
    """A frame of the audit itself: left out of reports, which start at the user's code."""
    return any(part in filename for part in _AUDIT_PARTS)


def stack_of_thread(ident: int, limit: int = 16) -> Stack:
    """Where another thread is right now (empty when it has ended)."""
    frame = sys._current_frames().get(ident)
    frames: list[Frame] = []
    while frame is not None and len(frames) < limit:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return tuple(frames)

