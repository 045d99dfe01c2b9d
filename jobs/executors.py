"""Where units run: in this process, or as Ray tasks (local or on a cluster).

The runtime talks to an executor through three calls (submit, wait, outcome), so retries,
back-off and committing stay in one place (the driver), whatever runs the units.
"""
from __future__ import annotations

import os
import time
import traceback
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(eq=False)  # handles are dict keys: identity, not value
class Outcome:
    ok: bool
    result: Any = None
    error: str | None = None
    cpu_s: float = 0.0  # CPU time of the process running the unit, all its threads, while it ran
    started: float = 0.0  # wall clock (time.time) when the unit began and ended in its worker
    finished: float = 0.0


def execute_unit(job, unit, staging: Path) -> Outcome:
    """Run one unit and capture any failure as text, so it can travel back from a Ray worker.

    A worker runs one unit at a time, so its process CPU time over the unit is the unit's cost
    (decoder threads included): what "throughput per core" is measured in.
    """
    cpu0, started = time.process_time(), time.time()
    try:
        staging.mkdir(parents=True, exist_ok=True)
        outcome = Outcome(True, job.run_unit(unit, staging))
    except Exception as exc:  # noqa: BLE001 - every failure of a unit is recorded, never fatal
        tb = traceback.format_exception(exc)
        outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}\n{''.join(tb[-3:])}".strip())
    outcome.cpu_s, outcome.started, outcome.finished = time.process_time() - cpu0, started, time.time()
    return outcome


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

        self._started_here = connect_ray(self.address, num_cpus=self.workers)
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


#: What keeps a Ray on this machine on loopback, in the environment of the Ray processes (a
#: `ray start --head` wants it too). Ray swaps a loopback node address (`_node_ip_address`,
#: `--node-ip-address`) for this host's network address, so it would listen and dial there; with
#: clusters off (its single-machine mode of Windows and macOS) the node's address is 127.0.0.1.
#: And Ray's head asks cloud metadata servers (169.254.169.254, a DNS name) which cloud it is on,
#: even with usage stats off: over HTTP it goes to a proxy on loopback where nothing listens
#: (Ray's own gRPC ignores proxies; loopback addresses bypass it).
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "http_proxy": "http://127.0.0.1:9",
                    "no_proxy": "127.0.0.1,localhost,::1"}


def connect_ray(address: str | None = None, num_cpus: int | None = None, **init_kwargs) -> bool:
    """Join the Ray cluster at `address`, or start a local Ray of `num_cpus` (default: all cores);
    a local Ray, or a cluster on a loopback address, stays on loopback. Returns whether this call
    connected (the caller then shuts Ray down); a process already connected is left as it is."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                              "log_to_driver": False, "configure_logging": True, **init_kwargs}
    if address and not _is_loopback(address):
        ray.init(address=address, **kwargs)
        return True
    with _ray_on_loopback():
        if address:
            ray.init(address=address, _node_ip_address="127.0.0.1", **kwargs)
        else:  # "local": a new Ray, never one found on this machine or in RAY_ADDRESS
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                     _node_ip_address="127.0.0.1", **kwargs)
    node = ray.util.get_node_ip_address()
    if not _is_loopback(node):
        ray.shutdown()
        raise RuntimeError(f"Ray put this machine's node on {node}, not on loopback: start the "
                           f"cluster with {RAY_LOOPBACK_ENV} in its environment")
    return True


@contextmanager
def _ray_on_loopback():
    """RAY_LOOPBACK_ENV for the Ray processes that ray.init starts, and for this one, which may
    have read it already (Ray reads it when imported); both as they were afterwards."""
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in RAY_LOOPBACK_ENV}
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(RAY_LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
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
