"""A stream type shaped as torch's, for the tests of the hooks that read a stream's key in
place (the launch wrapper's key test, the creation hook): its (device index, stream id, device
type) kept as 64-bit fields of the object (member descriptors), and no handle attribute at
all, so a hook that told such a stream any other way than by its key would take the slow
path. Built with the machine's C compiler into a folder the test puts on ``sys.path``."""

from __future__ import annotations

import subprocess
import sysconfig
from pathlib import Path

import pytest

KEY_TYPE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
typedef struct { PyObject_HEAD long long device_index, stream_id, device_type; } Stream;
static PyMemberDef members[] = {
    {"device_index", T_LONGLONG, offsetof(Stream, device_index), READONLY, NULL},
    {"stream_id", T_LONGLONG, offsetof(Stream, stream_id), READONLY, NULL},
    {"device_type", T_LONGLONG, offsetof(Stream, device_type), READONLY, NULL},
    {NULL}};
static PyObject *stream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"stream_id", "device_index", "device_type", NULL};
    Stream *self = (Stream *)type->tp_alloc(type, 0);
    if (self != NULL && !PyArg_ParseTupleAndKeywords(args, kwds, "LLL", names,
            &self->stream_id, &self->device_index, &self->device_type))
        Py_CLEAR(self);
    return (PyObject *)self;
}
static PyTypeObject StreamType = {PyVarObject_HEAD_INIT(NULL, 0).tp_name = "key_type.Stream",
    .tp_basicsize = sizeof(Stream), .tp_flags = Py_TPFLAGS_DEFAULT, .tp_new = stream_new,
    .tp_members = members};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "key_type", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_key_type(void)
{
    PyObject *m = PyType_Ready(&StreamType) < 0 ? NULL : PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "Stream", (PyObject *)&StreamType) < 0)
        Py_CLEAR(m);
    return m;
}
"""


def build_key_type(folder: Path) -> Path:
    """``key_type.Stream`` built into ``folder`` (returned, for ``sys.path``); skips the test
    where there are no Python headers to build it against."""
    (folder / "key_type.c").write_text(KEY_TYPE)
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        pytest.skip("no Python headers to build the stand-in stream type")
    module = folder / f"key_type{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", f"-I{include}", str(folder / "key_type.c"),
                    "-o", str(module)], check=True)
    return folder
