/* streamcheck._speedups, its declared accesses: Auditor.declare compiled.
 *
 * A connector declares what it touches several times a step: its handoff after the forward
 * wrote a layer's KV, and every checked launch's reads and writes. In Python
 * (streamcheck/core/auditor.py, Auditor.declare) one declaration is a dozen Python calls: the
 * clock tick and its Mark, a Handoff per buffer (a dataclass __init__ each), the thread's
 * record, the site, and the kept accesses filtered under the lock, about 33,000 instructions
 * (scripts/bench_hook_instructions.py). Here the same objects are made and the same lists kept
 * with no Python frame but the thread record's.
 *
 *   Declarer(auditor, python_declare, mark_type, handoff_type, max_accesses)
 *       auditor.declare(stream, reads, writes, skip=2): what Auditor.declare returns and
 *       keeps, the same Mark and Handoff objects (made as their dataclasses' __init__ would
 *       make them: each field set, nothing else runs), the same clock tick, the same kept
 *       accesses. Until the clocks are live (the first declared access installs the event
 *       hooks) and for any argument of another shape, `python_declare(auditor, ...)` runs.
 *
 * The auditor's attributes read here (clocks, _lock, _writes, _reads, thread_ref, and the
 * clocks' _lock and _clocks) are set once in Auditor.__init__ and HappensBefore.__init__ and
 * read once, when the Declarer is made; the clocks' `active` and `_done` are read at each
 * call, as Python reads them. Both locks are taken as the Python code takes them (a
 * FastLock in place, streamcheck/_fast_lock.c; any other lock through its methods). A stream's
 * (device, id) key is kept for the last few streams declared on, with its hash, and becomes
 * the clock table's own key object once the table holds one (stream_key, tables_own_key).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX >= 0x030D0000 /* an attribute that may be missing: 1, 0, or -1 + error */
#define optional_attr PyObject_GetOptionalAttr
#else
#define optional_attr _PyObject_LookupAttr
#endif

/* From streamcheck/_sites.c, the same extension: a site as capture_site makes it, `skip`
 * frames above the running Python frame. */
PyObject *site_of(Py_ssize_t skip, Py_ssize_t depth);

#define SITE_DEPTH 4 /* capture_site's default depth, which Auditor.declare keeps */
#define KEPT_KEYS 4  /* an engine's main stream and a connector's few */

static PyObject *s_acquire, *s_release, *s_active, *s_done, *s_device, *s_stream_id, *s_read,
    *s_write, *s_skip, *s_version, *s_name, *s_role, *s_engine, *s_main_engine, *zero, *one;

/* The fields the Declarer reads and writes, by name, and where each lives in its object. */
enum { M_STREAM, M_TICK, M_FIELDS };
static const char *mark_names[M_FIELDS] = {"stream", "tick"};
enum { H_TENSOR, H_MARK, H_STREAM, H_THREAD, H_TIME, H_STACK, H_ACCESS, H_BLOCKS, H_FIELDS };
static const char *handoff_names[H_FIELDS] = {"tensor", "mark", "stream", "thread",
                                              "time",   "stack", "access", "blocks"};
enum { R_DEVICE, R_STREAM_ID, R_FIELDS };
static const char *ref_names[R_FIELDS] = {"device", "stream_id"};

typedef struct {
    PyObject_HEAD
    PyObject *auditor, *python_declare, *mark_type, *handoff_type, *clocks, *clocks_lock,
        *clock_table, *lock, *writes, *reads, *thread_ref, *time_fn, *roles, *threads,
        *thread_cache, *main_ident, *ref_type;
    /* the two locks' acquire and release, bound once (a lock that is not a FastLock is
     * taken through them: a call each, no method lookup) */
    PyObject *clocks_acquire, *clocks_release, *lock_acquire, *lock_release;
    /* the (device, stream id) keys of the last few streams declared on (see stream_key) */
    PyObject *key_refs[KEPT_KEYS], *keys[KEPT_KEYS];
    Py_hash_t key_hashes[KEPT_KEYS];
    char keys_tables_own[KEPT_KEYS];
    int next_key;
    PyObject *weakrefs;
    Py_ssize_t max_accesses;
    unsigned long forks; /* forks_seen when main_ident was read */
    Py_ssize_t mark_at[M_FIELDS], handoff_at[H_FIELDS], ref_at[R_FIELDS];
    vectorcallfunc vectorcall;
} Declarer;

#define FIELD(obj, at) (*(PyObject **)((char *)(obj) + (at)))

/* Where `type` keeps its slot `name`: the offset of a writable object member that an
 * instance's generic attribute read would use. -1 + error when it has none (a class that is
 * not a slotted dataclass): the Declarer (or streamcheck/_launch_check.c's LaunchCheck) is
 * then not made, and the Python core runs. */
Py_ssize_t slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *key = PyUnicode_InternFromString(name);
    if (key == NULL)
        return -1;
    PyObject *descr = _PyType_Lookup(type, key); /* borrowed */
    Py_DECREF(key);
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
        type->tp_getattro == PyObject_GenericGetAttr && PyDescr_TYPE(descr) == type) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
            return member->offset;
    }
    PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
    return -1;
}

