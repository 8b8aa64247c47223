"""Patches: idempotent, exact restore, thread-safe, nothing at import, nothing when off."""

from __future__ import annotations

import subprocess
import sys
import threading
import types
import warnings

import pytest
import torch

import streamcheck
from streamcheck import installer
from streamcheck.wrappers import speedups
from streamcheck.wrappers.registry import PatchRegistry
from tests.wrappers.compiled_parts import CORES


def test_patch_is_idempotent_and_restores_exactly():
    ns = types.SimpleNamespace(f=lambda: "orig")
    original = ns.f
    reg = PatchRegistry()
    assert reg.patch(ns, "f", lambda old: lambda: "patched " + old())
    assert not reg.patch(ns, "f", lambda old: lambda: "twice")
    assert ns.f() == "patched orig"
    reg.restore_all()
    assert ns.f is original
    reg.restore_all()  # second restore: nothing to do
    assert ns.f is original


def test_inherited_attribute_is_removed_not_copied_on_restore():
    class Base:
        def m(self):
            return "base"

    class Child(Base):
        pass

    reg = PatchRegistry()
    reg.patch(Child, "m", lambda old: lambda self: "patched")
    assert Child().m() == "patched"
    reg.restore_all()
    assert "m" not in Child.__dict__ and Child().m() == "base"


def test_a_later_patch_on_top_is_left_in_place_with_a_warning():
    ns = types.SimpleNamespace(f=lambda: 1)
    reg = PatchRegistry()
    reg.patch(ns, "f", lambda old: lambda: 2)
    theirs = lambda: 3  # noqa: E731 - someone else's patch
    ns.f = theirs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.restore_all()
    assert ns.f is theirs and any("replaced after" in str(w.message) for w in caught)


def test_import_patches_nothing():
    code = ("import torch; before = torch.cuda.set_stream; import streamcheck; "
            "assert torch.cuda.set_stream is before; "
            "from streamcheck import installer; assert installer.installed_patches() == 0")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_off_installs_nothing_and_uninstall_restores_torch():
    before = (torch.cuda.set_stream, torch.cuda.Stream.__dict__["__new__"])
    assert streamcheck.install("off") is None
    assert installer.installed_patches() == 0
    aud = streamcheck.install("record")
    assert aud is not None and installer.installed_patches() > 0
    assert torch.cuda.set_stream is not before[0]
    assert streamcheck.install("record") is aud  # idempotent
    streamcheck.uninstall()
    assert (torch.cuda.set_stream, torch.cuda.Stream.__dict__["__new__"]) == before
    assert installer.installed_patches() == 0


def test_concurrent_install_yields_one_auditor():
    got = []
    barrier = threading.Barrier(8)

    def go():
        barrier.wait()
        got.append(streamcheck.install("warn"))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(a) for a in got}) == 1
    patched = installer.installed_patches()
    streamcheck.install("warn")
    assert installer.installed_patches() == patched


def test_child_processes_install_only_when_they_import_torch(tmp_path):
    from streamcheck.activation import child_env

    env = child_env("record", tmp_path / "reports")
    probe = ("import sys; assert 'torch' not in sys.modules, 'torch imported at start-up'; "
             "import torch; from streamcheck import installer; "
             "assert installer.current_auditor() is not None and installer.installed_patches() > 0")
    subprocess.run([sys.executable, "-c", probe], env=env, check=True)


@pytest.mark.parametrize(("args", "kwargs", "named"), [
    ((), {}, False), ((None,), {}, False), ((), {"device": "cuda"}, False),
    ((), {"priority": -1}, False), ((1,), {}, True), ((), {"device": "cuda:1"}, True),
    ((0,), {}, True),
])
def test_a_stream_names_its_device_only_with_an_index(args, kwargs, named):
    """Only a stream made on the thread's current device is checked against the engine's."""
    from streamcheck.wrappers.streams import names_a_device

    assert names_a_device(args, kwargs) is named
    assert names_a_device((torch.device("cuda"),), {}) is False
    assert names_a_device((torch.device("cuda", 1),), {}) is True


def test_an_external_stream_is_never_checked_against_the_engine_device():
    from streamcheck.wrappers.streams import names_a_device

    assert names_a_device((), {"stream_ptr": 0x1234}) is True


def test_the_engine_device_is_unknown_once_engine_threads_chose_two():
    """Several engines in one process (or one that moves between devices): no single device
    is the engine's, so no helper's stream is flagged for being on another."""
    from streamcheck.wrappers.streams import DeviceHome

    home = DeviceHome()
    assert home.device is None
    home.chosen(1)
    home.chosen(1)
    assert home.device == 1
    home.chosen(0)
    assert home.device is None
    home.chosen(1)
    assert home.device is None


