/* streamcheck._speedups, a device's current CUDA stream read without a Python call.
 *
 * A launch that leaves its stream to the communicator (stream=None) is let through when the
 * stream its accessor resolved is the calling thread's current stream on the communicator's
 * device: one handle comparison, the current one read through torch's
 * torch._C._cuda_getCurrentRawStream(device). On an H200 host that call alone took 96 ns of the
 * launch's 252 added (docs/measurements.md, D24): argument parsing, an int made and freed,
 * around the two C++ calls that answer it, c10::cuda::getCurrentCUDAStream(device) and
 * CUDAStream::stream(). A torch.distributed collective's check asks
 * torch._C._cuda_getCurrentStream(device) (a tuple: stream id, device, type; 120 ns), answered
 * by the first of them alone. Here those are called directly, found in the libc10_cuda that
 * torch already loaded.
 *
 * Calling C++ from C rests on two things the C++ ABI (Itanium, as on Linux x86-64 and
 * aarch64) fixes and torch could still change: the functions' mangled names, and CUDAStream
 * being a trivially copyable {c10::Device (a device type and an index, one byte each), a
 * 64-bit stream id}, returned in registers as the C struct below is. So nothing is trusted
 * until it agreed with torch: reads go through torch's own calls until, on a non-default
 * stream (a handle above 2: a 64-bit value, not one met by chance), both answered the same
 * handle with the device type CUDA and the index asked for, on any device; any disagreement
 * turns the native reads off for the process. And a device is read natively only after
 * torch's call answered for it once, so the C++ function is never asked for a device it would
 * throw on (a C++ exception must not cross into C).
 *
 * An engine that never leaves the default stream (vLLM's eager steps and its pynccl calls on
 * CUDA) would never prove it so. Given torch's _cuda_setStream and _cuda_getDevice, the first
 * read that answers for the calling thread's current device proves it on a made-up stream
 * instead: the thread's current stream there set to an external stream whose id is a made-up
 * even number (torch takes an even id as an external stream's own cudaStream_t, and setting
 * a current stream only writes the thread's table: no CUDA call), both reads taken, and the
 * stream read before set back, all in C with the arguments made beforehand, so no Python code
 * and no collection can run between (a launch there would go to a handle that is no stream).
 * The proof counts when torch's read answers the made-up handle, and the native one that
 * handle, that id, CUDA and the index; a disagreement turns the native reads off.
 *
 *   native_raw_streams(library_path, reader[, tuple_reader, set_stream, get_device]) -> bool
 *       use the functions in that already-loaded library in place of `reader` (torch's
 *       _cuda_getCurrentRawStream) and `tuple_reader` (_cuda_getCurrentStream) once they
 *       agreed with torch; set_stream and get_device (_cuda_setStream, _cuda_getDevice) let
 *       the first read prove it on a made-up stream; False where the library is not loaded
 *       or lacks them.
 *   raw_stream(reader, device) -> int
 *       reader(device) as the launch wrappers read it (natively once proven).
 *   current_stream(reader, device) -> (stream id, device, device type)
 *       reader(device) as the collective hooks read it (natively once proven).
 *   native_raw_streams_state() -> (found, proven, devices answered as a bit mask, turned off)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>

#define CUDA_DEVICE_TYPE 1 /* c10::DeviceType::CUDA */
#define MAX_DEVICES 64     /* one bit each in `answered` */

typedef struct {
    int8_t device_type;
    int8_t device_index;
    int64_t stream_id;
} CudaStream; /* c10::cuda::CUDAStream's layout, as returned */

static CudaStream (*current_cuda_stream)(int8_t device); /* c10::cuda::getCurrentCUDAStream */
static void *(*stream_handle_of)(const CudaStream *stream); /* CUDAStream::stream() const */
static PyObject *stands_in_for;  /* the Python reader the native reads replace (a handle) */
static PyObject *tuple_reader;   /* and the one that answers a tuple (Py_None: none) */
static PyObject *set_stream;     /* torch._C._cuda_setStream, for the proof (Py_None: none) */
static PyObject *get_device;     /* torch._C._cuda_getDevice, for the proof (Py_None: none) */
static int proven;               /* both agreed on a non-default stream */
static uint64_t answered;        /* bit d: a reader answered for device d */
static int turned_off;           /* a disagreement was seen: never native again */
static int proofs_tried;         /* made-up-stream proofs begun (the current device differed) */

