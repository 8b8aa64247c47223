/* streamcheck._speedups: the audit's two hottest paths, compiled.
 *
 * Every stream switch (each `with torch.cuda.stream(s)` enters and leaves through set_stream)
 * and every collective launch passes through a hook. In Python each costs a frame, several
 * attribute reads and a call; here the same decisions cost a few pointer reads. Nothing is
 * decided differently: the switch record is the tuple the Python hook builds, and a launch
 * that is not plainly fine goes to the generated Python wrapper, which applies every rule.
 * Optional, as coverage.py's C tracer is: without a compiler the pure-Python hooks are used
 * (streamcheck/wrappers/speedups.py chooses).
 * One extension, several sources: this file (the hooks), _sites.c (a record's call site),
 * _declare.c (Auditor.declare compiled), _native_streams.c (a current stream read natively)
 * and the others named where their functions are declared below.
 *
 *   SetStreamHook(gate, original, via[, key_type])
 *       set_stream(stream): appends (stream, thread ident, via, code, offset, code, offset)
 *       for the two calling frames through auditor.made_current (into a SwitchLog's slot
 *       without making the tuple, when made_current is one's append; a stream of key_type
 *       kept there as its key, not the object), then calls original.
 *   SwitchLog(capacity)
 *       the stream book's bounded log of switches, a ring of plain slots.
 *   StreamCheck(gate, owner, counter, resolved, raw_reader, current_reader[, key_type])
 *       check(communicator, stream) -> bool (also as check.passes(communicator, stream),
 *       the bound method the wrapper holds), asked by the generated wrapper of a
 *       communicator method before it calls the method: True where the launch is plainly
 *       fine (counted; see check_vectorcall), False where the Python wrapper decides; with
 *       `resolved`, the stream an accessor gave for stream=None. A stream of exactly
 *       key_type (torch.cuda.Stream) is told by its key, read in place, once the current
 *       stream is read natively.
 *   CreationHook(impl, created[, gate, via, home, threads, key_type])
 *       torch.cuda.Stream.__new__: a wrap of an existing stream (a `stream_id` given) goes
 *       straight to `impl`; a plain creation on the engine's device is recorded in the
 *       auditor's book here, in its CreationTable (_creations.c) and SwitchLog (see
 *       CreationHook), any other one calls
 *       `created(stream, args, kwargs)`.
 *   GuardedCall(kind, gate, owner, counter, original, slow, reader, bound, after[, current])
 *       Event.record, Event.wait, the host's waits (Stream's and Event's synchronize and
 *       query) and torch.distributed functions: the plain call goes
 *       straight to the original, every other one to the Python hook (see
 *       guarded_vectorcall); with the happens-before clocks live, a record keeps its
 *       snapshot here (on the current stream: with `current`, the reader of a device's
 *       current stream) and a wait that adds nothing to its stream's clock is plain.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030B0000
#error "streamcheck._speedups needs CPython 3.11 or newer (PyFrame_GetLasti)"
#endif

/* An attribute that may be missing, without making the AttributeError a plain GetAttr would
 * (most of the cost of a miss): 1 found (*out set), 0 missing, -1 error. */
#if PY_VERSION_HEX >= 0x030D0000
#define lookup_optional_attr PyObject_GetOptionalAttr
#else
#define lookup_optional_attr _PyObject_LookupAttr
#endif

static PyObject *s_auditor, *s_mirrors, *s_made_current, *s_device_index, *s_main_engine,
    *s_cuda_stream,
    *s_stream, *s_device_attr, *s_stream_id, *s_device_type, *s_clocks, *s_stream_clocks,
    *s_clock_attr;
/* streamcheck/core/clocks.py's names: a stream's clock lives in auditor.clocks._clocks under
 * (device, stream id); an event's snapshot in its attribute _streamcheck_clock; an empty clock
 * is an empty dict, never changed. (CLOCK_ATTR is exported: the hooks use these paths only
 * while it matches clocks.py.) */
#define CLOCKS_NAME "clocks"
#define STREAM_CLOCKS_NAME "_clocks"
#define CLOCK_ATTR_NAME "_streamcheck_clock"
static PyObject *empty_clock;
static PyObject *s_book, *s_created_table, *s_record_switch, *s_device, *s_thread_name,
    *s_created_kind;

/* streamcheck/_sites.c: a call site as code objects and offsets (the records' sites) */
PyObject *capture_site(PyObject *module, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames);
/* streamcheck/_frames.c: the running frames' code objects and offsets, read in place */
int running_frames(Py_ssize_t skip, PyObject **codes, int *lastis, int n);
int frames_in_place(void);
/* streamcheck/_declare.c: Auditor.declare compiled; a clock table's entry by a kept hash, and
 * the table's own key object equal to a kept one */
int declare_add_types(PyObject *module);
PyObject *lookup_known(PyObject *table, PyObject *key, Py_hash_t hash);
PyObject *tables_own_key(PyObject *table, PyObject *mine);
/* streamcheck/_launch_check.c: a connector's checked launch, its common case compiled */
int launch_check_add_types(PyObject *module);
/* streamcheck/_handoffs.c: a declared handoff, its common case compiled */
int handoffs_add_types(PyObject *module);
/* streamcheck/_native_streams.c: a device's current stream's handle, read natively where
 * that agreed with torch's reader */
int read_raw_stream(PyObject *reader, PyObject *device, long long *handle);
int read_current_stream(PyObject *reader, PyObject *device, long long out[3]);
int native_stream_key(PyObject *reader, long index, long long out[3]);
int steal_long_long(PyObject *value, long long *out); /* a read's int, the reference stolen */
int native_streams_add_functions(PyObject *module);
/* streamcheck/_counter.c: a launch site's counter, advanced in place */
int counter_add_types(PyObject *module);
/* streamcheck/_creations.c: the book's creations as plain fields */
int creations_add_types(PyObject *module);
int current_stream_add_types(PyObject *module); /* _current_stream.c */
/* streamcheck/_fast_lock.c: the audit's locks, taken without a call */
int fast_lock_add_types(PyObject *module);
int lock_take(PyObject *lock, PyObject *acquire);
int lock_give(PyObject *lock, PyObject *release);
int creation_table_check(PyObject *op);
int creation_table_record(PyObject *table, const long long key[3], int by_key,
                          PyObject *stream, unsigned long ident, PyObject *via, PyObject *name,
                          double when, Py_ssize_t skip);
int launch_counter_advance(PyObject *counter);

/* ---- what the three types share ------------------------------------------------------ */

/* Each type keeps its object fields one after another, from `first` to `last` (its __dict__),
 * and a weak-reference list after them: the GC visits and clears that run of fields, and
 * deallocation clears weak references first, as for a function. */
#define OBJECT_FIELDS(prefix, Type, first, last)                                              \
    static const size_t prefix##_nfields =                                                      \
        (offsetof(Type, last) - offsetof(Type, first)) / sizeof(PyObject *) + 1;                \
    static int prefix##_traverse(PyObject *op, visitproc visit, void *arg)                     \
    {                                                                                           \
        PyObject **field = &((Type *)op)->first;                                                \
        for (size_t i = 0; i < prefix##_nfields; i++)                                           \
            Py_VISIT(field[i]);                                                                 \
        return 0;                                                                               \
    }                                                                                           \
    static int prefix##_clear(PyObject *op)                                                     \
    {                                                                                           \
        PyObject **field = &((Type *)op)->first;                                                \
        for (size_t i = 0; i < prefix##_nfields; i++)                                           \
            Py_CLEAR(field[i]);                                                                 \
        return 0;                                                                               \
    }                                                                                           \
    static void prefix##_dealloc(PyObject *op)                                                  \
    {                                                                                           \
        PyObject_GC_UnTrack(op);                                                                \
        if (((Type *)op)->weakrefs != NULL)                                                     \
            PyObject_ClearWeakRefs(op);                                                         \
        prefix##_clear(op);                                                                     \
        Py_TYPE(op)->tp_free(op);                                                               \
    }

/* gate.auditor, read by every hook on every call. The gate is a slotted dataclass
 * (streamcheck/wrappers/gate.py): its `auditor` is a member at a fixed offset in the object,
 * read here directly once the type was seen, where a generic attribute read looks the name up
 * in the type and then in the instance (a third of a launch wrapper's own instructions:
 * scripts/bench_hook_instructions.py). The type's version tag guards the offset: a change to
 * the class (a property put in its place) makes the next read learn it again. Any other gate
 * is read generically. A new reference, or NULL + error. */
static PyObject *gate_type;    /* the type learned last, held: its address is not reused */
static unsigned int gate_tag;  /* its version tag then (a change to the class changes it) */
static Py_ssize_t gate_offset; /* its slot's offset; 0: read generically */
/* its `mirrors` and `main_engine` slots' offsets (0: none, read the auditor generically) */
static Py_ssize_t gate_mirrors_offset, gate_main_offset;

/* The offset of `type`'s field `name` of member type `kind` (T_OBJECT_EX, T_LONGLONG; a
 * writable one only if `writable`), found as a generic read would find it (its member
 * descriptor), without running any code; 0 where it is not such a field. */
static Py_ssize_t member_offset(PyTypeObject *type, PyObject *name, int kind, int writable)
{
    PyObject *descr = _PyType_Lookup(type, name); /* borrowed; tags the type */
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
        type->tp_getattro == PyObject_GenericGetAttr &&
        PyType_IsSubtype(type, PyDescr_TYPE(descr))) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == kind && (!writable || !(member->flags & READONLY)))
            return member->offset;
    }
    return 0;
}

/* The offset of `type`'s writable object slot `name`; 0 where it is not one. */
static Py_ssize_t slot_offset(PyTypeObject *type, PyObject *name)
{
    return member_offset(type, name, T_OBJECT_EX, 1);
}

/* What an instance of `type` reads for `auditor`, learned without running any code: a slot of
 * `type` (the member descriptor its generic attribute read would use) gives its offset. A
 * descriptor of another class, a type with its own __getattribute__, a read-only or
 * possibly-NULL member: 0, read generically. */
static Py_ssize_t learn_gate(PyTypeObject *type)
{
    Py_ssize_t offset = slot_offset(type, s_auditor);
    Py_ssize_t mirrors = slot_offset(type, s_mirrors), main = slot_offset(type, s_main_engine);
    PyObject *old = gate_type;
    gate_type = Py_NewRef((PyObject *)type);
    gate_tag = type->tp_version_tag;
    gate_offset = gate_tag != 0 ? offset : 0;
    gate_mirrors_offset = gate_offset != 0 && main != 0 ? mirrors : 0;
    gate_main_offset = gate_mirrors_offset != 0 ? main : 0;
    offset = gate_offset;
    Py_XDECREF(old); /* after the three agree: a release may run code that reads a gate */
    return offset;
}

/* The gate's `auditor` slot, borrowed; NULL where the gate's type has no such slot or the
 * slot is empty (the caller then reads it generically, for its error). */
static inline Py_ALWAYS_INLINE PyObject *gate_slot(PyObject *gate)
{
    PyTypeObject *type = Py_TYPE(gate);
    Py_ssize_t offset = gate_offset;
    if ((PyObject *)type != gate_type || type->tp_version_tag != gate_tag || gate_tag == 0)
        offset = learn_gate(type);
    return offset > 0 ? *(PyObject **)((char *)gate + offset) : NULL;
}

static PyObject *gate_auditor(PyObject *gate)
{
    PyObject *value = gate_slot(gate);
    if (value != NULL)
        return Py_NewRef(value);
    return PyObject_GetAttr(gate, s_auditor); /* not slotted, or the slot empty: its error */
}

/* What the gate holds, for a hook made for one auditor (`owner`, which the hook holds): 0 no
 * auditor, 1 `owner`, 2 another one; -1 + error. Read as gate_auditor reads it, without a
 * reference taken: a launch check that finds its owner uses the one it holds, so the
 * auditor's object is not written at every launch (an engine's launch finds it out of the
 * CPU's caches, and a line written costs more than one read). */
static int gate_holds(PyObject *gate, PyObject *owner)
{
    PyObject *value = gate_slot(gate);
    if (value != NULL) /* borrowed: compared only, no code runs */
        return value == Py_None ? 0 : value == owner ? 1 : 2;
    value = PyObject_GetAttr(gate, s_auditor); /* not slotted, or the slot empty: its error */
    if (value == NULL)
        return -1;
    int holds = value == Py_None ? 0 : value == owner ? 1 : 2;
    Py_DECREF(value);
    return holds;
}

/* A method on a class: bound to the instance like a function. */
static PyObject *bind_as_method(PyObject *op, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(op);
    return PyMethod_New(op, obj);
}

/* ---- SwitchLog ------------------------------------------------------------------------ */

/*
 * SwitchLog(capacity): the stream book's log of switches (streamcheck/core/provenance.py),
 * a ring of `capacity` slots, the oldest overwritten, as a deque(maxlen=capacity) would drop
 * it. The set_stream hook writes a switch into a slot as plain fields: no tuple, no integer
 * objects, and for a torch.cuda.Stream not the stream either but its key (see "a switch kept
 * by its stream's key" below), so nothing is freed but the stream object an overwritten
 * switch of another kind held. A deque of tuples
 * makes a 7-tuple and three integers per switch and frees the ones made 16,384 switches
 * earlier, memory long gone from the CPU's caches when an engine's other work runs between
 * two switches (scripts/bench_hook_cache.py). Reading (rules, only for a launch that already
 * looks wrong) builds the same tuples the Python hook appends. append(record) keeps any
 * other record (a creation, a test's) whole.
 */
typedef struct {
    PyObject *stream, *via, *code1, *code2; /* a switch; NULL stream: kept by key, `whole`
                                               or empty */
    PyObject *whole;                        /* a record appended from Python */
    PyObject *kind; /* a switch kept by key: the stream's type; its key in `key` */
    long long key[3]; /* (device index, stream id, device type), as KEY_FIELDS names them */
    unsigned long ident;
    int lasti1, lasti2;
    int created; /* a creation's mark (see switchlog_put_created): no frames */
} SwitchSlot;

#define SLOT_REFS 6 /* the object fields a slot holds */

