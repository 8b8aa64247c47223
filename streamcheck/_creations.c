/* streamcheck._speedups, the stream book's creations kept as plain fields.
 *
 * Every stream's latest creation is kept under its key (device index, stream id) for as long
 * as the audit runs: a finding that names the stream says where it was made
 * (streamcheck/core/provenance.py, StreamBook.origin). A dict of records makes, per creation,
 * a key tuple, a 7-tuple and a site tuple of 12 (code, offset) pairs with an integer for each
 * offset: about 20 objects, three of them tracked by the cyclic collector, where a
 * `torch.cuda.Stream()` itself makes two. The collections those objects bring made up most of
 * what the creation hook added (scripts/bench_hook_instructions.py). Here the compiled
 * CreationHook (_speedups.c) writes a creation into an entry of an open-addressed table:
 * the stream, the thread, the via, its name, the time and the frames' code objects and
 * offsets, nothing allocated. The record a dict would hold is made only when read.
 *
 *   CreationTable()
 *       what StreamBook._created is with the compiled core: table[key] = value keeps any
 *       object (the Python hook's StreamEvent) whole; get(key[, default]), table[key],
 *       len(table), keys(), values(), items() and clear() as a dict's; a key is a pair of
 *       ints. A creation written from C reads as (stream, thread ident, via, site, time,
 *       thread name, "created"), the site (code, offset, ...) as capture_site makes it, and
 *       a torch.cuda.Stream as (device index, stream id, device type, its type), the form
 *       streamcheck/core/provenance.py reads a stream kept by key in.
 *
 * creation_table_record(...) is what the hook calls (under the GIL, as a dict store is).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

int running_frames(Py_ssize_t skip, PyObject **codes, int *lastis, int n); /* _frames.c */

/* The creating frames kept (the Python hook's capture_site(depth=12) keeps as many). */
#define CREATION_SITE_DEPTH 12
#define FIRST_CAPACITY 64 /* a power of two; torch's pool has 32 streams a priority a device */

typedef struct {
    long long device, stream_id;
    int used, nframes;
    PyObject *stream, *via, *name; /* a creation written from C */
    PyObject *kind; /* or, for a stream kept by its key, its type (stream NULL) */
    PyObject *whole; /* or a value stored from Python */
    long long device_type; /* a stream kept by key: the third part of its key */
    unsigned long ident;
    double when;
    PyObject *codes[CREATION_SITE_DEPTH];
    int lastis[CREATION_SITE_DEPTH];
} Creation;

typedef struct {
    PyObject_HEAD
    Creation *entries;
    Py_ssize_t capacity, count; /* capacity a power of two, at most half of it used */
    PyObject *weakrefs;
} CreationTable;

static PyTypeObject CreationTableType;
static PyObject *s_created; /* "created", provenance.CREATED */

int creation_table_check(PyObject *op)
{
    return Py_IS_TYPE(op, &CreationTableType);
}

/* Every reference an entry holds (NULL where a field is empty): the one list of them that
 * taking, holding and the collector's visit read. */
#define ENTRY_REFS (5 + CREATION_SITE_DEPTH)
static void refs_of(const Creation *entry, PyObject *refs[ENTRY_REFS])
{
    refs[0] = entry->stream;
    refs[1] = entry->via;
    refs[2] = entry->name;
    refs[3] = entry->whole;
    refs[4] = entry->kind;
    for (int i = 0; i < CREATION_SITE_DEPTH; i++)
        refs[5 + i] = i < entry->nframes ? entry->codes[i] : NULL;
}

/* Hand an entry's references to the caller (decref them with drop_refs once the table is
 * consistent again: a stream's deallocation may run code that creates streams). */
static void take_refs(Creation *entry, PyObject *drop[ENTRY_REFS])
{
    refs_of(entry, drop);
    entry->stream = entry->via = entry->name = entry->whole = entry->kind = NULL;
    entry->nframes = 0;
}

static void drop_refs(PyObject *drop[ENTRY_REFS])
{
    for (int i = 0; i < ENTRY_REFS; i++)
        Py_XDECREF(drop[i]);
}

