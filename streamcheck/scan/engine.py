"""The scan driver: find files, parse each once, run every rule, apply suppressions.

Speed matters because people scan whole installed engines (vLLM is thousands of files), so:

- a file whose bytes do not contain ``stream`` (any case) is skipped before it is parsed: every
  rule here needs a stream API, a ``*_stream`` accessor or a ``set_stream`` patch in the same
  file, so such a file cannot produce a finding (it still counts in ``files_scanned``). A
  second text check (:func:`could_match`) skips files that mention streams but have none of
  what a rule starts from; on vLLM 0.33 that leaves 242 of 3,231 files to parse;
- each remaining file is parsed once; rules share one index of it (``index.py``) and walk only
  the function bodies they need;
- SC104 needs to know whether the thread's *process* rewrites a global stream cache on
  set_stream, so files are analysed first and SC104's candidate hits are kept until every
  file's SC102 results are known; a candidate counts where its module imports a patching
  module (:mod:`streamcheck.scan.imports`, read only when both exist).

Unreadable or invalid files become :class:`ScanError` entries; a scan never crashes on them.
"""

from __future__ import annotations

import ast
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamcheck.scan.imports import ImportGraph, Link
from streamcheck.scan.index import build_index
from streamcheck.scan.model import ScanError, ScanFinding, ScanResult
from streamcheck.scan.rules import RULES, WRITE_PATH_RULES, Hit, enabled_rules
from streamcheck.scan.suppress import is_suppressed

_LINE_END = re.compile(r"\r\n|\r|\n")
_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})


@dataclass
class _FileOutcome:
    """What one file contributed; plain data so files can be analysed independently."""

    path: str
    parsed: bool = False
    error: ScanError | None = None
    hits: list[tuple[str, Hit]] = field(default_factory=list)
    #: Hits of rules that only count beside a set_stream patch writing a global (SC104).
    pending: list[tuple[str, Hit]] = field(default_factory=list)


def iter_python_files(root: Path) -> Iterator[Path]:
    """``root`` itself if it is a file, else every ``*.py`` below it in a stable order.

    Hidden directories, ``__pycache__`` and nested ``site-packages`` are not entered: scanning a
    project must not silently scan its virtual environment too.
    """
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath, name)


_ACCESSOR_DEF = re.compile(rb"def\s+\w*(?:current|curr|cur)_?stream")
_PATCH_TEXT = re.compile(rb"\.set_stream\s*[=:]|['\"]set_stream['\"]")
_THREAD_WORDS = (b"thread", b"timer", b"executor")
_STREAM_USE = re.compile(rb"stream\s*\(|streamcontext|stream\w*\s+as\s")


def could_match(data: bytes) -> bool:
    """False when no rule can fire on a file with these bytes, so it need not be parsed.

    Each rule starts from something that must appear in the text: SC101 a ``def`` of a
    current-stream accessor or any mention of ``current_stream`` (a memoised accessor, or the
    current stream stored into shared state, can take many shapes), SC102 a
    ``.set_stream =`` (or ``setattr(..., "set_stream", ...)``), SC103-SC105 a thread
    (``thread``/``timer``/``executor``) plus a stream call
    (``...stream(``, ``Stream(``, a ``StreamContext``, or an ``import ... as`` alias of one).
    """
    lowered = data.lower()
    if b"stream" not in lowered:
        return False
    if b"set_stream" in data and _PATCH_TEXT.search(data):  # the literal test is far cheaper
        return True
    if _ACCESSOR_DEF.search(lowered):
        return True
    if b"current_stream" in lowered:
        return True  # a memo, or a store into shared state, of the current stream
    return any(w in lowered for w in _THREAD_WORDS) and bool(_STREAM_USE.search(lowered))