typedef struct {
    PyObject_HEAD
    SwitchSlot *slots;
    Py_ssize_t capacity, next, count;
    PyObject *weakrefs;
} SwitchLog;

static PyTypeObject SwitchLogType;

/* Empty `slot`; the references it held are handed to `drop` (decref them after the log is
 * consistent again: a stream's deallocation may run code that switches streams). */
static void take_slot(SwitchSlot *slot, PyObject *drop[SLOT_REFS])
{
    drop[0] = slot->stream;
    drop[1] = slot->via;
    drop[2] = slot->code1;
    drop[3] = slot->code2;
    drop[4] = slot->whole;
    drop[5] = slot->kind;
    memset(slot, 0, sizeof(*slot));
}

static void drop_all(PyObject *drop[SLOT_REFS])
{
    for (int i = 0; i < SLOT_REFS; i++)
        Py_XDECREF(drop[i]);
}

static SwitchSlot *next_slot(SwitchLog *log)
{
    SwitchSlot *slot = &log->slots[log->next];
    log->next = (log->next + 1) % log->capacity;
    if (log->count < log->capacity)
        log->count++;
    return slot;
}

/* A switch; code1 and code2 are new references, stolen (stream and via are borrowed). With
 * `key` (the stream's device index, id and device type), the slot keeps the stream's type and
 * key instead of the stream (see the SetStreamHook's key_type). Inlined into the set_stream
 * hook, its hot caller, as before a creation's mark shared it (called, it cost each switch 38
 * instructions more: scripts/bench_hook_instructions.py). */
static inline Py_ALWAYS_INLINE void switchlog_put(SwitchLog *log, PyObject *stream,
                                                  const long long *key, unsigned long ident,
                                                  PyObject *via, PyObject *code1, int lasti1,
                                                  PyObject *code2, int lasti2)
{
    PyObject *drop[SLOT_REFS];
    SwitchSlot *slot = next_slot(log);
    take_slot(slot, drop);
    if (key != NULL) {
        slot->kind = Py_NewRef((PyObject *)Py_TYPE(stream));
        memcpy(slot->key, key, sizeof(slot->key));
    } else {
        slot->stream = Py_NewRef(stream);
    }
    slot->via = Py_NewRef(via);
    slot->code1 = code1;
    slot->code2 = code2;
    slot->ident = ident;
    slot->lasti1 = lasti1;
    slot->lasti2 = lasti2;
    drop_all(drop);
}

/* A stream's creation, as a mark: the rules that read the log only ask where a stream's
 * present life began (switches before it were another stream's with the same id); the
 * creation's stream, frames, time and thread name are in the book's CreationTable
 * (_creations.c). Kept by key, as switchlog_put keeps a switch, always: the mark holds no
 * stream (key[2], the device type, is -1 where it was not read); `via` is borrowed. */
static void switchlog_put_created(SwitchLog *log, PyObject *stream, const long long *key,
                                  unsigned long ident, PyObject *via)
{
    switchlog_put(log, stream, key, ident, via, NULL, 0, NULL, 0);
    log->slots[(log->next - 1 + log->capacity) % log->capacity].created = 1;
}

static PyObject *switchlog_append(PyObject *op, PyObject *record)
{
    SwitchLog *log = (SwitchLog *)op;
    PyObject *drop[SLOT_REFS];
    SwitchSlot *slot = next_slot(log);
    take_slot(slot, drop);
    slot->whole = Py_NewRef(record);
    drop_all(drop);
    Py_RETURN_NONE;
}

/* A switch's record as the Python hook appends it; one kept by key names its stream as
 * (device index, stream id, device type, stream type), which streamcheck/core/provenance.py
 * reads as the stream's key (and rebuilds only for a finding's handle). */
static PyObject *slot_record(SwitchSlot *slot)
{
    if (slot->created) /* (key, ident, via, site, time, name, kind): a creation's record */
        return Py_BuildValue("((LLLO)kO()dOO)", slot->key[0], slot->key[1], slot->key[2],
                             slot->kind, slot->ident, slot->via, 0.0, Py_None, s_created_kind);
    if (slot->kind != NULL)
        return Py_BuildValue("((LLLO)kOOiOi)", slot->key[0], slot->key[1], slot->key[2],
                             slot->kind, slot->ident, slot->via, slot->code1, slot->lasti1,
                             slot->code2, slot->lasti2);
    if (slot->stream == NULL)
        return Py_NewRef(slot->whole);
    return Py_BuildValue("(OkOOiOi)", slot->stream, slot->ident, slot->via, slot->code1,
                         slot->lasti1, slot->code2, slot->lasti2);
}

static void hold_slot(SwitchSlot *slot)
{
    Py_XINCREF(slot->stream);
    Py_XINCREF(slot->via);
    Py_XINCREF(slot->code1);
    Py_XINCREF(slot->code2);
    Py_XINCREF(slot->whole);
    Py_XINCREF(slot->kind);
}

static void release_slots(SwitchSlot *slots, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *drop[SLOT_REFS];
        take_slot(&slots[i], drop);
        drop_all(drop);
    }
}

/* Release `n` slots and free their array (NULL: nothing). */
static void free_slots(SwitchSlot *slots, Py_ssize_t n)
{
    if (slots == NULL)
        return;
    release_slots(slots, n);
    PyMem_Free(slots);
}

/* The collector's visit of `n` slots' references (the log's ring, or a reading's copy). */
static int visit_slots(SwitchSlot *slots, Py_ssize_t n, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; slots != NULL && i < n; i++) {
        Py_VISIT(slots[i].stream);
        Py_VISIT(slots[i].via);
        Py_VISIT(slots[i].code1);
        Py_VISIT(slots[i].code2);
        Py_VISIT(slots[i].whole);
        Py_VISIT(slots[i].kind);
    }
    return 0;
}

/* Reading copies the slots first, every field held, allocating no object on the way: making
 * a record allocates, which on 3.11 can run the collector and a finalizer, which can switch
 * streams and overwrite the slot being read. Records are then made from the copy. */
static SwitchSlot *copy_slots(SwitchLog *log, Py_ssize_t from, Py_ssize_t n)
{
    SwitchSlot *copy = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(SwitchSlot));
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_ssize_t first = (log->next - log->count + log->capacity) % log->capacity;
    for (Py_ssize_t i = 0; i < n; i++) {
        copy[i] = log->slots[(first + from + i) % log->capacity];
        hold_slot(&copy[i]);
    }
    return copy;
}

/* An iterator over a copy of the records, oldest or newest first. */
typedef struct {
    PyObject_HEAD
    SwitchSlot *copy;
    Py_ssize_t n, done;
    int newest_first;
} SwitchLogIter;

static PyTypeObject SwitchLogIterType;

static PyObject *records_of(SwitchLog *log, int newest_first)
{
    Py_ssize_t n = log->count;
    SwitchSlot *copy = copy_slots(log, 0, n);
    if (copy == NULL)
        return NULL;
    SwitchLogIter *it = PyObject_GC_New(SwitchLogIter, &SwitchLogIterType);
    if (it == NULL) {
        free_slots(copy, n);
        return NULL;
    }
    it->copy = copy;
    it->n = n;
    it->done = 0;
    it->newest_first = newest_first;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

/* Drop the copy (its references last): when exhausted, cleared by the collector, freed. */
static int switchlog_iter_clear(PyObject *op)
{
    SwitchLogIter *it = (SwitchLogIter *)op;
    SwitchSlot *copy = it->copy;
    Py_ssize_t n = it->n;
    it->copy = NULL;
    it->n = it->done = 0;
    free_slots(copy, n);
    return 0;
}

static int switchlog_iter_traverse(PyObject *op, visitproc visit, void *arg)
{
    SwitchLogIter *it = (SwitchLogIter *)op;
    return visit_slots(it->copy, it->n, visit, arg);
}

static PyObject *switchlog_iter_next(PyObject *op)
{
    SwitchLogIter *it = (SwitchLogIter *)op;
    if (it->copy == NULL || it->done >= it->n) {
        switchlog_iter_clear(op); /* exhausted: keep no stream alive */
        return NULL;
    }
    Py_ssize_t i = it->newest_first ? it->n - 1 - it->done : it->done;
    it->done++;
    return slot_record(&it->copy[i]);
}

static void switchlog_iter_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    switchlog_iter_clear(op);
    PyObject_GC_Del(op);
}

static PyTypeObject SwitchLogIterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.SwitchLogIterator",
    .tp_basicsize = sizeof(SwitchLogIter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The records of a SwitchLog as they were when iteration began.",
    .tp_dealloc = switchlog_iter_dealloc,
    .tp_traverse = switchlog_iter_traverse,
    .tp_clear = switchlog_iter_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = switchlog_iter_next,
};

/* iter(log): oldest first, as a deque iterates. */
static PyObject *switchlog_iter(PyObject *op)
{
    return records_of((SwitchLog *)op, 0);
}

/* log.newest_first(): what the book's rules read (they stop at the first match), without
 * making the records they never reach. */
static PyObject *switchlog_newest_first(PyObject *op, PyObject *unused)
{
    return records_of((SwitchLog *)op, 1);
}

static Py_ssize_t switchlog_len(PyObject *op)
{
    return ((SwitchLog *)op)->count;
}

/* log[i], oldest first (negative from the newest), as deque indexing. */
static PyObject *switchlog_item(PyObject *op, Py_ssize_t i)
{
    SwitchLog *log = (SwitchLog *)op;
    if (i < 0 || i >= log->count) {
        PyErr_SetString(PyExc_IndexError, "SwitchLog index out of range");
        return NULL;
    }
    SwitchSlot *copy = copy_slots(log, i, 1);
    if (copy == NULL)
        return NULL;
    PyObject *record = slot_record(copy);
    free_slots(copy, 1);
    return record;
}

/* Forget every record. The slots are swapped for empty ones before the old ones' references
 * are dropped (a stream's deallocation may switch streams: those switches are kept). */
static int switchlog_clear(PyObject *op)
{
    SwitchLog *log = (SwitchLog *)op;
    if (log->slots == NULL)
        return 0;
    SwitchSlot *fresh = PyMem_Calloc((size_t)log->capacity, sizeof(SwitchSlot));
    if (fresh == NULL) {
        /* No memory for a fresh ring: empty this one in place, the log empty before any
         * reference is dropped (a finalizer then reads nothing; a switch it makes may land in
         * a slot emptied after it, and is lost). */
        log->next = log->count = 0;
        release_slots(log->slots, log->capacity);
        return 0;
    }
    SwitchSlot *old = log->slots;
    log->slots = fresh;
    log->next = log->count = 0;
    free_slots(old, log->capacity);
    return 0;
}

static PyObject *switchlog_clear_method(PyObject *op, PyObject *unused)
{
    switchlog_clear(op);
    Py_RETURN_NONE;
}

/* The ring fills from slot 0 (next and count move together until it is full, and clear
 * empties both), so the filled slots are the first `count`: a young log, the one a collection
 * of the youngest generation meets right after an install, costs what it holds, not its
 * 16,384 slots. */
static int switchlog_traverse(PyObject *op, visitproc visit, void *arg)
{
    SwitchLog *log = (SwitchLog *)op;
    return visit_slots(log->slots, log->count, visit, arg);
}

static void switchlog_dealloc(PyObject *op)
{
    SwitchLog *log = (SwitchLog *)op;
    PyObject_GC_UnTrack(op);
    if (log->weakrefs != NULL)
        PyObject_ClearWeakRefs(op);
    SwitchSlot *slots = log->slots;
    log->slots = NULL;
    log->next = log->count = 0;
    free_slots(slots, log->capacity);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *switchlog_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t capacity;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SwitchLog takes its capacity by position only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "n:SwitchLog", &capacity))
        return NULL;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "SwitchLog: capacity >= 1");
        return NULL;
    }
    SwitchLog *log = (SwitchLog *)type->tp_alloc(type, 0);
    if (log == NULL)
        return NULL;
    log->slots = PyMem_Calloc((size_t)capacity, sizeof(SwitchSlot));
    if (log->slots == NULL) {
        Py_DECREF(log);
        return PyErr_NoMemory();
    }
    log->capacity = capacity;
    return (PyObject *)log;
}

static PyObject *switchlog_maxlen(PyObject *op, void *closure)
{
    return PyLong_FromSsize_t(((SwitchLog *)op)->capacity);
}

