"""What a resumable step is: a config, a deterministic list of units, and how to run one unit.

Like a datatrove pipeline step, a job knows nothing of retries, ledgers or executors: it plans
units, turns one unit into files in a private staging folder plus a small JSON-able result, and
finally combines the results. The runtime (jobs/runtime.py) makes that crash-safe and resumable.
"""
from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_UNIT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


@dataclass(frozen=True)
class Unit:
    """One piece of work. `id` is stable across runs; `payload` says what to do (JSON-able)."""

    id: str
    payload: Any = None

    def __post_init__(self):
        if not _UNIT_ID.match(self.id) or self.id.startswith("__"):
            raise ValueError(f"unit id {self.id!r} must match {_UNIT_ID.pattern} and not start with '__'")


def config_hash(config: dict) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Job(ABC):
    """A named step. Subclasses set `name` and implement plan and run_unit (finalize optional)."""

    name: str = "job"
    #: CPUs a unit needs; the Ray executor reserves this many per task.
    unit_cpus: float = 1.0

    def __init__(self, config: dict):
        self.config = dict(config)

    @abstractmethod
    def plan(self) -> list[Unit]:
        """The units, in a deterministic order. Called once per output folder; stored thereafter."""

    @abstractmethod
    def run_unit(self, unit: Unit, staging: Path) -> Any:
        """Write this unit's files under `staging` (paths relative to the output folder).

        Runs in a worker, maybe on another host sharing the filesystem. Must be deterministic for
        the same unit and config: a unit killed mid-way is simply run again.
        """

    def finalize(self, results: list[tuple[Unit, Any]], staging: Path, out_dir: Path) -> Any:
        """Combine the unit results into job-level files (manifests); runs once all units are done."""
        return None

    def summary(self, final_result: Any) -> str:
        """One or more lines for the end-of-run summary."""
        return ""