static void hold_refs(const Creation *entry)
{
    PyObject *refs[ENTRY_REFS];
    refs_of(entry, refs);
    for (int i = 0; i < ENTRY_REFS; i++)
        Py_XINCREF(refs[i]);
}

static size_t slot_of(long long device, long long stream_id, Py_ssize_t capacity)
{
    unsigned long long h = (unsigned long long)stream_id * 0x9E3779B97F4A7C15ULL;
    h ^= (unsigned long long)device * 0xC2B2AE3D27D4EB4FULL;
    return (size_t)(h ^ (h >> 29)) & (size_t)(capacity - 1);
}

/* The entry of the key, or the empty one it would take (linear probing; never full). */
static Creation *find(Creation *entries, Py_ssize_t capacity, long long device,
                      long long stream_id)
{
    size_t i = slot_of(device, stream_id, capacity);
    while (entries[i].used &&
           (entries[i].device != device || entries[i].stream_id != stream_id))
        i = (i + 1) & (size_t)(capacity - 1);
    return &entries[i];
}

/* Room for one more key: 0, or -1 + MemoryError. Entries move with their references. */
static int make_room(CreationTable *table)
{
    if (table->entries != NULL && 2 * (table->count + 1) <= table->capacity)
        return 0;
    Py_ssize_t capacity = table->entries == NULL ? FIRST_CAPACITY : 2 * table->capacity;
    Creation *grown = PyMem_Calloc((size_t)capacity, sizeof(Creation));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; table->entries != NULL && i < table->capacity; i++)
        if (table->entries[i].used)
            *find(grown, capacity, table->entries[i].device, table->entries[i].stream_id) =
                table->entries[i];
    PyMem_Free(table->entries);
    table->entries = grown;
    table->capacity = capacity;
    return 0;
}

/* The entry for the key, emptied, its old references in `drop`; NULL + error. */
static Creation *entry_for(CreationTable *table, long long device, long long stream_id,
                           PyObject *drop[ENTRY_REFS])
{
    if (make_room(table) < 0)
        return NULL;
    Creation *entry = find(table->entries, table->capacity, device, stream_id);
    if (!entry->used) {
        entry->used = 1;
        entry->device = device;
        entry->stream_id = stream_id;
        table->count++;
    }
    take_refs(entry, drop);
    return entry;
}

/* A creation of `stream` (key: device, stream id, device type) by the thread `ident` named
 * `name`, through `via`, at `when`, its site the running frames from `skip` above the caller:
 * 0, or -1 + error. With `by_key`, the stream is kept as its type and key, not the object,
 * which its type makes again from them (torch.cuda.Stream(stream_id=, device_index=,
 * device_type=)), as the switch log keeps one: the stream object is freed when its creator
 * lets it go, as it would be with no audit. The references are the caller's (borrowed). */
int creation_table_record(PyObject *op, const long long key[3], int by_key, PyObject *stream,
                          unsigned long ident, PyObject *via, PyObject *name, double when,
                          Py_ssize_t skip)
{
    long long device = key[0], stream_id = key[1];
    CreationTable *table = (CreationTable *)op;
    PyObject *codes[CREATION_SITE_DEPTH];
    int lastis[CREATION_SITE_DEPTH];
    int found = running_frames(skip, codes, lastis, CREATION_SITE_DEPTH);
    if (found < 0)
        return -1;
    PyObject *drop[ENTRY_REFS];
    Creation *entry = entry_for(table, device, stream_id, drop);
    if (entry == NULL) {
        for (int i = 0; i < found; i++)
            Py_DECREF(codes[i]);
        return -1;
    }
    if (by_key) {
        entry->kind = Py_NewRef((PyObject *)Py_TYPE(stream));
        entry->device_type = key[2];
    } else {
        entry->stream = Py_NewRef(stream);
    }
    entry->via = Py_NewRef(via);
    entry->name = Py_XNewRef(name);
    entry->ident = ident;
    entry->when = when;
    entry->nframes = found;
    memcpy(entry->codes, codes, (size_t)found * sizeof(PyObject *)); /* the references move */
    memcpy(entry->lastis, lastis, (size_t)found * sizeof(int));
    drop_refs(drop);
    return 0;
}

