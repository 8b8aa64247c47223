"""Fake streams and events for driving the audit core without a GPU."""

from __future__ import annotations

import threading
import time

from streamcheck.core.ids import StreamRef, ThreadRef
from streamcheck.core.records import StreamEvent


def made_current(book, stream: StreamRef, ident: int | None = None, name: str = "") -> None:
    ident = threading.get_ident() if ident is None else ident
    name = name or threading.current_thread().name
    book.record(StreamEvent("made-current", stream, ThreadRef(ident, name), time.time(),
                            via="test.set_stream"))


def created(book, stream: StreamRef, ident: int, name: str = "t") -> None:
    book.record(StreamEvent("created", stream, ThreadRef(ident, name), time.time(),
                            via="test.Stream()"))


def in_thread(fn, name: str = "helper"):
    """Run fn in a new thread, return (result, thread ident)."""
    box = {}

    def run():
        box["ident"] = threading.get_ident()
        box["result"] = fn()

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    return box.get("result"), box["ident"]
