"""The compiled ``Auditor.declare`` (``Declarer``, streamcheck/_declare.c) makes and keeps what
the Python one does: the same handoffs, clock ticks, kept accesses and sites, the same thread
records, and the Python core for whatever it does not take. The compiled cases are skipped,
and say so, where the extension is not built."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from pathlib import Path

import pytest

from streamcheck.core import auditor as auditor_module
from streamcheck.core.auditor import MAX_ACCESSES, Auditor
from streamcheck.core.ids import StreamRef, frames_of
from streamcheck.core.modes import Mode
from streamcheck.core.roles import CONNECTOR, ENGINE, ThreadRoles
from streamcheck.wrappers import speedups

needs_build = pytest.mark.skipif(not speedups.built(),
                                 reason="streamcheck._speedups is not built here")
CORES = ["python", pytest.param("compiled", marks=needs_build)]

MAIN, SIDE, LOAD = StreamRef(0, 3), StreamRef(0, 5), StreamRef(1, 7, 0x7F07)
KV, OTHER = (0, 0x1000), (1, 0x2000)


def made_with(core: str, roles: ThreadRoles | None = None) -> Auditor:
    """An auditor made while ``core`` is chosen (the core is read when it is made)."""
    speedups.use(core)
    try:
        return Auditor(Mode.ASSERT, roles=roles)
    finally:
        speedups.use("auto")


@pytest.fixture(params=CORES)
def core(request):
    return request.param


def test_the_compiled_core_gives_each_auditor_its_declarer():
    assert "declare" not in vars(made_with("python"))
    if speedups.built():
        compiled = made_with("compiled")
        assert type(compiled.declare).__name__ == "Declarer"
    assert auditor_module.make_declare is getattr(speedups.active(), "Declarer", None)


def shape(handoff) -> tuple:
    """A handoff as a value both cores must agree on (its time aside: a clock reading)."""
    return (handoff.tensor, handoff.mark.stream, handoff.mark.tick, handoff.stream,
            handoff.thread.name, handoff.thread.role, handoff.access, handoff.blocks,
            frames_of(handoff.stack))


def kept(aud: Auditor) -> tuple:
    return ({k: [shape(h) for h in v] for k, v in aud._writes.items()},
            {k: [shape(h) for h in v] for k, v in aud._reads.items()},
            dict(aud.clocks._clocks), dict(aud.clocks._done))


def script(aud: Auditor) -> list:
    """Declarations of every kind the auditor keeps differently: whole and block writes and
    reads on several streams, a host wait that lets accesses go, more block accesses than
    are kept, the handoff entry point, and a thread of another role."""
    out = []

    def declare(stream, reads, writes):
        out.append([shape(h) for h in aud.declare(stream, reads, writes, skip=1)])
        out.append(kept(aud))  # what is kept after each step, not only at the end

    declare(MAIN, [], [(KV, None)])  # the first: the clocks go live (Python's mark)
    declare(SIDE, [(KV, None)], [])
    declare(SIDE, [(KV, frozenset({1}))], [])
    declare(SIDE, [(KV, frozenset({1, 2}))], [])  # covers the one before, not the whole
    declare(MAIN, [(KV, frozenset({1}))], [(OTHER, None)])
    declare(LOAD, [], [(KV, frozenset({3, 4}))])
    declare(SIDE, [(KV, None), (OTHER, frozenset({0}))], [(KV, frozenset({2}))])
    aud.clocks.host_waited_for(aud.clocks.clock_of(MAIN.key))  # MAIN's work so far is done
    declare(LOAD, (), ((KV, frozenset({5})),))
    for block in range(MAX_ACCESSES + 5):  # more than are kept: the oldest are forgotten
        declare(LOAD if block % 2 else SIDE, [], [(OTHER, frozenset({block}))])
    declare(MAIN, [(OTHER, frozenset({1, 2}))], [])
    declare(SIDE, [(OTHER, None)], [])
    out.append(shape(aud.handoff(KV, MAIN, "read", skip=1)))
    roles = aud.roles

    def helper():
        roles.declare(CONNECTOR)
        declare(LOAD, [(KV, None)], [(OTHER, frozenset({9}))])

    thread = threading.Thread(target=helper, name="kv-helper")
    thread.start()
    thread.join()
    declare(MAIN, [], [(KV, None)])  # a whole write: every earlier write and read goes
    return out


def test_both_cores_make_and_keep_the_same_accesses():
    runs = {}
    for core in ("python", "compiled") if speedups.built() else ("python",):
        aud = made_with(core, roles=ThreadRoles())
        runs[core] = (script(aud), kept(aud))
    if "compiled" not in runs:
        pytest.skip("streamcheck._speedups is not built here: only the Python core ran")
    python, compiled = runs["python"], runs["compiled"]
    assert compiled[0] == python[0]
    assert compiled[1] == python[1]
    # what the script is meant to reach: a host wait, a list at its cap
    writes, _, _, done = python[1]
    assert len(writes[OTHER]) == MAX_ACCESSES and done


def test_streams_declared_on_in_turn_tick_each_its_own_clock(core):
    """More streams than the compiled declare keeps keys for, declared on in turn: each
    declaration ticks its own stream's clock once, in both cores."""
    aud = made_with(core)
    aud.declare(MAIN, [], [(KV, None)])  # the clocks go live
    streams = [StreamRef(0, sid) for sid in range(10, 16)]
    marks = [aud.declare(s, [], [(KV, frozenset({i}))], skip=1)[0].mark
             for i, s in enumerate(streams * 3)]
    assert [(m.stream, m.tick) for m in marks] == [
        (s.key, round_ + 1) for round_ in range(3) for s in streams]