/* An instance of `type` with its fields at `at` set to `values` (new references taken), as
 * a slotted dataclass's __init__ leaves it. */
static PyObject *make_record(PyObject *type, const Py_ssize_t *at, PyObject *const *values,
                             int n)
{
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *obj = tp->tp_alloc(tp, 0);
    if (obj == NULL)
        return NULL;
    for (int i = 0; i < n; i++)
        FIELD(obj, at[i]) = Py_NewRef(values[i]);
    return obj;
}

/* A field of a record the auditor keeps: read at its slot when it is of the type learned,
 * else by name. A new reference, or NULL + error. */
static PyObject *field_of(Declarer *self, PyObject *obj, int which)
{
    if ((PyObject *)Py_TYPE(obj) == self->handoff_type) {
        PyObject *value = FIELD(obj, self->handoff_at[which]);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttrString(obj, handoff_names[which]);
}

static PyObject *mark_field(Declarer *self, PyObject *mark, int which)
{
    if ((PyObject *)Py_TYPE(mark) == self->mark_type) {
        PyObject *value = FIELD(mark, self->mark_at[which]);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttrString(mark, mark_names[which]);
}

/* A stream's device or id (a StreamRef's field): read at its slot when it is of the type
 * learned, else by name. A new reference, or NULL + error. */
static PyObject *ref_field(Declarer *self, PyObject *stream, int which)
{
    if (self->ref_type != NULL && (PyObject *)Py_TYPE(stream) == self->ref_type) {
        PyObject *value = FIELD(stream, self->ref_at[which]);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(stream, which == R_DEVICE ? s_device : s_stream_id);
}

/* done.get(a.mark.stream, 0) < a.mark.tick: the host has not waited for `access`. 1, 0, or
 * -1 + error. */
static int not_waited_for(Declarer *self, PyObject *access, PyObject *done)
{
    PyObject *mark = field_of(self, access, H_MARK);
    if (mark == NULL)
        return -1;
    PyObject *stream = mark_field(self, mark, M_STREAM);
    PyObject *tick = stream == NULL ? NULL : mark_field(self, mark, M_TICK);
    Py_DECREF(mark);
    if (tick == NULL) {
        Py_XDECREF(stream);
        return -1;
    }
    PyObject *seen = PyDict_GetItemWithError(done, stream); /* borrowed */
    Py_DECREF(stream);
    int result = seen == NULL && PyErr_Occurred()
                     ? -1
                     : PyObject_RichCompareBool(seen == NULL ? zero : seen, tick, Py_LT);
    Py_DECREF(tick);
    return result;
}

/* a.blocks is None or not a.blocks <= new: `access` touches a block `new` does not. */
static int not_covered_by(Declarer *self, PyObject *access, PyObject *new)
{
    PyObject *blocks = field_of(self, access, H_BLOCKS);
    if (blocks == NULL)
        return -1;
    int result = 1;
    if (blocks != Py_None) {
        int covered = PyObject_RichCompareBool(blocks, new, Py_LE);
        result = covered < 0 ? -1 : !covered;
    }
    Py_DECREF(blocks);
    return result;
}

/* Another stream than (device, sid): a.stream.stream_id != sid or a.stream.device != device. */
static int on_other_stream(Declarer *self, PyObject *access, PyObject *device, PyObject *sid)
{
    PyObject *stream = field_of(self, access, H_STREAM);
    if (stream == NULL)
        return -1;
    PyObject *other_sid = ref_field(self, stream, R_STREAM_ID);
    int result = other_sid == NULL ? -1 : PyObject_RichCompareBool(other_sid, sid, Py_NE);
    Py_XDECREF(other_sid);
    if (result == 0) {
        PyObject *other_device = ref_field(self, stream, R_DEVICE);
        result = other_device == NULL ? -1
                                      : PyObject_RichCompareBool(other_device, device, Py_NE);
        Py_XDECREF(other_device);
    }
    Py_DECREF(stream);
    return result;
}

/* kept[:] = the accesses of `kept` that stay: those the host has not waited for and that
 * `new` (an access's blocks) does not cover; with `device` (a read's stream), only the same
 * stream's are dropped for covering. `new` NULL: none stays that way (a whole-buffer write
 * covers every access). Auditor._keep_access and _not_covered, in one. 0, or -1 + error. */
static int keep_uncovered(Declarer *self, PyObject *kept, PyObject *new, PyObject *done,
                          PyObject *device, PyObject *sid)
{
    if (device == NULL && new == Py_None)
        return PyList_SetSlice(kept, 0, PyList_GET_SIZE(kept), NULL);
    PyObject *stays = PyList_New(0);
    if (stays == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(kept); i++) {
        PyObject *access = PyList_GET_ITEM(kept, i);
        Py_INCREF(access);
        int stay = not_waited_for(self, access, done);
        if (stay == 1 && device != NULL) {
            stay = on_other_stream(self, access, device, sid);
            if (stay == 0 && new != Py_None)
                stay = not_covered_by(self, access, new);
        }
        else if (stay == 1)
            stay = not_covered_by(self, access, new);
        if (stay == 1 && PyList_Append(stays, access) < 0)
            stay = -1;
        Py_DECREF(access);
        if (stay < 0) {
            Py_DECREF(stays);
            return -1;
        }
    }
    /* all stay (a connector's blocks beside other blocks of the layer): kept as it is */
    int result = PyList_GET_SIZE(stays) == PyList_GET_SIZE(kept)
                     ? 0
                     : PyList_SetSlice(kept, 0, PyList_GET_SIZE(kept), stays);
    Py_DECREF(stays);
    return result;
}

/* Auditor._keep_access: `access` joins its buffer's list in `table`, after the accesses it
 * makes irrelevant leave it; the list keeps the newest max_accesses. */
static int keep_access(Declarer *self, PyObject *table, PyObject *access, int same_stream,
                       PyObject *done)
{
    PyObject *tensor = FIELD(access, self->handoff_at[H_TENSOR]);
    PyObject *kept = PyDict_GetItemWithError(table, tensor); /* borrowed */
    if (kept == NULL) {
        if (PyErr_Occurred() || (kept = PyList_New(0)) == NULL)
            return -1;
        int failed = PyDict_SetItem(table, tensor, kept);
        Py_DECREF(kept); /* the table holds it */
        if (failed < 0)
            return -1;
    }
    if (!PyList_CheckExact(kept)) {
        PyErr_SetString(PyExc_TypeError, "Declarer: a kept access list is not a list");
        return -1;
    }
    Py_INCREF(kept);
    PyObject *blocks = FIELD(access, self->handoff_at[H_BLOCKS]);
    int result;
    if (!same_stream && blocks == Py_None && PyList_GET_SIZE(kept) == 1) {
        /* a whole-buffer write replacing the one access kept (the engine's handoff of the
         * same tensor, step after step): put in its place, the list's storage kept */
        PyList_SetItem(kept, 0, Py_NewRef(access)); /* the old one freed after */
        Py_DECREF(kept);
        return 0;
    }
    if (same_stream) {
        PyObject *stream = FIELD(access, self->handoff_at[H_STREAM]);
        PyObject *device = ref_field(self, stream, R_DEVICE);
        PyObject *sid = device == NULL ? NULL : ref_field(self, stream, R_STREAM_ID);
        result = sid == NULL ? -1 : keep_uncovered(self, kept, blocks, done, device, sid);
        Py_XDECREF(device);
        Py_XDECREF(sid);
    }
    else
        result = keep_uncovered(self, kept, blocks, done, NULL, NULL);
    if (result == 0)
        result = PyList_Append(kept, access);
    Py_ssize_t over = PyList_GET_SIZE(kept) - self->max_accesses;
    if (result == 0 && over > 0)
        result = PyList_SetSlice(kept, 0, over, NULL);
    Py_DECREF(kept);
    return result;
}

/* The declared accesses in `items` (a list or tuple of (buffer key, blocks) pairs) as a
 * tuple of their own, taken before anything else runs: a caller's list changed meanwhile (the
 * locks and the thread record may let another thread in) cannot change what was checked. A
 * new reference; NULL with no error when the Python core should take them (not that shape);
 * NULL + error. */
static PyObject *pairs_in(PyObject *items)
{
    PyObject *pairs;
    if (PyTuple_CheckExact(items))
        pairs = Py_NewRef(items);
    else if (PyList_CheckExact(items))
        pairs = PyList_AsTuple(items);
    else
        return NULL;
    for (Py_ssize_t i = 0; pairs != NULL && i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *item = PyTuple_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            Py_CLEAR(pairs);
    }
    return pairs;
}

/* streamcheck/_fast_lock.c: a FastLock taken or given back in place, any other lock through
 * its bound acquire or release. 0, or -1 + error. */
int lock_take(PyObject *lock, PyObject *acquire);
int lock_give(PyObject *lock, PyObject *release);

/* `table`'s entry under `key`, whose hash is `hash` (borrowed; NULL: none, or NULL + error).
 * The clocks' keys are tuples of two ints: their hash is computed anew at each lookup, which
 * a kept hash spares (a private read, checked on 3.11-3.13; the public one past them). Also
 * for streamcheck/_speedups.c's event hooks. */
PyObject *lookup_known(PyObject *table, PyObject *key, Py_hash_t hash)
{
#if PY_VERSION_HEX < 0x030E0000
    return _PyDict_GetItem_KnownHash(table, key, hash);
#else
    (void)hash;
    return PyDict_GetItemWithError(table, key);
#endif
}

static int two_ints(PyObject *key)
{
    return PyTuple_CheckExact(key) && PyTuple_GET_SIZE(key) == 2 &&
           PyLong_CheckExact(PyTuple_GET_ITEM(key, 0)) &&
           PyLong_CheckExact(PyTuple_GET_ITEM(key, 1));
}

/* The key object `table` holds equal to `mine` (a tuple of two exact ints), borrowed: the
 * first one put in for it, which a dict keeps while it holds the key, so a kept copy of it
 * matches the table's entry by identity; NULL where it holds none (or `mine` is of another
 * shape). Only keys of two exact ints are compared: equal then means the same hash, and
 * comparing runs no code that could change the table meanwhile. Also for
 * streamcheck/_speedups.c's event hooks. */
PyObject *tables_own_key(PyObject *table, PyObject *mine)
{
    if (!two_ints(mine))
        return NULL;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(table, &pos, &key, &value))
        if (key == mine || (two_ints(key) && PyObject_RichCompareBool(key, mine, Py_EQ) == 1))
            return key;
    return NULL;
}

/* The (device, stream id) key of `stream` (a new reference in *key_out) and its hash (*hash),
 * as kept: 0, or -1 + error. Both are handed out before anything evicted is freed (a
 * deallocation may run code that declares, which may reuse the entry). A StreamRef (never
 * changed once made) is read once per object while it is among the last KEPT_KEYS declared
 * on (each held, so its address names it); a stream of another class is read afresh at each
 * call (its entry names no stream). A declaration ticks the
 * clock of its stream under that key, in the clock table and in the new clock: four lookups
 * a declaration, each hashing a new tuple and comparing it with the table's own key, where
 * the kept key (once it is the table's own object) matches it by identity. */
static int stream_key(Declarer *self, PyObject *stream, PyObject **key_out, Py_hash_t *hash)
{
    int kept = self->ref_type != NULL && (PyObject *)Py_TYPE(stream) == self->ref_type;
    for (int i = 0; kept && i < KEPT_KEYS; i++)
        if (self->key_refs[i] == stream && self->keys[i] != NULL) {
            *key_out = Py_NewRef(self->keys[i]);
            *hash = self->key_hashes[i];
            return 0;
        }
    PyObject *device = ref_field(self, stream, R_DEVICE);
    PyObject *sid = device == NULL ? NULL : ref_field(self, stream, R_STREAM_ID);
    PyObject *key = sid == NULL ? NULL : PyTuple_Pack(2, device, sid);
    Py_XDECREF(device);
    Py_XDECREF(sid);
    Py_hash_t made_hash = key == NULL ? -1 : PyObject_Hash(key);
    if (made_hash == -1) {
        Py_XDECREF(key);
        return -1;
    }
    int i = self->next_key;
    self->next_key = (i + 1) % KEPT_KEYS;
    PyObject *old_ref = self->key_refs[i], *old_key = self->keys[i];
    self->key_refs[i] = kept ? Py_NewRef(stream) : NULL;
    self->keys[i] = key;
    self->key_hashes[i] = made_hash;
    self->keys_tables_own[i] = 0;
    *key_out = Py_NewRef(key);
    *hash = made_hash;
    Py_XDECREF(old_ref); /* after the entry is consistent: a deallocation may run code */
    Py_XDECREF(old_key);
    return 0;
}

/* The kept key of `stream`, if it is still `mine`, made the very key object the clock table
 * holds for that stream, once it holds one (tables_own_key). */
static void take_tables_key(Declarer *self, PyObject *stream, PyObject *mine)
{
    int at = 0;
    while (at < KEPT_KEYS && (self->key_refs[at] != stream || self->keys[at] != mine))
        at++;
    if (at == KEPT_KEYS || self->keys_tables_own[at])
        return; /* replaced meanwhile (a lock's wait let another thread declare), or done */
    self->keys_tables_own[at] = 1;
    PyObject *own = tables_own_key(self->clock_table, mine);
    if (own != NULL && own != mine) {
        self->keys[at] = Py_NewRef(own);
        Py_DECREF(mine); /* the entry's reference; the caller holds its own */
    }
}

/* HappensBefore.mark(key), its clocks live, for `stream`'s key (held by the caller) and its
 * hash: the stream's own entry ticked, in a new clock. The Mark, or NULL + error. */
static PyObject *tick_clock(Declarer *self, PyObject *stream, PyObject *key, Py_hash_t hash)
{
    if (lock_take(self->clocks_lock, self->clocks_acquire) < 0)
        return NULL;
    PyObject *mark = NULL, *clock = NULL, *count = NULL;
    PyObject *own = lookup_known(self->clock_table, key, hash); /* borrowed */
    if (own == NULL && PyErr_Occurred())
        goto done;
    clock = own == NULL ? PyDict_New() : PyDict_Copy(own);
    if (clock == NULL)
        goto done;
    PyObject *before = lookup_known(clock, key, hash); /* borrowed */
    if (before == NULL && PyErr_Occurred())
        goto done;
    count = PyNumber_Add(before == NULL ? zero : before, one);
    if (count == NULL || PyDict_SetItem(clock, key, count) < 0 ||
        PyDict_SetItem(self->clock_table, key, clock) < 0)
        goto done;
    take_tables_key(self, stream, key);
    PyObject *values[M_FIELDS] = {key, count};
    mark = make_record(self->mark_type, self->mark_at, values, M_FIELDS);
done:
    Py_XDECREF(clock);
    Py_XDECREF(count);
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* the release runs with no error set */
    if (lock_give(self->clocks_lock, self->clocks_release) < 0)
        Py_CLEAR(mark);
    if (type != NULL) {
        Py_XDECREF(mark);
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    return mark;
}

/* Whether the Python core must take this call: the clocks not live yet (the first mark
 * installs the event hooks, which only Python does). 1, 0, or -1 + error. */
static int clocks_idle(Declarer *self)
{
    PyObject *active = PyObject_GetAttr(self->clocks, s_active);
    if (active == NULL)
        return -1;
    int idle = active != Py_True;
    Py_DECREF(active);
    return idle;
}

/* The new Handoffs, reads first, in `made` (a new list), sharing one mark, thread, time and
 * site. */
static PyObject *make_handoffs(Declarer *self, PyObject *stream, PyObject *reads,
                               PyObject *writes, PyObject *shared[4])
{
    Py_ssize_t nreads = PyTuple_GET_SIZE(reads);
    Py_ssize_t n = nreads + PyTuple_GET_SIZE(writes);
    PyObject *made = PyList_New(n);
    if (made == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = i < nreads ? PyTuple_GET_ITEM(reads, i)
                                    : PyTuple_GET_ITEM(writes, i - nreads);
        PyObject *by_field[H_FIELDS];
        by_field[H_TENSOR] = PyTuple_GET_ITEM(pair, 0);
        by_field[H_BLOCKS] = PyTuple_GET_ITEM(pair, 1);
        by_field[H_MARK] = shared[0];
        by_field[H_STREAM] = stream;
        by_field[H_THREAD] = shared[1];
        by_field[H_TIME] = shared[2];
        by_field[H_STACK] = shared[3];
        by_field[H_ACCESS] = i < nreads ? s_read : s_write;
        PyObject *handoff = make_record(self->handoff_type, self->handoff_at, by_field,
                                        H_FIELDS);
        if (handoff == NULL) {
            Py_DECREF(made);
            return NULL;
        }
        PyList_SET_ITEM(made, i, handoff); /* steals */
    }
    return made;
}

/* Under the auditor's lock, each new access kept as Auditor.declare keeps it. */
static int keep_all(Declarer *self, PyObject *made, Py_ssize_t nreads)
{
    if (lock_take(self->lock, self->lock_acquire) < 0)
        return -1;
    int result = 0;
    PyObject *done = PyObject_GetAttr(self->clocks, s_done);
    if (done == NULL || !PyDict_Check(done)) {
        if (done != NULL)
            PyErr_SetString(PyExc_TypeError, "Declarer: the clocks' done clock is not a dict");
        result = -1;
    }
    for (Py_ssize_t i = 0; result == 0 && i < PyList_GET_SIZE(made); i++) {
        PyObject *handoff = PyList_GET_ITEM(made, i);
        if (i < nreads) {
            result = keep_access(self, self->reads, handoff, 1, done);
            continue;
        }
        result = keep_access(self, self->writes, handoff, 0, done);
        if (result < 0)
            break;
        PyObject *tensor = FIELD(handoff, self->handoff_at[H_TENSOR]);
        PyObject *reads_now = PyDict_GetItemWithError(self->reads, tensor); /* borrowed */
        if (reads_now == NULL) {
            result = PyErr_Occurred() ? -1 : 0;
            continue;
        }
        Py_INCREF(reads_now);
        int some = PyObject_IsTrue(reads_now);
        if (some > 0 && !PyList_CheckExact(reads_now)) {
            PyErr_SetString(PyExc_TypeError, "Declarer: a kept access list is not a list");
            some = -1;
        }
        if (some > 0)
            result = keep_uncovered(self, reads_now, FIELD(handoff, self->handoff_at[H_BLOCKS]),
                                    done, NULL, NULL);
        else if (some < 0)
            result = -1;
        Py_DECREF(reads_now);
    }
    Py_XDECREF(done);
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (lock_give(self->lock, self->lock_release) < 0)
        result = -1;
    if (type != NULL)
        PyErr_Restore(type, value, traceback);
    return type != NULL ? -1 : result;
}

/*
 * The calling thread's record, auditor.thread_ref(ident), reused where nothing it holds can
 * have changed since it was made: the same Thread object under the ident (threading._active:
 * not a new thread that took a finished one's ident), the same name object, and the roles
 * table at the same version (ThreadRoles.version; a helper thread's role is a function of
 * the table). The main thread's role also turns on whether declared engine threads still
 * live, which no version shows: its record is reused only while it is the main engine
 * thread (auditor.main_engine, which role_of answers first). Otherwise thread_ref runs, and
 * its record is kept with what it was made at. A new reference, or NULL + error.
 */
#define THREAD_CACHE_MAX 4096 /* as auditor.MAX_THREADS: many threads came and went */

/* Counts the forks this process came from (os.register_at_fork, at the module's import): a
 * child forked from a helper thread has that thread as its main thread, so a Declarer made
 * before the fork learns the main thread again and forgets its records. */
static unsigned long forks_seen;

static PyObject *after_fork_in_child(PyObject *module, PyObject *unused)
{
    forks_seen++;
    Py_RETURN_NONE;
}

/* The main thread's ident as threading has it now: 0, or -1 + error. */
static int learn_main_thread(Declarer *self)
{
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main = threading == NULL ? NULL
                                       : PyObject_CallMethod(threading, "main_thread", NULL);
    Py_XDECREF(threading);
    PyObject *ident = main == NULL ? NULL : PyObject_GetAttrString(main, "ident");
    Py_XDECREF(main);
    if (ident == NULL)
        return -1;
    Py_XSETREF(self->main_ident, ident);
    PyDict_Clear(self->thread_cache);
    self->forks = forks_seen;
    return 0;
}
enum { C_THREAD, C_NAME, C_VERSION, C_REF, C_FIELDS };

static int reusable(Declarer *self, PyObject *entry, PyObject *thread, PyObject *name,
                    PyObject *version, PyObject *ident)
{
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != C_FIELDS ||
        PyTuple_GET_ITEM(entry, C_THREAD) != thread || PyTuple_GET_ITEM(entry, C_NAME) != name)
        return 0;
    int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(entry, C_VERSION), version, Py_EQ);
    if (same <= 0)
        return same;
    same = PyObject_RichCompareBool(ident, self->main_ident, Py_EQ);
    if (same != 1)
        return same < 0 ? -1 : 1; /* a helper thread */
    PyObject *main_engine = PyObject_GetAttr(self->auditor, s_main_engine);
    if (main_engine == NULL)
        return -1;
    same = PyObject_RichCompareBool(main_engine, ident, Py_EQ);
    Py_DECREF(main_engine);
    if (same != 1)
        return same;
    PyObject *role = PyObject_GetAttr(PyTuple_GET_ITEM(entry, C_REF), s_role);
    if (role == NULL)
        return -1;
    same = PyObject_RichCompareBool(role, s_engine, Py_EQ);
    Py_DECREF(role);
    return same;
}

static PyObject *thread_record(Declarer *self, PyObject *ident)
{
    if (self->forks != forks_seen && learn_main_thread(self) < 0)
        return NULL;
    PyObject *name = NULL, *ref = NULL;
    PyObject *version = PyObject_GetAttr(self->roles, s_version);
    if (version == NULL)
        return NULL;
    PyObject *thread = PyDict_GetItemWithError(self->threads, ident); /* borrowed */
    if (thread == NULL && PyErr_Occurred())
        goto done;
    if (thread != NULL) {
        Py_INCREF(thread);
        if (optional_attr(thread, s_name, &name) < 0)
            goto done;
        PyObject *entry = PyDict_GetItemWithError(self->thread_cache, ident); /* borrowed */
        if (entry == NULL && PyErr_Occurred())
            goto done;
        Py_XINCREF(entry);
        int reuse = reusable(self, entry, thread, name, version, ident);
        if (reuse > 0)
            ref = Py_NewRef(PyTuple_GET_ITEM(entry, C_REF));
        Py_XDECREF(entry);
        if (reuse != 0)
            goto done;
    }
    ref = PyObject_CallOneArg(self->thread_ref, ident);
    if (ref == NULL || thread == NULL || name == NULL)
        goto done;
    if (PyDict_GET_SIZE(self->thread_cache) >= THREAD_CACHE_MAX)
        PyDict_Clear(self->thread_cache);
    PyObject *entry = PyTuple_Pack(C_FIELDS, thread, name, version, ref);
    if (entry == NULL || PyDict_SetItem(self->thread_cache, ident, entry) < 0)
        Py_CLEAR(ref);
    Py_XDECREF(entry);
done:
    Py_XDECREF(thread);
    Py_XDECREF(name);
    Py_DECREF(version);
    return ref;
}

/* python_declare(auditor, ...): held bound to the auditor, so the arguments pass as they came */
static PyObject *declare_in_python(Declarer *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    return PyObject_Vectorcall(self->python_declare, args, nargs, kwnames);
}

static PyObject *declarer_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames)
{
    Declarer *self = (Declarer *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *skip_arg = nargs == 4 ? args[3] : NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs == 3 && nkw == 1 &&
        PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_skip) == 0)
        skip_arg = args[3];
    if (nargs < 3 || nargs + nkw > 4 || (nargs + nkw == 4 && skip_arg == NULL))
        return declare_in_python(self, args, nargs, kwnames); /* its own TypeError */
    PyObject *stream = args[0];
    Py_ssize_t skip = 2;
    if (skip_arg != NULL && (!PyLong_CheckExact(skip_arg) ||
                             ((skip = PyLong_AsSsize_t(skip_arg)) < 1))) {
        if (skip == -1 && PyErr_Occurred())
            PyErr_Clear(); /* too large for here: Python's declare takes it */
        return declare_in_python(self, args, nargs, kwnames);
    }
    PyObject *reads = pairs_in(args[1]);
    PyObject *writes = reads == NULL ? NULL : pairs_in(args[2]);
    int idle = writes == NULL ? (PyErr_Occurred() ? -1 : 1) : clocks_idle(self);
    if (idle != 0) {
        Py_XDECREF(reads);
        Py_XDECREF(writes);
        if (idle < 0)
            return NULL;
        return declare_in_python(self, args, nargs, kwnames);
    }

    /* as Auditor.declare: the mark, the thread, the time and the site, then the records */
    PyObject *shared[4] = {NULL, NULL, NULL, NULL}; /* mark, thread, time, site */
    PyObject *made = NULL, *ident = NULL, *key = NULL;
    Py_hash_t hash = -1;
    /* the key and its hash held from here: a lock's wait below may let another thread
     * replace the entry */
    if (stream_key(self, stream, &key, &hash) < 0 ||
        (shared[0] = tick_clock(self, stream, key, hash)) == NULL ||
        (ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident())) == NULL ||
        (shared[1] = thread_record(self, ident)) == NULL ||
        (shared[2] = PyObject_CallNoArgs(self->time_fn)) == NULL ||
        /* the site Python's declare takes `skip` frames above its own: here, where no frame
         * of declare runs, one fewer above its caller's */
        (shared[3] = site_of(skip - 1, SITE_DEPTH)) == NULL)
        goto done;
    made = make_handoffs(self, stream, reads, writes, shared);
    if (made != NULL && keep_all(self, made, PyTuple_GET_SIZE(reads)) < 0)
        Py_CLEAR(made);