#define CURRENT_NAME "_ZN3c104cuda20getCurrentCUDAStreamEa"
#define HANDLE_NAME "_ZNK3c104cuda10CUDAStream6streamEv"
#define MADE_UP_STREAM 0x5c0ffee0LL /* even, above 2: an external stream's handle to torch */
#define PROOF_TRIES 8 /* threads whose current device is not the one read: tried no more */

/* The device's current stream into *stream and its handle, natively: only once proven, for
 * a device answered (or, to prove it, right after torch's read answered for the device). */
static long long native_handle(int device, CudaStream *stream)
{
    *stream = current_cuda_stream((int8_t)device);
    return (long long)(intptr_t)stream_handle_of(stream);
}

/* A read's result as a C integer, the reference stolen (-1 where it is not an int): 0 with
 * *out set, or -1 + error (a NULL `value`: the read's own). */
int steal_long_long(PyObject *value, long long *out)
{
    if (value == NULL)
        return -1;
    long long read = PyLong_Check(value) ? PyLong_AsLongLong(value) : -1;
    Py_DECREF(value);
    if (read == -1 && PyErr_Occurred())
        return -1;
    *out = read;
    return 0;
}

/* A current stream as torch's tuple reader answers it: (stream id, device, device type),
 * each an int; 0, or -1 where it is not one (an error only where one was raised). */
static int unpack_stream(PyObject *tuple, long long out[3])
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != 3)
        return -1;
    for (int i = 0; i < 3; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        out[i] = PyLong_Check(item) ? PyLong_AsLongLong(item) : -1;
        if (out[i] == -1 && (PyErr_Occurred() || !PyLong_Check(item)))
            return -1;
    }
    return 0;
}

/* `reader(device)`, a tuple reader, called and its answer unpacked into out[]: 1, 0 where it
 * answered something else (nothing set), or -1 + error. */
static int call_tuple_reader(PyObject *reader, PyObject *device, long long out[3])
{
    PyObject *read = PyObject_CallOneArg(reader, device);
    if (read == NULL)
        return -1;
    int usual = unpack_stream(read, out);
    Py_DECREF(read);
    if (usual < 0)
        return PyErr_Occurred() ? -1 : 0;
    return 1;
}

/* _cuda_setStream(stream_id=, device_index=, device_type=)'s keywords, made before they are
 * needed: a new reference, or NULL + error. */
static PyObject *stream_keywords(long long id, long long index, long long type)
{
    return Py_BuildValue("{s:L,s:L,s:L}", "stream_id", id, "device_index", index,
                         "device_type", type);
}

/* The native reads checked on a made-up current stream (see the top): proven, turned off, or
 * left as they were where torch's read did not answer the made-up handle (a torch that reads
 * external streams otherwise). 0, or -1 + error. Called once torch answered for `index`. */
