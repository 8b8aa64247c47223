/* streamcheck._speedups, a declared handoff: the common case of streamcheck.handoff(s).
 *
 * The engine declares what it hands to a connector at every step: a connector's
 * save_kv_layer calls streamcheck.handoffs with a layer's K and V once per layer, on the
 * engine's main thread, between the layers' launches. In Python (streamcheck/wrappers/
 * user_launch.py, _declare_accesses) the part before the auditor's declare is a dozen calls:
 * the auditor, each tensor's key, the thread's current stream and a StreamRef made for it, the
 * lists of accesses; about 17,000 instructions, where the compiled declare that follows is
 * about 9,600 (scripts/bench_hook_instructions.py).
 *
 *   HandoffDeclare(gate, blocks_type, ref_of, ref_type, current_stream_of[, namespace])
 *       declare(items, stream, access) -> tuple | None. A tuple: done, as _declare_accesses
 *       would have done it: () when not auditing or `items` is empty, else what the auditor's
 *       declare returned, the site two frames above it (the caller of the Python frame
 *       running, streamcheck.handoff or handoffs). None: nothing was done; Python decides.
 *
 * It takes tensors whose get_device() and data_ptr() are ints, whole or some of their blocks
 * (a BlockSet, `blocks_type`: its tensor and ids, as a connector names a layer's blocks), an
 * access "write" or "read", and a stream given (its record from `ref_of`, kept for the last
 * few stream objects, each held) or None on a tensor that is not simulated (no
 * `stream_reader`): the thread's current stream on the first tensor's device,
 * `current_stream_of(device)`, named by a `ref_type(device, stream id)` kept for the last few
 * (device, id) pairs (a StreamRef is never changed once made). With `namespace` (the dict
 * of streamcheck/runtime/cuda.py), what current_stream_of would call is called directly,
 * without its Python frame and import (reader_now). Anything else, and any
 * ordinary error before the declare, goes to Python before anything is declared, so a
 * warning or an error is worded by the same code as before; an error in the declare itself
 * propagates, as it does from Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

/* streamcheck/_native_streams.c: a current stream read natively once that agreed with torch */
int read_current_stream(PyObject *reader, PyObject *device, long long out[3]);

#if PY_VERSION_HEX >= 0x030D0000 /* an attribute that may be missing: 1, 0, or -1 + error */
#define optional_attr PyObject_GetOptionalAttr
#else
#define optional_attr _PyObject_LookupAttr
#endif

/* streamcheck/_declare.c: where a class keeps its slot `name`, or -1 + error */
Py_ssize_t slot_offset(PyTypeObject *type, const char *name);

#define FIELD(obj, at) (*(PyObject **)((char *)(obj) + (at)))
#define KEPT 4 /* the engine's main stream and a connector's few: a few at most */

static PyObject *s_get_device, *s_data_ptr, *s_stream_reader, *s_declare, *s_write, *s_read,
    *s_skip, *s_tensor, *s_ids, *kwnames_skip, *site_skip;
static PyObject *s_current_read, *s_torch, *s_torch_c, *s_torch_read; /* reader_now's names */

typedef struct {
    PyObject_HEAD
    PyObject *gate, *blocks_type, *ref_of, *ref_type, *current_stream_of, *namespace;
    PyObject *streams[KEPT], *stream_refs[KEPT]; /* a given stream: its record */
    long devices[KEPT], ids[KEPT];
    PyObject *current_refs[KEPT]; /* a current stream, by (device, id): its record */
    int next_stream, next_current;
    Py_ssize_t gate_at;
    vectorcallfunc vectorcall;
} HandoffDeclare;

/* The method `name` of `item` called with no arguments, when it gives an exact int: a new
 * reference; NULL with no error: not an int (Python's int() decides); NULL + error. */
static PyObject *int_method(PyObject *item, PyObject *name)
{
    PyObject *value = PyObject_VectorcallMethod(name, &item, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                NULL);
    if (value != NULL && !PyLong_CheckExact(value))
        Py_CLEAR(value);
    return value;
}

/* The access of one tensor or BlockSet, ((device, data pointer), blocks): a new reference;
 * NULL with no error: Python's; NULL + error. `whole` gets the tensor (a new reference). */
