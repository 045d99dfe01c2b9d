"""File digests recorded in the dataset manifest (sha256) and in shard indexes (crc32)."""

import hashlib
import zlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a whole file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def crc32(data: bytes | memoryview, start: int = 0) -> int:
    """zlib crc32 as a non-negative int (stored as int64 in the index)."""
    return zlib.crc32(data, start) & 0xFFFFFFFF
