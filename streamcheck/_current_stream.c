/* streamcheck._speedups, torch.cuda.current_stream() as the audit installs it.
 *
 * Stream contexts, event records and engines call torch.cuda.current_stream() at every
 * switch. The audit installs its own (streamcheck/wrappers/streams.py, fast_current_stream)
 * so that a wrap of the current stream does not pass through the creation hook on
 * Stream.__new__. torch's takes four Python frames (itself, _lazy_init, is_initialized and
 * Stream.__new__); the installed Python one three. This one takes Stream.__new__'s alone:
 *
 *   CurrentStream(cuda_globals, in_bad_fork, lazy_init, get_device, index, reader, impl,
 *                 stream_class)
 *       current_stream(device=None): CUDA taken as initialized where torch.cuda's
 *       `_initialized` (in `cuda_globals`) is True and `in_bad_fork()` is false, as
 *       torch.cuda.is_initialized reads them (`lazy_init()` called otherwise); None resolved
 *       to `get_device()` and an int taken as it is (anything else through `index(device,
 *       optional=True)`), as torch's _get_device_index resolves them; the current stream read
 *       through `reader` (torch's _cuda_getCurrentStream: natively once proven,
 *       _native_streams.c); the Stream made by `impl(stream_class, stream_id=...,
 *       device_index=..., device_type=...)`, the class's own __new__ from before the creation
 *       hook. The same answer as the Python one, with each of its calls made the same way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

int read_current_stream(PyObject *reader, PyObject *device, long long out[3]); /* native */

typedef struct {
    PyObject_HEAD
    PyObject *globals, *in_bad_fork, *lazy_init, *get_device, *index, *reader, *impl,
        *stream_class;
    PyObject *dict; /* __name__, __doc__, __wrapped__: functools.update_wrapper's */
    vectorcallfunc vectorcall;
} CurrentStream;

#define GIVEN 8 /* the fields from the arguments, globals to stream_class, in order */
#define HELD (GIVEN + 1) /* and dict after them: every reference the object holds */

static PyObject *s_initialized, *s_device, *wrap_names, *optional_names;

/* torch.cuda._lazy_init() where torch.cuda.is_initialized() would say no: 0, or -1 + error. */
static int initialized(CurrentStream *self)
{
    PyObject *flag = PyDict_GetItemWithError(self->globals, s_initialized); /* borrowed */
    if (flag == Py_True) {
        PyObject *bad = PyObject_CallNoArgs(self->in_bad_fork);
        if (bad == NULL)
            return -1;
        int in_bad_fork = PyObject_IsTrue(bad);
        Py_DECREF(bad);
        if (in_bad_fork < 0)
            return -1;
        if (!in_bad_fork)
            return 0;
    }
    if (PyErr_Occurred())
        return -1;
    PyObject *done = PyObject_CallNoArgs(self->lazy_init);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* The device index torch reads the current stream of (a new reference, or NULL + error). */
static PyObject *device_index(CurrentStream *self, PyObject *device)
{
    if (device == NULL || device == Py_None)
        return PyObject_CallNoArgs(self->get_device);
    if (PyLong_CheckExact(device))
        return Py_NewRef(device);
    PyObject *args[3] = {NULL, device, Py_True}; /* index(device, optional=True) */
    return PyObject_Vectorcall(self->index, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                               optional_names);
}

static PyObject *current_stream_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                           PyObject *kwnames)
{
    CurrentStream *self = (CurrentStream *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *device = nargs == 1 ? args[0] : NULL;
    if (nargs + nkw > 1 ||
        (nkw == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_device) != 0)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "current_stream(device=None)");
        return NULL;
    }
    if (nkw == 1)
        device = args[0];
    if (initialized(self) < 0)
        return NULL;
    PyObject *index = device_index(self, device);
    if (index == NULL)
        return NULL;
    long long key[3]; /* stream id, device index, device type */
    int read = read_current_stream(self->reader, index, key);
    Py_DECREF(index);
    if (read <= 0) {
        if (read == 0)
            PyErr_SetString(PyExc_TypeError,
                            "current_stream: the reader did not answer a 3-tuple of ints");
        return NULL;
    }
    PyObject *call[5] = {NULL, self->stream_class, PyLong_FromLongLong(key[0]),
                         PyLong_FromLongLong(key[1]), PyLong_FromLongLong(key[2])};
    PyObject *stream = call[2] == NULL || call[3] == NULL || call[4] == NULL
                           ? NULL
                           : PyObject_Vectorcall(self->impl, call + 1,
                                                 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                 wrap_names);
    for (int i = 2; i < 5; i++)
        Py_XDECREF(call[i]);
    return stream;
}

static PyObject *current_stream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *f[GIVEN];
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "CurrentStream takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!OOOOOOO:CurrentStream", &PyDict_Type, &f[0], &f[1], &f[2],
                          &f[3], &f[4], &f[5], &f[6], &f[7]))
        return NULL;
    CurrentStream *self = (CurrentStream *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    PyObject **field = &self->globals;
    for (int i = 0; i < GIVEN; i++)
        field[i] = Py_NewRef(f[i]);
    self->vectorcall = current_stream_vectorcall;
    return (PyObject *)self;
}

static int current_stream_traverse(PyObject *op, visitproc visit, void *arg)
{
    PyObject **field = &((CurrentStream *)op)->globals;
    for (int i = 0; i < HELD; i++)
        Py_VISIT(field[i]);
    return 0;
}

static int current_stream_clear(PyObject *op)
{
    PyObject **field = &((CurrentStream *)op)->globals;
    for (int i = 0; i < HELD; i++)
        Py_CLEAR(field[i]);
    return 0;
}

static void current_stream_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    current_stream_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyGetSetDef current_stream_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL}, {NULL}};

static PyTypeObject CurrentStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.CurrentStream",
    .tp_basicsize = sizeof(CurrentStream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "torch.cuda.current_stream(device=None) with one Python frame; see "
              "_current_stream.c.",
    .tp_new = current_stream_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(CurrentStream, vectorcall),
    .tp_dictoffset = offsetof(CurrentStream, dict),
    .tp_getset = current_stream_getset,
    .tp_traverse = current_stream_traverse,
    .tp_clear = current_stream_clear,
    .tp_dealloc = current_stream_dealloc,
};

int current_stream_add_types(PyObject *module)
{
    s_initialized = PyUnicode_InternFromString("_initialized");
    s_device = PyUnicode_InternFromString("device");
    wrap_names = Py_BuildValue("(sss)", "stream_id", "device_index", "device_type");
    optional_names = Py_BuildValue("(s)", "optional");
    if (s_initialized == NULL || s_device == NULL || wrap_names == NULL ||
        optional_names == NULL || PyType_Ready(&CurrentStreamType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "CurrentStream", (PyObject *)&CurrentStreamType);
}
