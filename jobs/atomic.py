"""Crash-safe file commits.

A unit's output must either be absent or complete after a SIGKILL at any instant, so every file
is written under a temporary name in the same folder, flushed to disk, renamed over its final
name, and the folder entry itself is flushed. POSIX rename within one filesystem is atomic.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries, so a rename survives a power loss, not only a process kill."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def commit_file(staged: Path, final: Path) -> None:
    """Move a fully written file to its final name; the final name never shows partial data."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_file(staged)
    os.replace(staged, final)
    fsync_dir(final.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file (job metadata, plans) so that readers see the old or the new bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