static PyMethodDef switchlog_methods[] = {
    {"append", switchlog_append, METH_O, "append(record): keep a record whole."},
    {"clear", switchlog_clear_method, METH_NOARGS, "Forget every record."},
    {"newest_first", switchlog_newest_first, METH_NOARGS,
     "newest_first(): an iterator over the records, newest first."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef switchlog_getset[] = {
    {"maxlen", switchlog_maxlen, NULL, "the records kept", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods switchlog_as_sequence = {.sq_length = switchlog_len,
                                                  .sq_item = switchlog_item};

static PyTypeObject SwitchLogType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.SwitchLog",
    .tp_basicsize = sizeof(SwitchLog),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "SwitchLog(capacity): the stream book's bounded log of switches.",
    .tp_new = switchlog_new,
    .tp_dealloc = switchlog_dealloc,
    .tp_traverse = switchlog_traverse,
    .tp_clear = switchlog_clear,
    .tp_iter = switchlog_iter,
    .tp_as_sequence = &switchlog_as_sequence,
    .tp_methods = switchlog_methods,
    .tp_getset = switchlog_getset,
    .tp_weaklistoffset = offsetof(SwitchLog, weakrefs),
};

/* ---- SetStreamHook ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *gate, *original, *via, *key_type, *seen, *append, *dict, *weakrefs;
    Py_ssize_t key_offsets[3]; /* key_type's KEY_FIELDS as integer slots; 0: read generically */
    vectorcallfunc vectorcall;
} SetStreamHook;

/* ---- a switch kept by its stream's key ------------------------------------------------ */

/*
 * A log that keeps each switch's stream object keeps every stream object
 * torch.cuda.current_stream() made (each `with torch.cuda.stream(s)` leaves through one): until
 * the log is full, each switch leaves one more object alive for the collector to count and
 * scan (one young collection every 36 iterations of the stream-heavy loop, about 530 streams
 * in each: docs/measurements.md), and once it is full each is promoted to the oldest
 * generation before the log lets it go, where it brings the next full collection nearer.
 * So a stream of the hook's key_type (torch.cuda.Stream: the wrappers name it) is kept as its
 * type and its (device index, stream id, device type), three integers the type rebuilds it
 * from (torch.cuda.Stream(stream_id=..., device_index=..., device_type=...), as torch's own
 * current_stream() does): nothing of the switch outlives it but the code objects. Only
 * instances of exactly key_type: a subclass may need more to be rebuilt (an ExternalStream
 * its pointer). One whose key cannot be read as three integers is kept as the object.
 */
/* The key's fields, in a kept key's order (interned when the module is made). */
static PyObject **const KEY_FIELDS[3] = {&s_device_index, &s_stream_id, &s_device_type};

/* The offsets of `key_type`'s KEY_FIELDS as 64-bit integer fields: all three, or all 0 (not
 * such a type, or None: read some other way). */
static void learn_key_offsets(PyObject *key_type, Py_ssize_t offsets[3])
{
    for (int i = 0; i < 3; i++)
        offsets[i] = key_type == NULL || key_type == Py_None
                         ? 0
                         : member_offset((PyTypeObject *)key_type, *KEY_FIELDS[i], T_LONGLONG, 0);
    if (offsets[0] == 0 || offsets[1] == 0 || offsets[2] == 0)
        offsets[0] = offsets[1] = offsets[2] = 0;
}

/* `stream`'s key read from its fields at `offsets` (learn_key_offsets', all nonzero). */
static void key_in_place(PyObject *stream, const Py_ssize_t offsets[3], long long key[3])
{
    for (int i = 0; i < 3; i++)
        key[i] = *(long long *)((char *)stream + offsets[i]);
}

/* `stream`'s key into `key` when the switch is kept by key: 1; 0 keep the stream itself (not
 * of key_type, or a field not an integer: nothing raised). */
static int stream_key_of(SetStreamHook *self, PyObject *stream, long long key[3])
{
    if (self->key_type == NULL || (PyObject *)Py_TYPE(stream) != self->key_type)
        return 0;
    if (self->key_offsets[0] != 0) {
        key_in_place(stream, self->key_offsets, key);
        return 1;
    }
    for (int i = 0; i < 3; i++) {
        PyObject *value = PyObject_GetAttr(stream, *KEY_FIELDS[i]);
        key[i] = value != NULL && PyLong_Check(value) ? PyLong_AsLongLong(value) : -1;
        int bad = value == NULL || !PyLong_Check(value) || (key[i] == -1 && PyErr_Occurred());
        Py_XDECREF(value);
        if (bad) {
            PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

/* Whether `fn` is a SwitchLog's own append (auditor.made_current, when the book's log is
 * one): then the switch goes into its slot directly. */
static SwitchLog *switch_log_of(PyObject *fn)
{
    if (!PyCFunction_Check(fn))
        return NULL;
    PyObject *owner = PyCFunction_GET_SELF(fn);
    if (owner == NULL || !Py_IS_TYPE(owner, &SwitchLogType) ||
        PyCFunction_GET_FUNCTION(fn) != (PyCFunction)switchlog_append)
        return NULL;
    return (SwitchLog *)owner;
}

/* Whether the weak reference `ref` refers to `obj` (a dead one refers to nothing). */
static int refers_to(PyObject *ref, PyObject *obj)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *target;
    if (PyWeakref_GetRef(ref, &target) < 0) {
        PyErr_Clear();
        return 0;
    }
    int same = target == obj;
    Py_XDECREF(target);
    return same;
#else
    return PyWeakref_GET_OBJECT(ref) == obj;
#endif
}

/* Keep `read` (a new reference, handed back) as what was read of `obj`: `*seen` a weak
 * reference to obj, `*value` read. Only for the objects read_once_per_object names below; one
 * that takes no weak reference is not kept, and is read again next time. */
static PyObject *remember_read(PyObject **seen, PyObject **value, PyObject *obj,
                               PyObject *read)
{
    PyObject *ref = PyWeakref_NewRef(obj, NULL);
    if (ref == NULL) {
        PyErr_Clear();
        return read;
    }
    PyObject *old_seen = *seen, *old_value = *value;
    *seen = ref;
    *value = Py_NewRef(read);
    Py_XDECREF(old_seen); /* after the fields are consistent: a deallocation may run code */
    Py_XDECREF(old_value);
    return read;
}

/* obj.name, read once per object: `*seen` is a weak reference to the object it was read from
 * last and `*value` what was read (an object made where a freed one was is read afresh, and
 * none is kept alive). An object that takes no weak reference is read every time. A new
 * reference, or NULL + error.
 * Only for objects whose deallocation clears their weak references (communicators, auditors:
 * Python classes). Not for torch.cuda.Stream or Event: in torch 2.11 their C deallocators do
 * not clear the weak references their base types accept, so one left behind points into freed
 * memory and dropping it writes there (pytorch/pytorch#183403; on an H200 a freed stream's weak
 * reference still answered). A cache of stream keys held by weak references crashed the
 * stream-heavy loop that way (docs/measurements.md, twelfth and thirteenth sessions); a stream
 * is kept by a strong reference instead (keep_stream, kept_stream_key). */
static PyObject *read_once_per_object(PyObject **seen, PyObject **value, PyObject *obj,
                                      PyObject *name)
{
    if (*seen != NULL && *value != NULL && refers_to(*seen, obj))
        return Py_NewRef(*value);
    PyObject *read = PyObject_GetAttr(obj, name);
    return read == NULL ? NULL : remember_read(seen, value, obj, read);
}

/* auditor.made_current, a new reference (NULL + error). An auditor sets it once, when it is
 * made (its book's log's append), so it is read once per auditor (`seen`, `append`). */
static PyObject *made_current_of(SetStreamHook *self, PyObject *auditor)
{
    return read_once_per_object(&self->seen, &self->append, auditor, s_made_current);
}

/* Forget the auditor read last (the audit stopped: keep none of its log alive). */
static void forget_auditor(SetStreamHook *self)
{
    PyObject *old_seen = self->seen, *old_append = self->append;
    self->seen = self->append = NULL;
    Py_XDECREF(old_seen);
    Py_XDECREF(old_append);
}

/* auditor.made_current((stream, ident, via, code, offset, outer code, outer offset)): the
 * record the Python hook appends, for the caller of set_stream and its caller; written into a
 * SwitchLog's slot without making it, when made_current is one's append. */
static int record_switch(SetStreamHook *self, PyObject *auditor, PyObject *stream)
{
    PyObject *via = self->via;
    PyObject *fn = made_current_of(self, auditor);
    if (fn == NULL)
        return -1;
    /* the caller of set_stream and its caller, read in place (None, 0 where there is none) */
    PyObject *codes[2] = {Py_None, Py_None};
    int lastis[2] = {0, 0};
    int found = running_frames(0, codes, lastis, 2);
    if (found < 0) {
        Py_DECREF(fn);
        return -1;
    }
    for (int i = found; i < 2; i++)
        Py_INCREF(Py_None);
    SwitchLog *log = switch_log_of(fn);
    if (log != NULL) { /* the slot takes the two code references */
        long long key[3];
        int keyed = stream_key_of(self, stream, key);
        switchlog_put(log, stream, keyed ? key : NULL, PyThread_get_thread_ident(), via,
                      codes[0], lastis[0], codes[1], lastis[1]);
        Py_DECREF(fn);
        return 0;
    }
    PyObject *code1 = codes[0], *code2 = codes[1];
    PyObject *lasti1 = PyLong_FromLong(lastis[0]), *lasti2 = PyLong_FromLong(lastis[1]);
    PyObject *ident = NULL, *record = NULL, *result = NULL;
    int rc = -1;
    if (lasti1 == NULL || lasti2 == NULL)
        goto done;
    ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (ident == NULL)
        goto done;
    record = PyTuple_Pack(7, stream, ident, via, code1, lasti1, code2, lasti2);
    if (record == NULL)
        goto done;
    result = PyObject_CallOneArg(fn, record);
    rc = result == NULL ? -1 : 0;
done:
    Py_XDECREF(code1);
    Py_XDECREF(lasti1);
    Py_XDECREF(code2);
    Py_XDECREF(lasti2);
    Py_XDECREF(ident);
    Py_XDECREF(record);
    Py_XDECREF(fn);
    Py_XDECREF(result);
    return rc;
}

static PyObject *hook_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames)
{
    SetStreamHook *self = (SetStreamHook *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *stream = NULL;
    if (nargs == 1 && kwnames == NULL)
        stream = args[0];
    else if (nargs == 0 && kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1 &&
             PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_stream) == 0)
        stream = args[0];
    if (stream == NULL) /* another call shape: the original's own error */
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    if (stream != Py_None) {
        PyObject *auditor = gate_auditor(self->gate);
        if (auditor == NULL)
            return NULL;
        if (auditor == Py_None && self->seen != NULL)
            forget_auditor(self);
        int bad = auditor != Py_None && record_switch(self, auditor, stream) < 0;
        Py_DECREF(auditor);
        if (bad)
            return NULL;
    }
    return PyObject_CallOneArg(self->original, stream); /* by position, as the Python hook */
}

static PyObject *hook_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *gate, *original, *via, *key_type = Py_None;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SetStreamHook takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOU|O:SetStreamHook", &gate, &original, &via, &key_type))
        return NULL;
    if (key_type != Py_None && !PyType_Check(key_type)) {
        PyErr_SetString(PyExc_TypeError, "SetStreamHook: key_type is a type or None");
        return NULL;
    }
    SetStreamHook *self = (SetStreamHook *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->gate = Py_NewRef(gate);
    self->original = Py_NewRef(original);
    self->via = Py_NewRef(via);
    self->key_type = key_type == Py_None ? NULL : Py_NewRef(key_type);
    self->dict = NULL;
    self->vectorcall = hook_vectorcall;
    learn_key_offsets(self->key_type, self->key_offsets);
    return (PyObject *)self;
}

OBJECT_FIELDS(hook, SetStreamHook, gate, dict)

static PyGetSetDef dict_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL}, {NULL}};

/* hook.keys_in_place: whether a key_type stream's key is read from its fields in place (as
 * torch's stream types keep it), not through three attribute reads. */
static PyObject *hook_keys_in_place(PyObject *op, void *closure)
{
    return PyBool_FromLong(((SetStreamHook *)op)->key_offsets[0] != 0);
}

static PyGetSetDef hook_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"keys_in_place", hook_keys_in_place, NULL, "key_type's key read in place", NULL},
    {NULL}};

static PyTypeObject SetStreamHookType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.SetStreamHook",
    .tp_basicsize = sizeof(SetStreamHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "set_stream(stream) that first records which thread made stream current.",
    .tp_new = hook_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(SetStreamHook, vectorcall),
    .tp_dictoffset = offsetof(SetStreamHook, dict),
    .tp_weaklistoffset = offsetof(SetStreamHook, weakrefs), /* as a function can be weakly referenced */
    .tp_traverse = hook_traverse,
    .tp_clear = hook_clear,
    .tp_dealloc = hook_dealloc,
    .tp_getset = hook_getset,
};

/* ---- StreamCheck ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *gate, *owner, *counter, *raw_reader, *current_reader, *last_stream, *last_device,
        *last_comm, *last_target, *key_type, *weakrefs;
    Py_ssize_t key_offsets[3]; /* key_type's KEY_FIELDS as integer slots; 0: not read so */
    /* what was read of last_stream: its handle (if have_handle) and its device (last_device,
     * NULL: not read yet) */
    long long last_handle;
    int have_handle;
    int last_nondefault; /* last_stream's id is nonzero: 1, 0; -1 not read yet */
    int resolved; /* checks the stream an accessor resolved (stream=None), else one given */
    vectorcallfunc vectorcall;
} StreamCheck;

/* Drop a pending Exception (the Python wrapper will meet it again and decide); keep the
 * BaseException-only ones (KeyboardInterrupt, SystemExit), which no Python wrapper catches.
 * 0: dropped (or none pending), -1: one is still set and must propagate. */
static int drop_ordinary_error(void)
{
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyErr_Clear();
    return 0;
}

/* 1: equal ints, 0: not (or not ints), -1: error */
static int same_long(PyObject *a, PyObject *b)
{
    if (!PyLong_CheckExact(a) || !PyLong_CheckExact(b))
        return 0;
    if (a == b) /* the small ints (a device index, stream id 0) are one object each */
        return 1;
    int overflow_a = 0, overflow_b = 0;
    long long x = PyLong_AsLongLongAndOverflow(a, &overflow_a);
    long long y = PyLong_AsLongLongAndOverflow(b, &overflow_b);
    if ((x == -1 || y == -1) && PyErr_Occurred())
        return -1;
    return !overflow_a && !overflow_b && x == y;
}