def _analyse(path: Path, prefilter: bool = True) -> _FileOutcome:
    outcome = _FileOutcome(path=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        outcome.error = ScanError(str(path), f"cannot read: {exc.strerror or exc}")
        return outcome
    if prefilter and not could_match(data):
        return outcome
    try:
        tree = ast.parse(data, filename=str(path))
    except SyntaxError as exc:
        outcome.error = ScanError(str(path), f"syntax error: {exc.msg}", exc.lineno)
        return outcome
    except (ValueError, RecursionError, MemoryError) as exc:
        outcome.error = ScanError(str(path), f"cannot parse: {exc}")
        return outcome
    outcome.parsed = True
    try:
        _run_rules(tree, data, outcome)
    except Exception as exc:  # a bug of ours must cost one file, not the whole scan
        outcome.hits.clear()
        outcome.pending.clear()
        outcome.error = ScanError(str(path), f"internal error, file skipped: {exc!r}")
    return outcome


def _run_rules(tree: ast.Module, data: bytes, outcome: _FileOutcome) -> None:
    index = build_index(tree, outcome.path, data)
    lines: list[str] | None = None
    for rule in RULES.values():
        for hit in rule.check(index):
            if lines is None:
                # Split as the parser counts lines (not str.splitlines, which splits on \x0c too).
                lines = _LINE_END.split(data.decode("utf-8", errors="replace"))
            text = lines[hit.line - 1] if 0 < hit.line <= len(lines) else ""
            if is_suppressed(text, rule.id, rule.name):
                continue
            (outcome.pending if rule.needs_global_cache else outcome.hits).append((rule.id, hit))


def _import_roots(paths: Sequence[str | Path]) -> set[Path]:
    """The scanned directories (a scanned file's directory): where the import graph starts
    looking for the directories absolute imports resolve from."""
    return {p if p.is_dir() else p.parent for p in (Path(raw).resolve() for raw in paths)}


def _short(path: str) -> str:
    """``pkg/mod.py`` for a path: enough to follow an import chain, short enough to read."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


def _with_cache_site(hit: Hit, site: str, link: Link, others: int) -> Hit:
    """SC104's message, naming the patch and how it reaches this module's process."""
    if len(link.chain) == 1:
        how = "in this module"
    else:
        how = "imported through " + " -> ".join(_short(p) for p in link.chain)
    more = f" (and {others} more)" if others else ""
    message = f"{hit.message.rstrip('.')} (set_stream patch at {site}{more}, {how})."
    return Hit(hit.line, hit.col, message)


def scan_paths(
    paths: Sequence[str | Path],
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    *,
    prefilter: bool = True,
    exclude: Callable[[Path], bool] | None = None,
    rules_off: Callable[[str], frozenset[str]] | None = None,
) -> ScanResult:
    """Scan files and directories (not package names: see :mod:`streamcheck.scan.resolve`).

    ``select``/``ignore`` take rule ids, names or id prefixes; an unknown one raises
    :class:`~streamcheck.scan.rules.UnknownRuleError` before anything is read.
    ``prefilter=False`` parses every file: slower, and only useful to check that the text
    pre-filter (:func:`could_match`) drops nothing (the findings must be the same).
    ``exclude(path)`` leaves files out before they are read; ``rules_off(path)`` names rules
    not reported in that file (a project's per-file ignores, :mod:`streamcheck.scan.config`).
    """
    enabled = enabled_rules(select, ignore)
    started = time.perf_counter()
    files: list[Path] = []
    seen: set[Path] = set()
    errors: list[ScanError] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            errors.append(ScanError(str(root), "no such file or directory"))
            continue
        for path in iter_python_files(root):
            if exclude is not None and exclude(path):
                continue
            try:
                key = Path(os.path.realpath(path, strict=True))
            except OSError as exc:  # a dangling link, a link loop: report it, scan the rest
                errors.append(ScanError(str(path), f"cannot read: {exc.strerror or exc}"))
                continue
            if key not in seen:
                seen.add(key)
                files.append(path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not ours to report
        outcomes = [_analyse(path, prefilter) for path in files]

    patch_sites = [
        (outcome.path, hit.line)
        for outcome in outcomes
        for rule_id, hit in outcome.hits
        if rule_id in WRITE_PATH_RULES
    ]
    graph = None
    if patch_sites and any(o.pending for o in outcomes):
        graph = ImportGraph(files, roots=_import_roots(paths))

    findings: list[ScanFinding] = []
    for outcome in outcomes:
        if outcome.error:
            errors.append(outcome.error)
        hits = list(outcome.hits)
        if outcome.pending and graph is not None:
            links = [
                (f"{path}:{line}", link)
                for path, line in patch_sites
                if (link := graph.link(outcome.path, path)) is not None
            ]
            if links:
                site, link = min(links, key=lambda sl: len(sl[1].chain))
                hits.extend(
                    (rid, _with_cache_site(hit, site, link, len(links) - 1))
                    for rid, hit in outcome.pending
                )
        off = rules_off(outcome.path) if rules_off is not None and hits else frozenset()
        for rule_id, hit in hits:
            if rule_id not in enabled or rule_id in off:
                continue
            rule = RULES[rule_id]
            findings.append(
                ScanFinding(
                    rule_id=rule_id, path=outcome.path, line=hit.line, col=hit.col,
                    message=hit.message, hint=rule.hint, rule_name=rule.name,
                )
            )
    findings.sort(key=lambda f: f.sort_key)
    return ScanResult(
        findings=tuple(findings),
        files_scanned=sum(1 for o in outcomes if o.error is None or o.parsed),
        errors=tuple(errors),
        files_parsed=sum(1 for o in outcomes if o.parsed),
        duration_s=time.perf_counter() - started,
        rules=enabled,
    )
