"""The wrapper's inline fast path never hides a finding the rules would make.

Every combination of stream device/id, the thread's real current stream, target device,
implicit/explicit, and calling thread (main or helper) is run through a wrapped fake
communicator and, separately, straight through ``Auditor.review`` (all rules, no fast path).
The two must report the same rule ids.
"""

from __future__ import annotations

import itertools
import threading

import pytest

import streamcheck
from streamcheck import installer
from streamcheck.core.ids import StreamRef
from streamcheck.wrappers import speedups
from streamcheck.wrappers.generated import checked_by_compiled_code
from streamcheck.wrappers.launches import wrap_stream_method
from tests.core.fakes import in_thread, made_current


def handle_of(device: int, stream_id: int) -> int:
    """A cudaStream_t: 0 for the legacy default stream of every device, else unique."""
    return 0 if stream_id == 0 else 0x7F00_0000 + (device << 16) + stream_id


class FakeStream:
    def __init__(self, device: int, stream_id: int) -> None:
        self.device_index = device
        self.stream_id = stream_id
        self.cuda_stream = handle_of(device, stream_id)


class FakeComm:
    current: tuple[int, int, int] = (0, 0, 1)
    cached: FakeStream = FakeStream(0, 0)

    def __init__(self, device: int) -> None:
        self.device = device
        self.used = None

    def all_reduce(self, tensor, out=None, stream=None):
        self.used = stream
        return out


@pytest.fixture
def engine_elsewhere(request):
    """With ``request.param``: a live thread declared the engine, computing on a side stream
    of cuda:1, so the main thread is a helper (the rules no longer spare it, nor may the fast
    path). Yields the thread's ident, or None."""
    if not request.param:
        yield None
        return
    started, stop = threading.Event(), threading.Event()

    def engine() -> None:
        streamcheck.declare_thread_role(streamcheck.ENGINE)
        made_current(installer.current_auditor().book, StreamRef(1, 9))
        started.set()
        stop.wait(30)

    thread = threading.Thread(target=engine, name="rank0")
    installer.install("record")
    thread.start()
    started.wait(30)
    yield thread.ident
    stop.set()
    thread.join()
    installer.install("record").roles.forget(thread.ident)


CORES = ["python", pytest.param("compiled", marks=pytest.mark.skipif(
    speedups._built is None, reason="streamcheck._speedups is not built here"))]


@pytest.fixture(params=CORES)
def core(request, monkeypatch):
    """A test run with the Python wrappers and with the compiled ones (the ``core`` setting,
    read when the audit is installed)."""
    monkeypatch.setenv("STREAMCHECK_CORE", request.param)
    yield request.param
    speedups.use("auto")


@pytest.mark.parametrize("engine_elsewhere", [False, True], indirect=True)
@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("fixed_device", [False, True])
@pytest.mark.parametrize("resolver", ["callable", "attribute"])
def test_fast_path_agrees_with_the_rules(core, fixed_device, raw, engine_elsewhere, resolver):
    """``raw``: the wrapper is also given the thread's current raw stream handle, as on CUDA,
    and lets a launch on the current stream through on that one comparison. ``resolver``: the
    stream=None accessor as a Python callable, or as ``self.cached``, which the compiled
    wrapper reads itself. Every launch is counted once, whichever path let it through."""
    aud = installer.install("record")
    assert (aud.main_engine is None) == (engine_elsewhere is not None)
    in_thread(lambda: made_current(aud.book, StreamRef(0, 7)), name="connector")
    made_current(aud.book, StreamRef(1, 9))  # main computes on a side stream of cuda:1

    def current_raw(device: int) -> int:
        sid, cdev, _ = FakeComm.current
        assert cdev == device
        return handle_of(cdev, sid)

    wrap_stream_method(installer._registry, installer._gate, FakeComm, "all_reduce",
                       "fake.all_reduce",
                       resolve=(lambda c: FakeComm.cached) if resolver == "callable"
                       else "self.cached", device_expr="self.device",
                       accessor="fake cache", current_of_device=lambda d: FakeComm.current,
                       fixed_device=fixed_device,
                       current_raw_stream=current_raw if raw else None)
    compiled = checked_by_compiled_code(FakeComm.__dict__["all_reduce"])
    assert compiled == (core == "compiled" and fixed_device)
    streams = [(0, 0), (0, 7), (1, 0), (1, 9)]
    mismatches = []
    calls = 0
    for (sdev, sid), (cdev, cid), target, implicit, helper in itertools.product(
            streams, streams, (0, 1), (True, False), (False, True)):
        if cdev != target:
            continue  # the reader is asked for the target device: it answers for that device
        stream = FakeStream(sdev, sid)
        FakeComm.current = (cid, cdev, 1)
        FakeComm.cached = stream

        def call(stream=stream, target=target, implicit=implicit, sdev=sdev, sid=sid,
                 cdev=cdev, cid=cid):
            comm = FakeComm(target)
            for _ in range(2):  # the second call finds the device kept on the communicator:
                aud.clear()  # its findings are the ones compared
                if implicit:
                    comm.all_reduce(None)
                else:
                    comm.all_reduce(None, stream=stream)
                assert comm.used is stream
            via_wrapper = sorted(f.rule_id for f in aud.findings())
            aud.clear()
            current = StreamRef(cdev, cid) if implicit else None
            direct = sorted(f.rule_id for f in aud.review(
                "fake.all_reduce", StreamRef(sdev, sid), current, target, implicit))
            return via_wrapper, direct

        if helper:
            (via_wrapper, direct), _ = in_thread(call)
        else:
            via_wrapper, direct = call()
        calls += 2
        if via_wrapper != direct:
            mismatches.append(((sdev, sid), (cdev, cid), target, implicit, helper,
                               via_wrapper, direct))
    assert mismatches == []
    assert aud.coverage.launches_by_op()["fake.all_reduce"] == calls
    assert threading.active_count() >= 1


