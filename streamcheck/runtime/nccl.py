"""A small NCCL binding that takes an explicit stream, the way vLLM's pynccl does.

Why our own: the hazard this project detects lives in code that calls NCCL through ctypes with a
stream it looked up itself (vLLM's ``PyNcclCommunicator``: ``stream=None`` means "whatever
``current_stream()`` says"). ``torch.distributed`` always launches on the calling thread's real
current stream, so it cannot reproduce that pattern. This binding can, with no vLLM installed.

Like pynccl, every collective checks the *tensor's* device against the communicator's device and
deliberately does **not** check the *stream's* device or whether the stream is the calling
thread's current stream. A stream from another thread or another device goes straight to NCCL:
that is the bug class (NaN from an unordered all-reduce, or ``Cuda failure 400 'invalid resource
handle'``) that the audit layer must catch before the launch. Do not "fix" it here.

Nothing is loaded at import: ``import streamcheck.runtime.nccl`` works without a GPU and without
NCCL. The library is found and loaded on the first ``NcclLibrary()`` / communicator use.
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

# Imported by name, like vLLM's pynccl imports ``current_stream``: patching
# ``torch.cuda.current_stream`` later does not reach this module, patching
# ``streamcheck.runtime.nccl.current_stream`` does. The audit wrappers rely on that distinction.
from torch.cuda import current_stream

__all__ = [
    "NcclCommunicator",
    "NcclError",
    "NcclLibrary",
    "NcclUnavailable",
    "find_nccl_library",
    "unique_id",
]

ENV_NCCL_SO = "STREAMCHECK_NCCL_SO"
ENV_VLLM_NCCL_SO = "VLLM_NCCL_SO_PATH"
UNIQUE_ID_BYTES = 128

# ncclResult_t
RESULT_NAMES: dict[int, str] = {
    0: "ncclSuccess",
    1: "ncclUnhandledCudaError",
    2: "ncclSystemError",
    3: "ncclInternalError",
    4: "ncclInvalidArgument",
    5: "ncclInvalidUsage",
    6: "ncclRemoteError",
    7: "ncclInProgress",
}

# ncclDataType_t
DTYPES: dict[torch.dtype, int] = {
    torch.int8: 0,
    torch.uint8: 1,
    torch.int32: 2,
    torch.int64: 4,
    torch.float16: 6,
    torch.float32: 7,
    torch.float64: 8,
    torch.bfloat16: 9,
}

# ncclRedOp_t
OPS: dict[str, int] = {"sum": 0, "prod": 1, "max": 2, "min": 3, "avg": 4}

# A library without these cannot even make a communicator. Everything else is bound if present
# and only fails when used: vLLM's binding disables itself entirely when one symbol it never
# calls (ncclCommSuspend) is missing, and we do not want that failure mode.
_REQUIRED = ("ncclGetVersion", "ncclGetErrorString", "ncclGetUniqueId", "ncclCommInitRank",
             "ncclCommDestroy")


class NcclUnavailable(RuntimeError):
    """No usable NCCL library: not found, not NCCL, or missing a symbol we need."""


class NcclError(RuntimeError):
    """An NCCL call returned a non-zero ``ncclResult_t``.

    ``detail`` is ``ncclGetLastError`` text when the library has it; for the cross-device stream
    hazard it reads e.g. ``Cuda failure 400 'invalid resource handle'``, which is the line users
    search for.
    """

    def __init__(self, code: int, name: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.code = code
        self.name = name
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Ranks report errors across processes; keep the attributes through pickling.
        return (type(self), (self.code, self.name, str(self), self.detail))


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * UNIQUE_ID_BYTES)]


_c_void_p = ctypes.c_void_p
_c_int = ctypes.c_int
_c_size_t = ctypes.c_size_t

# name -> (restype, argtypes). Keeping signatures in one table means every function we call has
# its argtypes set, so a wrong Python value fails with a ctypes.ArgumentError, not a bad pointer.
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "ncclGetVersion": (_c_int, [ctypes.POINTER(_c_int)]),
    "ncclGetErrorString": (ctypes.c_char_p, [_c_int]),
    "ncclGetLastError": (ctypes.c_char_p, [_c_void_p]),
    "ncclGetUniqueId": (_c_int, [ctypes.POINTER(_UniqueId)]),
    "ncclCommInitRank": (_c_int, [ctypes.POINTER(_c_void_p), _c_int, _UniqueId, _c_int]),
    "ncclCommDestroy": (_c_int, [_c_void_p]),
    "ncclCommAbort": (_c_int, [_c_void_p]),
    # sendbuff, recvbuff, count, datatype, op, comm, stream
    "ncclAllReduce": (_c_int, [_c_void_p, _c_void_p, _c_size_t, _c_int, _c_int, _c_void_p,
                               _c_void_p]),
    # sendbuff, recvbuff, sendcount, datatype, comm, stream
    "ncclAllGather": (_c_int, [_c_void_p, _c_void_p, _c_size_t, _c_int, _c_void_p, _c_void_p]),
    # sendbuff, recvbuff, recvcount, datatype, op, comm, stream
    "ncclReduceScatter": (_c_int, [_c_void_p, _c_void_p, _c_size_t, _c_int, _c_int, _c_void_p,
                                   _c_void_p]),
    # sendbuff, recvbuff, count, datatype, root, comm, stream
    "ncclBroadcast": (_c_int, [_c_void_p, _c_void_p, _c_size_t, _c_int, _c_int, _c_void_p,
                               _c_void_p]),
    # buff, count, datatype, peer, comm, stream
    "ncclSend": (_c_int, [_c_void_p, _c_size_t, _c_int, _c_int, _c_void_p, _c_void_p]),
    "ncclRecv": (_c_int, [_c_void_p, _c_size_t, _c_int, _c_int, _c_void_p, _c_void_p]),
    "ncclGroupStart": (_c_int, []),
    "ncclGroupEnd": (_c_int, []),
}


# --------------------------------------------------------------------------- library search


@dataclass(frozen=True)
class _Candidate:
    source: str  # where the path came from, for the error message
    path: str | None  # None: this source offered nothing (reason in `note`)
    note: str = ""


def _nvidia_nccl_dirs() -> list[str]:
    """``lib/`` dirs of the ``nvidia-nccl-cu*`` wheel, where torch's own NCCL usually lives."""
    try:
        pkg = importlib.import_module("nvidia.nccl")
    except ImportError:
        return []
    return [os.path.join(p, "lib") for p in getattr(pkg, "__path__", [])]