done:
    Py_DECREF(reads);
    Py_DECREF(writes);
    Py_XDECREF(key);
    Py_XDECREF(ident);
    for (int i = 0; i < 4; i++)
        Py_XDECREF(shared[i]);
    return made;
}

static int declarer_traverse(PyObject *op, visitproc visit, void *arg)
{
    Declarer *self = (Declarer *)op;
    Py_VISIT(self->auditor);
    Py_VISIT(self->python_declare);
    Py_VISIT(self->mark_type);
    Py_VISIT(self->handoff_type);
    Py_VISIT(self->clocks);
    Py_VISIT(self->clocks_lock);
    Py_VISIT(self->clock_table);
    Py_VISIT(self->lock);
    Py_VISIT(self->writes);
    Py_VISIT(self->reads);
    Py_VISIT(self->thread_ref);
    Py_VISIT(self->time_fn);
    Py_VISIT(self->roles);
    Py_VISIT(self->threads);
    Py_VISIT(self->thread_cache);
    Py_VISIT(self->main_ident);
    Py_VISIT(self->ref_type);
    Py_VISIT(self->clocks_acquire);
    Py_VISIT(self->clocks_release);
    Py_VISIT(self->lock_acquire);
    Py_VISIT(self->lock_release);
    for (int i = 0; i < KEPT_KEYS; i++) {
        Py_VISIT(self->key_refs[i]);
        Py_VISIT(self->keys[i]);
    }
    return 0;
}

