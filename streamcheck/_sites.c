/* streamcheck._speedups, its call sites: where a record says it was made, cheaply.
 *
 * A declared access, a stream's creation and a stream switch keep the frames that made them
 * as (code object, instruction offset) pairs, turned into file and line only when a finding
 * names them (streamcheck/core/ids.py, capture_site and frames_of). The compiled hooks
 * (_speedups.c) and the compiled declare (_declare.c) both take them from here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX < 0x030B0000
#error "streamcheck._speedups needs CPython 3.11 or newer (PyFrame_GetLasti)"
#endif

PyObject *site_of(Py_ssize_t skip, Py_ssize_t depth); /* below: capture_site's walk */

/* streamcheck/_frames.c: the running frames' code objects and offsets, read in place (-1 +
 * error where a frame object could not be made) */
int running_frames(Py_ssize_t skip, PyObject **codes, int *lastis, int n);

/* ---- capture_site --------------------------------------------------------------------- */

/*
 * capture_site(skip=1, depth=4): streamcheck.core.ids.capture_site, the same tuple (code
 * object, instruction offset, ... of up to `depth` frames, starting `skip` frames above the
 * caller; () when the stack is not that deep). Every declared access and stream creation
 * keeps one; in Python the walk costs a loop iteration per frame. At most MAX_SITE_DEPTH
 * frames (the audit asks for 12 at most).
 */
#define MAX_SITE_DEPTH 64

PyObject *capture_site(PyObject *module, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *given[2] = {NULL, NULL}; /* skip, depth */
    if (nargs > 2)
        goto usage;
    for (Py_ssize_t i = 0; i < nargs; i++)
        given[i] = args[i];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int which = PyUnicode_CompareWithASCIIString(name, "skip") == 0    ? 0
                    : PyUnicode_CompareWithASCIIString(name, "depth") == 0 ? 1
                                                                          : -1;
        if (which < 0 || given[which] != NULL)
            goto usage;
        given[which] = args[nargs + i];
    }
    Py_ssize_t skip = 1, depth = 4;
    if (given[0] != NULL && (skip = PyLong_AsSsize_t(given[0])) == -1 && PyErr_Occurred())
        return NULL;
    if (given[1] != NULL && (depth = PyLong_AsSsize_t(given[1])) == -1 && PyErr_Occurred())
        return NULL;
    if (skip < 0 || depth < 0 || depth > MAX_SITE_DEPTH) {
        PyErr_Format(PyExc_ValueError, "capture_site: skip >= 0 and 0 <= depth <= %d",
                     MAX_SITE_DEPTH);
        return NULL;
    }
    return site_of(skip, depth);
usage:
    PyErr_SetString(PyExc_TypeError, "capture_site(skip=1, depth=4)");
    return NULL;
}

/* The site tuple of up to `depth` frames, starting `skip` frames above the running Python
 * frame (the caller of the C function asking): (code, offset, code, offset, ...), as
 * capture_site(skip, depth) makes it from Python. A new reference, or NULL + error. */
PyObject *site_of(Py_ssize_t skip, Py_ssize_t depth)
{
    PyObject *codes[MAX_SITE_DEPTH];
    int lastis[MAX_SITE_DEPTH];
    int found = running_frames(skip, codes, lastis,
                               (int)(depth < MAX_SITE_DEPTH ? depth : MAX_SITE_DEPTH));
    if (found < 0)
        return NULL;
    PyObject *site = PyTuple_New(2 * (Py_ssize_t)found);
    for (int i = 0; i < found; i++) {
        PyObject *lasti = site == NULL ? NULL : PyLong_FromLong(lastis[i]);
        if (lasti == NULL) {
            Py_CLEAR(site);
            Py_DECREF(codes[i]);
            continue;
        }
        PyTuple_SET_ITEM(site, 2 * i, codes[i]); /* steals */
        PyTuple_SET_ITEM(site, 2 * i + 1, lasti);
    }
    return site;
}
