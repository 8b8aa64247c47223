/* streamcheck._speedups, a connector's checked launch: the common case of launch.check.
 *
 * A connector checks every launch it makes (streamcheck.launch, streamcheck/wrappers/
 * user_launch.py): a save reads the handoffs of the layers it copies, on a stream of its own.
 * In Python that check is two dozen calls (the auditor, the stream's record, the thread's
 * current stream, the reads sorted, Auditor.admit with its clock reads, the counter), about
 * 22,000 instructions before its declaration (scripts/bench_hook_instructions.py), run on the
 * connector's thread while it holds the GIL that the engine's main thread waits for.
 *
 *   LaunchCheck(gate, launch_type, handoff_type, mark_type, ref_of, default_stream_id)
 *       check(launch) -> bool. True: done, as launch.check would have done it: no auditor
 *       (nothing to check), or a launch that passes, counted at its site, its reads declared
 *       on its stream. False: nothing was done; launch.check, in Python, must decide it.
 *
 * It takes only a launch that plainly passes: a stream given (not resolved from a cache), no
 * writes, every read a Handoff the launch's stream is ordered after (the host waited for it,
 * or the stream's clock holds it, as HappensBefore.all_ordered reads them), not the legacy
 * default stream, on the device it names. Anything else, including any error on the way,
 * goes to Python before anything is counted or declared, so a finding is made, worded and
 * raised by the same code as before. The thread's current stream is not read: an explicit,
 * unresolved stream is checked by its reads and its device, not by it (Auditor.admit reads it
 * only for an implicit one, and for a finding's report, which Python makes).
 *
 * The auditor's clocks, coverage and declare are read at each call, as Python reads them; the
 * launch's, the records' and the gate's fields at the offsets their slots have (learned once,
 * as the Declarer learns them). A stream's record (ref_of, streamcheck/wrappers/user_launch.py
 * _ref_of) is kept for the last few stream objects, each held, so an id is never taken for a
 * freed stream's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

/* streamcheck/_declare.c: where a class keeps its slot `name`, or -1 + error */
Py_ssize_t slot_offset(PyTypeObject *type, const char *name);
/* streamcheck/_counter.c: one launch counted on a site's counter; 0, or -1 + error */
int launch_counter_advance(PyObject *counter);

#define FIELD(obj, at) (*(PyObject **)((char *)(obj) + (at)))
#define STREAMS_KEPT 4 /* a connector launches on its load and save streams, a few at most */

static PyObject *s_clocks, *s_done, *s_clock_table, *s_coverage, *s_counters, *s_declare,
    *s_skip, *s_device, *s_stream_id, *kwnames_skip, *site_skip, *no_writes;

enum { L_NAME, L_STREAM, L_DEVICE, L_RESOLVED, L_READS, L_WRITES, L_FIELDS };
static const char *launch_names[L_FIELDS] = {"name",          "stream", "device",
                                             "resolved_from", "reads",  "writes"};

typedef struct {
    PyObject_HEAD
    PyObject *gate, *launch_type, *handoff_type, *mark_type, *ref_of, *default_id;
    PyObject *streams[STREAMS_KEPT], *refs[STREAMS_KEPT], *keys[STREAMS_KEPT];
    int next_kept;
    Py_ssize_t gate_at, launch_at[L_FIELDS], tensor_at, mark_at, blocks_at, mark_stream_at,
        mark_tick_at;
    vectorcallfunc vectorcall;
} LaunchCheck;

/* The launch stream's record and its (device, stream id) key (new references), from the kept
 * ones; made through ref_of on a miss. 0, or -1 + error. */
static int stream_record(LaunchCheck *self, PyObject *stream, PyObject **ref, PyObject **key)
{
    for (int i = 0; i < STREAMS_KEPT; i++)
        if (self->streams[i] == stream) {
            *ref = Py_NewRef(self->refs[i]);
            *key = Py_NewRef(self->keys[i]);
            return 0;
        }
    PyObject *made = PyObject_CallOneArg(self->ref_of, stream);
    PyObject *device = made == NULL ? NULL : PyObject_GetAttr(made, s_device);
    PyObject *sid = device == NULL ? NULL : PyObject_GetAttr(made, s_stream_id);
    PyObject *made_key = sid == NULL ? NULL : PyTuple_Pack(2, device, sid);
    Py_XDECREF(device);
    Py_XDECREF(sid);
    if (made_key == NULL) {
        Py_XDECREF(made);
        return -1;
    }
    int at = self->next_kept;
    self->next_kept = (at + 1) % STREAMS_KEPT;
    PyObject *old[3] = {self->streams[at], self->refs[at], self->keys[at]};
    self->streams[at] = Py_NewRef(stream);
    self->refs[at] = Py_NewRef(made);
    self->keys[at] = Py_NewRef(made_key);
    for (int i = 0; i < 3; i++) /* after the entry is whole: a deallocation may run code */
        Py_XDECREF(old[i]);
    *ref = made;
    *key = made_key;
    return 0;
}

