"""Positional reads of one byte range of a shard, with a running crc32.

Readers never scan a tar: the index gives each member's data offset and size, and the bytes
are read with ``os.pread``. pread does not move a shared file position, so one open file can
serve several threads and survives a fork (DataLoader workers) without locking.
"""

import os

from shards.checksums import crc32
from shards.errors import CorruptShard

READ_SIZE = 1 << 20


class RangeReader:
    """File-like ``read(n)`` over bytes [offset, offset + size) of an open file descriptor.

    Keeps the crc32 of everything read so far, so a member can be streamed (into a zstd
    decompressor) and its checksum compared at the end without a second pass. A read past
    the end of the file raises ``CorruptShard`` naming ``what`` (shard, key, member).
    """

    def __init__(self, fd: int, offset: int, size: int, what: str):
        if offset < 0 or size < 0:
            raise CorruptShard(f"{what}: negative offset {offset} or size {size} in the index")
        self._fd = fd
        self._pos = offset
        self._end = offset + size
        self.what = what
        self.crc32 = 0

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.remaining:
            n = self.remaining
        if n == 0:
            return b""
        parts = []
        want = n
        while want:
            part = os.pread(self._fd, min(want, 1 << 30), self._pos)
            if not part:
                raise CorruptShard(
                    f"{self.what}: file ends at byte {self._pos}, but the index says the member "
                    f"ends at byte {self._end} (truncated shard?)"
                )
            parts.append(part)
            self._pos += len(part)
            want -= len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.crc32 = crc32(data, self.crc32)
        return data

    def drain(self) -> None:
        """Read the rest of the range (so ``crc32`` covers the whole member)."""
        while self.remaining:
            self.read(READ_SIZE)


def read_range(fd: int, offset: int, size: int, what: str) -> tuple[bytes, int]:
    """All bytes of one range and their crc32."""
    reader = RangeReader(fd, offset, size, what)
    data = reader.read()
    return data, reader.crc32