static int prove_on_made_up_stream(long index, PyObject *device)
{
    if (set_stream == Py_None || get_device == Py_None || tuple_reader == Py_None ||
        proofs_tried >= PROOF_TRIES)
        return 0;
    proofs_tried++;
    long long current_device, before[3];
    if (steal_long_long(PyObject_CallNoArgs(get_device), &current_device) < 0)
        return -1;
    if (current_device != index)
        return 0; /* setting a stream of another device would make it current: not here */
    int usual = call_tuple_reader(tuple_reader, device, before);
    if (usual <= 0)
        return usual;
    PyObject *none = PyTuple_New(0);
    PyObject *made_up = stream_keywords(MADE_UP_STREAM, index, CUDA_DEVICE_TYPE);
    PyObject *back = stream_keywords(before[0], before[1], before[2]);
    if (none == NULL || made_up == NULL || back == NULL)
        goto fail;
    PyObject *done = PyObject_Call(set_stream, none, made_up);
    if (done == NULL)
        goto fail; /* torch set nothing */
    Py_DECREF(done); /* None: freeing it runs nothing */
    /* from here to the restore: C calls only, no Python object made but torch's int */
    long long theirs = -1;
    int read = steal_long_long(PyObject_CallOneArg(stands_in_for, device), &theirs);
    CudaStream mine_stream;
    long long mine = native_handle((int)index, &mine_stream);
    PyObject *saved_type, *saved_value, *saved_traceback; /* the read's error, if any */
    PyErr_Fetch(&saved_type, &saved_value, &saved_traceback);
    done = PyObject_Call(set_stream, none, back);
    if (done == NULL) { /* as good as unreachable: the values are torch's own */
        PyErr_Clear();
        Py_XDECREF(back);
        back = stream_keywords(0, index, CUDA_DEVICE_TYPE); /* the default stream */
        done = back == NULL ? NULL : PyObject_Call(set_stream, none, back);
        if (done == NULL)
            Py_FatalError("streamcheck: the current CUDA stream could not be set back after "
                          "the native read's proof");
    }
    Py_DECREF(done);
    PyErr_Restore(saved_type, saved_value, saved_traceback);
    Py_DECREF(none);
    Py_DECREF(made_up);
    Py_DECREF(back);
    if (read < 0)
        return -1;
    if (theirs != MADE_UP_STREAM)
        return 0; /* torch did not read it as ours: nothing shown either way */
    if (mine == theirs && mine_stream.stream_id == MADE_UP_STREAM &&
        mine_stream.device_type == CUDA_DEVICE_TYPE && mine_stream.device_index == index)
        proven = 1;
    else
        turned_off = 1;
    return 0;
fail:
    Py_XDECREF(none);
    Py_XDECREF(made_up);
    Py_XDECREF(back);
    return -1;
}

/* Whether `reader` reading `device` may be answered natively: 1 with *index set to the
 * device's index, or 0 (torch's read, then `answered_by_torch`). */
static int may_read_natively(PyObject *reader, PyObject *device, long *index)
{
    if (current_cuda_stream == NULL || turned_off || reader == Py_None ||
        (reader != stands_in_for && reader != tuple_reader) || !PyLong_CheckExact(device))
        return 0;
    *index = PyLong_AsLong(device);
    if (*index < 0 || *index >= MAX_DEVICES) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* torch's read answered for the device: recorded, and the proof made where none is yet. A
 * proof that raised an ordinary exception (a torch whose _cuda_setStream refuses the made-up
 * stream) proves nothing and is not tried again; the read stands. 0, or -1 + error (only a
 * KeyboardInterrupt or the like). */
static int answered_by_torch(long index, PyObject *device)
{
    answered |= (uint64_t)1 << index;
    if (proven || turned_off || prove_on_made_up_stream(index, device) == 0)
        return 0;
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyErr_Clear();
    proofs_tried = PROOF_TRIES;
    return 0;
}

/* Whether device `index` is read natively now: proven, not turned off, and answered. */
static int native_ready(long index)
{
    return current_cuda_stream != NULL && proven && !turned_off && index >= 0 &&
           index < MAX_DEVICES && (answered >> index & 1);
}

/* The current stream on device `index` as (stream id, device index, device type), read
 * natively: 1, where `reader` is one the native reads stand in for, they are proven and torch
 * answered for that device; else 0 (nothing read: the caller asks `reader` its own way). */
int native_stream_key(PyObject *reader, long index, long long out[3])
{
    if (reader == Py_None || (reader != stands_in_for && reader != tuple_reader) ||
        !native_ready(index))
        return 0;
    CudaStream stream = current_cuda_stream((int8_t)index);
    out[0] = stream.stream_id;
    out[1] = stream.device_index;
    out[2] = stream.device_type;
    return 1;
}

/* `reader(device)`'s answer into *handle, read natively where `reader` is the one the native
 * reads stand in for, once proven, for a device answered: 0, or -1 + error (the reader's own). */
int read_raw_stream(PyObject *reader, PyObject *device, long long *handle)
{
    long index = -1;
    int native = may_read_natively(reader, device, &index) && reader == stands_in_for;
    if (native && native_ready(index)) {
        CudaStream stream;
        *handle = native_handle((int)index, &stream);
        return 0;
    }
    long long read;
    if (steal_long_long(PyObject_CallOneArg(reader, device), &read) < 0)
        return -1;
    if (native && !proven && read > 2) { /* compare on a real stream */
        CudaStream stream;
        long long mine = native_handle((int)index, &stream);
        if (mine == read && stream.device_type == CUDA_DEVICE_TYPE &&
            stream.device_index == index)
            proven = 1;
        else
            turned_off = 1;
    }
    if (native && answered_by_torch(index, device) < 0)
        return -1;
    *handle = read;
    return 0;
}

/* `reader(device)`'s answer, (stream id, device index, device type), into out[]: natively
 * where `reader` is the tuple reader the native reads stand in for, once proven, for a device
 * answered. 1, 0 where the reader answered something else (nothing set), or -1 + error. */
int read_current_stream(PyObject *reader, PyObject *device, long long out[3])
{
    long index = -1;
    int native = may_read_natively(reader, device, &index) && reader == tuple_reader;
    if (native && native_stream_key(reader, index, out))
        return 1;
    int usual = call_tuple_reader(reader, device, out);
    if (usual <= 0)
        return usual;
    if (native && answered_by_torch(index, device) < 0)
        return -1;
    return 1;
}

static PyObject *native_raw_streams(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 2 && nargs != 5) || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "native_raw_streams(library_path, reader"
                                         "[, tuple_reader, set_stream, get_device])");
        return NULL;
    }
    const char *path = PyUnicode_AsUTF8(args[0]);
    if (path == NULL)
        return NULL;
    void *library = dlopen(path, RTLD_NOW | RTLD_NOLOAD); /* only one already loaded */
    if (library == NULL)
        Py_RETURN_FALSE;
    void *current = dlsym(library, CURRENT_NAME), *handle = dlsym(library, HANDLE_NAME);
    dlclose(library); /* torch holds it loaded: the addresses stay good */
    if (current == NULL || handle == NULL)
        Py_RETURN_FALSE;
    PyObject *given[4] = {args[1], nargs == 5 ? args[2] : Py_None,
                          nargs == 5 ? args[3] : Py_None, nargs == 5 ? args[4] : Py_None};
    if (stands_in_for != given[0] || tuple_reader != given[1] || set_stream != given[2] ||
        get_device != given[3]) { /* other readers: trust nothing they have not agreed to */
        PyObject **kept[4] = {&stands_in_for, &tuple_reader, &set_stream, &get_device};
        for (int i = 0; i < 4; i++) {
            PyObject *old = *kept[i];
            *kept[i] = Py_NewRef(given[i]);
            Py_XDECREF(old);
        }
        proven = 0;
        answered = 0;
        proofs_tried = 0;
    }
    current_cuda_stream = (CudaStream(*)(int8_t))current;
    stream_handle_of = (void *(*)(const CudaStream *))handle;
    Py_RETURN_TRUE;
}