def _torch_lib_dir() -> str:
    return os.path.join(os.path.dirname(torch.__file__), "lib")


def _candidates() -> list[_Candidate]:
    """Every place to look, in order (``STREAMCHECK_NCCL_SO`` is handled by the caller)."""
    out: list[_Candidate] = []
    vllm_path = os.environ.get(ENV_VLLM_NCCL_SO)
    if vllm_path:
        out.append(_Candidate(f"${ENV_VLLM_NCCL_SO}", vllm_path))
    dirs = _nvidia_nccl_dirs()
    if not dirs:
        out.append(_Candidate("nvidia.nccl package", None, "not installed"))
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, "libnccl.so*")))
        if not found:
            out.append(_Candidate("nvidia.nccl package", None, f"no libnccl.so* in {d}"))
        out.extend(_Candidate("nvidia.nccl package", p) for p in found)
    tdir = _torch_lib_dir()
    found = sorted(glob.glob(os.path.join(tdir, "libnccl*.so*")))
    if not found:
        out.append(_Candidate("torch lib dir", None, f"no libnccl*.so* in {tdir}"))
    out.extend(_Candidate("torch lib dir", p) for p in found)
    out.append(_Candidate("system loader path", "libnccl.so.2"))
    return out


def _probe(path: str) -> str | None:
    """Return why ``path`` is not a loadable NCCL, or None if it is."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        return str(exc)
    if not hasattr(lib, "ncclGetVersion"):
        return "loaded, but it is not NCCL (no symbol ncclGetVersion)"
    return None


def _unavailable(tried: list[str], headline: str) -> NcclUnavailable:
    lines = [headline, "Tried, in order:"] + [f"  - {t}" for t in tried]
    lines.append(f"Point at a library with {ENV_NCCL_SO}=/path/to/libnccl.so.2 (for example the "
                 "one in the nvidia-nccl-cu12 wheel: <site-packages>/nvidia/nccl/lib/).")
    return NcclUnavailable("\n".join(lines))


def find_nccl_library() -> str:
    """Return the path of the first NCCL library that loads.

    Order: ``$STREAMCHECK_NCCL_SO``, ``$VLLM_NCCL_SO_PATH``, the ``nvidia.nccl`` package's
    ``lib/``, torch's ``lib/``, then ``libnccl.so.2`` on the loader path.

    ``$STREAMCHECK_NCCL_SO`` is authoritative: when set and it does not load, we raise rather
    than fall back, so a repro never silently runs against a different NCCL than the one asked
    for. ``$VLLM_NCCL_SO_PATH`` is another tool's setting, so it is only the first guess.
    """
    explicit = os.environ.get(ENV_NCCL_SO)
    if explicit:
        why = _probe(explicit)
        if why is None:
            return explicit
        raise _unavailable([f"${ENV_NCCL_SO}={explicit}: {why}"],
                           f"${ENV_NCCL_SO} does not name a usable NCCL library.")
    tried = [f"${ENV_NCCL_SO}: not set"]
    for cand in _candidates():
        if cand.path is None:
            tried.append(f"{cand.source}: {cand.note}")
            continue
        why = _probe(cand.path)
        if why is None:
            return cand.path
        tried.append(f"{cand.source}: {cand.path}: {why}")
    raise _unavailable(tried, "No NCCL library found.")


# --------------------------------------------------------------------------- library


class NcclLibraryLike(Protocol):
    """What a communicator needs from a library; tests inject a recording fake."""

    def function(self, name: str) -> Callable[..., int]: ...

    def error_string(self, code: int) -> str: ...

    def last_error(self, comm: ctypes.c_void_p | None) -> str | None: ...


class NcclLibrary:
    """One loaded NCCL shared library with argtypes/restype set for every function we use."""

    def __init__(self, path: str | None = None):
        self.path = path if path is not None else find_nccl_library()
        try:
            self._cdll = ctypes.CDLL(self.path)
        except OSError as exc:
            raise _unavailable([f"{self.path}: {exc}"], "Cannot load NCCL library.") from exc
        self._fns: dict[str, Any] = {}
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self._cdll, name, None)
            if fn is None:
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            self._fns[name] = fn
        missing = [n for n in _REQUIRED if n not in self._fns]
        if missing:
            raise _unavailable(
                [f"{self.path}: missing symbol(s) {', '.join(missing)}"],
                f"{self.path} is not a usable NCCL library.",
            )
        self._version_code = self._read_version()

    def _read_version(self) -> int:
        v = ctypes.c_int()
        code = self._fns["ncclGetVersion"](ctypes.byref(v))
        if code != 0:
            raise _make_error(self, code, "ncclGetVersion", None)
        return v.value

    def version(self) -> str:
        """``'2.28.9'``. NCCL encodes ≥2.9 as MAJOR*10000+MINOR*100+PATCH, older as *1000."""
        c = self._version_code
        if c >= 10000:
            return f"{c // 10000}.{c % 10000 // 100}.{c % 100}"
        return f"{c // 1000}.{c % 1000 // 100}.{c % 100}"

    def has(self, name: str) -> bool:
        return name in self._fns

    def function(self, name: str) -> Callable[..., int]:
        try:
            return self._fns[name]
        except KeyError:
            raise NcclUnavailable(
                f"{self.path} (NCCL {self.version()}) has no {name}; "
                f"point {ENV_NCCL_SO} at a newer libnccl.so.2"
            ) from None

    def error_string(self, code: int) -> str:
        raw = self._fns["ncclGetErrorString"](code)
        return raw.decode(errors="replace") if raw else ""

    def last_error(self, comm: ctypes.c_void_p | None) -> str | None:
        fn = self._fns.get("ncclGetLastError")  # NCCL >= 2.13
        if fn is None:
            return None
        raw = fn(comm)
        text = raw.decode(errors="replace").strip() if raw else ""
        return text or None

    def get_unique_id(self) -> bytes:
        uid = _UniqueId()
        code = self._fns["ncclGetUniqueId"](ctypes.byref(uid))
        if code != 0:
            raise _make_error(self, code, "ncclGetUniqueId", None)
        return ctypes.string_at(ctypes.addressof(uid), UNIQUE_ID_BYTES)

    def __repr__(self) -> str:
        return f"NcclLibrary({self.path!r}, version={self.version()!r})"


def _make_error(lib: NcclLibraryLike, code: int, func: str, comm: ctypes.c_void_p | None,
                context: str = "") -> NcclError:
    name = RESULT_NAMES.get(code, f"ncclResult({code})")
    text = lib.error_string(code)
    detail = lib.last_error(comm)
    msg = f"{func} failed{context}: {name} ({code}): {text}"
    if detail:
        msg += f"; last error: {detail}"
    return NcclError(code, name, msg, detail)


_default_lock = threading.Lock()
_default: NcclLibrary | None = None


def _default_library() -> NcclLibrary:
    global _default
    with _default_lock:
        if _default is None:
            _default = NcclLibrary()
        return _default


def unique_id() -> bytes:
    """A fresh 128-byte ``ncclUniqueId`` from the default library; share it with every rank."""
    return _default_library().get_unique_id()


# --------------------------------------------------------------------------- communicator


def _default_current_stream() -> Any:
    # Looked up at call time, so a patch of this module's `current_stream` takes effect.
    return current_stream()


def _to_device(device: int | str | torch.device) -> torch.device:
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"NCCL communicators live on a CUDA device, got {dev}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _dtype_enum(dtype: torch.dtype) -> int:
    try:
        return DTYPES[dtype]
    except KeyError:
        names = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
        raise ValueError(f"NCCL binding does not support {dtype}; supported: {names}") from None


def _op_enum(op: str) -> int:
    try:
        return OPS[op]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported reduction op {op!r}; supported: {', '.join(OPS)}") from None


def _ptr(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


class NcclCommunicator:
    """One NCCL communicator rank; every op takes an explicit ``stream`` (None: current stream).

    ``stream=None`` resolves through ``current_stream`` (the accessor given at construction,
    default this module's ``current_stream``, i.e. ``torch.cuda.current_stream``) exactly as
    vLLM's pynccl does. The stream is resolved first, then the tensors are checked against
    ``self.device``. The stream's device is never checked: a foreign stream reaches NCCL on
    purpose, since that is the hazard the audit layer exists to catch.
    """

    def __init__(
        self,
        world_size: int,
        rank: int,
        unique_id: bytes,
        device: int | str | torch.device,
        current_stream: Callable[[], Any] | None = None,
        library: NcclLibraryLike | None = None,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world={world_size}")
        uid_bytes = bytes(unique_id)
        if len(uid_bytes) != UNIQUE_ID_BYTES:
            raise ValueError(f"unique_id must be {UNIQUE_ID_BYTES} bytes, got {len(uid_bytes)}")
        self.world_size = world_size
        self.rank = rank
        self.device = _to_device(device)
        self.launches = 0
        self._current_stream = current_stream or _default_current_stream
        self._lib: NcclLibraryLike = library if library is not None else _default_library()
        uid = _UniqueId()
        ctypes.memmove(ctypes.addressof(uid), uid_bytes, UNIQUE_ID_BYTES)
        comm = ctypes.c_void_p()
        init = self._lib.function("ncclCommInitRank")
        # NCCL binds the communicator to the current device of the calling thread.
        with torch.cuda.device(self.device):
            code = init(ctypes.byref(comm), world_size, uid, rank)
        if code != 0:
            raise _make_error(self._lib, code, "ncclCommInitRank", None,
                              f" (rank {rank}/{world_size} on {self.device})")
        self._comm: ctypes.c_void_p | None = comm

    # -- checks -----------------------------------------------------------------------------

    def _check(self, what: str, tensor: Any) -> None:
        """Reject anything NCCL would read as a bad pointer, before any ctypes call."""
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device != self.device:
            raise ValueError(
                f"{what} is on {tensor.device}, but this communicator is on {self.device}; "
                "NCCL needs a CUDA tensor on the communicator's device"
            )
        if not tensor.is_contiguous():
            raise ValueError(f"{what} must be contiguous (call .contiguous() first)")

    def _check_out(self, out: Any, tensor: torch.Tensor, out_numel: int) -> None:
        """``out`` is checked like ``tensor``, plus dtype and size: NCCL trusts the count."""
        self._check("out", out)
        if out.dtype != tensor.dtype:
            raise ValueError(f"out has dtype {out.dtype}, tensor has {tensor.dtype}")
        if out.numel() != out_numel:
            raise ValueError(f"out must have {out_numel} elements, got {out.numel()}")

    def _peer(self, peer: int, what: str) -> int:
        if not 0 <= peer < self.world_size:
            raise ValueError(f"{what}={peer} is outside 0..{self.world_size - 1}")
        return peer

    def _launch(self, func: str, stream: Any, *args: Any) -> None:
        if self._comm is None:
            raise RuntimeError(f"{func} on a closed NCCL communicator (rank {self.rank})")
        fn = self._lib.function(func)
        handle = stream.cuda_stream
        self.launches += 1
        code = fn(*args, self._comm, ctypes.c_void_p(handle))
        if code != 0:
            ctx = f" (rank {self.rank}, comm device {self.device}, stream 0x{handle or 0:x})"
            raise _make_error(self._lib, code, func, self._comm, ctx)

    # -- collectives ------------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, out: torch.Tensor | None = None, op: str = "sum",
                   stream: Any = None) -> torch.Tensor:
        """Reduce ``tensor`` over all ranks into ``out`` (new tensor if None); returns ``out``."""
        stream = self._current_stream() if stream is None else stream
        self._check("tensor", tensor)
        if out is None:
            out = torch.empty_like(tensor)
        else:
            self._check_out(out, tensor, tensor.numel())
        dtype, red = _dtype_enum(tensor.dtype), _op_enum(op)
        self._launch("ncclAllReduce", stream, _ptr(tensor), _ptr(out),
                     ctypes.c_size_t(tensor.numel()), ctypes.c_int(dtype), ctypes.c_int(red))
        return out

    def all_gather(self, out: torch.Tensor, tensor: torch.Tensor, stream: Any = None) -> None:
        """Gather every rank's ``tensor`` into ``out`` (``world_size * numel``, rank order)."""
        stream = self._current_stream() if stream is None else stream
        self._check("tensor", tensor)
        self._check_out(out, tensor, tensor.numel() * self.world_size)
        dtype = _dtype_enum(tensor.dtype)
        self._launch("ncclAllGather", stream, _ptr(tensor), _ptr(out),
                     ctypes.c_size_t(tensor.numel()), ctypes.c_int(dtype))

    def reduce_scatter(self, out: torch.Tensor, tensor: torch.Tensor, op: str = "sum",
                       stream: Any = None) -> None:
        """Reduce ``tensor`` (``world_size * out.numel()``); this rank's chunk lands in ``out``."""
        stream = self._current_stream() if stream is None else stream
        self._check("tensor", tensor)
        if tensor.numel() % self.world_size:
            raise ValueError(f"tensor has {tensor.numel()} elements, not a multiple of "
                             f"world_size {self.world_size}")
        self._check_out(out, tensor, tensor.numel() // self.world_size)
        dtype, red = _dtype_enum(tensor.dtype), _op_enum(op)
        self._launch("ncclReduceScatter", stream, _ptr(tensor), _ptr(out),
                     ctypes.c_size_t(out.numel()), ctypes.c_int(dtype), ctypes.c_int(red))

    def broadcast(self, tensor: torch.Tensor, src: int, stream: Any = None) -> None:
        """In place: every rank's ``tensor`` becomes rank ``src``'s."""
        stream = self._current_stream() if stream is None else stream
        self._check("tensor", tensor)
        dtype, root = _dtype_enum(tensor.dtype), self._peer(src, "src")
        self._launch("ncclBroadcast", stream, _ptr(tensor), _ptr(tensor),
                     ctypes.c_size_t(tensor.numel()), ctypes.c_int(dtype), ctypes.c_int(root))

    def send(self, tensor: torch.Tensor, dst: int, stream: Any = None) -> None:
        """Point-to-point send; the peer must post a matching ``recv``."""
        stream = self._current_stream() if stream is None else stream
        self._check("tensor", tensor)
        dtype, peer = _dtype_enum(tensor.dtype), self._p2p_peer(dst, "dst")
        self._launch("ncclSend", stream, _ptr(tensor), ctypes.c_size_t(tensor.numel()),
                     ctypes.c_int(dtype), ctypes.c_int(peer))

    def recv(self, tensor: torch.Tensor, src: int, stream: Any = None) -> None:
        """Point-to-point receive into ``tensor``."""
        stream = self._current_stream() if stream is None else stream
        self._check("tensor", tensor)
        dtype, peer = _dtype_enum(tensor.dtype), self._p2p_peer(src, "src")
        self._launch("ncclRecv", stream, _ptr(tensor), ctypes.c_size_t(tensor.numel()),
                     ctypes.c_int(dtype), ctypes.c_int(peer))

    def _p2p_peer(self, peer: int, what: str) -> int:
        # Without a group, a send to oneself waits forever for a recv that cannot be posted.
        if self._peer(peer, what) == self.rank:
            raise ValueError(f"{what}={peer} is this rank; send/recv to self would hang")
        return peer

    # -- lifecycle --------------------------------------------------------------------------

    def last_error(self) -> str | None:
        """``ncclGetLastError`` for this communicator, when the library has it."""
        return self._lib.last_error(self._comm)

    def abort(self) -> None:
        """``ncclCommAbort``: frees the communicator even while a peer is gone. Idempotent."""
        self._finish("ncclCommAbort")

    def close(self) -> None:
        """``ncclCommDestroy``. Idempotent; a closed communicator rejects further ops."""
        self._finish("ncclCommDestroy")

    def _finish(self, func: str) -> None:
        comm, self._comm = self._comm, None
        if comm is None:
            return
        code = self._lib.function(func)(comm)
        if code != 0:
            raise _make_error(self._lib, code, func, None, f" (rank {self.rank})")

    @property
    def closed(self) -> bool:
        return self._comm is None

    def __enter__(self) -> NcclCommunicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._comm is None else "open"
        return (f"NcclCommunicator(rank={self.rank}, world_size={self.world_size}, "
                f"device={self.device}, {state}, launches={self.launches})")