def test_the_registry_gives_back_what_it_replaced():
    class Owner:
        def method(self):
            return "original"

    registry = PatchRegistry()
    raw = Owner.__dict__["method"]
    assert registry.original(Owner, "method") is raw  # not patched: as it is
    registry.patch(Owner, "method", lambda original: lambda self: "patched")
    assert registry.original(Owner, "method") is raw
    assert registry.original(Owner, "absent") is None
    registry.restore_all()


@pytest.mark.parametrize("core", CORES)
def test_current_stream_wraps_an_existing_stream_without_the_creation_hook(core, monkeypatch):
    """``current_stream()`` runs on every stream switch: it must build its object with the
    Stream ``__new__`` from before the creation hook (which would add a Python frame to every
    switch and never records these anyway), whichever of the two was installed first. The
    compiled one (``CurrentStream``) gives the same answers; both initialize CUDA as torch's
    does, where ``torch.cuda.is_initialized()`` would say no."""
    from streamcheck.wrappers.streams import fast_current_stream

    class Stream:
        def __new__(cls, *args, **kwargs):
            made = object.__new__(cls)
            made.fields = kwargs
            return made

    indexed, inits = [], []

    def get_device_index(device, optional):
        indexed.append(device)
        return int(str(device).rpartition(":")[2])

    forked = [False]
    cuda = types.SimpleNamespace(Stream=Stream, _get_device_index=get_device_index,
                                 _lazy_init=lambda: inits.append(1),
                                 current_stream=lambda device=None: 0, _initialized=True,
                                 _is_in_bad_fork=lambda: forked[0])
    monkeypatch.setattr(torch._C, "_cuda_getCurrentStream", lambda device: (7, device, 1),
                        raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 3, raising=False)
    created = []
    registry = PatchRegistry()
    impl = Stream.__dict__["__new__"]  # the creation hook's stand-in, installed first
    registry.patch(Stream, "__new__", lambda _: staticmethod(
        lambda cls, *a, **k: created.append(k) or impl(cls, *a, **k)))
    speedups.use(core)
    fast_current_stream(registry, cuda)
    try:
        assert (type(cuda.current_stream).__name__ == "CurrentStream") == (core == "compiled")
        stream = cuda.current_stream()
        assert stream.fields == {"stream_id": 7, "device_index": 3, "device_type": 1}
        assert created == []  # the hooked __new__ never ran
        # None: the current device, an int: itself, both read in C; anything else as torch
        assert [cuda.current_stream(d).fields["device_index"] for d in (None, 1, "cuda:2")] \
            == [3, 1, 2]
        assert cuda.current_stream(device=1).fields["device_index"] == 1
        assert indexed == ["cuda:2"]
        Stream(device_index=0)
        assert len(created) == 1  # a creation still goes through it
        assert core == "python" or inits == []  # torch would say initialized: nothing to do
        forked[0] = True  # is_initialized() is False in a bad fork: torch's _lazy_init raises
        cuda.current_stream()
        forked[0], cuda._initialized = False, False
        cuda.current_stream()
        assert len(inits) == (2 if core == "compiled" else 7)  # Python: at every call
        with pytest.raises(TypeError):
            cuda.current_stream(1, 2)
        with pytest.raises(TypeError):
            cuda.current_stream(dev=1)
    finally:
        registry.restore_all()
        speedups.use("auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_installed_current_stream_answers_as_torchs_on_cuda(monkeypatch):
    """On real CUDA the installed ``current_stream`` (compiled where built) gives torch's
    answer for every way of naming the device, on a side stream, and on another thread."""
    torch_own = torch.cuda.current_stream
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled" if speedups.built() else "python")
    installer.install("record")
    try:
        assert torch.cuda.current_stream is not torch_own
        side = torch.cuda.Stream()

        def same(*args, **kwargs):
            mine, theirs = torch.cuda.current_stream(*args, **kwargs), torch_own(*args, **kwargs)
            return [(type(s), s.stream_id, s.device_index, s.device_type, s.cuda_stream)
                    for s in (mine, theirs)]

        ways = [(), (None,), (0,), ("cuda",), ("cuda:0",), (torch.device("cuda", 0),)]
        for args in ways:
            first, second = same(*args)
            assert first == second, args
        with torch.cuda.stream(side):
            for args in ways:
                first, second = same(*args)
                assert first == second and first[4] == side.cuda_stream, args
        first, second = same(device=0)
        assert first == second
        seen = []
        helper = threading.Thread(target=lambda: seen.append(same()))
        helper.start()
        helper.join()
        assert seen[0][0] == seen[0][1] and seen[0][0][1] == 0  # its default stream
    finally:
        installer.uninstall()
        speedups.use("auto")
