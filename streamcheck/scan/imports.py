"""Which scanned files are loaded together: the static import graph between them.

SC104 (a helper thread switches streams) is a hazard only where a ``set_stream`` patch that
writes a global cache is installed in that thread's process. It certainly is when the thread's
module imports the patching module, directly or through others (importing ``a.b.c`` also runs
``a/__init__.py`` and ``a/b/__init__.py``). The other direction is not enough: that the
patching process *loads* a module (sglang's package ``__init__`` pulls half the server into the
diffusion worker) does not make that module's thread run there. Two modules of one repository
where the thread's side never imports the patch (a server and an offline tool in a monorepo)
are not linked; two modules of a namespace package (no ``__init__.py``) that import each other
are.

Imports are read with a regular expression, not a parse: the graph may need every file of the
tree (thousands, most of which the rules never parse), and only names matter. Imports inside
functions count (they run in the same process when called); an import-looking line inside a
string may add an edge, which can only link more, never hide a link.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_FROM = re.compile(rb"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]*(\([^)]*\)|[^\n;#]*)", re.M)
_IMPORT = re.compile(rb"^[ \t]*import[ \t]+([^\n;#]*)", re.M)
_NAME = re.compile(r"[A-Za-z_][\w.]*")
#: A quoted dotted path of three parts or more: ``"pkg.mod.Class"`` for a class loaded by name.
_QUALNAME = re.compile(rb"[\"']([A-Za-z_]\w*(?:\.[A-Za-z_]\w*){2,})[\"']")
#: Longest dotted suffix of a file's path looked up for an absolute import.
_MAX_DEPTH = 12


@dataclass(frozen=True)
class Link:
    """How one file loads another: ``chain`` runs from the importer to the imported."""

    chain: tuple[str, ...]


class ImportGraph:
    """The import edges between a fixed set of files, read lazily, one file at a time."""

    def __init__(self, files: Iterable[str | Path], roots: Iterable[str | Path]) -> None:
        """``roots``: the scanned directories (a scanned file's directory).

        An absolute import starts from a ``sys.path`` entry: a scanned directory, a directory
        above one, or a directory inside one that no regular package encloses (a repository's
        ``python/`` holding its package). A directory inside a package is not one, so
        ``import cuda`` (cuda-python) does not resolve to ``pkg/platforms/cuda.py``.
        """
        self._files = {Path(f).resolve(): str(f) for f in files}
        scanned = {Path(r).resolve() for r in roots}
        self._roots = {p for r in scanned for p in (r, *r.parents)}
        self._roots.update(self._unpackaged_dirs(scanned))
        self._by_suffix: dict[tuple[str, ...], list[Path]] = {}
        for path in self._files:
            parts = _module_parts(path)
            for depth in range(1, min(len(parts), _MAX_DEPTH) + 1):
                if Path(*parts[:-depth]) in self._roots:
                    self._by_suffix.setdefault(parts[-depth:], []).append(path)
        self._edges: dict[Path, tuple[Path, ...]] = {}
        self._reach: dict[Path, dict[Path, Path | None]] = {}

    def _unpackaged_dirs(self, scanned: set[Path]) -> set[Path]:
        """Directories below a scanned one with no ``__init__.py`` at or above them."""
        found: set[Path] = set()
        for path in self._files:
            chain: list[Path] = []
            directory = path.parent
            while directory not in scanned and directory != directory.parent:
                chain.append(directory)
                directory = directory.parent
            if directory not in scanned:
                continue  # not below a scanned directory (a file scanned on its own)
            for below in reversed(chain):  # from the scanned directory down
                if below / "__init__.py" in self._files:
                    break
                found.add(below)
        return found

    def link(self, importer: str | Path, imported: str | Path) -> Link | None:
        """How ``importer`` loads ``imported`` (directly or through other scanned files), or
        None if it does not."""
        source, target = Path(importer).resolve(), Path(imported).resolve()
        parents = self._reachable(source)
        if target not in parents:
            return None
        chain = [target]
        while (step := parents[chain[-1]]) is not None:
            chain.append(step)
        return Link(tuple(self._files.get(p, str(p)) for p in reversed(chain)))

    def _reachable(self, source: Path) -> dict[Path, Path | None]:
        """Every file ``source`` loads, each with the file that imported it (a BFS tree)."""
        known = self._reach.get(source)
        if known is None:
            known = {source: None}
            queue = deque([source])
            while queue:
                path = queue.popleft()
                for nxt in self._edges_of(path):
                    if nxt not in known:
                        known[nxt] = path
                        queue.append(nxt)
            self._reach[source] = known
        return known

    def _edges_of(self, path: Path) -> tuple[Path, ...]:
        edges = self._edges.get(path)
        if edges is None:
            found = dict.fromkeys(self._packages_above(path))
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            for module in _imported_modules(data):
                found.update(dict.fromkeys(self._resolve(module, path)))
            found.pop(path, None)
            edges = self._edges[path] = tuple(found)
        return edges

    def _packages_above(self, path: Path) -> Iterator[Path]:
        """The ``__init__.py`` files that run before ``path`` does (its enclosing packages)."""
        directory = path.parent if path.name != "__init__.py" else path.parent.parent
        while directory != directory.parent:
            init = directory / "__init__.py"
            if init in self._files:
                yield init
            directory = directory.parent

    def _resolve(self, module: tuple[int, str], importer: Path) -> Iterator[Path]:
        level, name = module
        parts = tuple(p for p in name.split(".") if p)
        if level:
            base = importer.parent
            for _ in range(level - 1):
                base = base.parent
            target = base.joinpath(*parts)
            for candidate in (target.with_suffix(".py") if parts else None,
                              target / "__init__.py"):
                if candidate is not None and candidate in self._files:
                    yield candidate
            return
        candidates = self._by_suffix.get(parts, ()) if parts else ()
        if len(candidates) > 1:
            # Two scanned projects both have ``vllm/utils.py``: the importer's own comes first
            # on its sys.path, so keep the candidates that share the most of its path.
            depth = {c: _shared_depth(c, importer) for c in candidates}
            best = max(depth.values())
            candidates = [c for c in candidates if depth[c] == best]
        yield from candidates


def _shared_depth(a: Path, b: Path) -> int:
    depth = 0
    for x, y in zip(a.parts, b.parts, strict=False):
        if x != y:
            break
        depth += 1
    return depth


def _module_parts(path: Path) -> tuple[str, ...]:
    parts = path.with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_modules(data: bytes) -> Iterator[tuple[int, str]]:
    """(level, dotted name) of each module a file's import statements may load.

    ``from m import n`` may load ``m`` and, if ``n`` is a submodule, ``m.n``: both are yielded
    and the ones that are no scanned file resolve to nothing.
    """
    for match in _FROM.finditer(data):
        level = len(match.group(1))
        base = match.group(2).decode("ascii", "replace")
        yield level, base
        for item in match.group(3).decode("ascii", "replace").strip("() \t\r\n").split(","):
            words = item.split()
            if words and _NAME.fullmatch(words[0]):
                yield level, f"{base}.{words[0]}" if base else words[0]
    for match in _IMPORT.finditer(data):
        for item in match.group(1).decode("ascii", "replace").split(","):
            name = item.split(" as ")[0].strip()
            if _NAME.fullmatch(name):
                yield 0, name
    for match in _QUALNAME.finditer(data):
        name = match.group(1).decode("ascii")
        yield 0, name
        yield 0, name.rpartition(".")[0]