static int is_calling_thread(PyObject *ident)
{
    if (!PyLong_CheckExact(ident))
        return 0;
    unsigned long value = PyLong_AsUnsignedLong(ident);
    if (value == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return value == PyThread_get_thread_ident();
}

/* Whether the calling thread is auditor.main_engine (the ident of the main thread while it is
 * an engine thread, else None): 1, 0, or -1 + error. Asked by the launch checks'
 * default-stream and engine-thread tests. Read from the gate's own slots where it mirrors
 * this auditor (`gate.mirrors is auditor`: the installer made the gate follow the thread-role
 * table that keeps the auditor's, streamcheck/wrappers/gate.py), two loads where a generic
 * read of the auditor's attribute looks the name up in its type and then in its instance, and
 * compared with no reference taken (no code runs between the read and the comparison), so the
 * ident's object is not written; generically otherwise. Called after the gate's type was
 * checked (gate_auditor, gate_holds). */
static int main_engine_calls(PyObject *gate, PyObject *auditor)
{
    if (gate_mirrors_offset > 0 && (PyObject *)Py_TYPE(gate) == gate_type &&
        Py_TYPE(gate)->tp_version_tag == gate_tag &&
        *(PyObject **)((char *)gate + gate_mirrors_offset) == auditor) {
        PyObject *value = *(PyObject **)((char *)gate + gate_main_offset);
        if (value != NULL)
            return is_calling_thread(value);
    }
    PyObject *value = PyObject_GetAttr(auditor, s_main_engine);
    if (value == NULL)
        return -1;
    int engine = is_calling_thread(value);
    Py_DECREF(value);
    return engine;
}

static int count_launch(StreamCheck *self)
{
    return launch_counter_advance(self->counter);
}

/* The Python wrapper's own pass-through test for a stream it did not tell by its handle:
 * `stream` is the calling thread's current stream on the target device (read through
 * current_reader(target): (stream id, device, type)), on that device, and either not a
 * default stream or used by the main engine thread. 1: let through, 0: not, -1: error. */
static int is_current_and_fine(StreamCheck *self, PyObject *auditor, PyObject *stream,
                               PyObject *target)
{
    int ok = -1;
    PyObject *sid = NULL, *sdev = NULL, *cur = NULL;
    if (self->current_reader == Py_None)
        return 0;
    sid = PyObject_GetAttr(stream, s_stream_id);
    sdev = sid == NULL ? NULL : PyObject_GetAttr(stream, s_device_index);
    cur = sdev == NULL ? NULL : PyObject_CallOneArg(self->current_reader, target);
    if (cur == NULL)
        goto done;
    if (!PyTuple_Check(cur) || PyTuple_GET_SIZE(cur) < 1) {
        ok = 0;
        goto done;
    }
    int same = same_long(sid, PyTuple_GET_ITEM(cur, 0));
    if (same == 1)
        same = same_long(sdev, target);
    if (same != 1) {
        ok = same;
        goto done;
    }
    int nonzero = PyObject_IsTrue(sid);
    if (nonzero != 0) {
        ok = nonzero;
        goto done;
    }
    ok = main_engine_calls(self->gate, auditor);
done:
    Py_XDECREF(sid);
    Py_XDECREF(sdev);
    Py_XDECREF(cur);
    return ok;
}

/* A launch's stream is read once per stream object: an accessor that keeps its stream (vLLM's
 * current_stream()) hands the same object to every launch, a caller that passes its stream
 * mostly passes the same one, and a stream object's handle and device never change (the
 * object is kept alive here, so its address is not reused). Make `stream` the one kept,
 * with nothing read of it yet, and hand back the objects it replaced: the caller writes what
 * it read of the new stream first and releases them last (a release may run code that
 * launches, and must find the fields consistent). */
typedef struct {
    PyObject *stream, *device;
} Released;

static Released keep_stream(StreamCheck *self, PyObject *stream)
{
    Released old = {self->last_stream, self->last_device};
    self->last_stream = Py_NewRef(stream);
    self->last_device = NULL;
    self->have_handle = 0;
    self->last_nondefault = -1;
    return old;
}

/* Drop what keep_stream replaced, once the caller wrote what it read of the new stream. */
static void release(Released old)
{
    Py_XDECREF(old.stream);
    Py_XDECREF(old.device);
}

/* Whether the stream is not a default stream (its stream id nonzero): 1, 0, or -1 + error. */
static int stream_nondefault(StreamCheck *self, PyObject *stream)
{
    if (stream == self->last_stream && self->last_nondefault >= 0)
        return self->last_nondefault;
    PyObject *value = PyObject_GetAttr(stream, s_stream_id);
    if (value == NULL)
        return -1;
    int nondefault = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (nondefault < 0)
        return -1;
    Released old = {NULL, NULL};
    if (stream != self->last_stream) /* read first: the read may have let another thread in */
        old = keep_stream(self, stream);
    self->last_nondefault = nondefault;
    release(old);
    return nondefault;
}

/* The stream's handle (-1: not an int): 0 with *handle set, or -1 + error. */
static int stream_handle(StreamCheck *self, PyObject *stream, long long *handle)
{
    if (stream == self->last_stream && self->have_handle) {
        *handle = self->last_handle;
        return 0;
    }
    long long read;
    if (steal_long_long(PyObject_GetAttr(stream, s_cuda_stream), &read) < 0)
        return -1;
    Released old = {NULL, NULL};
    if (stream != self->last_stream) /* read first: the read may have let another thread in */
        old = keep_stream(self, stream);
    self->last_handle = read;
    self->have_handle = 1;
    release(old);
    *handle = read;
    return 0;
}

/* The stream's device index: a new reference, or NULL + error. */
static PyObject *stream_device(StreamCheck *self, PyObject *stream)
{
    if (stream == self->last_stream && self->last_device != NULL)
        return Py_NewRef(self->last_device);
    PyObject *device = PyObject_GetAttr(stream, s_device_index);
    if (device == NULL)
        return NULL;
    Released old = {NULL, NULL};
    if (stream != self->last_stream)
        old = keep_stream(self, stream);
    if (self->last_device == NULL)
        self->last_device = Py_NewRef(device);
    release(old);
    return device;
}

/* A default stream (handle 0-2) equal to the current one on the target device: let through
 * when it is on that device and the main engine thread launches. 1: yes, 0: not (the full
 * test decides), -1: error. */
static int default_stream_is_fine(StreamCheck *self, PyObject *auditor, PyObject *stream,
                                  PyObject *target)
{
    PyObject *value = stream_device(self, stream);
    if (value == NULL)
        return -1;
    int same = same_long(value, target);
    Py_DECREF(value);
    if (same != 1)
        return same;
    return main_engine_calls(self->gate, auditor);
}

/* The communicator's device, a new reference (NULL + error): kept in its
 * `_streamcheck_device` by the Python wrapper, which reads it once per communicator (a
 * communicator is bound to one device for life). Read here once per communicator object too:
 * the last one is known by a weak reference (a communicator made where a freed one was is
 * read afresh, and none is kept alive), with its device; a wrapper mostly sees one
 * communicator, its group's. */
static PyObject *communicator_device(StreamCheck *self, PyObject *comm)
{
    return read_once_per_object(&self->last_comm, &self->last_target, comm, s_device_attr);
}

/* An explicit stream passes on the communicator's device, not a default stream or from the
 * main engine thread (its device and id read once per stream object). 1: passes, 0: the
 * Python wrapper decides, -1: error. */
static int explicit_passes(StreamCheck *self, PyObject *auditor, PyObject *target,
                           PyObject *given)
{
    int nondefault = stream_nondefault(self, given);
    if (nondefault <= 0) /* a default stream: as one the resolver gave */
        return nondefault < 0 ? -1 : default_stream_is_fine(self, auditor, given, target);
    PyObject *value = stream_device(self, given);
    if (value == NULL)
        return -1;
    int same = same_long(value, target);
    Py_DECREF(value);
    return same;
}

/* A resolved stream of exactly key_type (torch.cuda.Stream; a new object at every call where
 * the accessor is torch's current_stream()) told by its (device index, stream id, device type)
 * read in place from its fields, against the current stream on the target device read
 * natively (streamcheck/_native_streams.c): no attribute read, no object kept. The same
 * answer as the handle comparison: a stream id names one stream on its device (an external
 * stream's id is its handle), and ids 0 and 2 are the handles 0-2 an id can be (the default
 * stream; an external stream on cudaStreamPerThread), fine only for the main engine thread.
 * 1: passes, 0: not told here (the other tests decide), -1: error. */
static int key_passes(StreamCheck *self, PyObject *auditor, PyObject *target, PyObject *stream)
{
    if (self->key_offsets[0] == 0 || (PyObject *)Py_TYPE(stream) != self->key_type ||
        !PyLong_CheckExact(target))
        return 0;
    long index = PyLong_AsLong(target);
    long long current[3], key[3];
    if (index == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (!native_stream_key(self->raw_reader, index, current))
        return 0;
    key_in_place(stream, self->key_offsets, key);
    if (key[0] != index || key[1] != current[0] || key[2] != current[2])
        return 0; /* not the current stream there: the full test says why */
    if (key[1] != 0 && key[1] != 2)
        return 1;
    return main_engine_calls(self->gate, auditor);
}

/* A stream resolved for stream=None passes where it is the calling thread's current one on
 * the communicator's device (told by its handle: above 2 alone, 0-2 with the stream's device;
 * or by current_reader's stream id), and not a default stream unless the main engine thread
 * launches (the handle and device of the last stream object resolved are kept: an accessor
 * that keeps its stream is read once). 1: passes, 0: the Python wrapper decides, -1: error. */
static int implicit_passes(StreamCheck *self, PyObject *auditor, PyObject *target,
                           PyObject *stream)
{
    int told = key_passes(self, auditor, target, stream);
    if (told != 0)
        return told;
    if (self->raw_reader != Py_None) { /* one handle comparison tells the usual case */
        long long handle, current;
        if (stream_handle(self, stream, &handle) < 0 ||
            read_raw_stream(self->raw_reader, target, &current) < 0)
            return -1;
        if (current == handle && handle > 2)
            return 1;
        if (current == handle && handle >= 0) {
            /* 0-2 name a default stream on every device: the resolved one is the current
             * one if it is on the target device, and a default stream is fine only for the
             * main engine thread (the full test's answer, without its stream id and tuple) */
            int fine = default_stream_is_fine(self, auditor, stream, target);
            if (fine != 0)
                return fine;
        }
    }
    return is_current_and_fine(self, auditor, stream, target); /* the full test */
}

/*
 * check(communicator, stream) -> bool, called by the generated wrapper of a communicator
 * method (streamcheck/wrappers/launches.py) before it calls the method itself. True: the
 * launch goes ahead; it was counted (the installing auditor's counter advanced) unless the
 * gate holds no auditor. False: the generated Python wrapper decides, counts and warns (an
 * auditor other than the installing one, a stream that does not pass, an error here, cleared).
 * What passes, each exactly where that Python wrapper lets it through: a stream given
 * explicitly that explicit_passes; a stream the accessor resolved for stream=None (a check
 * made with `resolved` true) that implicit_passes.
 *
 * A check and not a wrapper: the wrapper is the generated Python function, which resolves the
 * stream and calls the method inline (one frame pushed, as the interpreter calls Python from
 * Python); a compiled wrapper had to enter the interpreter afresh from C for the accessor and
 * again for the method, each entry's code cold again after the engine's other work (about
 * half the first-level code lines a cold kept-stream launch added,
 * scripts/bench_hook_instructions.py --cold).
 */
static PyObject *check_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    StreamCheck *self = (StreamCheck *)op;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "StreamCheck takes (communicator, stream)");
        return NULL;
    }
    int holds = gate_holds(self->gate, self->owner);
    if (holds < 0)
        return NULL;
    if (holds == 0) /* the audit stopped or paused since the wrapper looked */
        Py_RETURN_TRUE;
    if (holds != 1)
        Py_RETURN_FALSE;
    /* the installing auditor, held by this check for its life: no reference taken here */
    PyObject *auditor = self->owner, *stream = args[1];
    PyObject *target = communicator_device(self, args[0]);
    if (target == NULL)
        goto undecided;
    int fine = self->resolved ? implicit_passes(self, auditor, target, stream)
                              : explicit_passes(self, auditor, target, stream);
    Py_DECREF(target);
    if (fine < 0)
        goto undecided;
    if (!fine)
        Py_RETURN_FALSE;
    if (count_launch(self) < 0)
        return NULL;
    Py_RETURN_TRUE;
undecided:
    if (drop_ordinary_error() < 0)
        return NULL;
    Py_RETURN_FALSE;
}

/* check.passes(communicator, stream): the same check as a builtin method, which the
 * interpreter calls through its own specialized call of a METH_FASTCALL builtin rather than
 * the generic call of an object with a vectorcall slot (scripts/bench_hook_instructions.py:
 * fewer instructions a launch). The generated wrappers call this bound method. */
static PyObject *check_passes(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    return check_vectorcall(op, args, (size_t)nargs, NULL);
}

static PyMethodDef check_methods[] = {
    {"passes", (PyCFunction)(void (*)(void))check_passes, METH_FASTCALL,
     "passes(communicator, stream) -> bool: the check, as calling the object makes it."},
    {NULL, NULL, 0, NULL},
};

static PyObject *check_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *gate, *owner, *counter, *raw_reader, *current_reader, *key_type = Py_None;
    int resolved;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "StreamCheck takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOpOO|O:StreamCheck", &gate, &owner, &counter, &resolved,
                          &raw_reader, &current_reader, &key_type))
        return NULL;
    if (key_type != Py_None && !PyType_Check(key_type)) {
        PyErr_SetString(PyExc_TypeError, "StreamCheck: key_type is a type or None");
        return NULL;
    }
    if (!PyIter_Check(counter)) {
        PyErr_SetString(PyExc_TypeError, "StreamCheck: the counter is an iterator");
        return NULL;
    }
    StreamCheck *self = (StreamCheck *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->gate = Py_NewRef(gate);
    self->owner = Py_NewRef(owner);
    self->counter = Py_NewRef(counter);
    self->raw_reader = Py_NewRef(raw_reader);
    self->current_reader = Py_NewRef(current_reader);
    self->key_type = Py_NewRef(key_type);
    learn_key_offsets(key_type, self->key_offsets);
    self->resolved = resolved;
    self->last_nondefault = -1;
    self->vectorcall = check_vectorcall;
    return (PyObject *)self;
}

OBJECT_FIELDS(check, StreamCheck, gate, key_type)

static PyTypeObject StreamCheckType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.StreamCheck",
    .tp_basicsize = sizeof(StreamCheck),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The common launches' stream check, called by a generated launch wrapper.",
    .tp_new = check_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(StreamCheck, vectorcall),
    .tp_weaklistoffset = offsetof(StreamCheck, weakrefs),
    .tp_methods = check_methods,
    .tp_traverse = check_traverse,
    .tp_clear = check_clear,
    .tp_dealloc = check_dealloc,
};

/* ---- GuardedCall: EventRecord and TensorCall ---------------------------------------- */

