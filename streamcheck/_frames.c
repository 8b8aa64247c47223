/* streamcheck._speedups, the running Python frames read where they lie.
 *
 * A stream switch keeps its two calling frames, and a declared access or a stream's creation
 * its first few, as (code object, instruction offset) pairs (_sites.c). Through the public
 * API each frame is first made into a frame object (PyEval_GetFrame, PyFrame_GetBack): for a
 * frame that has none yet, as a stream context's __enter__ has none at every switch, that is
 * an allocation, and a copy of the frame into it when its function returns: about 1,000 of
 * the compiled set_stream hook's 1,300 added instructions (scripts/bench_hook_instructions.py,
 * callgrind). Here the interpreter's own frame records are read in place, as sys._getframe
 * walks them (incomplete frames, the interpreter's own entry records, skipped), through the
 * internal frame layout of the interpreter this is built for (its installed internal
 * headers), making nothing. Where those headers are not installed the frame objects are made,
 * as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__has_include) && !defined(STREAMCHECK_FRAME_OBJECTS) /* the latter: to test */
#if __has_include(<internal/pycore_frame.h>)
#define STREAMCHECK_FRAMES_IN_PLACE 1
#endif
#endif

#ifdef STREAMCHECK_FRAMES_IN_PLACE
#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>

/* Up to `n` frames, starting `skip` frames above the running Python frame (0: the running
 * one, the caller of the C function that asks): each frame's code object (a new reference)
 * in `codes` and its last instruction's byte offset (f_lasti) in `lastis`. Returns how many
 * were found (fewer where the stack is shallower), or -1 + error (only where frame objects
 * are made: making one may fail), with no reference left in `codes`. */
int running_frames(Py_ssize_t skip, PyObject **codes, int *lastis, int n)
{
    PyThreadState *tstate = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    _PyInterpreterFrame *frame = tstate->current_frame;
#else
    _PyInterpreterFrame *frame = tstate->cframe->current_frame;
#endif
    int found = 0;
    for (; frame != NULL && found < n; frame = frame->previous) {
        if (_PyFrame_IsIncomplete(frame))
            continue;
        if (skip > 0) {
            skip--;
            continue;
        }
#if PY_VERSION_HEX >= 0x030D0000
        codes[found] = Py_NewRef((PyObject *)_PyFrame_GetCode(frame));
#else
        codes[found] = Py_NewRef((PyObject *)frame->f_code);
#endif
        lastis[found] = _PyInterpreterFrame_LASTI(frame) * (int)sizeof(_Py_CODEUNIT);
        found++;
    }
    return found;
}

#else /* the frame objects, made through the public API */

int running_frames(Py_ssize_t skip, PyObject **codes, int *lastis, int n)
{
    PyFrameObject *frame = PyEval_GetFrame(); /* borrowed */
    Py_XINCREF(frame);
    int found = 0;
    while (frame != NULL && found < n) {
        if (skip > 0)
            skip--;
        else {
            codes[found] = (PyObject *)PyFrame_GetCode(frame);
            lastis[found] = PyFrame_GetLasti(frame);
            found++;
        }
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
    if (PyErr_Occurred()) { /* a frame object could not be made */
        for (int i = 0; i < found; i++)
            Py_DECREF(codes[i]);
        return -1;
    }
    return found;
}

#endif

/* Whether the frames are read in place (for streamcheck env and the tests). */
int frames_in_place(void)
{
#ifdef STREAMCHECK_FRAMES_IN_PLACE
    return 1;
#else
    return 0;
#endif
}
