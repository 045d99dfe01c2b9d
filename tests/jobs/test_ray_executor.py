"""The Ray executor joins a real cluster started with `ray start --head` on loopback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jobs.executors import RayExecutor
from jobs.runtime import run_job
from tests.jobs.helpers import output_files
from tests.jobs.sample_jobs import WriteFilesJob

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # AF_UNIX paths must stay short
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        probe = subprocess.run([RAY, "status", f"--address={address}"], env=env,
                               capture_output=True, text=True)
        if probe.returncode == 0:
            break
        if head.poll() is not None:
            pytest.fail(f"ray start failed:\n{head.stdout.read()}")
        time.sleep(1)
    else:
        pytest.fail("ray head did not come up within 90 s")
    yield address
    os.killpg(head.pid, signal.SIGTERM)  # --block tears the cluster down on SIGTERM
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_executor_joins_cluster_and_matches_inprocess(tmp_path, ray_head):
    cfg = {"units": 12, "seed": 11}
    run_job(WriteFilesJob(cfg), tmp_path / "local", progress=False)

    report = run_job(WriteFilesJob(cfg), tmp_path / "ray", RayExecutor(address=ray_head),
                     progress=False)
    assert report.ok and report.ran == 12
    assert output_files(tmp_path / "ray") == output_files(tmp_path / "local")

    import ray
    assert not ray.is_initialized(), "the executor must disconnect after the job"
