"""The ledger: an append-only JSON-lines journal of what happened to each unit of a job.

Appending one fsynced line per event means a SIGKILL can at worst tear the last line, which is
dropped on the next open; every earlier event is durable. The newest record of a unit is its state.
States: `failed` (an attempt raised; `error` says why), `committing` (outputs staged with their
checksums, being renamed into place), `done` (outputs in place; `result` holds the unit's small
return value, which later steps read instead of re-running the unit).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DONE, COMMITTING, FAILED = "done", "committing", "failed"


@dataclass
class UnitRecord:
    unit: str
    state: str
    attempt: int = 0
    outputs: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    result: Any = None
    error: str | None = None
    time: float = 0.0


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, UnitRecord] = {}
        self.attempts: dict[str, int] = {}
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):  # a torn last line from a killed writer: drop it durably
            with open(self.path, "rb+") as f:
                f.truncate(len(complete))
                os.fsync(f.fileno())
        for line in complete.splitlines():
            rec = UnitRecord(**json.loads(line))
            self.records[rec.unit] = rec
            self.attempts[rec.unit] = max(self.attempts.get(rec.unit, 0), rec.attempt)

    def append(self, rec: UnitRecord) -> None:
        rec.time = time.time()
        line = json.dumps(rec.__dict__, sort_keys=True, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())
        os.fsync(self._fd)
        self.records[rec.unit] = rec
        self.attempts[rec.unit] = max(self.attempts.get(rec.unit, 0), rec.attempt)

    def state(self, unit: str) -> str | None:
        rec = self.records.get(unit)
        return rec.state if rec else None

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def read(path: Path) -> dict[str, UnitRecord]:
        """Read-only view for `longshot status`, safe while a job is writing."""
        records: dict[str, UnitRecord] = {}
        if Path(path).exists():
            for line in Path(path).read_bytes().splitlines():
                try:
                    rec = UnitRecord(**json.loads(line))
                except (ValueError, TypeError):
                    continue
                records[rec.unit] = rec
        return records
