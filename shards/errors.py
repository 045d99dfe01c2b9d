"""Exceptions raised by the shard package.

Every error message names the input it is about (shard path, sample key, member) and the
reason, so that a failure deep in an encode or train job can be traced to one file without a
debugger. ``ShardError`` is the common base so callers can catch everything from this package.
"""


class ShardError(Exception):
    """Base class for every error raised by ``shards``."""


class InvalidKey(ShardError, ValueError):
    """A sample key breaks the key rule (it would be split or escape into a path)."""


class DuplicateKey(ShardError, ValueError):
    """A key appears twice in one shard or in one dataset."""


class InvalidSample(ShardError, ValueError):
    """The caller passed frames, text or metadata that cannot be stored."""


class ChecksumError(ShardError):
    """A member's bytes do not match the crc32 recorded in the shard index."""


class CorruptShard(ShardError):
    """A shard, its index or a member cannot be parsed (truncated, wrong schema, bad data)."""


class SampleNotFound(ShardError, KeyError):
    """The key is not in the shard or dataset."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""