def test_unauditable_call_goes_ahead_with_a_warning():
    import warnings

    installer.install("assert")

    class Broken:
        def all_reduce(self, tensor, stream=None):
            return "ran"

    wrap_stream_method(installer._registry, installer._gate, Broken, "all_reduce",
                       "broken.all_reduce",
                       resolve=lambda c: (_ for _ in ()).throw(RuntimeError("no GPU here")),
                       device_expr="0", accessor="x",
                       current_of_device=lambda d: (0, 0, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Broken().all_reduce(None) == "ran"
    assert any("could not audit broken.all_reduce" in str(w.message) and "no GPU here"
               in str(w.message) for w in caught)


class CountingComm:
    """Counts how often the wrapper reads its device."""

    reads = 0

    def __init__(self, device: int) -> None:
        self._device = device

    @property
    def device(self) -> int:
        type(self).reads += 1
        return self._device

    def all_reduce(self, tensor, out=None, stream=None):
        return out


class DictlessComm:
    """Like ``CountingComm`` but without an instance ``__dict__`` at all."""

    __slots__ = ("_device",)
    reads = 0
    device = CountingComm.device
    all_reduce = CountingComm.all_reduce
    __init__ = CountingComm.__init__


@pytest.mark.parametrize(("cls", "fixed_device", "reads_per_three_calls"), [
    (CountingComm, False, 3),  # read on every launch
    (CountingComm, True, 1),  # read once, kept on the instance
    (DictlessComm, True, 3),  # nowhere to keep it: read on every launch, still audited
])
def test_a_fixed_device_is_read_once_per_communicator(cls, fixed_device, reads_per_three_calls):
    installer.install("record")
    wrap_stream_method(installer._registry, installer._gate, cls, "all_reduce", "count.ar",
                       resolve=lambda c: FakeStream(0, 3), device_expr="self.device",
                       accessor="", current_of_device=lambda d: (3, 0, 1),
                       fixed_device=fixed_device)
    cls.reads = 0
    comm = cls(0)
    for _ in range(3):
        comm.all_reduce(None, stream=FakeStream(0, 3))
    assert cls.reads == reads_per_three_calls
    other = cls(1)  # another communicator: its own device, read for itself
    other.all_reduce(None, stream=FakeStream(1, 3))
    assert cls.reads == reads_per_three_calls + 1
    assert installer.current_auditor().findings() == []


def test_the_gate_mirrors_its_auditors_main_engine_while_open():
    """``Gate.open`` makes the gate follow the auditor's thread-role table: its
    ``main_engine`` (which the compiled launch checks read in place of the auditor's) changes
    with every declaration, and stops following once the gate is closed. (A mirror that did not
    follow would let the main thread's default-stream launches through after another thread
    was declared the engine: ``test_fast_path_agrees_with_the_rules`` with ``engine_elsewhere``
    fails then.)"""
    gate = installer._gate
    first = installer.install("record")
    main = threading.main_thread().ident
    assert gate.mirrors is first and gate.main_engine == first.main_engine == main
    _, ident = in_thread(lambda: streamcheck.declare_thread_role(streamcheck.ENGINE))
    assert gate.main_engine is first.main_engine is None  # another thread declared the engine
    first.roles.forget(ident)
    assert gate.main_engine == first.main_engine == main  # the main thread is the engine again
    installer.uninstall()
    assert gate.mirrors is None and gate.auditor is None
    first.roles.declare("connector")  # no longer followed: the gate keeps what it had
    try:
        assert first.main_engine is None and gate.main_engine == main
    finally:
        first.roles.forget()


SUM = object()  # a default the callee must receive as itself


class DefaultsComm:
    """pynccl's shape: parameters with defaults between the tensor and the stream."""

    def __init__(self) -> None:
        self.device = 0
        self.seen: tuple = ()

    def all_reduce(self, tensor, out=None, op=SUM, stream=None):
        self.seen = (tensor, out, op, stream)
        return out

    def broadcast(self, tensor, src, stream=None):  # no default between: src must be given
        self.seen = (tensor, src, stream)


def test_a_stream_none_launch_reaches_the_callee_with_its_defaults_and_the_stream(core):
    """The wrapper passes the resolved stream on in the stream parameter's place, positional
    or keyword-only; the callee sees the same arguments with either core's wrapper, its own
    defaults in between, and a call missing an argument fails as it would unaudited."""
    installer.install("record")
    kept = FakeStream(0, 7)
    for method in ("all_reduce", "broadcast"):
        wrap_stream_method(installer._registry, installer._gate, DefaultsComm, method,
                           f"fake.{method}", resolve=lambda c, kept=kept: kept,
                           device_expr="self.device", accessor="fake cache",
                           current_of_device=lambda d: (7, 0, 1), fixed_device=True,
                           current_raw_stream=lambda d: kept.cuda_stream)
    comm = DefaultsComm()
    comm.all_reduce("t")
    assert comm.seen == ("t", None, SUM, kept)
    comm.all_reduce("t", "o")
    assert comm.seen == ("t", "o", SUM, kept)
    comm.all_reduce("t", op="max")  # a keyword given: the stream goes by keyword too
    assert comm.seen == ("t", None, "max", kept)
    comm.broadcast("t", 3)
    assert comm.seen == ("t", 3, kept)
    with pytest.raises(TypeError, match="src"):
        comm.broadcast("t")
    assert installer.current_auditor().findings() == []
    installer.uninstall()


class SkippableComm:
    """vLLM's shape: a ``disabled`` communicator launches nothing and is not audited."""

    def __init__(self, disabled: bool, resolve_fails: bool = False) -> None:
        self.device, self.disabled, self.resolve_fails = 0, disabled, resolve_fails
        self.kept, self.used = FakeStream(0, 7), "not called"

    def current(self) -> FakeStream:
        if self.resolve_fails:
            raise RuntimeError("no stream here")
        return self.kept

    def all_reduce(self, tensor, out=None, stream=None):
        self.used = stream
        return out


def test_skipped_paused_and_unresolvable_launches_go_ahead_uncounted(core):
    """Each of these reaches the method, and only the audited launch is counted: a skipped
    communicator and an accessor that raises (the Python wrapper warns) as called
    (``stream=None`` left unresolved); a launch while the gate holds no auditor (the audit
    paused) as called by the Python wrapper, which reads the gate first, and with the stream
    the method would resolve by the compiled core's, which leaves the gate to its check."""
    import warnings

    aud = installer.install("record")
    op = f"skip.all_reduce.{core}"  # its own op a core: the warning is said once per op
    wrap_stream_method(installer._registry, installer._gate, SkippableComm, "all_reduce",
                       op, resolve="self.current()", device_expr="self.device",
                       accessor="x", current_of_device=lambda d: (7, 0, 1), fixed_device=True,
                       current_raw_stream=lambda d: handle_of(0, 7), skip_expr="self.disabled")
    assert checked_by_compiled_code(SkippableComm.__dict__["all_reduce"]) == (
        core == "compiled")

    def counted() -> int:
        return aud.coverage.launches_by_op().get(op, 0)

    disabled = SkippableComm(disabled=True)
    for stream in (None, disabled.kept):
        disabled.all_reduce(None, stream=stream)
        assert disabled.used is stream
    assert counted() == 0
    live = SkippableComm(disabled=False)
    gate = installer._gate
    gate.auditor = None
    try:
        for stream in (None, live.kept):
            live.all_reduce(None, stream=stream)
            resolved = live.kept if core == "compiled" else None
            assert live.used is (resolved if stream is None else stream)
    finally:
        gate.auditor = aud
    assert counted() == 0
    live.all_reduce(None)
    assert live.used is live.kept and counted() == 1  # audited: the resolved stream passed on
    failing = SkippableComm(disabled=False, resolve_fails=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        failing.all_reduce(None)
    assert failing.used is None and counted() == 1
    assert any("no stream here" in str(w.message) for w in caught)


def test_a_checked_wrappers_globals_hold_the_names_it_reads_its_own_first():
    """``globals_for``: the names the code and the code nested in it read, from the namespace
    only (a builtin stays the interpreter's), ``first`` leading in the order given."""
    from streamcheck.wrappers.generated import globals_for

    code = compile("def make(original):\n"
                   "    def audited(x=_default_x):\n"
                   "        if _check(x):\n"
                   "            return original(len(x))\n"
                   "        return _slow(x)\n"
                   "    return audited\n", "<test>", "exec")
    namespace = {"_unused": 1, "_slow": 2, "_default_x": 3, "_check": 4, "len": 5}
    shell = globals_for(code, namespace, first=("_check", "_absent"))
    assert list(shell) == ["_check", "_default_x", "_slow", "len"]
    assert shell["_check"] == 4 and "_unused" not in shell


@pytest.mark.parametrize("resolve", [None, "self.current()"])
def test_the_names_a_wrapper_binds_are_the_ones_a_parameter_may_not_take(core, resolve):
    """Every name a generated launch wrapper binds or takes from its closure, besides the
    method's parameters, is in ``launches._WRAPPER_NAMES``, the list a clashing parameter is
    refused by: a name added to the wrapper's code and not to the list would be handed to the
    method in place of the caller's value."""
    from streamcheck.wrappers import launches

    class Comm:
        device = 0

        def current(self):
            return None

        def all_reduce(self, tensor, out=None, stream=None):
            return stream

    installer.install("assert")
    try:
        wrap_stream_method(installer._registry, installer._gate, Comm, "all_reduce",
                           "names.all_reduce", resolve=resolve, device_expr="self.device",
                           accessor="", current_of_device=lambda d: (0, 0, 1),
                           current_raw_stream=lambda d: 0, current_device=lambda: 0,
                           fixed_device=True)
        code = Comm.__dict__["all_reduce"].__code__
        bound = set(code.co_varnames) | set(code.co_freevars)
        assert bound - {"self", "tensor", "out", "stream"} <= launches._WRAPPER_NAMES
    finally:
        installer.uninstall()


def test_a_generated_signature_keeps_every_kind_of_parameter():
    """``signature_source``: a positional-only parameter stays one (``/`` written after the
    last), so a keyword of its name still reaches ``**kwargs``; keyword-only ones are passed
    by keyword; defaults are named for the globals."""
    from streamcheck.wrappers.generated import defaults_namespace, signature_source

    def method(self, a, b=1, /, c=2, *rest, e, **more):
        return (a, b, c, rest, e, more)

    params, call, has_stream = signature_source(method)
    assert params == "self, a, b=_default_b, /, c=_default_c, *rest, e, **more"
    assert call == "self, a, b, c, *rest, e=e, **more" and not has_stream
    shell = dict(defaults_namespace(method), method=method)
    exec(f"def wrapper({params}):\n    return method({call})", shell)
    assert shell["wrapper"](None, 0, e=5, a="a keyword") == method(None, 0, e=5, a="a keyword")
    assert shell["wrapper"](None, 0, 9, 8, 7, e=5) == (0, 9, 8, (7,), 5, {})


def test_a_skip_test_that_raises_goes_ahead_while_no_audit_runs_and_raises_while_one_does(core):
    """The skip test is read after the gate by the Python wrapper: while the gate holds no
    auditor a skip test that raises is never reached and the launch goes ahead; while an audit
    runs, its error is the caller's. The compiled core's wrapper must do the same."""
    try:
        aud = installer.install("record")
        op = f"skip.raises.{core}"

        class NoFlag(SkippableComm):
            def __init__(self) -> None:
                super().__init__(disabled=False)
                del self.disabled  # the skip test's attribute: reading it raises

        wrap_stream_method(installer._registry, installer._gate, NoFlag, "all_reduce", op,
                           resolve="self.current()", device_expr="self.device", accessor="x",
                           current_of_device=lambda d: (7, 0, 1), fixed_device=True,
                           current_raw_stream=lambda d: handle_of(0, 7),
                           skip_expr="self.disabled")
        assert checked_by_compiled_code(NoFlag.__dict__["all_reduce"]) == (core == "compiled")
        comm = NoFlag()
        gate = installer._gate
        gate.auditor = None
        try:
            for stream in (None, comm.kept):
                comm.all_reduce(None, stream=stream)  # goes ahead
        finally:
            gate.auditor = aud
        for stream in (None, comm.kept):
            with pytest.raises(AttributeError):
                comm.all_reduce(None, stream=stream)
        assert aud.coverage.launches_by_op().get(op, 0) == 0
    finally:
        installer.uninstall()
