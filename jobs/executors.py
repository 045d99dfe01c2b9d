"""Where units run: in this process, or as Ray tasks (local or on a cluster).

The runtime talks to an executor through three calls (submit, wait, outcome), so retries,
back-off and committing stay in one place (the driver), whatever runs the units.
"""
from __future__ import annotations

import os
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(eq=False)  # handles are dict keys: identity, not value
class Outcome:
    ok: bool
    result: Any = None
    error: str | None = None


def execute_unit(job, unit, staging: Path) -> Outcome:
    """Run one unit and capture any failure as text, so it can travel back from a Ray worker."""
    try:
        staging.mkdir(parents=True, exist_ok=True)
        return Outcome(True, job.run_unit(unit, staging))
    except Exception as exc:  # noqa: BLE001 - every failure of a unit is recorded, never fatal
        tb = traceback.format_exception(exc)
        return Outcome(False, error=f"{type(exc).__name__}: {exc}\n{''.join(tb[-3:])}".strip())


class Executor(ABC):
    #: how many units may be in flight at once
    capacity: int = 1

    def start(self, job) -> None:
        """Called once before the first submit."""

    def stop(self) -> None:
        """Called once after the last unit."""

    @abstractmethod
    def submit(self, unit, staging: Path) -> Any: ...

    @abstractmethod
    def wait(self, handles: list, timeout: float) -> list:
        """Return the handles that finished (at least one unless the timeout passed)."""

    @abstractmethod
    def outcome(self, handle) -> Outcome: ...


class InProcessExecutor(Executor):
    """Runs each unit at submit time: simplest to debug, and the executor of the kill tests."""

    capacity = 1

    def start(self, job) -> None:
        self._job = job

    def submit(self, unit, staging: Path):
        return execute_unit(self._job, unit, staging)

    def wait(self, handles, timeout):
        return list(handles)

    def outcome(self, handle) -> Outcome:
        return handle


class RayExecutor(Executor):
    """Runs units as Ray tasks; joins `address` or starts a local Ray sized to `workers`."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.address = address
        self.workers = workers
        self._started_here = False

    def start(self, job) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING",
                                          log_to_driver=False, configure_logging=True)
            if self.address:
                if _is_loopback(self.address):  # else Ray swaps 127.0.0.1 for the host's address
                    kwargs["_node_ip_address"] = "127.0.0.1"
                ray.init(address=self.address, **kwargs)
            else:  # a single-machine Ray: keep all of its traffic on loopback
                ray.init(num_cpus=self.workers or os.cpu_count(), _node_ip_address="127.0.0.1",
                         **kwargs)
            self._started_here = True
        _ship_script_defined_job(job)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = max(1, int(cpus // max(job.unit_cpus, 0.01)) * 2)
        self._job_ref = ray.put(job)
        self._remote = ray.remote(num_cpus=job.unit_cpus, max_retries=0)(execute_unit)

    def stop(self) -> None:
        import ray

        if self._started_here:
            ray.shutdown()
            self._started_here = False

    def submit(self, unit, staging: Path):
        return self._remote.remote(self._job_ref, unit, staging)

    def wait(self, handles, timeout):
        import ray

        done, _ = ray.wait(list(handles), num_returns=1, timeout=timeout)
        rest = [h for h in handles if h not in done]
        if done and rest:  # collect everything else that is already finished too
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        return done

    def outcome(self, handle) -> Outcome:
        import ray

        try:
            return ray.get(handle)
        except Exception as exc:  # noqa: BLE001 - a worker crash is a unit failure, not a job crash
            return Outcome(False, error=f"worker failed: {type(exc).__name__}: {exc}"[:2000])


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _ship_script_defined_job(job) -> None:
    """Workers import longshot's own jobs by name; a job defined in a user's script or a test
    module is not importable there, so its module travels by value instead."""
    import importlib

    from ray import cloudpickle

    top = type(job).__module__.split(".")[0]
    if top not in {"pipeline", "shards", "model", "parallel", "jobs"}:
        cloudpickle.register_pickle_by_value(importlib.import_module(type(job).__module__))


def make_executor(kind: str, address: str | None = None, workers: int | None = None) -> Executor:
    if kind == "inprocess":
        return InProcessExecutor()
    if kind == "ray":
        return RayExecutor(address=address, workers=workers)
    raise ValueError(f"unknown executor {kind!r}: choose 'ray' or 'inprocess'")