/* Is `value` (an entry of a clock, NULL: none) at least `tick`? 1, 0, or -1 + error. */
static int reaches(PyObject *value, PyObject *tick)
{
    return value == NULL ? 0 : PyObject_RichCompareBool(value, tick, Py_GE);
}

/* HappensBefore.all_ordered(key, reads), the reads checked as Handoffs: 1 when every read is
 * a Handoff whose mark the stream `key` is ordered after, 0 when Python must decide (a read
 * of another kind, or one not ordered), -1 + error. `pairs` gets each read's (tensor,
 * blocks), in order, repeats included. */
static int reads_ordered(LaunchCheck *self, PyObject *auditor, PyObject *key, PyObject *reads,
                         PyObject *pairs)
{
    PyObject *clocks = PyObject_GetAttr(auditor, s_clocks);
    PyObject *done = clocks == NULL ? NULL : PyObject_GetAttr(clocks, s_done);
    PyObject *table = done == NULL ? NULL : PyObject_GetAttr(clocks, s_clock_table);
    Py_XDECREF(clocks);
    if (table == NULL || !PyDict_Check(done) || !PyDict_Check(table)) {
        Py_XDECREF(done);
        Py_XDECREF(table);
        return table == NULL ? -1 : 0;
    }
    int result = 1;
    PyObject *own = PyDict_GetItemWithError(table, key); /* borrowed; NULL: an empty clock */
    Py_XINCREF(own);
    if ((own == NULL && PyErr_Occurred()) || (own != NULL && !PyDict_Check(own)))
        result = PyErr_Occurred() ? -1 : 0;
    for (Py_ssize_t i = 0; result == 1 && i < PyTuple_GET_SIZE(reads); i++) {
        PyObject *read = PyTuple_GET_ITEM(reads, i);
        if (read == Py_None)
            continue;
        PyObject *mark;
        if ((PyObject *)Py_TYPE(read) != self->handoff_type ||
            (mark = FIELD(read, self->mark_at)) == NULL ||
            (PyObject *)Py_TYPE(mark) != self->mark_type) {
            result = 0;
            break;
        }
        PyObject *at = FIELD(mark, self->mark_stream_at), *tick = FIELD(mark, self->mark_tick_at);
        if (at == NULL || tick == NULL) {
            result = 0;
            break;
        }
        Py_INCREF(at);
        Py_INCREF(tick);
        int ordered = PyObject_RichCompareBool(at, key, Py_EQ);
        if (ordered == 0) { /* another stream's: the host waited for it, or this one did */
            PyObject *seen = PyDict_GetItemWithError(done, at);
            ordered = seen == NULL && PyErr_Occurred() ? -1 : reaches(seen, tick);
            if (ordered == 0 && own != NULL) {
                seen = PyDict_GetItemWithError(own, at);
                ordered = seen == NULL && PyErr_Occurred() ? -1 : reaches(seen, tick);
            }
        }
        Py_DECREF(at);
        Py_DECREF(tick);
        /* read after the comparisons, which may run code (for keys that are not ints) */
        PyObject *tensor = FIELD(read, self->tensor_at), *blocks = FIELD(read, self->blocks_at);
        if (ordered == 1 && (tensor == NULL || blocks == NULL)) {
            result = 0;
            break;
        }
        PyObject *pair = ordered == 1 ? PyTuple_Pack(2, tensor, blocks) : NULL;
        if (pair != NULL) {
            if (PyList_Append(pairs, pair) < 0)
                ordered = -1;
            Py_DECREF(pair);
        }
        else if (ordered == 1)
            ordered = -1;
        result = ordered;
    }
    Py_XDECREF(own);
    Py_DECREF(done);
    Py_DECREF(table);
    return result;
}

/* The launch's own counter at its site advanced, as Auditor.admit's next(coverage.counter(op)):
 * 1, 0 when the counter is not made yet (Python makes it), or -1 + error. */
static int count_launch(PyObject *auditor, PyObject *name)
{
    PyObject *coverage = PyObject_GetAttr(auditor, s_coverage);
    PyObject *counters = coverage == NULL ? NULL : PyObject_GetAttr(coverage, s_counters);
    Py_XDECREF(coverage);
    if (counters == NULL)
        return -1;
    int result = 0;
    PyObject *counter = PyDict_Check(counters) ? PyDict_GetItemWithError(counters, name) : NULL;
    if (counter == NULL)
        result = PyErr_Occurred() ? -1 : 0;
    else if (PyIter_Check(counter)) {
        Py_INCREF(counter);
        result = launch_counter_advance(counter) < 0 ? -1 : 1;
        Py_DECREF(counter);
    }
    Py_DECREF(counters);
    return result;
}