static PyObject *access_of(HandoffDeclare *self, PyObject *item, PyObject **whole)
{
    PyObject *blocks = Py_None;
    if ((PyObject *)Py_TYPE(item) == self->blocks_type) { /* a frozen dataclass: its fields */
        if ((*whole = PyObject_GetAttr(item, s_tensor)) == NULL)
            return NULL;
        if ((blocks = PyObject_GetAttr(item, s_ids)) == NULL) {
            Py_CLEAR(*whole);
            return NULL;
        }
    }
    else {
        *whole = Py_NewRef(item);
        Py_INCREF(blocks);
    }
    PyObject *dev = int_method(*whole, s_get_device);
    PyObject *pointer = dev == NULL ? NULL : int_method(*whole, s_data_ptr);
    PyObject *key = pointer == NULL ? NULL : PyTuple_Pack(2, dev, pointer);
    Py_XDECREF(dev);
    Py_XDECREF(pointer);
    PyObject *pair = key == NULL ? NULL : PyTuple_Pack(2, key, blocks);
    Py_XDECREF(key);
    Py_DECREF(blocks);
    if (pair == NULL)
        Py_CLEAR(*whole);
    return pair;
}

/* A given stream's record, from the kept ones; made through ref_of on a miss. A new
 * reference, or NULL + error. */
static PyObject *given_ref(HandoffDeclare *self, PyObject *stream)
{
    for (int i = 0; i < KEPT; i++)
        if (self->streams[i] == stream)
            return Py_NewRef(self->stream_refs[i]);
    PyObject *made = PyObject_CallOneArg(self->ref_of, stream);
    if (made == NULL)
        return NULL;
    int at = self->next_stream;
    self->next_stream = (at + 1) % KEPT;
    PyObject *old_stream = self->streams[at], *old_ref = self->stream_refs[at];
    self->streams[at] = Py_NewRef(stream);
    self->stream_refs[at] = Py_NewRef(made);
    Py_XDECREF(old_stream); /* after the entry is whole: a deallocation may run code */
    Py_XDECREF(old_ref);
    return made;
}

/* What current_stream_of(device) would call, read at each call: the installed reader's
 * (namespace's `current_read`), else torch's C read (`torch._C._cuda_getCurrentStream` of the
 * torch module imported, looked up as current_stream_of looks it up, so a replaced one is the
 * one called), else current_stream_of itself (no namespace, torch not imported yet or without
 * that read: its import and its error). A new reference, or NULL + error. */
static PyObject *reader_now(HandoffDeclare *self)
{
    if (self->namespace == Py_None)
        return Py_NewRef(self->current_stream_of);
    PyObject *read = PyDict_GetItemWithError(self->namespace, s_current_read); /* borrowed */
    if (read == NULL && PyErr_Occurred())
        return NULL;
    if (read != NULL && read != Py_None)
        return Py_NewRef(read);
    /* sys.modules["torch"], as `import torch` finds it once imported: read from the dict, as
     * PyImport_GetModule would not (on 3.11 it raises and clears an AttributeError for a
     * module spec without `_initializing`, some 4,600 instructions) */
    PyObject *torch = PyDict_GetItemWithError(PyImport_GetModuleDict(), s_torch); /* borrowed */
    if (torch == NULL || torch == Py_None)
        return PyErr_Occurred() ? NULL : Py_NewRef(self->current_stream_of);
    Py_INCREF(torch);
    PyObject *torch_c = NULL;
    int found = optional_attr(torch, s_torch_c, &torch_c);
    Py_DECREF(torch);
    if (found > 0) {
        found = optional_attr(torch_c, s_torch_read, &read);
        Py_DECREF(torch_c);
    }
    if (found < 0)
        return NULL;
    return found ? read : Py_NewRef(self->current_stream_of);
}

/* The thread's current stream on `device`, as a record: a new reference; NULL with no error:
 * Python's (a read of another shape); NULL + error. torch's read is answered natively once
 * that was proven (streamcheck/_native_streams.c). */
