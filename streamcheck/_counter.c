/* streamcheck._speedups, a launch site's counter that the hooks advance in place.
 *
 * Every audited launch advances its site's counter (streamcheck/core/coverage.py), the count a
 * report gives so that "no finding" says what was checked. An itertools.count advanced from C
 * (PyIter_Next) makes an int for each launch and frees it again, about 200 instructions of a
 * collective launch's 650 to 1,250 (scripts/bench_hook_instructions.py).
 *
 *   LaunchCounter()
 *       iterated as itertools.count() is (next() gives 0, 1, 2, ...: Python's wrappers use it
 *       so), `value` the next value without advancing it (what coverage.read_count reads).
 *
 * launch_counter_advance(counter) is what the compiled hooks call: a LaunchCounter is
 * advanced in place, under the GIL as next() is, with no int made; any other iterator
 * (an itertools.count made before the compiled core was chosen) through PyIter_Next.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    Py_ssize_t next;
} LaunchCounter;

PyTypeObject LaunchCounterType;

/* One launch counted on `counter`: 0, or -1 + error (an iterator that ran out says so). */
int launch_counter_advance(PyObject *counter)
{
    if (Py_IS_TYPE(counter, &LaunchCounterType)) {
        ((LaunchCounter *)counter)->next++;
        return 0;
    }
    PyObject *n = PyIter_Next(counter);
    if (n == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "a launch counter ran out");
        return -1;
    }
    Py_DECREF(n);
    return 0;
}

static PyObject *counter_next(PyObject *op)
{
    return PyLong_FromSsize_t(((LaunchCounter *)op)->next++);
}

static PyObject *counter_repr(PyObject *op)
{
    return PyUnicode_FromFormat("LaunchCounter(%zd)", ((LaunchCounter *)op)->next);
}

static PyObject *counter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "LaunchCounter takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static PyMemberDef counter_members[] = {
    {"value", T_PYSSIZET, offsetof(LaunchCounter, next), READONLY,
     "the next value, not advanced by reading it"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject LaunchCounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streamcheck._speedups.LaunchCounter",
    .tp_doc = "LaunchCounter(): a launch site's counter, iterated as itertools.count(); "
              "see _counter.c.",
    .tp_basicsize = sizeof(LaunchCounter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = counter_new,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = counter_next,
    .tp_repr = counter_repr,
    .tp_members = counter_members,
};

/* Called by PyInit__speedups: the type on the module. */
int counter_add_types(PyObject *module)
{
    if (PyType_Ready(&LaunchCounterType) < 0 ||
        PyModule_AddObjectRef(module, "LaunchCounter", (PyObject *)&LaunchCounterType) < 0)
        return -1;
    return 0;
}