static int declarer_clear(PyObject *op)
{
    Declarer *self = (Declarer *)op;
    Py_CLEAR(self->auditor);
    Py_CLEAR(self->python_declare);
    Py_CLEAR(self->mark_type);
    Py_CLEAR(self->handoff_type);
    Py_CLEAR(self->clocks);
    Py_CLEAR(self->clocks_lock);
    Py_CLEAR(self->clock_table);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->writes);
    Py_CLEAR(self->reads);
    Py_CLEAR(self->thread_ref);
    Py_CLEAR(self->time_fn);
    Py_CLEAR(self->roles);
    Py_CLEAR(self->threads);
    Py_CLEAR(self->thread_cache);
    Py_CLEAR(self->main_ident);
    Py_CLEAR(self->ref_type);
    Py_CLEAR(self->clocks_acquire);
    Py_CLEAR(self->clocks_release);
    Py_CLEAR(self->lock_acquire);
    Py_CLEAR(self->lock_release);
    for (int i = 0; i < KEPT_KEYS; i++) {
        Py_CLEAR(self->key_refs[i]);
        Py_CLEAR(self->keys[i]);
    }
    return 0;
}

static void declarer_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    if (((Declarer *)op)->weakrefs != NULL)
        PyObject_ClearWeakRefs(op);
    declarer_clear(op);
    Py_TYPE(op)->tp_free(op);
}