class MutableStream:
    """A stream named by another object than a StreamRef, its fields free to change: what
    both cores read of a stream (``key``; ``device`` and ``stream_id``)."""

    def __init__(self, device: int, stream_id: int) -> None:
        self.device, self.stream_id = device, stream_id

    @property
    def key(self) -> tuple[int, int]:
        return (self.device, self.stream_id)


def test_a_stream_of_another_class_is_read_at_each_declaration(core):
    """The compiled declare keeps the key of a StreamRef (never changed once made) by the
    object; any other stream object is read afresh: one object naming two streams in turn
    ticks two clocks, in both cores."""
    aud = made_with(core)
    aud.declare(MAIN, [], [(KV, None)])  # the clocks go live
    stream = MutableStream(0, 21)
    first = aud.declare(stream, [], [(OTHER, None)], skip=1)[0].mark
    stream.stream_id = 22
    second = aud.declare(stream, [], [(OTHER, None)], skip=1)[0].mark
    assert [(m.stream, m.tick) for m in (first, second)] == [((0, 21), 1), ((0, 22), 1)]


@needs_build
def test_a_streams_key_becomes_the_clock_tables_own_object():
    """The compiled declare keeps each stream's key and, once the clock table holds one for
    that stream, that very object: a later tick finds the table's entry by identity. The
    table's key may be one the Python core put in (MAIN's, at the first mark) or the
    compiled declare's own (SIDE's)."""
    aud = made_with("compiled")
    aud.declare(MAIN, [], [(KV, None)])  # Python's mark: the clocks go live
    for stream in (MAIN, SIDE):
        aud.declare(stream, [], [(OTHER, None)], skip=1)
        later = aud.declare(stream, [], [(OTHER, None)], skip=1)[0]
        (table_key,) = [key for key in aud.clocks._clocks if key == stream.key]
        assert later.mark.stream is table_key and later.mark.stream == stream.key


def test_the_site_is_the_callers_line_in_both_cores(core):
    aud = made_with(core)
    aud.declare(MAIN, [], [(KV, None)])  # the clocks go live
    made = aud.declare(SIDE, [(KV, None)], [], skip=1)  # SITE_LINE
    (path, line, function), *_ = frames_of(made[0].stack)
    assert path == __file__ and function == "test_the_site_is_the_callers_line_in_both_cores"
    source = Path(__file__).read_text().splitlines()
    assert source[line - 1].rstrip().endswith("# SITE_LINE")


def test_the_first_declaration_makes_the_clocks_live_once(core):
    aud = made_with(core)
    calls = []
    aud.clocks.on_activate = lambda: calls.append("activate")
    for _ in range(3):
        aud.declare(MAIN, [], [(KV, None)])
    assert calls == ["activate"] and aud.clocks.active and aud.ordering


@needs_build
def test_a_thread_record_follows_its_thread_name_and_role():
    """Reused while nothing changed; made again when the role, the name or the thread under
    the ident changes, as ``Auditor.thread_ref`` would make it."""
    roles = ThreadRoles()
    aud = made_with("compiled", roles=roles)
    aud.declare(MAIN, [], [(KV, None)])
    records = []

    def helper():
        declare = lambda: aud.declare(SIDE, [(KV, None)], [])[0].thread  # noqa: E731
        records.append(declare())
        records.append(declare())
        roles.declare(CONNECTOR)
        records.append(declare())
        threading.current_thread().name = "renamed"
        records.append(declare())

    for _ in range(2):  # the second thread may take the first one's ident
        thread = threading.Thread(target=helper, name="kv-helper")
        thread.start()
        thread.join()
    first, again, with_role, renamed = records[:4]
    assert again is first and first.role == "" and first.name == "kv-helper"
    assert with_role.role == CONNECTOR and renamed.name == "renamed"
    assert records[4].role == "" and records[4].name == "kv-helper"  # a new thread: its own