static PyObject *current_ref(HandoffDeclare *self, PyObject *device)
{
    PyObject *read = reader_now(self);
    if (read == NULL)
        return NULL;
    long long now[3]; /* (stream id, device, type) */
    int usual = read_current_stream(read, device, now);
    Py_DECREF(read);
    if (usual <= 0)
        return NULL;
    long sid = (long)now[0], dev = (long)now[1];
    for (int i = 0; i < KEPT; i++)
        if (self->current_refs[i] != NULL && self->devices[i] == dev && self->ids[i] == sid)
            return Py_NewRef(self->current_refs[i]);
    PyObject *made = PyObject_CallFunction(self->ref_type, "ll", dev, sid);
    if (made == NULL)
        return NULL;
    int at = self->next_current;
    self->next_current = (at + 1) % KEPT;
    PyObject *old = self->current_refs[at];
    self->current_refs[at] = Py_NewRef(made);
    self->devices[at] = dev;
    self->ids[at] = sid;
    Py_XDECREF(old);
    return made;
}

/* Whether `item` is a simulated tensor (it names its machine's reader): 1, 0, -1 + error. */
static int simulated(PyObject *item)
{
    PyObject *reader;
    int found = optional_attr(item, s_stream_reader, &reader);
    Py_XDECREF(reader);
    return found;
}

/* The accesses and the stream's record, or 0: Python's, or -1 + error. */
static int prepare(HandoffDeclare *self, PyObject *items, PyObject *stream, PyObject **accesses,
                   PyObject **ref)
{
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    PyObject *first = NULL; /* the first tensor: its device, and whether it is simulated */
    if ((*accesses = PyList_New(count)) == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *whole, *pair = access_of(self, PyTuple_GET_ITEM(items, i), &whole);
        if (pair == NULL) {
            Py_XDECREF(first);
            return PyErr_Occurred() ? -1 : 0;
        }
        PyList_SET_ITEM(*accesses, i, pair);
        if (i == 0)
            first = whole;
        else
            Py_DECREF(whole);
    }
    if (stream != Py_None)
        *ref = given_ref(self, stream);
    else {
        int sim = simulated(first);
        if (sim == 0) /* the device of the first access's key */
            *ref = current_ref(self, PyTuple_GET_ITEM(
                                         PyTuple_GET_ITEM(PyList_GET_ITEM(*accesses, 0), 0), 0));
        else if (sim > 0) /* a simulated tensor: its machine's reader, Python's */
            *ref = NULL;
    }
    Py_DECREF(first);
    return *ref == NULL ? (PyErr_Occurred() ? -1 : 0) : 1;
}

static PyObject *handoff_declare_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                            PyObject *kwnames)
{
    HandoffDeclare *self = (HandoffDeclare *)op;
    if (PyVectorcall_NARGS(nargsf) != 3 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "HandoffDeclare takes (items, stream, access)");
        return NULL;
    }
    PyObject *items = args[0], *stream = args[1], *access = args[2];
    if (!PyTuple_CheckExact(items))
        Py_RETURN_NONE;
    PyObject *auditor = FIELD(self->gate, self->gate_at);
    if (auditor == NULL || auditor == Py_None || PyTuple_GET_SIZE(items) == 0)
        return PyTuple_New(0); /* not auditing, or nothing to declare */
    int write = PyUnicode_CheckExact(access) ? PyUnicode_Compare(access, s_write) == 0 : 0;
    if (!write && (!PyUnicode_CheckExact(access) || PyUnicode_Compare(access, s_read) != 0))
        Py_RETURN_NONE; /* another access: Python raises the error */
    Py_INCREF(auditor);
    Py_INCREF(items);
    Py_INCREF(stream);
    PyObject *accesses = NULL, *ref = NULL, *result = NULL, *empty = NULL;
    int ready = prepare(self, items, stream, &accesses, &ref);
    if (ready <= 0) { /* nothing declared: Python decides, says what failed */
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
            goto done; /* KeyboardInterrupt, SystemExit: never swallowed, as in Python */
        PyErr_Clear();
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *declare = (empty = PyList_New(0)) == NULL ? NULL
                                                       : PyObject_GetAttr(auditor, s_declare);
    if (declare == NULL)
        goto done;
    /* the site two frames above the declare: the caller of streamcheck.handoff(s) */
    PyObject *call_args[4] = {ref, write ? empty : accesses, write ? accesses : empty,
                              site_skip};
    PyObject *made = PyObject_Vectorcall(declare, call_args, 3, kwnames_skip);
    Py_DECREF(declare);
    if (made != NULL) {
        result = PySequence_Tuple(made);
        Py_DECREF(made);
    }
done:
    Py_XDECREF(empty);
    Py_XDECREF(ref);
    Py_XDECREF(accesses);
    Py_DECREF(stream);
    Py_DECREF(items);
    Py_DECREF(auditor);
    return result;
}