/*
 * A callable (bound like a function where it is a class attribute) that lets the plain call
 * through to `original` and hands every other one to `slow`, the Python hook, before
 * anything runs:
 *
 *   EVENT_RECORD, Event.record(self, stream=None): plain when no clocks are live
 *     (auditor.ordering false) and the event is already bound to a device (its attribute
 *     `bound`), the device of the stream it is recorded on (the thread's current device,
 *     `reader()`, for stream=None); `after(event[, stream])` snapshots the record if the
 *     clocks went live meanwhile; an event not bound yet (its first record: torch makes a
 *     new one in every `wait_stream`) is plain too, and bound here after the record, to the
 *     device it was recorded on (torch creates the event there);
 *     With the clocks live, a record is plain too, and keeps its snapshot (the stream's
 *     clock) on the event here: the given stream's, or for stream=None the thread's current
 *     stream on its current device (`current(reader())`), read after the record as the
 *     Python hook reads it; without `current`, a record on the current stream goes to `slow`;
 *   TENSOR_CALL, a torch.distributed function: plain when its first argument (or a list's
 *     head, or that head's `tensor`: device_of_first) has a device (`get_device()` >= 0)
 *     and the calling thread is the main engine thread (`auditor.main_engine`: its current
 *     stream is not read), or the thread's current stream there (`reader(device)`, a
 *     (stream id, device, type) tuple; read natively once that was proven:
 *     streamcheck/_native_streams.c) is not a default stream (id 0); the launch is counted;
 *   EVENT_WAIT, Event.wait(self, stream=None): plain while no clocks are live, and when the
 *     stream is given and its clock already holds every entry of the event's snapshot (the
 *     common wait: it adds nothing); any other wait goes to `slow`, which merges;
 *   WAIT_STREAM, Stream.wait_stream(self, other), both of the hooked class itself (`owner`;
 *     any other call goes to `original` with the event hooks working as ever): torch's own
 *     (`self.wait_event(other.record_event())`: a new event, recorded on `other`, waited on
 *     `self`, never seen again) runs with this thread's EVENT_RECORD and EVENT_WAIT hooks
 *     passing straight through (`inside_wait_stream`), and the edge is made here: `other`'s
 *     clock read before the call (everything the event will hold), and after it, unless
 *     `self`'s clock already holds that, `slow(self, clock)` takes it in. The two event hooks'
 *     work (binding the event, keeping its snapshot on it, reading it back) is not needed for
 *     an event nobody else sees.
 *   HOST_WAIT, Stream.synchronize(self), and HOST_POLL, Stream.query(self), of the hooked
 *     class itself (`owner`; any other call goes to `slow`, the Python hook): with the
 *     clocks live, `self`'s clock is read before the call (what the host is about to wait
 *     for: work another thread queues meanwhile is not), and after it (for a poll, only when
 *     it said True) the clocks' done clock takes it in, as HappensBefore.host_waited_for
 *     does: nothing when it holds it already, else a new merged dict under the clocks' lock.
 *     A failure of that step after the wait goes to `after` (a warning) where one is given,
 *     the wait's result standing, as in the Python hook.
 *     A connector syncs its copy stream at every job; in Python the hook is five frames.
 *   EVENT_HOST_WAIT, Event.synchronize(self), and EVENT_HOST_POLL, Event.query(self), of the
 *     hooked class itself (`owner`): the same, with the event's snapshot (its attribute
 *     `bound`, kept by its live record) for the stream's clock, read before the call, as the
 *     host waits for the record made before it (another thread's record meanwhile is not
 *     waited for). An event with no snapshot on it (never recorded live, or one that takes
 *     no attribute: HappensBefore keeps its snapshot in a table) goes to `slow`. A
 *     connector's worker polls or waits on an engine step's event at every job.
 */
enum { EVENT_RECORD = 1, TENSOR_CALL = 2, EVENT_WAIT = 3, WAIT_STREAM = 4, HOST_WAIT = 5,
       HOST_POLL = 6, EVENT_HOST_WAIT = 7, EVENT_HOST_POLL = 8 };

/* The kinds host_wait_call takes: the host waits for (or polls) a stream or an event. */
#define IS_HOST_KIND(kind) ((kind) >= HOST_WAIT && (kind) <= EVENT_HOST_POLL)
#define IS_POLL_KIND(kind) ((kind) == HOST_POLL || (kind) == EVENT_HOST_POLL)

#if defined(_MSC_VER)
#define THREAD_LOCAL __declspec(thread)
#else
#define THREAD_LOCAL _Thread_local
#endif

/* How many WAIT_STREAM calls this thread is inside (their event hooks pass straight through). */
static THREAD_LOCAL int inside_wait_stream;

/* The (device, stream id) keys of the last few streams an event hook was given: a
 * `wait_stream` records on one stream and waits on another, and an engine's step alternates
 * between a few, each the same object for a while (its main stream, a side stream, a
 * connector's). Entry i is keys[2i], the stream (a strong reference: see read_once_per_object
 * for why never a weak one), and keys[2i + 1], its key. */
#define KEPT_KEYS 4

typedef struct {
    PyObject_HEAD
    PyObject *gate, *owner, *counter, *original, *slow, *reader, *bound, *after, *current,
        *live_seen, *live_table, *keys[2 * KEPT_KEYS], *held[2], *dict, *weakrefs;
    Py_hash_t key_hashes[KEPT_KEYS];
    int kind, next_key;
    char keys_tables_own[KEPT_KEYS];
    vectorcallfunc vectorcall;
} GuardedCall;

static PyObject *s_ordering, *s_get_device, *s_lock, *s_done, *s_tensor;

/* The auditor's table of stream clocks (`auditor.clocks._clocks`) once its clocks are live
 * (`auditor.ordering`), Py_None before: a new reference, or NULL + error. An auditor's clocks
 * go live once and stay live (Auditor._ordering_on), and its table is one dict for its life
 * (HappensBefore replaces the clocks in it, never the dict), so both are read once per
 * auditor: `live_seen` is a weak reference to the last auditor seen live and `live_table` its
 * table (held until another auditor's replaces it). */
static PyObject *live_clock_table(GuardedCall *self, PyObject *auditor)
{
    if (self->live_seen != NULL && self->live_table != NULL && refers_to(self->live_seen, auditor))
        return Py_NewRef(self->live_table);
    PyObject *ordering = PyObject_GetAttr(auditor, s_ordering);
    if (ordering == NULL)
        return NULL;
    int live = PyObject_IsTrue(ordering);
    Py_DECREF(ordering);
    if (live <= 0)
        return live < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *table = NULL, *clocks = PyObject_GetAttr(auditor, s_clocks);
    if (clocks != NULL)
        table = PyObject_GetAttr(clocks, s_stream_clocks);
    Py_XDECREF(clocks);
    if (table != NULL && !PyDict_CheckExact(table)) {
        PyErr_SetString(PyExc_TypeError, "the clocks' table is not a dict");
        Py_CLEAR(table);
    }
    return table == NULL ? NULL
                         : remember_read(&self->live_seen, &self->live_table, auditor, table);
}

/* 1: the auditor's clocks are live, 0: not, -1: error */
static int clocks_live(GuardedCall *self, PyObject *auditor)
{
    PyObject *table = live_clock_table(self, auditor);
    if (table == NULL)
        return -1;
    int live = table != Py_None;
    Py_DECREF(table);
    return live;
}

/* The (device, stream id) key of a stream object, as the Python hooks make it (a new tuple);
 * NULL + error where either is not an int (the Python hook then converts or complains). */
static PyObject *stream_key(PyObject *stream)
{
    PyObject *key = NULL, *sid = NULL, *dev = PyObject_GetAttr(stream, s_device_index);
    if (dev != NULL)
        sid = PyObject_GetAttr(stream, s_stream_id);
    if (sid != NULL) {
        if (PyLong_CheckExact(dev) && PyLong_CheckExact(sid))
            key = PyTuple_Pack(2, dev, sid);
        else
            PyErr_SetString(PyExc_TypeError, "a stream's device or id is not an int");
    }
    Py_XDECREF(dev);
    Py_XDECREF(sid);
    return key;
}

/* The clock under `key` in `table` (live_clock_table's dict): a new reference, the table's
 * or empty_clock; NULL + error. The table's clocks are replaced, never changed, so reading
 * one needs no lock (as in Python). The key is made first: reading a stream's attributes may
 * run Python code, which must not find the table half-read. */
static PyObject *clock_of_key(PyObject *table, PyObject *key)
{
    PyObject *clock = PyDict_GetItemWithError(table, key); /* a tuple of ints: no Python code */
    if (clock == NULL && !PyErr_Occurred())
        clock = empty_clock;
    Py_XINCREF(clock);
    return clock;
}

/* Where stream_key(stream) is kept, read once per stream object while it is among the last
 * KEPT_KEYS seen (a stream object's device and id never change, and a kept one stays alive,
 * so its address names it until it is replaced here, as StreamCheck's keep_stream), with its
 * hash: the entry's index, or -1 + error. */
static int kept_key_at(GuardedCall *self, PyObject *stream)
{
    for (int i = 0; i < KEPT_KEYS; i++) {
        if (self->keys[2 * i] == stream && self->keys[2 * i + 1] != NULL)
            return i;
    }
    PyObject *key = stream_key(stream);
    Py_hash_t hash = key == NULL ? -1 : PyObject_Hash(key); /* a tuple of ints: no code runs */
    if (hash == -1) {
        Py_XDECREF(key);
        return -1;
    }
    int i = self->next_key;
    self->next_key = (i + 1) % KEPT_KEYS;
    PyObject *old_seen = self->keys[2 * i], *old_key = self->keys[2 * i + 1];
    self->keys[2 * i] = Py_NewRef(stream);
    self->keys[2 * i + 1] = key;
    self->key_hashes[i] = hash;
    self->keys_tables_own[i] = 0;
    Py_XDECREF(old_seen); /* after the entry is consistent: a deallocation may run code */
    Py_XDECREF(old_key);
    return i;
}

static PyObject *kept_stream_key(GuardedCall *self, PyObject *stream)
{
    int at = kept_key_at(self, stream);
    return at < 0 ? NULL : Py_NewRef(self->keys[2 * at + 1]);
}

/* The kept key `at` made the very key object `table` holds for its stream, once it holds one
 * (tables_own_key): a lookup then matches it by identity, with no comparison of the tuples. */
static void take_tables_key(GuardedCall *self, PyObject *table, int at)
{
    PyObject *mine = self->keys[2 * at + 1];
    self->keys_tables_own[at] = 1;
    PyObject *own = tables_own_key(table, mine);
    if (own != NULL && own != mine) {
        self->keys[2 * at + 1] = Py_NewRef(own);
        Py_DECREF(mine);
    }
}

/* clock_of_key(table, stream's key), the key and its hash kept with the stream (a tuple's
 * hash is computed anew at each lookup otherwise; two lookups a wait_stream). */
static PyObject *clock_of(GuardedCall *self, PyObject *table, PyObject *stream)
{
    int at = kept_key_at(self, stream);
    if (at < 0)
        return NULL;
    PyObject *key = Py_NewRef(self->keys[2 * at + 1]); /* held across the lookup */
    PyObject *clock = lookup_known(table, key, self->key_hashes[at]); /* borrowed */
    Py_DECREF(key);
    if (clock == NULL && PyErr_Occurred())
        return NULL;
    if (clock == NULL)
        return Py_NewRef(empty_clock);
    Py_INCREF(clock);
    if (!self->keys_tables_own[at])
        take_tables_key(self, table, at);
    return clock;
}

/* 1: every (stream, tick) of `snapshot` is in `own` with a tick at least as large (a wait
 * on it adds nothing), 0: not, -1: error. Both are dicts of ints. */
static int holds_all(PyObject *own, PyObject *snapshot)
{
    Py_ssize_t pos = 0;
    PyObject *key, *tick;
    while (PyDict_Next(snapshot, &pos, &key, &tick)) {
        /* owned across the lookup and the comparison, either of which may run Python code
         * for keys or ticks that are not ints (the clocks hold ints: then none runs) */
        Py_INCREF(key);
        Py_INCREF(tick);
        PyObject *mine = PyDict_GetItemWithError(own, key);
        Py_XINCREF(mine);
        int ge = mine == NULL ? (PyErr_Occurred() ? -1 : 0)
                              : PyObject_RichCompareBool(mine, tick, Py_GE);
        Py_XDECREF(mine);
        Py_DECREF(tick);
        Py_DECREF(key);
        if (ge != 1)
            return ge;
    }
    return 1;
}

/* holds_all(own, snapshot), known without a look for the last pair that held (`held`): a
 * clock is never changed once published (streamcheck/core/clocks.py replaces them), and the
 * pair is held by strong references, so neither address names another dict meanwhile. In an
 * engine's step a stream waits on another's unchanged clock layer after layer. */
static int holds_all_kept(GuardedCall *self, PyObject *own, PyObject *snapshot)
{
    if (own == self->held[0] && snapshot == self->held[1] && own != NULL)
        return 1;
    int holds = holds_all(own, snapshot);
    if (holds == 1) {
        PyObject *old_own = self->held[0], *old_snapshot = self->held[1];
        self->held[0] = Py_NewRef(own);
        self->held[1] = Py_NewRef(snapshot);
        Py_XDECREF(old_own); /* after the pair is consistent: a deallocation may run code */
        Py_XDECREF(old_snapshot);
    }
    return holds;
}

/* The clocks' lock (HappensBefore._lock), taken: a new reference, or NULL + error. The
 * merges below replace a clock under it, as clocks.py does, so that two threads' merges of
 * the same clock cannot lose one. */
static PyObject *clocks_locked(PyObject *clocks)
{
    PyObject *lock = PyObject_GetAttr(clocks, s_lock);
    if (lock != NULL && lock_take(lock, NULL) < 0)
        Py_CLEAR(lock);
    return lock;
}

/* `lock` (from clocks_locked) released, run with no error set; an error set before stays
 * the one told. `result`, or -1 (+ error). */
static int clocks_unlocked(PyObject *lock, int result)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int released = lock_give(lock, NULL);
    Py_DECREF(lock);
    if (type != NULL) {
        if (released < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, traceback);
        return -1;
    }
    return released < 0 ? -1 : result;
}

/* A new clock: `base` with each entry of `snapshot` that is newer (pointwise max), as
 * clocks.py merges; NULL + error. */
