"""The Ray executor joins a real cluster started with `ray start --head` on loopback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from jobs.executors import RAY_LOOPBACK_ENV, RayExecutor
from jobs.runtime import run_job
from tests.jobs.helpers import output_files
from tests.jobs.sample_jobs import WriteFilesJob

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_line(stream, marker: str, timeout: float) -> tuple[bool, str]:
    """Read the head's output until `marker` appears; a thread keeps the deadline honest."""
    seen: list[str] = []
    found = threading.Event()

    def pump():
        for line in stream:
            seen.append(line)
            if marker in line:
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    found.wait(timeout)
    return found.is_set(), "".join(seen)


@pytest.fixture
def ray_head():
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # AF_UNIX paths must stay short
    # Token auth off on both sides: a token file left by an earlier local Ray must not matter.
    # RAY_LOOPBACK_ENV: else Ray puts the node on this host's network address, not 127.0.0.1.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", **RAY_LOOPBACK_ENV)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        # A loaded 2-core machine can take a minute or more to bring Ray up.
        started, log = _wait_for_line(head.stdout, "Ray runtime started", timeout=240)
        if not started:
            pytest.fail(f"ray head did not start within 240 s:\n{log[-3000:]}")
        assert "Local node IP: 127.0.0.1" in log, f"the head is not on loopback:\n{log[-3000:]}"
        yield f"127.0.0.1:{port}"
    finally:
        # --block tears the cluster down on SIGTERM; to it alone: with GCS gone at once too, it
        # would first try for 30 s to drain the node
        os.kill(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_executor_joins_cluster_and_matches_inprocess(tmp_path, ray_head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cfg = {"units": 12, "seed": 11}
    run_job(WriteFilesJob(cfg), tmp_path / "local", progress=False)

    report = run_job(WriteFilesJob(cfg), tmp_path / "ray", RayExecutor(address=ray_head),
                     progress=False)
    assert report.ok and report.ran == 12
    assert output_files(tmp_path / "ray") == output_files(tmp_path / "local")

    import ray
    assert not ray.is_initialized(), "the executor must disconnect after the job"
