"""Folder comparisons and the kill of a running job, shared by the job tests."""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_when(cmd: list[str], env: dict, ready: Callable[[], bool], timeout: float) -> None:
    """Starts `cmd` and SIGKILLs it as soon as `ready()` holds (within `timeout` seconds, and
    before the command ends by itself: either failing means the test could not kill it)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"{' '.join(cmd[:4])}... ended before it could be killed"
            assert time.monotonic() < deadline, f"not ready to kill after {timeout} s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def output_files(folder: Path) -> dict[str, bytes]:
    """Every file of a job's output folder except the runtime's own state."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".longshot" not in p.relative_to(folder).parts}