@needs_build
def test_the_main_threads_record_turns_on_the_engines_that_live():
    """The main thread is the engine only while no declared engine thread lives: its role
    changes when one ends, which no table change shows."""
    roles = ThreadRoles()
    aud = made_with("compiled", roles=roles)
    role = lambda: aud.declare(MAIN, [], [(KV, None)])[0].thread.role  # noqa: E731
    assert role() == ENGINE
    started, stop = threading.Event(), threading.Event()

    def engine():
        roles.declare(ENGINE)
        started.set()
        stop.wait()

    thread = threading.Thread(target=engine)
    thread.start()
    started.wait()
    assert role() == ""  # another thread is the engine now
    stop.set()
    thread.join()
    assert role() == ENGINE


def test_other_shapes_of_arguments_go_to_the_python_core(core):
    aud = made_with(core)
    aud.declare(MAIN, [], [(KV, None)])
    made = aud.declare(SIDE, iter([(KV, None)]), [], 1)  # an iterator, skip by position
    assert [h.access for h in made] == ["read"]
    with pytest.raises(TypeError):
        aud.declare(SIDE, [], [], skip=1, extra=True)
    with pytest.raises(TypeError):
        aud.declare(SIDE)


def test_a_failed_declaration_leaves_both_locks_free(core):
    aud = made_with(core)
    aud.declare(MAIN, [], [(KV, None)])
    with pytest.raises(TypeError):
        aud.declare(SIDE, [([0, 1], None)], [])  # an unhashable buffer key
    assert not aud._lock.locked() and not aud.clocks._lock.locked()
    assert aud.declare(SIDE, [(KV, None)], [])[0].access == "read"


@needs_build
def test_an_auditor_and_its_declarer_are_collected_together():
    aud = made_with("compiled")
    aud.declare(MAIN, [], [(KV, None)])
    gone = weakref.ref(aud)
    del aud
    gc.collect()
    assert gone() is None


@needs_build
def test_the_accesses_are_taken_as_they_were_when_the_call_began():
    """The lists a declaration is given are read once, first: a list changed while it runs
    (here by the thread record's call, where another thread could run) changes nothing."""
    from streamcheck.core.clocks import Mark
    from streamcheck.core.records import Handoff

    aud = made_with("python")
    aud.declare(MAIN, [], [(KV, None)])
    reads = [(KV, None)]
    own = aud.thread_ref

    def changing(ident):
        reads[0] = [OTHER, None]  # no longer a pair
        reads.append((OTHER, None))
        return own(ident)

    aud.thread_ref = changing
    declare = speedups.active().Declarer(aud, Auditor.declare, Mark, Handoff, MAX_ACCESSES)
    made = declare(SIDE, reads, [])
    assert [(h.tensor, h.access) for h in made] == [(KV, "read")]
    assert [h.tensor for h in aud._reads[KV]] == [KV] and OTHER not in aud._reads


def test_a_skip_too_large_is_pythons_error_and_leaves_the_locks_free(core):
    aud = made_with(core)
    aud.declare(MAIN, [], [(KV, None)])
    with pytest.raises(OverflowError):
        aud.declare(SIDE, [(KV, None)], [], skip=2 ** 70)
    assert not aud._lock.locked() and not aud.clocks._lock.locked()


@needs_build
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_from_a_helper_thread_names_its_new_main_thread():
    """After a fork from a helper thread, that thread is the child's main thread (and so its
    engine thread): the compiled declare's record says so, as thread_ref does."""
    aud = made_with("compiled", roles=ThreadRoles())
    aud.declare(MAIN, [], [(KV, None)])
    read, write = os.pipe()

    def helper():
        aud.declare(SIDE, [(KV, None)], [])  # a record made while it is a helper
        pid = os.fork()
        if pid == 0:
            try:
                ident = threading.get_ident()
                roles = (aud.declare(SIDE, [(KV, None)], [])[0].thread.role,
                         aud.thread_ref(ident).role)
                os.write(write, repr(roles).encode())
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    thread = threading.Thread(target=helper)
    thread.start()
    thread.join()
    os.close(write)
    with os.fdopen(read) as answer:
        assert answer.read() == repr((ENGINE, ENGINE))