/* A dict attribute set once at the owner's creation. */
static PyObject *dict_attr(PyObject *owner, const char *name)
{
    PyObject *value = PyObject_GetAttrString(owner, name);
    if (value != NULL && !PyDict_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "Declarer: %s is not a dict", name);
        Py_CLEAR(value);
    }
    return value;
}

static PyObject *declarer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *auditor, *python_declare, *mark_type, *handoff_type, *ref_type = NULL;
    Py_ssize_t max_accesses;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Declarer takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO!O!n|O!:Declarer", &auditor, &python_declare,
                          &PyType_Type, &mark_type, &PyType_Type, &handoff_type, &max_accesses,
                          &PyType_Type, &ref_type))
        return NULL;
    if (max_accesses < 1) {
        PyErr_SetString(PyExc_ValueError, "Declarer: max_accesses >= 1");
        return NULL;
    }
    Declarer *self = (Declarer *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = declarer_vectorcall;
    self->max_accesses = max_accesses;
    self->auditor = Py_NewRef(auditor);
    self->python_declare = PyMethod_New(python_declare, auditor); /* bound once */
    if (self->python_declare == NULL)
        goto fail;
    self->mark_type = Py_NewRef(mark_type);
    self->handoff_type = Py_NewRef(handoff_type);
    for (int i = 0; i < M_FIELDS; i++)
        if ((self->mark_at[i] = slot_offset((PyTypeObject *)mark_type, mark_names[i])) < 0)
            goto fail;
    for (int i = 0; i < H_FIELDS; i++)
        if ((self->handoff_at[i] = slot_offset((PyTypeObject *)handoff_type,
                                               handoff_names[i])) < 0)
            goto fail;
    if (ref_type != NULL) { /* the streams' class (StreamRef): its fields read at its slots */
        self->ref_type = Py_NewRef(ref_type);
        for (int i = 0; i < R_FIELDS; i++)
            if ((self->ref_at[i] = slot_offset((PyTypeObject *)ref_type, ref_names[i])) < 0)
                goto fail;
    }
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL)
        goto fail;
    self->time_fn = PyObject_GetAttrString(time_module, "time");
    Py_DECREF(time_module);
    if (self->time_fn == NULL || (self->clocks = PyObject_GetAttrString(auditor, "clocks")) == NULL ||
        (self->clocks_lock = PyObject_GetAttrString(self->clocks, "_lock")) == NULL ||
        (self->clock_table = dict_attr(self->clocks, "_clocks")) == NULL ||
        (self->lock = PyObject_GetAttrString(auditor, "_lock")) == NULL ||
        (self->writes = dict_attr(auditor, "_writes")) == NULL ||
        (self->reads = dict_attr(auditor, "_reads")) == NULL ||
        (self->thread_ref = PyObject_GetAttrString(auditor, "thread_ref")) == NULL ||
        (self->roles = PyObject_GetAttrString(auditor, "roles")) == NULL ||
        (self->thread_cache = PyDict_New()) == NULL ||
        (self->clocks_acquire = PyObject_GetAttr(self->clocks_lock, s_acquire)) == NULL ||
        (self->clocks_release = PyObject_GetAttr(self->clocks_lock, s_release)) == NULL ||
        (self->lock_acquire = PyObject_GetAttr(self->lock, s_acquire)) == NULL ||
        (self->lock_release = PyObject_GetAttr(self->lock, s_release)) == NULL)
        goto fail;
    PyObject *threading = PyImport_ImportModule("threading");
    if (threading == NULL)
        goto fail;
    self->threads = dict_attr(threading, "_active");
    Py_DECREF(threading);
    if (self->threads == NULL || learn_main_thread(self) < 0)
        goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

