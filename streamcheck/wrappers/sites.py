"""Launch sites as data: which engine methods launch on a stream, and how each picks it.

The audit instruments *targets*, each a row of :data:`BUILTIN_SITES` or a line of the user's
configuration. A row says where the code lives (module, class, methods), how a launch made
with ``stream=None`` resolves its stream (the same accessor the engine calls), how the
communicator's device is read, and which calls launch nothing. Adding a communicator is a
row, not code; a team's own communicator is one line of configuration::

    STREAMCHECK_TARGETS="mypkg.comm:MyComm.all_reduce,all_gather stream=mypkg.comm:cur_stream"

    [tool.streamcheck]
    targets = ["mypkg.comm:MyComm.all_reduce,all_gather stream=self.stream"]

Stream resolvers (``stream=``):

``current`` (default)
    the calling thread's real current stream on its current device (what
    ``torch.cuda.current_stream()`` gives); the call goes ahead unchanged.
``module:function``
    ``function()`` looked up on the module at every call (so a later patch of it counts),
    e.g. vLLM's ``pynccl.current_stream``.
``self.method()`` / ``self.attribute``
    asked of the communicator itself, e.g. SGLang's ``self._resolve_stream()``.

For a method with a ``stream`` parameter and a resolver other than ``current``, the wrapper
passes the resolved stream on explicitly, so the callee launches on exactly the stream that
was audited. Module-level functions (``module:function``) are audited on the thread's current
stream of their first tensor's device, like ``torch.distributed``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

SiteKind = Literal["communicator", "connector-base", "functions"]

CURRENT = "current"


class SiteError(ValueError):
    """A target line that cannot be used; the message names its source."""


@dataclass(frozen=True)
class LaunchSite:
    """One target: where the launches are and how to audit them."""

    name: str
    module: str
    owner: str  # class name in ``module``; "" for module-level functions
    methods: tuple[str, ...]
    kind: SiteKind = "communicator"
    stream: str = CURRENT
    device: str = "self.device"
    skip: str = "False"
    op_prefix: str = ""
    source: str = field(default="built-in", compare=False)  # where the line came from

    def op(self, method: str, owner: str = "") -> str:
        """The op name a launch of ``method`` is reported under."""
        if self.kind == "connector-base":
            return f"connector.{owner or self.owner}.{method}"
        return f"{self.op_prefix or self.name}.{method}"


VLLM_PYNCCL = "vllm.distributed.device_communicators.pynccl"
SGLANG_PYNCCL = "sglang.srt.distributed.device_communicators.pynccl"
SGLANG_MMGEN_PYNCCL = "sglang.multimodal_gen.runtime.distributed.device_communicators.pynccl"
VLLM_CONNECTOR_BASE = "vllm.distributed.kv_transfer.kv_connector.v1.base"

PYNCCL_METHODS = (
    "all_reduce", "all_gather", "all_gatherv", "reduce_scatter", "reduce_scatterv", "reduce",
    "scatter", "send", "recv", "broadcast", "batch_isend_irecv", "all_to_all_single",
    "outplace_all_reduce",
)
CONNECTOR_METHODS = ("start_load_kv", "wait_for_layer_load", "save_kv_layer", "wait_for_save")
TORCH_DISTRIBUTED_FUNCTIONS = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
    "reduce_scatter_tensor", "broadcast", "reduce", "all_to_all", "all_to_all_single",
    "send", "recv", "isend", "irecv", "batch_isend_irecv", "barrier", "gather", "scatter",
)

BUILTIN_SITES: tuple[LaunchSite, ...] = (
    # vLLM 0.9 - 0.33: methods take stream=None and call the module's current_stream()
    # (bound by name at import; the module-global cache in <= 0.9.2).
    LaunchSite("vllm.pynccl", VLLM_PYNCCL, "PyNcclCommunicator", PYNCCL_METHODS,
               stream=f"{VLLM_PYNCCL}:current_stream", skip="self.disabled"),
    # SGLang's own pynccl: no stream parameter; every call asks self._resolve_stream().
    LaunchSite("sglang.pynccl", SGLANG_PYNCCL, "PyNcclCommunicator", PYNCCL_METHODS,
               stream="self._resolve_stream()", skip="self.disabled"),
    # SGLang's multimodal_gen copy keeps vLLM 0.9's module-global cache (_get_current_stream).
    LaunchSite("sglang.multimodal_gen.pynccl", SGLANG_MMGEN_PYNCCL, "PyNcclCommunicator",
               PYNCCL_METHODS, stream=f"{SGLANG_MMGEN_PYNCCL}:_get_current_stream",
               skip="self.disabled"),
    # The v1 KV connector API: every subclass, defined before or after the audit started.
    LaunchSite("vllm.kv_connector", VLLM_CONNECTOR_BASE, "KVConnectorBase_V1",
               CONNECTOR_METHODS, kind="connector-base"),
    LaunchSite("torch.distributed", "torch.distributed", "", TORCH_DISTRIBUTED_FUNCTIONS,
               kind="functions"),
    LaunchSite("streamcheck.nccl", "streamcheck.runtime.nccl", "NcclCommunicator",
               ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send", "recv"),
               stream="self._current_stream()", op_prefix="nccl"),
)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"
_SITE = re.compile(
    rf"^(?P<module>{_DOTTED}):(?P<path>{_DOTTED})(?:,(?P<more>{_IDENT}(?:,{_IDENT})*))?$")
_RESOLVER = re.compile(rf"^(?:current|{_DOTTED}:{_DOTTED}|self\.{_IDENT}(?:\(\))?)$")
_DEVICE = re.compile(rf"^self(?:\.{_IDENT})+$")
_OPTIONS = ("stream", "device", "skip")


def parse_site(line: str, source: str) -> LaunchSite:
    """One user target line: ``module:Class.method[,method...] [stream=R] [device=E] [skip=E]``.

    ``module:function[,function...]`` audits module-level functions. Errors name ``source``
    (the variable or file the line came from) and what is accepted.
    """
    words = line.split()
    if not words:
        raise SiteError(f"{source}: empty target")
    m = _SITE.match(words[0])
    if m is None:
        raise SiteError(f"{source}: {words[0]!r} is not a target; expected "
                        "'module:Class.method[,method...]' or 'module:function[,function...]'")
    options: dict[str, str] = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or key not in _OPTIONS or not value:
            raise SiteError(f"{source}: {word!r} in target {words[0]!r}: options are "
                            f"{', '.join(o + '=...' for o in _OPTIONS)}")
        options[key] = value
    stream = options.get("stream", CURRENT)
    if not _RESOLVER.match(stream):
        raise SiteError(f"{source}: stream={stream!r}: use 'current', 'module:function', "
                        "'self.method()' or 'self.attribute'")
    for key in ("device", "skip"):
        if key in options and not _DEVICE.match(options[key]):
            raise SiteError(f"{source}: {key}={options[key]!r}: use an attribute path over "
                            "self, e.g. self.device or self.rank")
    module, path = m.group("module"), m.group("path")
    more = tuple(m.group("more").split(",")) if m.group("more") else ()
    owner, _, first = path.rpartition(".")
    name = f"{module}:{path.split('.')[0] if owner else first}"
    if owner:
        return LaunchSite(name, module, owner, (first, *more), "communicator", stream,
                          options.get("device", "self.device"),
                          options.get("skip", "False"), op_prefix=f"{module}.{owner}",
                          source=source)
    if "stream" in options or "device" in options:
        raise SiteError(f"{source}: {words[0]!r} names module-level functions: they are audited "
                        "on the thread's current stream of their first tensor's device; "
                        "stream= and device= apply to methods only")
    return LaunchSite(f"{module}:{first}", module, "", (first, *more), "functions",
                      op_prefix=module, source=source)


def parse_sites(lines: Sequence[str], source: str) -> tuple[LaunchSite, ...]:
    """Several target lines (the settings split the environment's ``;``-separated form)."""
    return tuple(parse_site(line, source) for line in lines if line.strip())