static PyObject *merged_clock(PyObject *base, PyObject *snapshot)
{
    if (!PyDict_CheckExact(base) || !PyDict_CheckExact(snapshot)) {
        PyErr_SetString(PyExc_TypeError, "a clock is not a dict");
        return NULL;
    }
    PyObject *merged = PyDict_Copy(base);
    Py_ssize_t pos = 0;
    PyObject *key, *tick;
    while (merged != NULL && PyDict_Next(snapshot, &pos, &key, &tick)) {
        Py_INCREF(key);
        Py_INCREF(tick);
        PyObject *seen = PyDict_GetItemWithError(merged, key);
        int newer = seen == NULL ? (PyErr_Occurred() ? -1 : 1)
                                 : PyObject_RichCompareBool(tick, seen, Py_GT);
        if (newer < 0 || (newer == 1 && PyDict_SetItem(merged, key, tick) < 0))
            Py_CLEAR(merged);
        Py_DECREF(key);
        Py_DECREF(tick);
    }
    return merged;
}

/* HappensBefore._host_waited([clock]): under the clocks' lock, the done clock replaced by
 * one that takes in `clock`. 0, or -1 + error. */
static int merge_into_done(PyObject *clocks, PyObject *clock)
{
    PyObject *lock = clocks_locked(clocks);
    if (lock == NULL)
        return -1;
    PyObject *done = PyObject_GetAttr(clocks, s_done);
    PyObject *merged = done == NULL ? NULL : merged_clock(done, clock);
    int result = merged == NULL ? -1 : PyObject_SetAttr(clocks, s_done, merged);
    Py_XDECREF(merged);
    Py_XDECREF(done);
    return clocks_unlocked(lock, result);
}

/* HappensBefore.take_in(key, snapshot), under the clocks' lock: the stream's clock in
 * `table` replaced by one that takes in `snapshot`, unless it holds it already (another
 * thread's merge may have come first). 0, or -1 + error. */
static int take_in_clock(PyObject *clocks, PyObject *table, PyObject *key, PyObject *snapshot)
{
    PyObject *lock = clocks_locked(clocks);
    if (lock == NULL)
        return -1;
    PyObject *own = clock_of_key(table, key);
    int result = own == NULL ? -1 : PyDict_CheckExact(own) ? holds_all(own, snapshot) : -1;
    if (result == -1 && own != NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "a clock is not a dict");
    if (result == 0) {
        PyObject *merged = merged_clock(own, snapshot);
        result = merged == NULL ? -1 : PyDict_SetItem(table, key, merged);
        Py_XDECREF(merged);
    }
    Py_XDECREF(own);
    return clocks_unlocked(lock, result < 0 ? -1 : 0);
}

/* `stream`'s clock in `table` (the auditor's live clock table) takes in `snapshot`, under the
 * clocks' lock (take_in_clock), the stream's key the one kept with it: 1, or -1 + error. What
 * an Event.wait and a wait_stream that add to their stream's clock do in C. */
static int stream_takes_in(GuardedCall *self, PyObject *auditor, PyObject *table,
                           PyObject *stream, PyObject *snapshot)
{
    PyObject *key = kept_stream_key(self, stream);
    PyObject *clocks = key == NULL ? NULL : PyObject_GetAttr(auditor, s_clocks);
    int merged = clocks != NULL && take_in_clock(clocks, table, key, snapshot) == 0 ? 1 : -1;
    Py_XDECREF(clocks);
    Py_XDECREF(key);
    return merged;
}

/* The (device, stream id) key of the thread's current stream on its current device, read
 * as the Python hook reads it after a record on the current stream: `reader()` (the device),
 * then `current(device)`, a (stream id, device, type) tuple (natively once proven, where
 * `current` is torch's: read_current_stream). A new tuple, or NULL + error. */
static PyObject *current_stream_key(GuardedCall *self)
{
    PyObject *device = PyObject_CallNoArgs(self->reader);
    if (device == NULL)
        return NULL;
    long long cur[3];
    int read = read_current_stream(self->current, device, cur);
    Py_DECREF(device);
    if (read == 0)
        PyErr_SetString(PyExc_TypeError, "the current stream is not (int, int, ...)");
    return read <= 0 ? NULL : Py_BuildValue("(LL)", cur[1], cur[0]);
}

/* The live record's snapshot, kept on the event: the clock of `stream`, or of the thread's
 * current stream where it is None. 0, or -1 + error (the caller then asks the Python `after`,
 * which can also keep it for an event that takes no attribute). */
static int keep_snapshot(GuardedCall *self, PyObject *auditor, PyObject *event,
                         PyObject *stream)
{
    PyObject *clock = NULL, *table = live_clock_table(self, auditor);
    if (table == Py_None) /* live when the record was let through, and clocks stay live */
        PyErr_SetString(PyExc_RuntimeError, "the clocks are not live");
    else if (table != NULL && stream != Py_None) {
        clock = clock_of(self, table, stream);
    } else if (table != NULL) {
        PyObject *key = current_stream_key(self);
        clock = key == NULL ? NULL : clock_of_key(table, key);
        Py_XDECREF(key);
    }
    Py_XDECREF(table);
    if (clock == NULL)
        return -1;
    int rc = PyObject_SetAttr(event, s_clock_attr, clock);
    Py_DECREF(clock);
    return rc;
}

enum { RECORD_PLAIN = 1, RECORD_SNAPSHOT = 2 };

/* RECORD_PLAIN, with RECORD_SNAPSHOT where the clocks are live and the stream given (keep
 * the snapshot), or 0: not plain (or an error, cleared: the Python hook then sees it for
 * itself). `*bind` (a new reference, else NULL): the device to bind an event not bound yet
 * to, after its record. */
static int event_record_is_plain(GuardedCall *self, PyObject *auditor, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames, PyObject **bind)
{
    *bind = NULL;
    if (nargs < 1 || nargs > 2 || kwnames != NULL)
        return 0;
    int live = clocks_live(self, auditor);
    if (live < 0)
        goto error;
    int given = nargs == 2 && args[1] != Py_None;
    if (live && !given && self->current == Py_None)
        return 0; /* no reader of the current stream: the Python hook keeps the snapshot */
    PyObject *now;
    if (given) { /* the stream's device, from its key (read once per stream object) */
        PyObject *key = kept_stream_key(self, args[1]);
        if (key == NULL)
            goto error;
        now = Py_NewRef(PyTuple_GET_ITEM(key, 0));
        Py_DECREF(key);
    } else {
        now = PyObject_CallNoArgs(self->reader);
        if (now == NULL)
            goto error;
    }
    if (!PyLong_CheckExact(now)) {
        Py_DECREF(now);
        return 0; /* the Python hook converts or complains */
    }
    PyObject *bound = NULL;
    int found = lookup_optional_attr(args[0], self->bound, &bound);
    if (found < 0) {
        Py_DECREF(now);
        goto error;
    }
    if (!found) { /* its first record: nothing to check before it, bind it after */
        *bind = now;
        return live ? RECORD_PLAIN | RECORD_SNAPSHOT : RECORD_PLAIN;
    }
    int same = same_long(now, bound);
    Py_DECREF(now);
    Py_DECREF(bound);
    if (same < 0)
        goto error;
    return same != 1 ? 0 : live ? RECORD_PLAIN | RECORD_SNAPSHOT : RECORD_PLAIN;
error:
    return drop_ordinary_error();
}

/* Bind a first-recorded event to `device` (stolen), as the Python hook does after the
 * record: 1 go on (bound, or an event that takes no attribute); 0 stop auditing this record
 * (any other ordinary error: the record has run and is never failed by its audit; the Python
 * hook warns there); -1 + error (KeyboardInterrupt and the like). */
static int bind_event(GuardedCall *self, PyObject *event, PyObject *device)
{
    int rc = PyObject_SetAttr(event, self->bound, device);
    Py_DECREF(device);
    if (rc == 0)
        return 1;
    if (PyErr_ExceptionMatches(PyExc_AttributeError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        return 1;
    }
    return drop_ordinary_error();
}

/* 1: plain, 0: not (or an error, cleared: the Python hook then sees it for itself) */
static int event_wait_is_plain(GuardedCall *self, PyObject *auditor, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 1 || nargs > 2 || kwnames != NULL)
        return 0;
    PyObject *table = live_clock_table(self, auditor);
    if (table == NULL)
        return drop_ordinary_error();
    int live = table != Py_None;
    if (!live || nargs < 2 || args[1] == Py_None) {
        Py_DECREF(table);
        return !live; /* no clocks live: plain; the current stream's wait: Python's */
    }
    PyObject *snapshot = PyObject_GetAttr(args[0], s_clock_attr);
    if (snapshot == NULL) {
        Py_DECREF(table);
        return drop_ordinary_error(); /* never recorded here, or kept by id: Python's */
    }
    int plain = 0;
    if (PyDict_CheckExact(snapshot)) {
        if (PyDict_GET_SIZE(snapshot) == 0) {
            plain = 1; /* a snapshot of nothing orders nothing */
        } else {
            PyObject *own = clock_of(self, table, args[1]);
            plain = own == NULL            ? -1
                    : PyDict_CheckExact(own) ? holds_all_kept(self, own, snapshot)
                                             : 0;
            Py_XDECREF(own);
            if (plain == 0) /* the wait adds to the stream's clock: merged here, as take_in */
                plain = stream_takes_in(self, auditor, table, args[1], snapshot);
        }
    }
    Py_DECREF(snapshot);
    Py_DECREF(table);
    return plain < 0 ? drop_ordinary_error() : plain;
}

/* The device (`get_device()`) of a torch.distributed call's first argument, found as the
 * Python hook's `_first_tensor` finds it there: the argument itself, or for a list or tuple
 * its head, or the head's `tensor` (a P2POp: batch_isend_irecv). all_gather and all_to_all
 * take a list first, batch_isend_irecv a list of P2POps: each call asked a list for
 * `get_device`, made an AttributeError and went to the Python hook. None (barrier's group)
 * and an empty list give NULL with no error. A new reference, or NULL (+ error, maybe). */
static PyObject *device_of_first(PyObject *arg)
{
    if (arg == Py_None)
        return NULL;
    /* exactly a list or tuple (a subclass is asked for get_device, as Python asks it first) */
    if (!PyList_CheckExact(arg) && !PyTuple_CheckExact(arg))
        return PyObject_CallMethodNoArgs(arg, s_get_device);
    if (PySequence_Fast_GET_SIZE(arg) == 0)
        return NULL;
    PyObject *head = Py_NewRef(PySequence_Fast_GET_ITEM(arg, 0)); /* kept through the calls */
    PyObject *method = PyObject_GetAttr(head, s_get_device), *device = NULL;
    if (method != NULL) {
        device = PyObject_CallNoArgs(method);
        Py_DECREF(method);
    } else if (PyErr_ExceptionMatches(PyExc_AttributeError)) { /* no get_device: a P2POp? */
        PyErr_Clear();
        PyObject *tensor = PyObject_GetAttr(head, s_tensor);
        if (tensor != NULL) {
            device = PyObject_CallMethodNoArgs(tensor, s_get_device);
            Py_DECREF(tensor);
        }
    }
    Py_DECREF(head);
    return device;
}

static int tensor_call_is_plain(GuardedCall *self, PyObject *auditor, PyObject *const *args,
                                Py_ssize_t nargs)
{
    if (nargs < 1 || self->counter == Py_None)
        return 0;
    /* the main engine thread: the one rule here (a default stream) spares it, so its
     * current stream is not read; only the device is, to count a CUDA call alone */
    int engine = main_engine_calls(self->gate, auditor);
    if (engine < 0)
        goto error;
    PyObject *device = device_of_first(args[0]);
    if (device == NULL)
        goto error;
    long index = PyLong_Check(device) ? PyLong_AsLong(device) : -1;
    if (index < 0) {
        Py_DECREF(device);
        goto error; /* no exception for a CPU tensor (-1): nothing to drop */
    }
    if (engine) {
        Py_DECREF(device);
        return 1;
    }
    long long current[3]; /* (stream id, device, type) */
    int usual = read_current_stream(self->reader, device, current);
    Py_DECREF(device);
    if (usual < 0)
        goto error;
    return usual == 1 && current[0] != 0;
error:
    return drop_ordinary_error();
}

/* After a plain record (`result`, stolen): the clocks may have gone live while the event was
 * recorded (another thread's first mark); the Python hook reads the flag after the record,
 * so this does too, and has `after` keep the snapshot. `result`, or NULL + error. */
static PyObject *record_after(GuardedCall *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *result)
{
    PyObject *auditor = gate_auditor(self->gate);
    if (auditor == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    int live = auditor == Py_None ? 0 : clocks_live(self, auditor);
    Py_DECREF(auditor);
    if (drop_ordinary_error() < 0) {
        Py_DECREF(result);
        return NULL;
    }
    if (live == 1) {
        PyObject *done = PyObject_Vectorcall(self->after, args, nargs, NULL);
        if (done == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(done);
    }
    return result;
}

/* After a wait_stream whose waiting stream's clock does not hold the waited one's: the
 * merge, as HappensBefore.take_in makes it, here in C where the gate still holds the auditor
 * whose clocks were read before the call (`before`). 1: merged, 0: not done here (another
 * auditor meanwhile: Python's merge decides), -1 + error (Python's merge warns about it). */
static int wait_stream_merged(GuardedCall *self, PyObject *before, PyObject *table,
                              PyObject *stream, PyObject *waited)
{
    PyObject *auditor = gate_auditor(self->gate);
    if (auditor == NULL)
        return -1;
    int merged = 0;
    if (auditor == before && PyDict_CheckExact(waited))
        merged = stream_takes_in(self, auditor, table, stream, waited);
    Py_DECREF(auditor);
    return merged;
}

/* WAIT_STREAM's call (see above). */
static PyObject *wait_stream_call(GuardedCall *self, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL ||
        (PyObject *)Py_TYPE(args[0]) != self->owner || (PyObject *)Py_TYPE(args[1]) != self->owner)
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    PyObject *auditor = gate_auditor(self->gate);
    if (auditor == NULL)
        return NULL;
    PyObject *table = auditor == Py_None ? Py_NewRef(Py_None) : live_clock_table(self, auditor);
    PyObject *waited = NULL; /* other's clock now: what the event will hold at least */
    if (table != NULL && table != Py_None)
        waited = clock_of(self, table, args[1]);
    if (table == NULL || (table != Py_None && waited == NULL)) {
        Py_XDECREF(table);
        Py_DECREF(auditor);
        if (drop_ordinary_error() < 0)
            return NULL;
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames); /* the event hooks' */
    }
    inside_wait_stream++;
    PyObject *result = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    inside_wait_stream--;
    if (result != NULL && waited != NULL && (!PyDict_CheckExact(waited) || PyDict_GET_SIZE(waited))) {
        PyObject *own = clock_of(self, table, args[0]);
        int holds = own != NULL && PyDict_CheckExact(own) && PyDict_CheckExact(waited)
                        ? holds_all_kept(self, own, waited)
                        : 0;
        Py_XDECREF(own);
        if (holds == 0 && !PyErr_Occurred()) /* the clock takes the waited one in: here */
            holds = wait_stream_merged(self, auditor, table, args[0], waited);
        if (holds != 1 && drop_ordinary_error() == 0) { /* Python's merge, which warns */
            PyObject *done = PyObject_CallFunctionObjArgs(self->slow, args[0], waited, NULL);
            if (done == NULL)
                Py_CLEAR(result);
            Py_XDECREF(done);
        } else if (holds != 1) {
            Py_CLEAR(result);
        }
    }
    Py_DECREF(auditor);
    Py_XDECREF(waited);
    Py_DECREF(table);
    return result;
}

