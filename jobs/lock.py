"""One run per output folder at a time.

The lock is an flock on a file inside the folder: the kernel drops it when its holder dies, even by
SIGKILL, so a crashed run can never leave the folder stuck. The file also records who holds it
(pid, host, start time), so a refusal can say which run is in the way, and a lock left behind by a
dead holder is reported as taken over rather than silently reused.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class FolderLocked(RuntimeError):
    """Another live run holds this folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / ".longshot" / "lock"
        self._fd: int | None = None
        self.took_over_from: dict | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder() or {}
            raise FolderLocked(
                f"{self.folder} is in use by another run (pid {h.get('pid', '?')} on "
                f"{h.get('host', '?')}, started {time.ctime(h.get('started', 0))}). "
                "Wait for it to finish, or stop it; a killed run releases the folder by itself."
            ) from None
        previous = self.holder()
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            if not same_host or not _pid_alive(previous["pid"]):
                self.took_over_from = previous
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.time()}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def is_held_by_other(self) -> bool:
        """For `status`: probe without taking the lock for longer than an instant."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases an flock we may have taken
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