static int handoff_declare_traverse(PyObject *op, visitproc visit, void *arg)
{
    HandoffDeclare *self = (HandoffDeclare *)op;
    Py_VISIT(self->gate);
    Py_VISIT(self->blocks_type);
    Py_VISIT(self->ref_of);
    Py_VISIT(self->ref_type);
    Py_VISIT(self->current_stream_of);
    Py_VISIT(self->namespace);
    for (int i = 0; i < KEPT; i++) {
        Py_VISIT(self->streams[i]);
        Py_VISIT(self->stream_refs[i]);
        Py_VISIT(self->current_refs[i]);
    }
    return 0;
}

static int handoff_declare_clear(PyObject *op)
{
    HandoffDeclare *self = (HandoffDeclare *)op;
    Py_CLEAR(self->gate);
    Py_CLEAR(self->blocks_type);
    Py_CLEAR(self->ref_of);
    Py_CLEAR(self->ref_type);
    Py_CLEAR(self->current_stream_of);
    Py_CLEAR(self->namespace);
    for (int i = 0; i < KEPT; i++) {
        Py_CLEAR(self->streams[i]);
        Py_CLEAR(self->stream_refs[i]);
        Py_CLEAR(self->current_refs[i]);
    }
    return 0;
}

static void handoff_declare_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    handoff_declare_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *handoff_declare_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *gate, *blocks_type, *ref_of, *ref_type, *current_stream_of, *namespace = Py_None;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "HandoffDeclare takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!OO!O|O:HandoffDeclare", &gate, &PyType_Type, &blocks_type,
                          &ref_of, &PyType_Type, &ref_type, &current_stream_of, &namespace))
        return NULL;
    if (namespace != Py_None && !PyDict_Check(namespace)) {
        PyErr_SetString(PyExc_TypeError, "HandoffDeclare: namespace must be a dict or None");
        return NULL;
    }
    HandoffDeclare *self = (HandoffDeclare *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = handoff_declare_vectorcall;
    self->gate = Py_NewRef(gate);
    self->blocks_type = Py_NewRef(blocks_type);
    self->ref_of = Py_NewRef(ref_of);
    self->ref_type = Py_NewRef(ref_type);
    self->current_stream_of = Py_NewRef(current_stream_of);
    self->namespace = Py_NewRef(namespace);
    if ((self->gate_at = slot_offset(Py_TYPE(gate), "auditor")) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

PyTypeObject HandoffDeclareType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streamcheck._speedups.HandoffDeclare",
    .tp_doc = "HandoffDeclare(gate, blocks_type, ref_of, ref_type, current_stream_of"
              "[, namespace]): "
              "streamcheck.handoff(s)'s common case compiled; see _handoffs.c.",
    .tp_basicsize = sizeof(HandoffDeclare),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = handoff_declare_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(HandoffDeclare, vectorcall),
    .tp_traverse = handoff_declare_traverse,
    .tp_clear = handoff_declare_clear,
    .tp_dealloc = handoff_declare_dealloc,
};

/* Called by PyInit__speedups: the names, then the type on the module. */
int handoffs_add_types(PyObject *module)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {{&s_get_device, "get_device"}, {&s_data_ptr, "data_ptr"},
                 {&s_stream_reader, "stream_reader"}, {&s_declare, "declare"},
                 {&s_write, "write"}, {&s_read, "read"}, {&s_skip, "skip"},
                 {&s_tensor, "tensor"}, {&s_ids, "ids"},
                 {&s_current_read, "current_read"}, {&s_torch, "torch"},
                 {&s_torch_c, "_C"},
                 {&s_torch_read, "_cuda_getCurrentStream"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    if ((kwnames_skip = PyTuple_Pack(1, s_skip)) == NULL ||
        (site_skip = PyLong_FromLong(2)) == NULL || PyType_Ready(&HandoffDeclareType) < 0 ||
        PyModule_AddObjectRef(module, "HandoffDeclare", (PyObject *)&HandoffDeclareType) < 0)
        return -1;
    return 0;
}
