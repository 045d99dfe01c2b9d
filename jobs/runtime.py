"""Runs a Job on an output folder so that it can be killed at any moment and run again.

Protocol for one unit (the driver is the only writer of the ledger):
  1. the unit writes its files into a fresh staging folder (possibly in a Ray worker);
  2. the driver checksums them and appends `committing` with the checksums;
  3. the driver renames each file into place (fsync);
  4. the driver appends `done` with the unit's result.
A run that finds `committing` checks the files against the recorded checksums: all present means
the renames finished (only `done` was lost), so the unit is marked done with the result recorded
in `committing`, without running it again;
otherwise the unit is redone. A `done` unit whose files no longer verify is redone too.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.atomic import atomic_write_bytes, commit_file, sha256_file
from jobs.executors import Executor, InProcessExecutor
from jobs.job import Job, Unit, config_hash
from jobs.ledger import COMMITTING, DONE, FAILED, Ledger, UnitRecord
from jobs.lock import FolderLock
from jobs.progress import Progress

FINALIZE = "__finalize__"

# Exit statuses of the CLI, documented in the README.
EXIT_OK, EXIT_UNITS_FAILED, EXIT_CONFIG_MISMATCH, EXIT_LOCKED = 0, 3, 4, 5


class ConfigMismatch(RuntimeError):
    """The folder holds a run of this job with another config."""


@dataclass
class RetryPolicy:
    max_attempts: int = 3
    backoff_s: float = 1.0  # attempt n waits backoff_s * 2**(n-1)
    max_backoff_s: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


@dataclass
class JobReport:
    job: str
    out_dir: Path
    total: int = 0
    ran: int = 0
    skipped: int = 0
    recovered: int = 0
    redone_bad_outputs: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    final_result: Any = None
    seconds: float = 0.0
    unit_cpu_s: float = 0.0  # CPU time spent inside the units that ran now (all workers)
    units_span: tuple[float, float] | None = None  # first unit's start, last unit's end (wall clock)
    took_over_lock_from: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_UNITS_FAILED


def job_state_dir(out_dir: Path, job_name: str) -> Path:
    return Path(out_dir) / ".longshot" / job_name


class JobRun:
    """The state of one job in one folder: metadata, stored plan and ledger."""

    def __init__(self, job: Job, out_dir: Path):
        self.job = job
        self.out_dir = Path(out_dir)
        self.state_dir = job_state_dir(self.out_dir, job.name)
        self.meta_path = self.state_dir / "job.json"
        self.units_path = self.state_dir / "units.jsonl"
        self.ledger_path = self.state_dir / "ledger.jsonl"
        self.staging_root = self.state_dir / "staging"

    def check_config(self, force: bool) -> None:
        meta = {"job": self.job.name, "config": self.job.config,
                "config_hash": config_hash(self.job.config)}
        if self.meta_path.exists():
            old = json.loads(self.meta_path.read_text())
            if old["config_hash"] == meta["config_hash"]:
                return
            if not force:
                changed = sorted(k for k in set(old["config"]) | set(self.job.config)
                                 if old["config"].get(k) != self.job.config.get(k))
                raise ConfigMismatch(
                    f"{self.out_dir} holds a '{self.job.name}' run made with another config "
                    f"(changed: {', '.join(changed) or 'inputs'}). Its finished work is kept. "
                    f"To start this step over with the new config, run again with --force; "
                    f"or choose another output folder."
                )
            self.wipe()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.meta_path, json.dumps(meta, sort_keys=True, indent=1,
                                                      default=str).encode())

    def wipe(self) -> None:
        """--force: delete exactly what this job committed, then its state; nothing else."""
        for rec in Ledger.read(self.ledger_path).values():
            for rel in rec.outputs:
                (self.out_dir / rel).unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def load_units(self) -> list[Unit]:
        if self.units_path.exists():
            return [Unit(**json.loads(line)) for line in self.units_path.read_text().splitlines()]
        units = self.job.plan()
        ids = [u.id for u in units]
        if len(set(ids)) != len(ids):
            raise ValueError(f"job '{self.job.name}' planned duplicate unit ids")
        text = "".join(json.dumps({"id": u.id, "payload": u.payload}, sort_keys=True) + "\n"
                       for u in units)
        atomic_write_bytes(self.units_path, text.encode())
        return units

    def outputs_verify(self, rec: UnitRecord) -> str | None:
        """None when every recorded output is present with its checksum, else the first problem."""
        for rel, digest in rec.outputs.items():
            path = self.out_dir / rel
            if not path.exists():
                return f"{rel} is missing"
            if sha256_file(path) != digest:
                return f"{rel} does not match its checksum"
        return None


def _commit(run: JobRun, ledger: Ledger, unit_id: str, attempt: int, staging: Path,
            result: Any) -> None:
    staged = sorted(p for p in staging.rglob("*") if p.is_file())
    outputs = {str(p.relative_to(staging)): sha256_file(p) for p in staged}
    for rel in outputs:
        if rel.startswith(".longshot"):
            raise ValueError(f"unit {unit_id} wrote into the job's state folder: {rel}")
    ledger.append(UnitRecord(unit_id, COMMITTING, attempt, outputs, result=result))
    for p in staged:
        commit_file(p, run.out_dir / p.relative_to(staging))
    ledger.append(UnitRecord(unit_id, DONE, attempt, outputs, result=result))
    shutil.rmtree(staging, ignore_errors=True)


def run_job(job: Job, out_dir: Path, executor: Executor | None = None, *, force: bool = False,
            retry: RetryPolicy | None = None, progress: bool = True) -> JobReport:
    """Run (or resume) `job` into `out_dir`; returns a report, never raises for unit failures."""
    executor = executor or InProcessExecutor()
    retry = retry or RetryPolicy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = JobReport(job.name, out_dir)
    t0 = time.monotonic()
    with FolderLock(out_dir) as lock:
        report.took_over_lock_from = lock.took_over_from
        run = JobRun(job, out_dir)
        run.check_config(force)
        units = run.load_units()
        report.total = len(units)
        ledger = Ledger(run.ledger_path)
        shutil.rmtree(run.staging_root, ignore_errors=True)  # leftovers of a killed run
        try:
            todo = _recover(run, ledger, units, report)
            bar = Progress(total=len(units), initial=len(units) - len(todo),
                           desc=job.name, enabled=progress)
            try:
                _drive(run, ledger, executor, todo, retry, report, bar)
            finally:
                bar.close()
            if not report.failed:
                report.final_result = _finalize(run, ledger, units)
        finally:
            ledger.close()
    report.seconds = time.monotonic() - t0
    return report


def _recover(run: JobRun, ledger: Ledger, units: list[Unit], report: JobReport) -> list[Unit]:
    todo = []
    for unit in units:
        rec = ledger.records.get(unit.id)
        if rec and rec.state in (DONE, COMMITTING):
            problem = run.outputs_verify(rec)
            if problem is None:
                if rec.state == COMMITTING:  # the crash hit between the renames and `done`
                    ledger.append(UnitRecord(unit.id, DONE, rec.attempt, rec.outputs,
                                             result=rec.result))
                    report.recovered += 1
                else:
                    report.skipped += 1
                continue
            if rec.state == DONE:
                report.redone_bad_outputs.append(f"{unit.id}: {problem}")
        todo.append(unit)
    return todo


def _drive(run, ledger, executor, todo, retry, report, bar) -> None:
    pending = deque(todo)
    delayed: list[tuple[float, Unit]] = []
    inflight: dict[Any, tuple[Unit, int, Path]] = {}
    run_attempts: dict[str, int] = {}
    if not todo:
        return
    executor.start(run.job)
    try:
        while pending or delayed or inflight:
            now = time.monotonic()
            for item in [d for d in delayed if d[0] <= now]:
                delayed.remove(item)
                pending.append(item[1])
            while pending and len(inflight) < executor.capacity:
                unit = pending.popleft()
                run_attempts[unit.id] = run_attempts.get(unit.id, 0) + 1
                attempt = ledger.attempts.get(unit.id, 0) + 1
                ledger.attempts[unit.id] = attempt
                staging = run.staging_root / f"{unit.id}.{attempt}.{uuid.uuid4().hex[:8]}"
                inflight[executor.submit(unit, staging)] = (unit, attempt, staging)
            if not inflight:
                time.sleep(max(0.0, min(d[0] for d in delayed) - time.monotonic()))
                continue
            for handle in executor.wait(list(inflight), timeout=0.5):
                unit, attempt, staging = inflight.pop(handle)
                outcome = executor.outcome(handle)
                report.unit_cpu_s += outcome.cpu_s
                if outcome.started:
                    first, last = report.units_span or (outcome.started, outcome.finished)
                    report.units_span = (min(first, outcome.started), max(last, outcome.finished))
                if outcome.ok:
                    try:
                        _commit(run, ledger, unit.id, attempt, staging, outcome.result)
                        report.ran += 1
                        bar.update(1)
                        continue
                    except OSError as exc:
                        outcome.error = f"commit failed: {exc}"
                shutil.rmtree(staging, ignore_errors=True)
                ledger.append(UnitRecord(unit.id, FAILED, attempt, error=outcome.error))
                if run_attempts[unit.id] < retry.max_attempts:
                    delayed.append((time.monotonic() + retry.delay(run_attempts[unit.id]), unit))
                else:
                    report.failed[unit.id] = (outcome.error or "").splitlines()[0]
                    bar.update(0, failed=len(report.failed))
    finally:
        executor.stop()


def _finalize(run: JobRun, ledger: Ledger, units: list[Unit]) -> Any:
    rec = ledger.records.get(FINALIZE)
    if rec and rec.state == DONE and run.outputs_verify(rec) is None:
        return rec.result
    results = [(u, ledger.records[u.id].result) for u in units]
    staging = run.staging_root / "finalize"
    staging.mkdir(parents=True, exist_ok=True)
    result = run.job.finalize(results, staging, run.out_dir)
    _commit(run, ledger, FINALIZE, 1, staging, result)
    return result


def format_report(report: JobReport) -> str:
    lines = [f"{report.job}: {report.total} units in {report.out_dir} "
             f"({report.ran} run now, {report.skipped} already done"
             + (f", {report.recovered} recovered after a crash" if report.recovered else "")
             + f", {len(report.failed)} failed) in {report.seconds:.1f} s"
             + (f" (units: {report.unit_cpu_s:.1f} CPU s); units ran {report.units_span[1] - report.units_span[0]:.1f} s,"
                f" first start to last end" if report.units_span else "")]
    if report.took_over_lock_from:
        lines.append(f"  took over the folder from a run that died "
                     f"(pid {report.took_over_lock_from.get('pid')})")
    for item in report.redone_bad_outputs:
        lines.append(f"  redone, outputs did not verify: {item}")
    for unit_id, reason in sorted(report.failed.items()):
        lines.append(f"  FAILED {unit_id}: {reason}")
    if report.failed:
        lines.append("  finished units are kept; fix the cause and run the same command again "
                     "to redo only the failed ones.")
    return "\n".join(lines)


def print_report(report: JobReport, extra: str = "") -> None:
    print(format_report(report) + (("\n" + extra) if extra else ""), file=sys.stdout, flush=True)
