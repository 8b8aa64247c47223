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

/* The frame's code object and instruction offset (f_code, f_lasti), new references;
 * (None, 0) for no frame. */
int frame_site(PyFrameObject *frame, PyObject **code, PyObject **lasti)
{
    if (frame == NULL) {
        *code = Py_NewRef(Py_None);
        *lasti = PyLong_FromLong(0);
    } else {
        *code = (PyObject *)PyFrame_GetCode(frame);
        *lasti = PyLong_FromLong(PyFrame_GetLasti(frame));
    }
    if (*lasti == NULL) {
        Py_CLEAR(*code);
        return -1;
    }
    return 0;
}

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
 * frame (0 <= depth <= MAX_SITE_DEPTH). */
static PyObject *sys_getframe; /* sys._getframe, taken at the module's import */

/* The frame `skip` calls back from the running one (a new reference; NULL with no error where
 * the stack is not that deep; NULL + error). Since Python 3.11 a frame object is made only
 * when asked for: sys._getframe walks the interpreter's own frames and makes one for the
 * frame it returns, where PyFrame_GetBack would make one for every frame it skips (the audit's
 * own, new at each call: three for a connector's handoff). */
static PyFrameObject *frame_back(Py_ssize_t skip)
{
    if (skip == 0 || sys_getframe == NULL) {
        PyFrameObject *frame = PyEval_GetFrame(); /* borrowed */
        Py_XINCREF(frame);
        for (Py_ssize_t i = 0; i < skip && frame != NULL; i++) {
            PyFrameObject *back = PyFrame_GetBack(frame);
            Py_DECREF(frame);
            frame = back;
        }
        return frame;
    }
    PyObject *depth = PyLong_FromSsize_t(skip);
    PyObject *frame = depth == NULL ? NULL : PyObject_CallOneArg(sys_getframe, depth);
    Py_XDECREF(depth);
    if (frame == NULL && PyErr_ExceptionMatches(PyExc_ValueError))
        PyErr_Clear(); /* "call stack is not deep enough": no frame */
    else if (frame != NULL && !PyFrame_Check(frame)) {
        Py_DECREF(frame);
        PyErr_SetString(PyExc_TypeError, "sys._getframe gave no frame");
        return NULL;
    }
    return (PyFrameObject *)frame;
}

PyObject *site_of(Py_ssize_t skip, Py_ssize_t depth)
{
    PyFrameObject *frame = frame_back(skip);
    if (frame == NULL && PyErr_Occurred())
        return NULL;
    PyObject *items[2 * MAX_SITE_DEPTH];
    Py_ssize_t count = 0, limit = 2 * depth;
    while (frame != NULL && count < limit) {
        if (frame_site(frame, &items[count], &items[count + 1]) < 0)
            goto fail;
        count += 2;
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
    PyObject *site = PyTuple_New(count);
    if (site == NULL) {
        for (Py_ssize_t i = 0; i < count; i++)
            Py_DECREF(items[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        PyTuple_SET_ITEM(site, i, items[i]); /* steals */
    return site;
fail:
    Py_XDECREF(frame);
    for (Py_ssize_t i = 0; i < count; i++)
        Py_DECREF(items[i]);
    return NULL;
}

/* At the module's import: sys._getframe, which site_of walks with. */
void sites_init(void)
{
    sys_getframe = PySys_GetObject("_getframe"); /* borrowed; absent: walk as before */
    Py_XINCREF(sys_getframe);
}
