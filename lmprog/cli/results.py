"""The results file: one line appended and fsynced as each program finishes, compacted at the end.

Appending a line is the only write during a run, so killing the process (Ctrl-C, SIGKILL, a
crash, a dead server) loses at most the line being written, whose input then runs again. When
the file is read back, a key's successful result wins over its failures and the latest wins
among equals; an unreadable line (a write cut short) is skipped. At the end the file is
rewritten with one line per key, in input order: into a temporary file beside it, fsynced, then
renamed over it, so a crash while compacting leaves the old file or the new one, never less.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lmprog.cli.inputs import key_token
from lmprog.errors import CliError


@dataclass
class Previous:
    """What the file held: the record kept per key (by key token), in first-seen order."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreadable: int = 0

    def done(self, token: str) -> bool:
        record = self.records.get(token)
        return record is not None and record.get("error") is None

    def add(self, record: dict[str, Any]) -> None:
        token = key_token(record["key"])
        if record.get("error") is not None and self.done(token):
            return  # an older success stays; it is never replaced by a failure
        self.records[token] = record


class ResultsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def read(self) -> Previous:
        previous = Previous()
        if not self.path.exists():
            return previous
        with self.path.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    previous.unreadable += 1
                    continue
                if isinstance(record, dict) and "key" in record:
                    previous.add(record)
                else:
                    previous.unreadable += 1
        return previous

    def open(self) -> None:
        """Open for appending; a line cut short by a crash is ended so the next one is whole."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
        except OSError as exc:
            raise CliError(f"cannot write the output {self.path}: {exc}") from exc
        if self._handle.tell() > 0:
            with self.path.open("rb") as reader:
                reader.seek(-1, os.SEEK_END)
                if reader.read(1) != b"\n":
                    self._write(b"\n")

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append these lines, then fsync once: they survive a crash from here on."""
        self._write(b"".join(encode(record) for record in records))

    def _write(self, data: bytes) -> None:
        assert self._handle is not None
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def compact(self, order: list[str]) -> None:
        """Rewrite the file atomically: one line per key, keys in `order` first, then any the
        inputs no longer have (kept: they are results, and nothing here deletes results)."""
        previous = self.read()
        known = set(order)
        tokens = [t for t in order if t in previous.records]
        tokens += [t for t in previous.records if t not in known]
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with temporary.open("wb") as handle:
                for token in tokens:
                    handle.write(encode(previous.records[token]))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself is durable
        finally:
            os.close(folder)


def encode(record: dict[str, Any]) -> bytes:
    """One JSON line; values JSON cannot hold are converted by `jsonable`."""
    return (json.dumps(record, ensure_ascii=False, default=jsonable) + "\n").encode()


def jsonable(value: Any) -> Any:
    """Pydantic models and dataclasses as their fields, enums as their values, sets as
    lists; anything else as its repr (a result is never dropped for its type)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)