static PyObject *raw_stream(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long long handle;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "raw_stream(reader, device)");
        return NULL;
    }
    return read_raw_stream(args[0], args[1], &handle) < 0 ? NULL : PyLong_FromLongLong(handle);
}

static PyObject *current_stream(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long long read[3];
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "current_stream(reader, device)");
        return NULL;
    }
    int usual = read_current_stream(args[0], args[1], read);
    if (usual < 0)
        return NULL;
    if (usual == 0) {
        PyErr_SetString(PyExc_TypeError, "the reader did not answer (stream id, device, type)");
        return NULL;
    }
    return Py_BuildValue("(LLL)", read[0], read[1], read[2]);
}

static PyObject *native_raw_streams_state(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(OOKO)", current_cuda_stream != NULL ? Py_True : Py_False,
                         proven ? Py_True : Py_False, (unsigned long long)answered,
                         turned_off ? Py_True : Py_False);
}

static PyMethodDef native_functions[] = {
    {"native_raw_streams", (PyCFunction)(void (*)(void))native_raw_streams, METH_FASTCALL,
     "native_raw_streams(library_path, reader[, tuple_reader, set_stream, get_device]): read "
     "current streams in that library."},
    {"raw_stream", (PyCFunction)(void (*)(void))raw_stream, METH_FASTCALL,
     "raw_stream(reader, device): reader(device), read as the launch wrappers read it."},
    {"current_stream", (PyCFunction)(void (*)(void))current_stream, METH_FASTCALL,
     "current_stream(reader, device): reader(device), read as the collective hooks read it."},
    {"native_raw_streams_state", native_raw_streams_state, METH_NOARGS,
     "(found, proven, devices answered as a bit mask, turned off)"},
    {NULL, NULL, 0, NULL},
};

int native_streams_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, native_functions);
}
