"""The static rules of the current-stream-leak family, one small function each.

Every rule has a stable id (``SC1xx``) that is never reused and a stable name; both are accepted
by ``select``/``ignore`` and by inline ``# streamcheck: ignore[...]`` comments. A rule reads the
:class:`~streamcheck.scan.index.ModuleIndex` of one module and yields :class:`Hit` s; it never
prints and never looks at other files. The one cross-file question (SC104: "does switching
streams in this thread's process rewrite a module-global current-stream cache?") is answered by
the engine, which only emits SC104 hits when the module imports, directly or through others, a
module where SC102 fired (:mod:`streamcheck.scan.imports`). SC102, not SC101: a cache that
only ``current_stream()`` fills (SC101 alone, as in vllm-ascend) is stale but is not rewritten
by a helper thread's ``torch.npu.stream(...)``; SC101 already reports it.

:data:`RULES` is the only registry. Each code maps to one entry of the hazard catalogue
(:mod:`streamcheck.core.hazards`), whose fix text is the code's hint: a code keeps its own
name and summary, not its own fix.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from streamcheck.core.hazards import for_scan_code
from streamcheck.scan.index import FunctionInfo, ModuleIndex
from streamcheck.scan.state import (
    current_stream_stores,
    is_stream_value,
    mentions_accel_stream,
    process_memo,
    returned_state,
    returns_current_stream,
    stored_parameter_writes,
    writes_by_state,
)
from streamcheck.scan.threads import DeviceGuard, ThreadReach, body_nodes, thread_reach


@dataclass(frozen=True)
class Hit:
    """Where a rule fired and what it says there (the rule supplies id, name and hint)."""

    line: int
    col: int
    message: str

    @classmethod
    def at(cls, node: ast.AST, message: str) -> Hit:
        return cls(getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1, message)


RuleCheck = Callable[[ModuleIndex], Iterable[Hit]]


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    summary: str
    #: The fix: the hazard catalogue's for the mechanism this code detects (see :func:`_fix`).
    hint: str
    check: RuleCheck
    #: Report only where switching streams rewrites a module-global cache (the module imports
    #: one where SC102 fired).
    needs_global_cache: bool = False


def _fix(code: str) -> str:
    """The one fix text of the hazard that scan code ``code`` detects
    (:mod:`streamcheck.core.hazards`, shared with the runtime rules and the doctor)."""
    return for_scan_code(code).fix


# --- shared helpers -----------------------------------------------------------------------------

_ACCESSOR_RE = re.compile(r"(?:^|_)(?:get_)?(?:current|curr|cur)_?stream(?:$|_)", re.IGNORECASE)


def _patch_functions(index: ModuleIndex) -> list[tuple[ast.AST, str, FunctionInfo]]:
    """Functions of this module assigned over some ``*.set_stream``."""
    found = []
    for patch in index.set_stream_patches:
        if isinstance(patch.value, ast.Name):
            for func in index.functions_by_name.get(patch.value.id, []):
                found.append((patch.node, patch.target, func))
    return found


def _is_stream_cache(index: ModuleIndex, func: FunctionInfo, state: str) -> bool:
    """Is ``state`` a cache of an accelerator stream (not an SSE stream, not a file stream)?"""
    if any(is_stream_value(index, w) for w in writes_by_state(index).get(state, ())):
        return True
    if any(state == w.state for _n, _t, f in _patch_functions(index)
           for w in stored_parameter_writes(index, f)):
        return True
    return mentions_accel_stream(index, func.node.returns)


def _reach_label(reach: ThreadReach) -> str:
    return f"`{reach.func.qualname}` runs on a helper thread ({reach.root})"


# --- the rules ----------------------------------------------------------------------------------


def check_global_stream_cache(index: ModuleIndex) -> Iterator[Hit]:
    """SC101: the current stream cached in state shared by every thread.

    Reported at a current-stream accessor that returns such state (or is memoised for the
    process), else at a store of ``current_stream()`` into such state (a class attribute filled
    once, as ``torch.mtia.graph`` does): either way every later reader, in any thread, gets one
    thread's stream of one moment.
    """
    flagged: set[int] = set()
    for hit, func in _cache_accessors(index):
        flagged.add(id(func.node))
        yield hit
    for write in current_stream_stores(index):
        if write.func is not None and id(write.func.node) in flagged:
            continue
        where = f"`{write.func.qualname}`" if write.func is not None else "the module"
        yield Hit.at(
            write.node,
            f"{where} stores `current_stream()` in `{write.state}`, one slot shared by every "
            "thread: whoever reads it later gets the stream that was current in this thread at "
            "this moment, not their own current stream.",
        )


def _cache_accessors(index: ModuleIndex) -> Iterator[tuple[Hit, FunctionInfo]]:
    """SC101 at accessors: memoised ones, and those that return shared stream state."""
    for func in index.functions:
        memo = process_memo(index, func)
        if memo is not None and returns_current_stream(index, func):
            yield Hit.at(
                func.node,
                f"`{func.name}()` is memoised for the whole process "
                f"(`@{ast.unparse(memo)}`) and returns `current_stream()`: every thread gets "
                "the stream of the first thread that called it, not its own current stream.",
            ), func
            continue
        if not _ACCESSOR_RE.search(func.name):
            continue
        returned = returned_state(index, func)
        if returned is None or not _is_stream_cache(index, func, returned[1]):
            continue
        state = returned[1]
        yield Hit.at(
            func.node,
            f"`{func.name}()` returns `{state}`, one cache shared by every thread, so each "
            "thread gets whatever stream the cache holds (set by whichever thread wrote it "
            "last) instead of its own current stream.",
        ), func


def check_patched_set_stream_global(index: ModuleIndex) -> Iterator[Hit]:
    """SC102: ``*.set_stream`` replaced by a function that stores the stream module-globally."""
    for node, target, func in _patch_functions(index):
        writes = stored_parameter_writes(index, func)
        if not writes:
            continue
        state = writes[0].state
        yield Hit.at(
            node,
            f"`{target}` is replaced by `{func.name}`, which stores the stream in module-global "
            f"`{state}`: a `torch.cuda.stream(...)` context in any thread then changes the "
            "stream every other thread reads back.",
        )


_STREAM_DEVICE_ARGS = frozenset({"device", "device_index"})
#: What names a device type but no index: the stream still goes to the current device.
_INDEXLESS_DEVICE_CALLS = frozenset({"accelerator.current_accelerator"})


def _names_device_index(index: ModuleIndex, expr: ast.expr) -> bool:
    """Can ``expr``, passed as a stream's device, name a device index? ``"cuda"``,
    ``torch.device("cuda")`` and ``torch.accelerator.current_accelerator()`` cannot."""
    if isinstance(expr, ast.Constant):
        if expr.value is None:
            return False  # device=None: the current device
        return not (isinstance(expr.value, str) and ":" not in expr.value)
    if isinstance(expr, ast.Call):
        if index.api(expr.func) in _INDEXLESS_DEVICE_CALLS:
            return False
        if index.resolve(expr.func) == "torch.device" and len(expr.args) == 1 and not (
            expr.keywords
        ):
            return _names_device_index(index, expr.args[0])
    return True


def check_stream_in_thread_without_set_device(index: ModuleIndex) -> Iterator[Hit]:
    """SC103: a stream created on a helper thread before that thread chose its device."""
    for reach in thread_reach(index):
        guard = DeviceGuard(index, reach.func)
        for node in body_nodes(reach.func):
            if not isinstance(node, ast.Call) or index.api(node.func) != "Stream":
                continue
            devices = [*node.args[:1], *(kw.value for kw in node.keywords
                                         if kw.arg in _STREAM_DEVICE_ARGS)]
            if any(_names_device_index(index, d) for d in devices):
                continue  # the device is named explicitly
            if any(kw.arg == "stream_id" for kw in node.keywords):
                continue  # wraps an existing stream: SC105's business
            if reach.protected or guard.covers(node):
                continue
            yield Hit.at(
                node,
                f"{_reach_label(reach)} and creates `{ast.unparse(node.func)}()` before any "
                "set_device: a new thread's current device is 0, so on every rank but 0 the "
                "stream lives on the wrong GPU (CUDA error 400 'invalid resource handle').",
            )


_STREAM_CONTEXTS = frozenset({"stream", "StreamContext"})


def check_stream_context_in_thread(index: ModuleIndex) -> Iterator[Hit]:
    """SC104: a helper thread makes a stream current (reported only beside a global cache)."""
    for reach in thread_reach(index):
        for node in body_nodes(reach.func):
            if isinstance(node, ast.With | ast.AsyncWith):
                for item in node.items:
                    expr = item.context_expr
                    if isinstance(expr, ast.Call) and index.api(expr.func) in _STREAM_CONTEXTS:
                        yield _context_hit(reach, node, f"with {ast.unparse(expr.func)}(...)")
            elif isinstance(node, ast.Call) and index.api(node.func) == "set_stream":
                yield _context_hit(reach, node, f"{ast.unparse(node.func)}(...)")


def _context_hit(reach: ThreadReach, node: ast.AST, what: str) -> Hit:
    return Hit.at(
        node,
        f"{_reach_label(reach)} and switches streams with `{what}`, which rewrites the "
        "module-global current-stream cache: other threads' collectives then launch on this "
        "thread's stream (NaN, or CUDA error 400 across devices).",
    )


def check_default_stream_in_thread(index: ModuleIndex) -> Iterator[Hit]:
    """SC105: a helper thread names the legacy default stream explicitly."""
    for reach in thread_reach(index):
        guard = DeviceGuard(index, reach.func)
        for node in body_nodes(reach.func):
            if not isinstance(node, ast.Call):
                continue
            api = index.api(node.func)
            explicit_zero = api == "Stream" and any(
                kw.arg == "stream_id" and isinstance(kw.value, ast.Constant) and kw.value.value == 0
                for kw in node.keywords
            )
            if api != "default_stream" and not explicit_zero:
                continue
            device0 = ""
            implicit_device = api == "default_stream" and not node.args and not node.keywords
            if implicit_device and not (reach.protected or guard.covers(node)):
                device0 = "; with no device argument and no set_device it is device 0's"
            yield Hit.at(
                node,
                f"{_reach_label(reach)} and uses the legacy default stream "
                f"(`{ast.unparse(node)}`): it serialises with every blocking stream on the "
                f"device and is not ordered with the engine's compute stream{device0}.",
            )


RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule(
            "SC101",
            "global-stream-cache",
            "The current stream is cached in state shared by all threads (a module global, a "
            "dict in one, a class attribute, a process-wide lru_cache) and read back later.",
            _fix("SC101"),
            check_global_stream_cache,
        ),
        Rule(
            "SC102",
            "patched-set-stream-global",
            "set_stream is monkey-patched to record the stream in a module global.",
            _fix("SC102"),
            check_patched_set_stream_global,
        ),
        Rule(
            "SC103",
            "stream-in-thread-without-set-device",
            "A helper thread creates a stream before setting its device.",
            _fix("SC103"),
            check_stream_in_thread_without_set_device,
        ),
        Rule(
            "SC104",
            "stream-context-in-thread-with-global-cache",
            "A helper thread switches streams where set_stream writes a module-global cache.",
            _fix("SC104"),
            check_stream_context_in_thread,
            needs_global_cache=True,
        ),
        Rule(
            "SC105",
            "default-stream-in-thread",
            "A helper thread puts work on the legacy default stream explicitly.",
            _fix("SC105"),
            check_default_stream_in_thread,
        ),
    )
}

#: Rules whose hits answer SC104's question "does a stream switch rewrite a global cache?".
WRITE_PATH_RULES = ("SC102",)

_BY_NAME = {rule.name: rule.id for rule in RULES.values()}


class UnknownRuleError(ValueError):
    """A ``select``/``ignore`` entry that names no rule."""


def rule_ids_for(names: Sequence[str]) -> set[str]:
    """Rule ids for a list of ids, names or id prefixes (``SC1``); comma lists are split."""
    ids: set[str] = set()
    for raw in names:
        for item in filter(None, (part.strip() for part in raw.split(","))):
            if item.upper() in RULES:
                ids.add(item.upper())
            elif item.lower() in _BY_NAME:
                ids.add(_BY_NAME[item.lower()])
            elif item.upper().startswith("SC") and any(
                rid.startswith(item.upper()) for rid in RULES
            ):
                ids.update(rid for rid in RULES if rid.startswith(item.upper()))
            else:
                known = ", ".join(f"{r.id} ({r.name})" for r in RULES.values())
                raise UnknownRuleError(f"unknown rule {item!r}; known rules: {known}")
    return ids


def enabled_rules(
    select: Sequence[str] | None = None, ignore: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The rule ids to report: ``select`` (default: all) minus ``ignore``."""
    chosen = rule_ids_for(select) if select else set(RULES)
    chosen -= rule_ids_for(ignore) if ignore else set()
    return tuple(sorted(chosen))