/* The record of a copy of an entry (every field held): the value stored whole, or the
 * creation as the Python hook's record reads. A new reference, or NULL + error. */
static PyObject *record_of(Creation *entry)
{
    if (entry->whole != NULL)
        return Py_NewRef(entry->whole);
    PyObject *site = PyTuple_New(2 * (Py_ssize_t)entry->nframes);
    for (int i = 0; site != NULL && i < entry->nframes; i++) {
        PyObject *lasti = PyLong_FromLong(entry->lastis[i]);
        if (lasti == NULL) {
            Py_CLEAR(site);
            break;
        }
        PyTuple_SET_ITEM(site, 2 * i, Py_NewRef(entry->codes[i]));
        PyTuple_SET_ITEM(site, 2 * i + 1, lasti);
    }
    if (site == NULL)
        return NULL;
    PyObject *stream = entry->kind == NULL
                           ? Py_NewRef(entry->stream)
                           : Py_BuildValue("(LLLO)", entry->device, entry->stream_id,
                                           entry->device_type, entry->kind);
    if (stream == NULL) {
        Py_DECREF(site);
        return NULL;
    }
    return Py_BuildValue("(NkONdOO)", stream, entry->ident, entry->via, site, entry->when,
                         entry->name ? entry->name : Py_None, s_created);
}

/* The record under the key, read from a copy (making it allocates, which may run code that
 * changes the table); NULL with no error where there is none. */
static PyObject *lookup(CreationTable *table, long long device, long long stream_id)
{
    if (table->entries == NULL)
        return NULL;
    Creation *entry = find(table->entries, table->capacity, device, stream_id);
    if (!entry->used)
        return NULL;
    Creation copy = *entry;
    hold_refs(&copy);
    PyObject *record = record_of(&copy);
    PyObject *drop[ENTRY_REFS];
    take_refs(&copy, drop);
    drop_refs(drop);
    return record;
}

/* A key: a pair of ints. 0, or -1 + TypeError. */
static int key_of(PyObject *key, long long *device, long long *stream_id)
{
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2 ||
        !PyLong_Check(PyTuple_GET_ITEM(key, 0)) || !PyLong_Check(PyTuple_GET_ITEM(key, 1))) {
        PyErr_Format(PyExc_TypeError,
                     "CreationTable keys are (device index, stream id) pairs of ints, not %R",
                     key);
        return -1;
    }
    *device = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 0));
    if (*device == -1 && PyErr_Occurred())
        return -1;
    *stream_id = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 1));
    return *stream_id == -1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *table_subscript(PyObject *op, PyObject *key)
{
    long long device, stream_id;
    if (key_of(key, &device, &stream_id) < 0)
        return NULL;
    PyObject *record = lookup((CreationTable *)op, device, stream_id);
    if (record == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, key);
    return record;
}

static int table_ass_subscript(PyObject *op, PyObject *key, PyObject *value)
{
    long long device, stream_id;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "CreationTable keeps every creation until clear()");
        return -1;
    }
    if (key_of(key, &device, &stream_id) < 0)
        return -1;
    PyObject *drop[ENTRY_REFS];
    Creation *entry = entry_for((CreationTable *)op, device, stream_id, drop);
    if (entry == NULL)
        return -1;
    entry->whole = Py_NewRef(value);
    drop_refs(drop);
    return 0;
}

static Py_ssize_t table_len(PyObject *op)
{
    return ((CreationTable *)op)->count;
}

static PyObject *table_get(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key[, default])");
        return NULL;
    }
    long long device, stream_id;
    if (key_of(args[0], &device, &stream_id) < 0)
        return NULL;
    PyObject *record = lookup((CreationTable *)op, device, stream_id);
    if (record == NULL && !PyErr_Occurred())
        return Py_NewRef(nargs > 1 ? args[1] : Py_None);
    return record;
}

