"""``ThreadRoles``: the role each thread has as declarations come and go; ``role_of`` answers
the main engine thread from the plain attribute the hooks read, so that must never be stale."""

from __future__ import annotations

import threading

from streamcheck.core.roles import CONNECTOR, ENGINE, ThreadRoles


def in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0], t


def test_the_main_thread_is_the_engine_until_another_thread_is_declared_one():
    roles = ThreadRoles()
    main = threading.get_ident()
    assert roles.main_engine == main and roles.role_of(main) == ENGINE
    ready, go = threading.Event(), threading.Event()

    def engine():
        roles.declare(ENGINE)
        ready.set()
        go.wait(5)

    t = threading.Thread(target=engine)
    t.start()
    ready.wait(5)
    assert roles.main_engine is None and roles.role_of(main) == ""
    assert roles.role_of(t.ident) == ENGINE
    go.set()
    t.join()
    # the declared engine ended: the main thread is the engine again
    assert roles.role_of(main) == ENGINE and roles.main_engine == main


def test_a_main_thread_declared_a_helper_is_one():
    roles = ThreadRoles()
    main = threading.get_ident()
    roles.declare(CONNECTOR)
    assert roles.main_engine is None and roles.role_of(main) == CONNECTOR
    roles.forget()
    assert roles.main_engine == main and roles.role_of(main) == ENGINE


def test_an_undeclared_helper_thread_has_no_role():
    roles = ThreadRoles()
    role, _t = in_thread(lambda: roles.role_of(threading.get_ident()))
    assert role == ""


def test_a_threads_record_is_made_once_and_again_when_its_name_or_role_changes():
    """Declared accesses name their thread with one record per thread, reused; a rename or a
    new role must show in the records made after it, never the stale name or role."""
    from streamcheck.core.auditor import Auditor
    from streamcheck.core.modes import Mode

    aud = Auditor(Mode.RECORD)

    def records():
        me = threading.get_ident()
        first, again = aud.thread_ref(me), aud.thread_ref(me)
        threading.current_thread().name = "renamed"
        renamed = aud.thread_ref(me)
        aud.roles.declare(CONNECTOR)
        declared = aud.thread_ref(me)
        return first, again, renamed, declared

    (first, again, renamed, declared), t = in_thread(records)
    assert again is first and first.role == ""
    assert (renamed.name, renamed.role) == ("renamed", "")
    assert (declared.name, declared.role) == ("renamed", CONNECTOR)
    assert first.ident == declared.ident == t.ident
