"""What a rank says about itself, as typed records: written as JSON lines, read back as records.

A rank appends one record per event to ``rank{N}.jsonl`` (flushed per line, so a rank killed
mid-run leaves its story): :class:`Start`, then :class:`Progress` per iteration, then how it
ended (:class:`Done`, :class:`Blocked` or :class:`Error`), and :class:`Findings` from the
audit. The parent reads them with :func:`read_records` at the end and :class:`RecordTail`
while the variant runs; both skip a line a kill cut short. The JSON form of a record is
``{"kind", "rank", "pid", "t", ...its fields}``; ``streamcheck run --json`` carries it under
each result's ``ranks``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO, TypeVar

#: a rank's own counters and notes: ``iterations_done``, ``nan_iters``, ``corrupt_save``...
Observed = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class RankRecord:
    kind: ClassVar[str] = ""
    #: the rank's last word on its ``run_rank``: done, blocked or error
    ends_rank: ClassVar[bool] = False
    #: the rank stopped short (blocked by the audit, or an error): peers may now hang
    failed: ClassVar[bool] = False
    rank: int
    pid: int = 0
    t: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            data[f.name] = getattr(self, f.name)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> RankRecord:
        """The record a JSON object describes; ValueError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"a rank record is a JSON object, not {type(data).__name__}")
        cls = KINDS.get(data.get("kind"))  # type: ignore[arg-type]
        if cls is None:
            raise ValueError(f"unknown rank record kind {data.get('kind')!r}")
        return cls._from_fields({k: v for k, v in data.items() if k != "kind"})

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> RankRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"{cls.kind} record: unknown field(s) {sorted(unknown)}")
        try:
            return cls(**values)
        except TypeError as exc:  # a required field missing
            raise ValueError(f"{cls.kind} record: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class Start(RankRecord):
    kind: ClassVar[str] = "start"
    variant: str = ""
    backend: str = ""
    device: int = 0
    world_size: int = 0
    engine: str = ""


@dataclass(frozen=True, kw_only=True)
class Progress(RankRecord):
    """One iteration done; ``extra`` holds what the repro passed to ``iteration_done``."""

    kind: ClassVar[str] = "progress"
    iteration: int = 0
    observed: Observed = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data.update(data.pop("extra"))  # the repro's own fields sit next to the standard ones
        return data

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> RankRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        return super()._from_fields(
            {**known, "extra": {k: v for k, v in values.items() if k not in names}})


@dataclass(frozen=True, kw_only=True)
class Done(RankRecord):
    kind: ClassVar[str] = "done"
    ends_rank: ClassVar[bool] = True
    observed: Observed = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Blocked(RankRecord):
    """The audit (``assert`` mode) stopped a launch before it ran."""

    kind: ClassVar[str] = "blocked"
    ends_rank: ClassVar[bool] = True
    failed: ClassVar[bool] = True
    rules: list[str] = field(default_factory=list)
    observed: Observed = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True, kw_only=True)
class Error(RankRecord):
    """``run_rank`` raised; ``error_kind`` is the class (``error-400``, or the type's name)."""

    kind: ClassVar[str] = "error"
    ends_rank: ClassVar[bool] = True
    failed: ClassVar[bool] = True
    error_kind: str = ""
    message: str = ""
    traceback: str = ""
    observed: Observed = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Findings(RankRecord):
    """The process auditor's findings (record/warn modes), for the fixed variant's verdict."""

    kind: ClassVar[str] = "findings"
    rules: list[str] = field(default_factory=list)
    launches_audited: int = 0
    detail: list[str] = field(default_factory=list)


KINDS: dict[str, type[RankRecord]] = {
    cls.kind: cls for cls in (Start, Progress, Done, Blocked, Error, Findings)}

R = TypeVar("R", bound=RankRecord)


def record_path(directory: Path, rank: int) -> Path:
    return directory / f"rank{rank}.jsonl"


class ResultLog:
    """One rank's records, appended as JSON lines and flushed per line."""

    def __init__(self, path: str | Path, rank: int) -> None:
        self._fh: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self.rank = rank

    def write(self, kind: type[R], **fields: Any) -> R:
        """Append a ``kind`` record of this rank, stamped with the pid and the time."""
        record = kind(rank=self.rank, pid=os.getpid(), t=time.time(), **fields)
        self._fh.write(json.dumps(record.to_json(), default=str) + "\n")
        self._fh.flush()
        return record

    def close(self) -> None:
        self._fh.close()


def parse_line(line: str) -> RankRecord | None:
    """The record on one line; None for a line a kill cut short, or anything else unreadable."""
    try:
        return RankRecord.from_json(json.loads(line))
    except (ValueError, TypeError):  # JSONDecodeError is a ValueError
        return None


def read_records(directory: Path) -> dict[int, list[RankRecord]]:
    """Every rank's records in ``directory``, by rank, in the order written."""
    records: dict[int, list[RankRecord]] = {}
    for path in sorted(directory.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            record = parse_line(line)
            if record is not None:
                records.setdefault(record.rank, []).append(record)
    return records


class RecordTail:
    """Reads the records ranks append while they run, each complete line once."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._offsets: dict[Path, int] = {}
        self.records: list[RankRecord] = []

    def poll(self) -> list[RankRecord]:
        """The records written since the last poll."""
        new: list[RankRecord] = []
        for path in sorted(self._directory.glob("rank*.jsonl")):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # a line still being written waits for its newline
            self._offsets[path] = offset + end
            for line in chunk[:end].decode(errors="replace").splitlines():
                record = parse_line(line)
                if record is not None:
                    new.append(record)
        self.records += new
        return new

    def any_failed(self) -> bool:
        """Whether some rank has said it stopped short (blocked or error), as of now."""
        self.poll()
        return any(r.failed for r in self.records)