/* The part that decides: 1 passed and counted, 0 Python's, -1 + error (before the count:
 * Python's as well). `ref` and `pairs` are set on 1. */
static int passes(LaunchCheck *self, PyObject *launch, PyObject *auditor, PyObject **ref,
                  PyObject *pairs)
{
    PyObject *stream = FIELD(launch, self->launch_at[L_STREAM]);
    PyObject *resolved = FIELD(launch, self->launch_at[L_RESOLVED]);
    PyObject *reads = FIELD(launch, self->launch_at[L_READS]);
    PyObject *writes = FIELD(launch, self->launch_at[L_WRITES]);
    PyObject *device = FIELD(launch, self->launch_at[L_DEVICE]);
    PyObject *name = FIELD(launch, self->launch_at[L_NAME]);
    if (stream == NULL || stream == Py_None || resolved == NULL ||
        !PyUnicode_CheckExact(resolved) || PyUnicode_GET_LENGTH(resolved) != 0 ||
        reads == NULL || !PyTuple_CheckExact(reads) || writes == NULL ||
        !PyTuple_CheckExact(writes) || PyTuple_GET_SIZE(writes) != 0 || device == NULL ||
        name == NULL)
        return 0;
    /* owned from here: ref_of and the comparisons may run Python code, which may set the
     * launch's fields anew meanwhile */
    Py_INCREF(stream);
    Py_INCREF(reads);
    Py_INCREF(device);
    Py_INCREF(name);
    PyObject *key = NULL;
    int result = stream_record(self, stream, ref, &key);
    if (result == 0)
        result = PyObject_RichCompareBool(PyTuple_GET_ITEM(key, 1), self->default_id, Py_NE);
    if (result == 1 && device != Py_None)
        result = PyObject_RichCompareBool(PyTuple_GET_ITEM(key, 0), device, Py_EQ);
    if (result == 1)
        result = reads_ordered(self, auditor, key, reads, pairs);
    if (result == 1)
        result = count_launch(auditor, name);
    Py_XDECREF(key);
    Py_DECREF(stream);
    Py_DECREF(reads);
    Py_DECREF(device);
    Py_DECREF(name);
    if (result != 1)
        Py_CLEAR(*ref);
    return result;
}

/* *pairs with each pair once, first places kept: list(dict.fromkeys(pairs)), as
 * launch.check declares a launch's reads (a save reads the handoffs of all its layers, a
 * few dozen). 0, or -1 + error. */
static int once_each(PyObject **pairs)
{
    PyObject *seen = PyDict_New();
    if (seen == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(*pairs); i++)
        if (PyDict_SetDefault(seen, PyList_GET_ITEM(*pairs, i), Py_None) == NULL) {
            Py_DECREF(seen);
            return -1;
        }
    PyObject *keys = PyDict_Keys(seen);
    Py_DECREF(seen);
    if (keys == NULL)
        return -1;
    Py_SETREF(*pairs, keys);
    return 0;
}

static PyObject *launch_check_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                         PyObject *kwnames)
{
    LaunchCheck *self = (LaunchCheck *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "LaunchCheck takes one launch");
        return NULL;
    }
    PyObject *launch = args[0];
    if ((PyObject *)Py_TYPE(launch) != self->launch_type)
        Py_RETURN_FALSE;
    PyObject *auditor = FIELD(self->gate, self->gate_at);
    if (auditor == NULL || auditor == Py_None)
        Py_RETURN_TRUE; /* not auditing: launch.check returns at once */
    Py_INCREF(auditor);
    PyObject *ref = NULL, *pairs = PyList_New(0), *result = NULL;
    int passed = pairs == NULL ? -1 : passes(self, launch, auditor, &ref, pairs);
    if (passed <= 0) { /* nothing counted or declared: Python decides, says what failed */
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
            goto done; /* KeyboardInterrupt, SystemExit: never swallowed, as in Python */
        PyErr_Clear();
        result = Py_NewRef(Py_False);
        goto done;
    }
    if (PyList_GET_SIZE(pairs) > 1 && once_each(&pairs) < 0)
        goto done;
    if (PyList_GET_SIZE(pairs) != 0) { /* passed: its reads are what later launches follow */
        PyObject *declare = PyObject_GetAttr(auditor, s_declare);
        if (declare == NULL)
            goto done;
        /* the site two frames above the declare: the caller of the Python frame running
         * (launch.__enter__, or the decorator's wrapper), as launch.check's skip=3 is from
         * inside check */
        PyObject *call_args[4] = {ref, pairs, no_writes, site_skip};
        PyObject *made = PyObject_Vectorcall(declare, call_args, 3, kwnames_skip);
        Py_DECREF(declare);
        if (made == NULL)
            goto done;
        Py_DECREF(made);
    }
    result = Py_NewRef(Py_True);