/* A list of each key's (key), (record) or (key, record), as the table is now. */
enum { KEYS, VALUES, ITEMS };
static PyObject *listed(CreationTable *table, int what)
{
    PyObject *keys = PyList_New(0);
    for (Py_ssize_t i = 0; keys != NULL && table->entries != NULL && i < table->capacity; i++) {
        Creation *entry = &table->entries[i];
        PyObject *key = entry->used ? Py_BuildValue("(LL)", entry->device, entry->stream_id)
                                    : NULL;
        if (entry->used && (key == NULL || PyList_Append(keys, key) < 0))
            Py_CLEAR(keys);
        Py_XDECREF(key);
    }
    if (keys == NULL || what == KEYS)
        return keys;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *record = table_subscript((PyObject *)table, key);
        PyObject *item = record == NULL      ? NULL
                         : what == VALUES ? Py_NewRef(record)
                                          : PyTuple_Pack(2, key, record);
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
        Py_XDECREF(record);
    }
    Py_DECREF(keys);
    return out;
}

static PyObject *table_keys(PyObject *op, PyObject *unused)
{
    return listed((CreationTable *)op, KEYS);
}

static PyObject *table_values(PyObject *op, PyObject *unused)
{
    return listed((CreationTable *)op, VALUES);
}

static PyObject *table_items(PyObject *op, PyObject *unused)
{
    return listed((CreationTable *)op, ITEMS);
}

/* Forget every creation: the entries are swapped for none before their references are
 * dropped (a deallocation may create a stream: that creation is kept). */
static int table_clear(PyObject *op)
{
    CreationTable *table = (CreationTable *)op;
    Creation *old = table->entries;
    Py_ssize_t capacity = table->capacity;
    table->entries = NULL;
    table->capacity = table->count = 0;
    for (Py_ssize_t i = 0; old != NULL && i < capacity; i++) {
        PyObject *drop[ENTRY_REFS];
        take_refs(&old[i], drop);
        drop_refs(drop);
    }
    PyMem_Free(old);
    return 0;
}

static PyObject *table_clear_method(PyObject *op, PyObject *unused)
{
    table_clear(op);
    Py_RETURN_NONE;
}

static int table_traverse(PyObject *op, visitproc visit, void *arg)
{
    CreationTable *table = (CreationTable *)op;
    for (Py_ssize_t i = 0; table->entries != NULL && i < table->capacity; i++) {
        PyObject *refs[ENTRY_REFS];
        refs_of(&table->entries[i], refs);
        for (int j = 0; j < ENTRY_REFS; j++)
            Py_VISIT(refs[j]);
    }
    return 0;
}

static void table_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    if (((CreationTable *)op)->weakrefs != NULL)
        PyObject_ClearWeakRefs(op);
    table_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "CreationTable takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static PyMethodDef table_methods[] = {
    {"get", (PyCFunction)(void (*)(void))table_get, METH_FASTCALL,
     "get(key[, default]): the record under key, as dict.get."},
    {"keys", table_keys, METH_NOARGS, "A list of the keys."},
    {"values", table_values, METH_NOARGS, "A list of the records."},
    {"items", table_items, METH_NOARGS, "A list of (key, record) pairs."},
    {"clear", table_clear_method, METH_NOARGS, "Forget every creation."},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods table_as_mapping = {
    .mp_length = table_len,
    .mp_subscript = table_subscript,
    .mp_ass_subscript = table_ass_subscript,
};

static PyTypeObject CreationTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamcheck._speedups.CreationTable",
    .tp_basicsize = sizeof(CreationTable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "CreationTable(): each stream's latest creation by (device index, stream id); "
              "see _creations.c.",
    .tp_new = table_new,
    .tp_dealloc = table_dealloc,
    .tp_traverse = table_traverse,
    .tp_clear = table_clear,
    .tp_as_mapping = &table_as_mapping,
    .tp_methods = table_methods,
    .tp_weaklistoffset = offsetof(CreationTable, weakrefs),
};

int creations_add_types(PyObject *module)
{
    s_created = PyUnicode_InternFromString("created");
    if (s_created == NULL || PyType_Ready(&CreationTableType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "CreationTable", (PyObject *)&CreationTableType);
}