PyTypeObject DeclarerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streamcheck._speedups.Declarer",
    .tp_doc = "Declarer(auditor, python_declare, mark_type, handoff_type, max_accesses"
              "[, stream_ref_type]): "
              "Auditor.declare compiled.",
    .tp_basicsize = sizeof(Declarer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = declarer_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Declarer, vectorcall),
    .tp_weaklistoffset = offsetof(Declarer, weakrefs),
    .tp_traverse = declarer_traverse,
    .tp_clear = declarer_clear,
    .tp_dealloc = declarer_dealloc,
};

/* Called by PyInit__speedups: the names, then the type on the module. */
int declare_add_types(PyObject *module)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {{&s_acquire, "acquire"}, {&s_release, "release"}, {&s_active, "active"},
                 {&s_done, "_done"},      {&s_device, "device"},   {&s_stream_id, "stream_id"},
                 {&s_read, "read"},       {&s_write, "write"},     {&s_skip, "skip"},
                 {&s_version, "version"}, {&s_name, "_name"},      {&s_role, "role"},
                 {&s_engine, "engine"},   {&s_main_engine, "main_engine"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    if ((zero = PyLong_FromLong(0)) == NULL || (one = PyLong_FromLong(1)) == NULL ||
        PyType_Ready(&DeclarerType) < 0 ||
        PyModule_AddObjectRef(module, "Declarer", (PyObject *)&DeclarerType) < 0)
        return -1;
    static PyMethodDef forked = {"_declare_after_fork", after_fork_in_child, METH_NOARGS,
                                 "os.register_at_fork's after_in_child: see _declare.c"};
    PyObject *hook = PyCFunction_New(&forked, NULL);
    PyObject *os = hook == NULL ? NULL : PyImport_ImportModule("os");
    PyObject *reg = os == NULL ? NULL : PyObject_GetAttrString(os, "register_at_fork");
    PyObject *kwargs = reg == NULL ? NULL : Py_BuildValue("{sO}", "after_in_child", hook);
    PyObject *args = kwargs == NULL ? NULL : PyTuple_New(0);
    PyObject *done = args == NULL ? NULL : PyObject_Call(reg, args, kwargs);
    int failed = done == NULL;
    Py_XDECREF(done);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(reg);
    Py_XDECREF(os);
    Py_XDECREF(hook);
    return failed ? -1 : 0;
}
