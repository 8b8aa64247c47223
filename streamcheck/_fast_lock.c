/* streamcheck._speedups, the audit's own locks: FastLock, taken by the compiled parts without
 * a call.
 *
 * The compiled declare (streamcheck/_declare.c) takes two locks for every declared access,
 * the clocks' for the tick and the auditor's for the kept accesses, and the event and host-wait
 * hooks (streamcheck/_speedups.c) take the clocks' one when they merge a clock. A
 * threading.Lock's acquire is a METH_VARARGS | METH_KEYWORDS method: every call, from C too,
 * parses its absent arguments with PyArg_ParseTupleAndKeywords. Those calls were about 1,480
 * of a connector's handoff's 11,099 added instructions (scripts/bench_hook_instructions.py,
 * callgrind).
 *
 *   FastLock()
 *       a lock as threading.Lock is one (not reentrant; any thread may release it):
 *       acquire(blocking=True, timeout=-1), release(), locked(), and `with lock:`. The core
 *       makes its locks with it once the compiled core is chosen (streamcheck/core/locks.py,
 *       make_lock), so Python takes them as before.
 *
 *   lock_take(lock, acquire) / lock_give(lock, release), for the other sources: a FastLock is
 *   taken and given back here, any other lock through its bound `acquire` or `release` (NULL:
 *   looked up by name), as before. 0, or -1 + error.
 *
 * A blocking acquire first tries without waiting; only when the lock is held does it let the
 * GIL go and wait, running the signal handlers when the wait is interrupted (their exception
 * ends the wait, as Python's own lock lets a KeyboardInterrupt end one) and then waiting for
 * the time still left.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <stddef.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    char locked;
    PyObject *weakrefs;
} FastLock;

static PyTypeObject FastLockType;

static long long monotonic_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

/* Take `self` within `timeout_us` microseconds (-1: no limit, 0: only if free now). 1 taken,
 * 0 not within the time, -1 + error (a signal handler's exception). */
static int take(FastLock *self, long long timeout_us)
{
    PyLockStatus got = PyThread_acquire_lock_timed(self->lock, 0, 0);
    long long deadline = timeout_us > 0 ? monotonic_us() + timeout_us : 0;
    while (got != PY_LOCK_ACQUIRED && timeout_us != 0) {
        Py_BEGIN_ALLOW_THREADS
        got = PyThread_acquire_lock_timed(self->lock, timeout_us, 1);
        Py_END_ALLOW_THREADS
        if (got != PY_LOCK_INTR)
            break;
        if (Py_MakePendingCalls() < 0)
            return -1;
        if (timeout_us > 0) {
            timeout_us = deadline - monotonic_us();
            if (timeout_us <= 0) /* one more try, as the time is up */
                timeout_us = 0, got = PyThread_acquire_lock_timed(self->lock, 0, 0);
        }
    }
    if (got != PY_LOCK_ACQUIRED)
        return 0;
    self->locked = 1;
    return 1;
}

static int give(FastLock *self)
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return -1;
    }
    self->locked = 0;
    PyThread_release_lock(self->lock);
    return 0;
}

int lock_take(PyObject *lock, PyObject *acquire)
{
    if (Py_TYPE(lock) == &FastLockType)
        return take((FastLock *)lock, -1) == 1 ? 0 : -1;
    PyObject *done = acquire != NULL ? PyObject_CallNoArgs(acquire)
                                     : PyObject_CallMethod(lock, "acquire", NULL);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

int lock_give(PyObject *lock, PyObject *release)
{
    if (Py_TYPE(lock) == &FastLockType)
        return give((FastLock *)lock);
    PyObject *done = release != NULL ? PyObject_CallNoArgs(release)
                                     : PyObject_CallMethod(lock, "release", NULL);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* acquire's arguments, as threading.Lock reads them: the timeout in microseconds (-1: none,
 * 0: do not wait), or -2 + error. */
static long long timeout_of(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *given[2] = {NULL, NULL};
    static const char *const names[2] = {"blocking", "timeout"};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return -2;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        given[i] = args[i];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int at = PyUnicode_CompareWithASCIIString(name, names[0]) == 0   ? 0
                 : PyUnicode_CompareWithASCIIString(name, names[1]) == 0 ? 1
                                                                         : -1;
        if (at < 0 || given[at] != NULL) {
            PyErr_Format(PyExc_TypeError, at < 0 ? "acquire() got an unexpected keyword "
                                                   "argument '%U'"
                                                 : "acquire() got multiple values for "
                                                   "argument '%U'",
                         name);
            return -2;
        }
        given[at] = args[nargs + k];
    }
    int blocking = given[0] == NULL ? 1 : PyObject_IsTrue(given[0]);
    if (blocking < 0)
        return -2;
    double timeout = given[1] == NULL ? -1.0 : PyFloat_AsDouble(given[1]);
    if (timeout == -1.0 && PyErr_Occurred())
        return -2;
    if (!blocking && timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return -2;
    }
    if (timeout < 0 && timeout != -1.0) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return -2;
    }
    if (!blocking)
        return 0;
    if (timeout == -1.0)
        return -1;
    if (timeout * 1e6 >= (double)PY_TIMEOUT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return -2;
    }
    return (long long)(timeout * 1e6);
}

static PyObject *fast_lock_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    long long timeout_us = timeout_of(args, nargs, kwnames);
    if (timeout_us == -2)
        return NULL;
    int got = take((FastLock *)op, timeout_us);
    return got < 0 ? NULL : PyBool_FromLong(got);
}

static PyObject *fast_lock_enter(PyObject *op, PyObject *unused)
{
    return take((FastLock *)op, -1) < 0 ? NULL : Py_NewRef(Py_True);
}

static PyObject *fast_lock_release(PyObject *op, PyObject *unused)
{
    return give((FastLock *)op) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *fast_lock_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    return give((FastLock *)op) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *fast_lock_locked(PyObject *op, PyObject *unused)
{
    return PyBool_FromLong(((FastLock *)op)->locked);
}

static PyObject *fast_lock_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<%s FastLock object at %p>",
                                ((FastLock *)op)->locked ? "locked" : "unlocked", op);
}

static PyObject *fast_lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "FastLock() takes no arguments");
        return NULL;
    }
    FastLock *self = (FastLock *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void fast_lock_dealloc(PyObject *op)
{
    FastLock *self = (FastLock *)op;
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs(op);
    if (self->lock != NULL) {
        if (self->locked)
            PyThread_release_lock(self->lock);
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(op)->tp_free(op);
}

static PyMethodDef fast_lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))fast_lock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool, as threading.Lock's"},
    {"release", fast_lock_release, METH_NOARGS, "release(), as threading.Lock's"},
    {"locked", fast_lock_locked, METH_NOARGS, "locked() -> bool"},
    {"__enter__", fast_lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))fast_lock_exit, METH_FASTCALL, NULL},
    {NULL}};

static PyTypeObject FastLockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.FastLock",
    .tp_basicsize = sizeof(FastLock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A lock as threading.Lock is one, which the compiled parts take without a call",
    .tp_new = fast_lock_new,
    .tp_dealloc = fast_lock_dealloc,
    .tp_repr = fast_lock_repr,
    .tp_methods = fast_lock_methods,
    .tp_weaklistoffset = offsetof(FastLock, weakrefs),
};

/* Adds FastLock to the module. 0, or -1 + error. */
int fast_lock_add_types(PyObject *module)
{
    if (PyType_Ready(&FastLockType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "FastLock", (PyObject *)&FastLockType);
}
