"""The book's creations as the compiled core keeps them (streamcheck/_creations.c): each
stream's latest creation under its (device index, stream id), written by the creation hook as
plain fields and made a record only when read, and marked in the switch log, where the rules
only ask where a stream's present life began."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from streamcheck import installer
from streamcheck.core import provenance
from streamcheck.core.ids import StreamRef, frames_of
from streamcheck.wrappers import speedups
from streamcheck.wrappers.streams import DeviceHome
from tests.wrappers.compiled_parts import young_objects_added
from tests.wrappers.stand_in_stream_type import build_key_type

compiled = pytest.importorskip("streamcheck._speedups")


def test_it_keeps_what_it_is_given_as_a_dict_would():
    table = compiled.CreationTable()
    assert len(table) == 0 and table.get((0, 1)) is None and table.get((0, 1), "no") == "no"
    table[(0, 1)] = "first"
    table[(0, 1)] = "again"  # the latest creation of a key
    table[(1, 1)] = "other device"
    assert len(table) == 2 and table[(0, 1)] == "again" and table.get((1, 1)) == "other device"
    assert sorted(table.keys()) == [(0, 1), (1, 1)]
    assert sorted(table.items()) == [((0, 1), "again"), ((1, 1), "other device")]
    assert sorted(table.values()) == ["again", "other device"]
    with pytest.raises(KeyError):
        table[(2, 1)]
    table.clear()
    assert len(table) == 0 and table.keys() == []


def test_it_grows_past_its_first_entries_and_keeps_every_key():
    table = compiled.CreationTable()
    keys = [(device, stream_id) for device in range(8) for stream_id in range(0, 400, 3)]
    for key in keys:
        table[key] = key
    assert len(table) == len(keys)
    assert all(table[key] == key for key in keys)


@pytest.mark.parametrize("key", [(0,), (0, 1, 2), [0, 1], ("0", 1), (0, 1.5), 3])
def test_a_key_that_is_not_a_pair_of_ints_is_refused(key):
    table = compiled.CreationTable()
    with pytest.raises(TypeError, match="pairs of ints"):
        table[key] = "x"
    with pytest.raises(TypeError, match="pairs of ints"):
        table.get(key)


def test_a_creation_is_not_forgotten_one_at_a_time():
    table = compiled.CreationTable()
    table[(0, 1)] = "x"
    with pytest.raises(TypeError, match="until clear"):
        del table[(0, 1)]
    with pytest.raises(TypeError):
        compiled.CreationTable(4)


def test_a_value_it_holds_is_seen_by_the_collector():
    """A table that holds an object holding the table: a cycle the collector frees."""
    table = compiled.CreationTable()

    class Holder:
        pass

    holder = Holder()
    holder.table = table
    table[(0, 1)] = holder
    gone = []
    weakref.finalize(holder, gone.append, True)
    del holder, table
    gc.collect()
    assert gone == [True]


@pytest.fixture(scope="module")
def key_type(tmp_path_factory) -> Path:
    return build_key_type(tmp_path_factory.mktemp("key_type"))


def test_a_creation_of_a_stream_read_in_place_is_marked_in_the_log_by_its_key(key_type,
                                                                           monkeypatch):
    """A stream of the hook's key type (torch.cuda.Stream, in an install): its key read from
    its fields; the table keeps the creation with its frames, thread and time, and the stream
    as its key and type (the object is freed when its creator lets it go, as with no audit);
    the log marks it by key; a switch to the same key by another thread before the creation
    belongs to another stream's life."""
    monkeypatch.syspath_prepend(str(key_type))
    from key_type import Stream

    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    made = iter(range(5, 100))

    def impl(cls, *args, **kwargs):
        return Stream(stream_id=next(made), device_index=0, device_type=1)

    def python_hook(stream, args, kwargs):
        raise AssertionError("recorded in C")

    hook = compiled.CreationHook(impl, python_hook, installer._gate, "torch.cuda.Stream()",
                                 DeviceHome(0), threading._active, Stream)
    try:
        # another thread made (0, 5) current: a stream of an earlier life with that id
        aud.book.record_switch(((0, 5, 1, Stream), 0, "torch.cuda.set_stream", None, 0,
                                None, 0))
        stream = hook(Stream)
        line = sys._getframe().f_lineno - 1
        held = sys.getrefcount(stream) - 2  # references beyond this name and the call's
        mark = aud.book._log[-1]
        record = aud.book._created[(0, 5)]
        origin = aud.book.origin(StreamRef(0, 5))
        elsewhere = aud.book.made_current_elsewhere(StreamRef(0, 5), threading.get_ident())
    finally:
        installer.uninstall()
        speedups.use("auto")
    assert mark == ((0, 5, 1, Stream), threading.get_ident(), "torch.cuda.Stream()", (), 0.0,
                    None, "created")
    assert provenance._is_creation(mark)
    assert record[0] == (0, 5, 1, Stream) and record[6] == "created" and held == 0
    assert frames_of(record[3])[0][:2] == (__file__, line)
    assert origin.stack[0][:2] == (__file__, line) and origin.kind == "created"
    assert origin.thread.name == threading.current_thread().name
    assert elsewhere is None  # the switch before the creation is not this stream's


def test_a_book_made_before_the_compiled_core_goes_to_the_python_hook(monkeypatch):
    """An auditor whose book keeps a dict and a deque (made under the Python core): the
    compiled hook hands its creations to the Python hook, which records them there."""
    monkeypatch.setenv("STREAMCHECK_CORE", "python")
    aud = installer.install("record")
    told = []
    hook = compiled.CreationHook(lambda cls: SimpleNamespace(device_index=0, stream_id=9),
                                 lambda stream, args, kwargs: told.append(stream),
                                 installer._gate, "torch.cuda.Stream()", DeviceHome(0),
                                 threading._active, None)
    try:
        made = hook(object)
    finally:
        installer.uninstall()
        speedups.use("auto")
    assert type(aud.book._created) is dict and told == [made]


def test_the_key_type_is_a_type():
    with pytest.raises(TypeError, match="key_type"):
        compiled.CreationHook(print, print, None, "via", None, None, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_stream_creations_are_kept_by_key_and_make_nothing_the_collector_counts(
        monkeypatch):
    """On real CUDA, the installed hook records torch.cuda.Stream() in the table (its key read
    in place), marks it in the log by key, gives its creating line to a finding, and leaves no
    object the collector counts beyond what the creation itself leaves."""
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    made = []

    try:
        installer._gate.auditor = None
        plain = young_objects_added(lambda: made.append(torch.cuda.Stream()), 64)
        installer._gate.auditor = aud
        first = torch.cuda.Stream()  # the first reads the book (a weak reference to it)
        line = sys._getframe().f_lineno - 1
        mark = aud.book._log[-1]
        kept = aud.book._created[(first.device_index, first.stream_id)]
        origin = aud.book.origin(StreamRef(first.device_index, first.stream_id))
        audited = young_objects_added(lambda: made.append(torch.cuda.Stream()), 64)
    finally:
        installer.uninstall()
        speedups.use("auto")
    assert type(aud.book._created).__name__ == "CreationTable"
    key = (first.device_index, first.stream_id, first.device_type, torch.cuda.Stream)
    assert mark[0] == key and mark[6] == "created"
    assert kept[0] == key  # the table keeps no stream object, only what makes it again
    assert origin.stream.handle == first.cuda_stream
    assert origin.stack[0][:2] == (__file__, line) and origin.via == "torch.cuda.Stream()"
    assert audited == plain, (audited, plain)