done:
    Py_XDECREF(ref);
    Py_XDECREF(pairs);
    Py_DECREF(auditor);
    return result;
}

static int launch_check_traverse(PyObject *op, visitproc visit, void *arg)
{
    LaunchCheck *self = (LaunchCheck *)op;
    Py_VISIT(self->gate);
    Py_VISIT(self->launch_type);
    Py_VISIT(self->handoff_type);
    Py_VISIT(self->mark_type);
    Py_VISIT(self->ref_of);
    Py_VISIT(self->default_id);
    for (int i = 0; i < STREAMS_KEPT; i++) {
        Py_VISIT(self->streams[i]);
        Py_VISIT(self->refs[i]);
        Py_VISIT(self->keys[i]);
    }
    return 0;
}

static int launch_check_clear(PyObject *op)
{
    LaunchCheck *self = (LaunchCheck *)op;
    Py_CLEAR(self->gate);
    Py_CLEAR(self->launch_type);
    Py_CLEAR(self->handoff_type);
    Py_CLEAR(self->mark_type);
    Py_CLEAR(self->ref_of);
    Py_CLEAR(self->default_id);
    for (int i = 0; i < STREAMS_KEPT; i++) {
        Py_CLEAR(self->streams[i]);
        Py_CLEAR(self->refs[i]);
        Py_CLEAR(self->keys[i]);
    }
    return 0;
}

static void launch_check_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    launch_check_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *launch_check_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *gate, *launch_type, *handoff_type, *mark_type, *ref_of, *default_id;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "LaunchCheck takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!O!O!OO:LaunchCheck", &gate, &PyType_Type, &launch_type,
                          &PyType_Type, &handoff_type, &PyType_Type, &mark_type, &ref_of,
                          &default_id))
        return NULL;
    LaunchCheck *self = (LaunchCheck *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = launch_check_vectorcall;
    self->gate = Py_NewRef(gate);
    self->launch_type = Py_NewRef(launch_type);
    self->handoff_type = Py_NewRef(handoff_type);
    self->mark_type = Py_NewRef(mark_type);
    self->ref_of = Py_NewRef(ref_of);
    self->default_id = Py_NewRef(default_id);
    if ((self->gate_at = slot_offset(Py_TYPE(gate), "auditor")) < 0 ||
        (self->tensor_at = slot_offset((PyTypeObject *)handoff_type, "tensor")) < 0 ||
        (self->mark_at = slot_offset((PyTypeObject *)handoff_type, "mark")) < 0 ||
        (self->blocks_at = slot_offset((PyTypeObject *)handoff_type, "blocks")) < 0 ||
        (self->mark_stream_at = slot_offset((PyTypeObject *)mark_type, "stream")) < 0 ||
        (self->mark_tick_at = slot_offset((PyTypeObject *)mark_type, "tick")) < 0)
        goto fail;
    for (int i = 0; i < L_FIELDS; i++)
        if ((self->launch_at[i] = slot_offset((PyTypeObject *)launch_type, launch_names[i])) < 0)
            goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

PyTypeObject LaunchCheckType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streamcheck._speedups.LaunchCheck",
    .tp_doc = "LaunchCheck(gate, launch_type, handoff_type, mark_type, ref_of, "
              "default_stream_id): launch.check's common case compiled; see _launch_check.c.",
    .tp_basicsize = sizeof(LaunchCheck),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = launch_check_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(LaunchCheck, vectorcall),
    .tp_traverse = launch_check_traverse,
    .tp_clear = launch_check_clear,
    .tp_dealloc = launch_check_dealloc,
};

/* Called by PyInit__speedups: the names, then the type on the module. */
int launch_check_add_types(PyObject *module)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {{&s_clocks, "clocks"},     {&s_done, "_done"},
                 {&s_clock_table, "_clocks"}, {&s_coverage, "coverage"},
                 {&s_counters, "_counters"}, {&s_declare, "declare"},
                 {&s_skip, "skip"},         {&s_device, "device"},
                 {&s_stream_id, "stream_id"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    if ((kwnames_skip = PyTuple_Pack(1, s_skip)) == NULL ||
        (site_skip = PyLong_FromLong(2)) == NULL || (no_writes = PyTuple_New(0)) == NULL ||
        PyType_Ready(&LaunchCheckType) < 0 ||
        PyModule_AddObjectRef(module, "LaunchCheck", (PyObject *)&LaunchCheckType) < 0)
        return -1;
    return 0;
}
