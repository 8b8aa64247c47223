"""Reading streamcheck's JSON documents back, and writing any document a command produces:
any problem is one clear line, never a traceback.

``streamcheck report`` renders files a user points it at: saved runs, per-process audit reports,
merged ones, in any mix. Each file is read on its own, recognised by its ``schema`` field, and
validated against the published schema (``streamcheck/schemas/*.json``, JSON Schema 2020-12)
before anything renders it, so a truncated, hand-edited or foreign file is refused with the
file's name and the first problem found, and a good file is never misread because another
file in the same directory is of another kind.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from streamcheck.core.report import SCHEMA as REPORT_SCHEMA

RUN_SCHEMA = "streamcheck.run/1"
SCAN_SCHEMA = "streamcheck.scan/1"
LIST_SCHEMA = "streamcheck.list/1"
# Every JSON document streamcheck writes names its kind in "schema" (``streamcheck.KIND/N``) and
# has a JSON Schema here, so any of them can be read back and checked the same way.
_SCHEMA_FILES = {REPORT_SCHEMA: "report-1.json", RUN_SCHEMA: "run-1.json",
                 SCAN_SCHEMA: "scan-1.json", LIST_SCHEMA: "list-1.json"}
MAX_BYTES = 256 * 2**20


class DocumentError(ValueError):
    """A document that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Document:
    path: Path
    kind: str  # one of the *_SCHEMA names
    data: dict[str, Any]


@functools.cache
def schema_of(kind: str) -> dict[str, Any]:
    text = resources.files("streamcheck.schemas").joinpath(_SCHEMA_FILES[kind]).read_text()
    return json.loads(text)


def validate(data: Any, where: str) -> str:
    """The document's kind, after checking it against its schema; raises DocumentError."""
    import jsonschema

    if not isinstance(data, dict):
        raise DocumentError(f"{where}: not a streamcheck document (a JSON {type(data).__name__})")
    kind = data.get("schema")
    if kind not in _SCHEMA_FILES:
        raise DocumentError(f"{where}: not a streamcheck document (schema={kind!r}; expected "
                            f"{' or '.join(_SCHEMA_FILES)})")
    validator = jsonschema.Draft202012Validator(schema_of(kind))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise DocumentError(f"{where}: does not match {kind} at {at}: {error.message}")
    return kind


def read_document(path: Path) -> Document:
    """One file, read and validated."""
    if path.is_dir():
        raise DocumentError(f"{path}: is a directory, not a report file")
    if path.exists() and not path.is_file():  # a FIFO or device would block or never end
        raise DocumentError(f"{path}: not a regular file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DocumentError(f"{path}: larger than {MAX_BYTES // 2**20} MiB; not a report")
        text = path.read_text()
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DocumentError(f"{path}: cannot read it ({reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{path}: not JSON ({exc})") from None
    except RecursionError:
        raise DocumentError(f"{path}: JSON nested too deeply to be a report") from None
    return Document(path, validate(data, str(path)), data)


def write_output(path: str, text: str, flag: str, *, make_parents: bool = False) -> None:
    """Write ``text`` to ``path`` (``-``: stdout), its directories first if ``make_parents``.
    Raises ValueError naming ``flag`` and the reason, which the command line prints as one
    line with exit code 2."""
    if path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    try:
        if make_parents:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write it ({exc.strerror or exc})") from None


def collect(paths: list[str]) -> list[Path]:
    """The files named, and the ``*.json`` files of the directories named, in a stable order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(path.glob("*.json"))
        else:
            files.append(path)
    if not files:
        raise DocumentError(f"no report files under {', '.join(paths)}")
    return files