/* The audit's own step failed after the call it wraps returned: an ordinary exception goes
 * to `after` (the Python hook's warning, as its hook warns), and the call's result stands:
 * 0. -1 with an error set where it must propagate (one only BaseException catches, no
 * `after`, or `after` failing). */
static int told_after_the_call(GuardedCall *self)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception) || !PyCallable_Check(self->after))
        return -1;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *told = PyObject_CallOneArg(self->after, value != NULL ? value : Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    if (told == NULL)
        return -1;
    Py_DECREF(told);
    return 0;
}

/* HOST_WAIT's and HOST_POLL's call (see above). */
static PyObject *host_wait_call(GuardedCall *self, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL ||
        (PyObject *)Py_TYPE(args[0]) != self->owner)
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    PyObject *auditor = gate_auditor(self->gate);
    if (auditor == NULL)
        return NULL;
    if (auditor == Py_None) {
        Py_DECREF(auditor);
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    }
    PyObject *clock = NULL, *clocks = NULL, *table = live_clock_table(self, auditor);
    if (table != NULL && table != Py_None) {
        /* before the wait: what it waits for */
        if (self->kind == EVENT_HOST_WAIT || self->kind == EVENT_HOST_POLL) {
            /* no snapshot on the event (0), or not a clock: Python's hook, which also looks
             * for one in the clocks' table, says what it cannot read */
            if (lookup_optional_attr(args[0], self->bound, &clock) >= 0 &&
                (clock == NULL || !PyDict_CheckExact(clock)))
                Py_CLEAR(clock);
        } else {
            clock = clock_of(self, table, args[0]);
        }
        clocks = clock == NULL ? NULL : PyObject_GetAttr(auditor, s_clocks);
    }
    Py_DECREF(auditor);
    if (table == NULL || (table != Py_None && clocks == NULL)) { /* Python's, which warns */
        Py_XDECREF(table);
        Py_XDECREF(clock);
        if (drop_ordinary_error() < 0)
            return NULL;
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    Py_DECREF(table);
    PyObject *result = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    int seen = result != NULL && clock != NULL && PyDict_CheckExact(clock) &&
               PyDict_GET_SIZE(clock) != 0;
    if (seen && IS_POLL_KIND(self->kind) && (seen = PyObject_IsTrue(result)) < 0)
        Py_CLEAR(result);
    if (seen == 1) {
        PyObject *done = PyObject_GetAttr(clocks, s_done);
        int holds = done == NULL ? -1 : PyDict_CheckExact(done) ? holds_all(done, clock) : 0;
        Py_XDECREF(done);
        if (holds == 0 && merge_into_done(clocks, clock) < 0)
            holds = -1;
        if (holds < 0 && told_after_the_call(self) < 0)
            Py_CLEAR(result);
    }
    Py_XDECREF(clock);
    Py_XDECREF(clocks);
    return result;
}

static PyObject *guarded_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames)
{
    GuardedCall *self = (GuardedCall *)op;
    if (self->kind == WAIT_STREAM)
        return wait_stream_call(self, args, nargsf, kwnames);
    if (IS_HOST_KIND(self->kind))
        return host_wait_call(self, args, nargsf, kwnames);
    /* torch's own event, inside a hooked wait_stream: nobody else sees it */
    if (inside_wait_stream && self->kind != TENSOR_CALL)
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *auditor = gate_auditor(self->gate);
    if (auditor == NULL)
        return NULL;
    int plain, audited = auditor != Py_None;
    PyObject *bind = NULL;
    if (!audited)
        plain = 1;
    else if (self->kind == EVENT_RECORD)
        plain = event_record_is_plain(self, auditor, args, nargs, kwnames, &bind);
    else if (self->kind == EVENT_WAIT)
        plain = event_wait_is_plain(self, auditor, args, nargs, kwnames);
    else
        plain = auditor == self->owner ? tensor_call_is_plain(self, auditor, args, nargs) : 0;
    if (plain < 0) {
        Py_DECREF(auditor);
        return NULL;
    }
    if (!plain) {
        Py_DECREF(auditor);
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    if (bind != NULL || plain & RECORD_SNAPSHOT) {
        /* a first record, bound after it runs; a live record on a given stream, its
         * snapshot kept here */
        PyObject *result = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
        int bound = 1;
        if (bind != NULL && result == NULL)
            Py_DECREF(bind);
        else if (bind != NULL && (bound = bind_event(self, args[0], bind)) < 0)
            Py_CLEAR(result);
        if (result != NULL && bound == 0) { /* as in Python: no snapshot of an unbound one */
            Py_DECREF(auditor);
            return result;
        }
        if (result != NULL && !(plain & RECORD_SNAPSHOT)) {
            Py_DECREF(auditor);
            return record_after(self, args, nargs, result);
        }
        PyObject *stream = nargs == 2 ? args[1] : Py_None;
        if (result != NULL && keep_snapshot(self, auditor, args[0], stream) < 0) {
            PyObject *done = NULL;
            if (drop_ordinary_error() == 0) /* Python's own way, for an unusual event */
                done = PyObject_Vectorcall(self->after, args, nargs, NULL);
            if (done == NULL)
                Py_CLEAR(result);
            Py_XDECREF(done);
        }
        Py_DECREF(auditor);
        return result;
    }
    Py_DECREF(auditor);
    if (self->kind == TENSOR_CALL && audited && launch_counter_advance(self->counter) < 0)
        return NULL;
    PyObject *result = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    if (result == NULL || self->kind != EVENT_RECORD || !audited)
        return result; /* a wait needs nothing after it */
    return record_after(self, args, nargs, result);
}

/* hook.passes(tensor), TENSOR_CALL only: the plain test alone, for a generated Python wrapper
 * that calls the original itself (streamcheck/wrappers/torch_distributed.py). True: no
 * auditor (uncounted), or the test passed (counted); False: the Python hook's to decide (an
 * error reading the tensor or the stream included, as in the call above). A builtin method
 * the interpreter calls by its specialized path, where the hook called as the function
 * entered the interpreter again from C for the original: code an engine's other work leaves
 * cold (scripts/bench_hook_instructions.py). The gate is read in place, no reference
 * taken, as StreamCheck reads it. */
static PyObject *guarded_passes(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    GuardedCall *self = (GuardedCall *)op;
    if (self->kind != TENSOR_CALL || nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "passes(tensor) is a TENSOR_CALL hook's alone");
        return NULL;
    }
    int holds = gate_holds(self->gate, self->owner);
    if (holds < 0)
        return NULL;
    if (holds == 0)
        Py_RETURN_TRUE;
    /* the installing auditor, held by the hook for its life: no reference taken here */
    int plain = holds == 1 ? tensor_call_is_plain(self, self->owner, args, 1) : 0;
    if (plain < 0)
        return NULL;
    if (!plain)
        Py_RETURN_FALSE;
    if (launch_counter_advance(self->counter) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyMethodDef guarded_methods[] = {
    {"passes", (PyCFunction)(void (*)(void))guarded_passes, METH_FASTCALL,
     "passes(tensor) -> bool: a TENSOR_CALL hook's plain test, counted where it passed."},
    {NULL, NULL, 0, NULL},
};

static PyObject *guarded_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *gate, *owner, *counter, *original, *slow, *reader, *bound, *after;
    PyObject *current = Py_None;
    int kind;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "GuardedCall takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "iOOOOOOOO|O:GuardedCall", &kind, &gate, &owner, &counter,
                          &original, &slow, &reader, &bound, &after, &current))
        return NULL;
    if ((kind != EVENT_RECORD && kind != TENSOR_CALL && kind != EVENT_WAIT &&
         kind != WAIT_STREAM && !IS_HOST_KIND(kind)) ||
        ((kind == EVENT_RECORD || kind == EVENT_HOST_WAIT || kind == EVENT_HOST_POLL) &&
         !PyUnicode_Check(bound)) ||
        ((kind == WAIT_STREAM || IS_HOST_KIND(kind)) && !PyType_Check(owner)) ||
        (kind == TENSOR_CALL && counter != Py_None && !PyIter_Check(counter))) {
        PyErr_SetString(PyExc_ValueError, "GuardedCall: bad kind, bound attribute, counter or owner");
        return NULL;
    }
    GuardedCall *self = (GuardedCall *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->gate = Py_NewRef(gate);
    self->owner = Py_NewRef(owner);
    self->counter = Py_NewRef(counter);
    self->original = Py_NewRef(original);
    self->slow = Py_NewRef(slow);
    self->reader = Py_NewRef(reader);
    self->bound = Py_NewRef(bound);
    self->after = Py_NewRef(after);
    self->current = Py_NewRef(current);
    self->dict = NULL;
    self->kind = kind;
    self->vectorcall = guarded_vectorcall;
    return (PyObject *)self;
}

OBJECT_FIELDS(guarded, GuardedCall, gate, dict)

static PyTypeObject GuardedCallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.GuardedCall",
    .tp_basicsize = sizeof(GuardedCall),
    /* a method descriptor: `event.record(...)` calls it with the event first, no bound
     * method made; on a module (torch.distributed) no descriptor applies anyway */
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A hooked call whose plain case goes straight to the original.",
    .tp_new = guarded_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(GuardedCall, vectorcall),
    .tp_dictoffset = offsetof(GuardedCall, dict),
    .tp_weaklistoffset = offsetof(GuardedCall, weakrefs), /* as a function can be weakly referenced */
    .tp_descr_get = bind_as_method,
    .tp_traverse = guarded_traverse,
    .tp_clear = guarded_clear,
    .tp_dealloc = guarded_dealloc,
    .tp_getset = dict_getset,
    .tp_methods = guarded_methods,
};

/* ---- CreationHook -------------------------------------------------------------------- */

/*
 * torch.cuda.Stream.__new__ (as a staticmethod): `impl(cls, ...)` makes the stream; a call
 * that names a `stream_id` wraps an existing stream (torch.cuda.current_stream() taken before
 * the audit, ExternalStream) and is not a creation, so it ends there.
 *
 * A creation that names nothing (`torch.cuda.Stream()`, `Stream(priority=-1)`: the thread's
 * current device), on the device of the process's engine (`home.device`, a slot of
 * DeviceHome, read in place; None: nothing to check) or with no home, is recorded here, in the
 * book's own form: written into the book's CreationTable under the stream's (device, stream
 * id) as plain fields (the stream, or a key_type stream's type and key, which make it again;
 * thread ident, via, the creating frames' code objects and offsets, the time and the thread's
 * name; _creations.c), which makes the record, and the StreamEvent, only when a finding asks
 * for the stream's origin (streamcheck/core/provenance.py), and marked in the book's SwitchLog
 * by its key (switchlog_put_created). Nothing is allocated (but an int for a thread's first
 * creation). A stream of exactly key_type (torch.cuda.Stream) has its key read from its
 * fields in place. The thread's name is the Thread's `_name` from `threads`
 * (threading._active; the Thread kept while the same thread creates again); a thread
 * `threading` does not know (started from C++ or with _thread) goes to the Python hook, whose
 * threading.current_thread() names it as it always did. This writes what
 * Auditor.stream_created and StreamBook.record would (streamcheck/core/auditor.py and
 * provenance.py point back here): a change to either is a change here too.
 *
 * Every other creation (a device named, a stream off the engine's device, an unknown thread,
 * a book with a dict and a deque: made before the compiled core was chosen) calls
 * `created(stream, args, kwargs)`, the Python hook, which applies the rules.
 */
typedef struct {
    PyObject_HEAD
    PyObject *impl, *created, *gate, *via, *home, *threads, *key_type;
    /* the book of the auditor read last (`seen`, a weak reference to it): its CreationTable
     * and its SwitchLog, set once when the auditor is made, so read once per auditor */
    PyObject *seen, *table, *log;
    /* the Thread that `threads` gave the thread that created last, and that thread's state's
     * id (unique for the interpreter's life, where an ident is reused once a thread ends) */
    PyObject *thread, *dict, *weakrefs;
    uint64_t thread_state_id;
    Py_ssize_t key_offsets[3]; /* key_type's KEY_FIELDS as integer slots; 0: read generically */
    /* home's `device` as an object slot of its type (DeviceHome's __slots__), valid while the
     * type's version tag is home_tag; 0: read generically */
    Py_ssize_t home_offset;
    unsigned int home_tag;
    vectorcallfunc vectorcall;
} CreationHook;

/* Whether a Stream() call's arguments name nothing but a priority: the stream takes the
 * thread's current device. */
static int names_nothing(Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs > 1) /* args[0] is the class; a positional argument is the device */
        return 0;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++)
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "priority") != 0)
            return 0;
    return 1;
}

/* The calling thread's name as threading keeps it (*name, a new reference): 1; 0 where
 * threading has no Thread with a name for it (a thread started outside `threading`: the
 * Python hook's threading.current_thread() names it), -1 error. The Thread found is kept with
 * the id of the thread's state: a thread that creates again reads its name from it with no
 * int made and no lookup in `threads` (a live thread's Thread there does not change). */
