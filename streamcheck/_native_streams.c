/* streamcheck._speedups, a device's current CUDA stream read without a Python call.
 *
 * A launch that leaves its stream to the communicator (stream=None) is let through when the
 * stream its accessor resolved is the calling thread's current stream on the communicator's
 * device: one handle comparison, the current one read through torch's
 * torch._C._cuda_getCurrentRawStream(device). On an H200 host that call alone took 96 ns of the
 * launch's 252 added (docs/measurements.md, D24): argument parsing, an int made and freed,
 * around the two C++ calls that answer it, c10::cuda::getCurrentCUDAStream(device) and
 * CUDAStream::stream(). Here those two are called directly, found in the libc10_cuda that
 * torch already loaded.
 *
 * Calling C++ from C rests on two things the C++ ABI (Itanium, as on Linux x86-64 and
 * aarch64) fixes and torch could still change: the functions' mangled names, and CUDAStream
 * being a trivially copyable {c10::Device (a device type and an index, one byte each), a
 * 64-bit stream id}, returned in registers as the C struct below is. So nothing is trusted
 * until it agreed with torch: reads go through torch's own call until, on a non-default
 * stream (a handle above 2: a 64-bit address, not a value met by chance), both answered the
 * same handle with the device type CUDA and the index asked for, on any device; any
 * disagreement turns the native reads off for the process. And a device is read natively only
 * after torch's call answered for it once, so the C++ function is never asked for a device it
 * would throw on (a C++ exception must not cross into C).
 *
 *   native_raw_streams(library_path, reader) -> bool
 *       use the functions in that already-loaded library in place of `reader` (torch's
 *       _cuda_getCurrentRawStream) once they agreed with it; False where the library is not
 *       loaded or lacks them.
 *   raw_stream(reader, device) -> int
 *       reader(device) as the launch wrappers read it (natively once proven).
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
static PyObject *stands_in_for;  /* the Python reader the native reads replace */
static int proven;               /* both agreed on a non-default stream */
static uint64_t answered;        /* bit d: the reader answered for device d */
static int turned_off;           /* a disagreement was seen: never native again */

#define CURRENT_NAME "_ZN3c104cuda20getCurrentCUDAStreamEa"
#define HANDLE_NAME "_ZNK3c104cuda10CUDAStream6streamEv"

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

/* `reader(device)`'s answer into *handle, read natively where `reader` is the one the native
 * reads stand in for, once proven, for a device answered: 0, or -1 + error (the reader's own). */
int read_raw_stream(PyObject *reader, PyObject *device, long long *handle)
{
    long index = -1;
    int native = current_cuda_stream != NULL && !turned_off && reader == stands_in_for &&
                 PyLong_CheckExact(device);
    if (native) {
        index = PyLong_AsLong(device);
        if (index < 0 || index >= MAX_DEVICES) {
            PyErr_Clear();
            native = 0;
        } else if (proven && answered >> index & 1) {
            CudaStream stream;
            *handle = native_handle((int)index, &stream);
            return 0;
        }
    }
    long long read;
    if (steal_long_long(PyObject_CallOneArg(reader, device), &read) < 0)
        return -1;
    if (native) /* torch answered for this device: a valid index */
        answered |= (uint64_t)1 << index;
    if (native && !proven && read > 2) { /* compare on a real stream */
        CudaStream stream;
        long long mine = native_handle((int)index, &stream);
        if (mine == read && stream.device_type == CUDA_DEVICE_TYPE &&
            stream.device_index == index)
            proven = 1;
        else
            turned_off = 1;
    }
    *handle = read;
    return 0;
}

static PyObject *native_raw_streams(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "native_raw_streams(library_path, reader)");
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
    if (stands_in_for != args[1]) { /* another reader: trust nothing it has not agreed to */
        PyObject *old = stands_in_for;
        stands_in_for = Py_NewRef(args[1]);
        proven = 0;
        answered = 0;
        Py_XDECREF(old);
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

static PyObject *native_raw_streams_state(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(OOKO)", current_cuda_stream != NULL ? Py_True : Py_False,
                         proven ? Py_True : Py_False, (unsigned long long)answered,
                         turned_off ? Py_True : Py_False);
}

static PyMethodDef native_functions[] = {
    {"native_raw_streams", (PyCFunction)(void (*)(void))native_raw_streams, METH_FASTCALL,
     "native_raw_streams(library_path, reader): read current streams in that library."},
    {"raw_stream", (PyCFunction)(void (*)(void))raw_stream, METH_FASTCALL,
     "raw_stream(reader, device): reader(device), read as the launch wrappers read it."},
    {"native_raw_streams_state", native_raw_streams_state, METH_NOARGS,
     "(found, proven, devices answered as a bit mask, turned off)"},
    {NULL, NULL, 0, NULL},
};

int native_streams_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, native_functions);
}