static int thread_name(CreationHook *self, unsigned long ident, PyObject **name)
{
    *name = NULL;
    uint64_t state_id = PyThreadState_GetID(PyThreadState_Get());
    if (self->thread == NULL || self->thread_state_id != state_id) {
        if (!PyDict_Check(self->threads))
            return 0;
        PyObject *key = PyLong_FromUnsignedLong(ident);
        if (key == NULL)
            return -1;
        PyObject *thread = PyDict_GetItemWithError(self->threads, key); /* borrowed */
        Py_DECREF(key);
        if (thread == NULL)
            return PyErr_Occurred() ? -1 : 0;
        PyObject *old = self->thread;
        self->thread = Py_NewRef(thread);
        self->thread_state_id = state_id;
        Py_XDECREF(old); /* after the fields agree: a Thread's release may run code */
    }
    PyObject *thread = Py_NewRef(self->thread); /* held across the attribute lookup */
    int found = lookup_optional_attr(thread, s_thread_name, name);
    Py_DECREF(thread);
    return found;
}

/* time.time(), 0 or -1 + error. */
static int wall_time(double *now)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_Time(&t) < 0)
        return -1;
    *now = PyTime_AsSecondsDouble(t);
#else
    *now = _PyTime_AsSecondsDouble(_PyTime_GetSystemClock());
#endif
    return 0;
}

/* Forget the book and the Thread read last (the audit stopped: keep none of it alive). */
static void forget_book(CreationHook *self)
{
    PyObject *old[4] = {self->seen, self->table, self->log, self->thread};
    self->seen = self->table = self->log = self->thread = NULL;
    for (int i = 0; i < 4; i++) /* after the fields are consistent: a deallocation may run code */
        Py_XDECREF(old[i]);
}

/* The CreationTable and the SwitchLog of auditor.book (borrowed, held by the hook): 1; 0
 * where the auditor has no book of that shape (the Python hook records the creation); -1 +
 * error. Read once per auditor (see CreationHook). */
static int book_of(CreationHook *self, PyObject *auditor, PyObject **table, SwitchLog **log)
{
    if (self->seen != NULL && refers_to(self->seen, auditor)) {
        *table = self->table;
        *log = (SwitchLog *)self->log;
        return 1;
    }
    PyObject *book = NULL, *created = NULL, *append = NULL;
    if (lookup_optional_attr(auditor, s_book, &book) < 0)
        return -1;
    if (book == NULL)
        return 0;
    int found = -1;
    if (lookup_optional_attr(book, s_created_table, &created) >= 0 &&
        lookup_optional_attr(book, s_record_switch, &append) >= 0)
        found = created != NULL && creation_table_check(created) && append != NULL &&
                switch_log_of(append) != NULL;
    Py_DECREF(book);
    PyObject *ref = found == 1 ? PyWeakref_NewRef(auditor, NULL) : NULL;
    if (found == 1 && ref == NULL) { /* an auditor that takes no weak reference: none kept */
        PyErr_Clear();
        found = 0;
    }
    if (found == 1) {
        PyObject *old[3] = {self->seen, self->table, self->log};
        self->seen = ref;
        self->table = Py_NewRef(created);
        self->log = Py_NewRef((PyObject *)switch_log_of(append));
        for (int i = 0; i < 3; i++)
            Py_XDECREF(old[i]);
        *table = self->table;
        *log = (SwitchLog *)self->log;
    }
    Py_XDECREF(created);
    Py_XDECREF(append);
    return found;
}

/* `stream`'s key: (device index, stream id, device type), read from its fields in place for
 * a stream of exactly key_type (2: kept by that key), else the first two through its
 * attributes and the device type -1 (1: not read; the log's mark of a creation is never made
 * a stream again). 0 not integers (the Python hook records it), -1 error. */
static int creation_key(CreationHook *self, PyObject *stream, long long key[3])
{
    if (self->key_offsets[0] != 0 && (PyObject *)Py_TYPE(stream) == self->key_type) {
        key_in_place(stream, self->key_offsets, key);
        return 2;
    }
    key[2] = -1;
    for (int i = 0; i < 2; i++) {
        PyObject *value = PyObject_GetAttr(stream, *KEY_FIELDS[i]);
        if (value == NULL)
            return -1;
        int is_int = PyLong_Check(value);
        key[i] = is_int ? PyLong_AsLongLong(value) : -1;
        Py_DECREF(value);
        if (!is_int)
            return 0;
        if (key[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return 1;
}

/* Whether `device` is the engine's (home.device: 1 also where none is chosen yet), 0 not, -1
 * error. */
static int on_home_device(CreationHook *self, long long device)
{
    if (self->home == Py_None)
        return 1;
    PyObject *home = NULL;
    if (self->home_offset != 0 && Py_TYPE(self->home)->tp_version_tag == self->home_tag)
        home = Py_XNewRef(*(PyObject **)((char *)self->home + self->home_offset));
    if (home == NULL) /* not slotted, its type changed, or the slot empty: its error */
        home = PyObject_GetAttr(self->home, s_device);
    if (home == NULL)
        return -1;
    int same = 1;
    if (home != Py_None) {
        long long chosen = PyLong_Check(home) ? PyLong_AsLongLong(home) : -1;
        same = chosen == -1 && PyErr_Occurred() ? -1 : chosen == device;
    }
    Py_DECREF(home);
    return same;
}

/* The creation recorded in the book of `auditor`: 1 done, 0 not here (the Python hook
 * records it), -1 error. */
static int record_creation(CreationHook *self, PyObject *auditor, PyObject *stream)
{
    long long key[3];
    int read = creation_key(self, stream, key);
    if (read <= 0)
        return read;
    int home = on_home_device(self, key[0]);
    if (home <= 0)
        return home;
    PyObject *table;
    SwitchLog *log;
    int found = book_of(self, auditor, &table, &log);
    if (found <= 0)
        return found;
    unsigned long thread = PyThread_get_thread_ident();
    PyObject *name;
    int named = thread_name(self, thread, &name);
    double when;
    int done = named;
    if (named == 1)
        done = wall_time(&when) < 0 ? -1
               : creation_table_record(table, key, read == 2, stream, thread, self->via, name,
                                       when, 0) < 0
                   ? -1
                   : 1;
    if (done == 1)
        switchlog_put_created(log, stream, key, thread, self->via);
    Py_XDECREF(name);
    return done;
}

/* created(stream, args, kwargs): the Python hook, with the call's arguments after the class. */
static PyObject *tell_created(CreationHook *self, PyObject *stream, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *given = PyTuple_New(nargs > 1 ? nargs - 1 : 0);
    PyObject *kwargs = given == NULL ? NULL : PyDict_New();
    int ok = kwargs != NULL;
    for (Py_ssize_t i = 1; ok && i < nargs; i++)
        PyTuple_SET_ITEM(given, i - 1, Py_NewRef(args[i]));
    for (Py_ssize_t i = 0; ok && i < nkw; i++)
        ok = PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) == 0;
    PyObject *done = ok ? PyObject_CallFunctionObjArgs(self->created, stream, given, kwargs,
                                                       NULL)
                        : NULL;
    Py_XDECREF(given);
    Py_XDECREF(kwargs);
    return done;
}

static PyObject *creation_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames)
{
    CreationHook *self = (CreationHook *)op;
    PyObject *stream = PyObject_Vectorcall(self->impl, args, nargsf, kwnames);
    if (stream == NULL)
        return NULL;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        int named = PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, i), s_stream_id) == 0;
        if (named)
            return stream; /* a wrap of an existing stream */
    }
    int recorded = 0;
    if (self->gate != Py_None && names_nothing(nargs, kwnames)) {
        PyObject *auditor = gate_auditor(self->gate);
        if (auditor == NULL)
            goto fail;
        if (auditor == Py_None) {
            Py_DECREF(auditor);
            if (self->seen != NULL)
                forget_book(self);
            return stream;
        }
        recorded = record_creation(self, auditor, stream);
        Py_DECREF(auditor);
        if (recorded < 0)
            goto fail;
    }
    if (!recorded) {
        PyObject *done = tell_created(self, stream, args, nargs, kwnames);
        if (done == NULL)
            goto fail;
        Py_DECREF(done);
    }
    return stream;
fail:
    Py_DECREF(stream);
    return NULL;
}

static PyObject *creation_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *impl, *created, *gate = Py_None, *via = Py_None, *home = Py_None,
                              *threads = Py_None, *key_type = Py_None;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "CreationHook takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO|OOOOO:CreationHook", &impl, &created, &gate, &via, &home,
                          &threads, &key_type))
        return NULL;
    if (key_type != Py_None && !PyType_Check(key_type)) {
        PyErr_SetString(PyExc_TypeError, "CreationHook: key_type is a type or None");
        return NULL;
    }
    CreationHook *self = (CreationHook *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->impl = Py_NewRef(impl);
    self->created = Py_NewRef(created);
    self->gate = Py_NewRef(gate);
    self->via = Py_NewRef(via);
    self->home = Py_NewRef(home);
    self->threads = Py_NewRef(threads);
    self->key_type = Py_NewRef(key_type);
    self->seen = self->table = self->log = self->thread = self->dict = NULL;
    learn_key_offsets(key_type, self->key_offsets);
    self->home_offset = home == Py_None ? 0 : slot_offset(Py_TYPE(home), s_device);
    self->home_tag = Py_TYPE(home)->tp_version_tag; /* read after the lookup, which tags it */
    if (self->home_tag == 0)
        self->home_offset = 0;
    self->vectorcall = creation_vectorcall;
    return (PyObject *)self;
}

OBJECT_FIELDS(creation, CreationHook, impl, dict)

static PyTypeObject CreationHookType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.CreationHook",
    .tp_basicsize = sizeof(CreationHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Stream.__new__ that tells the audit of each creation, not of a wrap.",
    .tp_new = creation_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(CreationHook, vectorcall),
    .tp_dictoffset = offsetof(CreationHook, dict),
    .tp_weaklistoffset = offsetof(CreationHook, weakrefs),
    .tp_traverse = creation_traverse,
    .tp_clear = creation_clear,
    .tp_dealloc = creation_dealloc,
    .tp_getset = dict_getset,
};

/* ---- module -------------------------------------------------------------------------- */

static int intern_all(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {{&s_auditor, "auditor"},         {&s_mirrors, "mirrors"},
                 {&s_made_current, "made_current"},
                 {&s_device_index, "device_index"}, {&s_main_engine, "main_engine"},
                 {&s_cuda_stream, "cuda_stream"},   {&s_stream, "stream"},
                 {&s_device_attr, "_streamcheck_device"}, {&s_ordering, "ordering"},
                 {&s_get_device, "get_device"}, {&s_stream_id, "stream_id"},
                 {&s_device_type, "device_type"}, {&s_clocks, CLOCKS_NAME},
                 {&s_stream_clocks, STREAM_CLOCKS_NAME},
                 {&s_clock_attr, CLOCK_ATTR_NAME}, {&s_book, "book"},
                 {&s_created_table, "_created"}, {&s_record_switch, "record_switch"},
                 {&s_device, "device"}, {&s_thread_name, "_name"},
                 {&s_created_kind, "created"}, {&s_lock, "_lock"},
                 {&s_done, "_done"}, {&s_tensor, "tensor"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL)
            return -1;
    }
    empty_clock = PyDict_New();
    return empty_clock == NULL ? -1 : 0;
}

static PyMethodDef speedups_functions[] = {
    {"capture_site", (PyCFunction)(void (*)(void))capture_site, METH_FASTCALL | METH_KEYWORDS,
     "capture_site(skip=1, depth=4): the caller's frames as (code, offset, ...), flat."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, .m_name = "streamcheck._speedups",
    .m_doc = "Compiled fast paths of the audit's stream-switch hook and launch wrappers.",
    .m_size = -1,
    .m_methods = speedups_functions,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    if (intern_all() < 0 || PyType_Ready(&SetStreamHookType) < 0 ||
        PyType_Ready(&StreamCheckType) < 0 || PyType_Ready(&GuardedCallType) < 0 ||
        PyType_Ready(&CreationHookType) < 0 || PyType_Ready(&SwitchLogType) < 0 ||
        PyType_Ready(&SwitchLogIterType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "SetStreamHook", (PyObject *)&SetStreamHookType) < 0 ||
        PyModule_AddObjectRef(module, "StreamCheck", (PyObject *)&StreamCheckType) < 0 ||
        PyModule_AddObjectRef(module, "GuardedCall", (PyObject *)&GuardedCallType) < 0 ||
        PyModule_AddObjectRef(module, "CreationHook", (PyObject *)&CreationHookType) < 0 ||
        PyModule_AddObjectRef(module, "SwitchLog", (PyObject *)&SwitchLogType) < 0 ||
        declare_add_types(module) < 0 || launch_check_add_types(module) < 0 ||
        handoffs_add_types(module) < 0 || counter_add_types(module) < 0 ||
        creations_add_types(module) < 0 || current_stream_add_types(module) < 0 ||
        fast_lock_add_types(module) < 0 || native_streams_add_functions(module) < 0 ||
        PyModule_AddIntConstant(module, "EVENT_RECORD", EVENT_RECORD) < 0 ||
        PyModule_AddIntConstant(module, "TENSOR_CALL", TENSOR_CALL) < 0 ||
        PyModule_AddIntConstant(module, "EVENT_WAIT", EVENT_WAIT) < 0 ||
        PyModule_AddIntConstant(module, "WAIT_STREAM", WAIT_STREAM) < 0 ||
        PyModule_AddIntConstant(module, "HOST_WAIT", HOST_WAIT) < 0 ||
        PyModule_AddIntConstant(module, "FRAMES_IN_PLACE", frames_in_place()) < 0 ||
        PyModule_AddIntConstant(module, "HOST_POLL", HOST_POLL) < 0 ||
        PyModule_AddIntConstant(module, "EVENT_HOST_WAIT", EVENT_HOST_WAIT) < 0 ||
        PyModule_AddIntConstant(module, "EVENT_HOST_POLL", EVENT_HOST_POLL) < 0 ||
        PyModule_AddStringConstant(module, "CLOCK_ATTR", CLOCK_ATTR_NAME) < 0 ||
        PyModule_AddStringConstant(module, "STREAM_CLOCKS", STREAM_CLOCKS_NAME) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
