"""The shard format of longshot: writer, random-access reader, index, manifest, verify, statistics.

See DESIGN.md ("Shards") and ``shards.format`` for the layout. This package depends on no other
longshot package.
"""

from shards.errors import (
    ChecksumError,
    CorruptShard,
    DuplicateKey,
    InvalidKey,
    InvalidSample,
    SampleNotFound,
    ShardError,
)
from shards.format import validate_key
from shards.index import MemberLocation, SampleEntry
from shards.manifest import ShardSummary, read_manifest, summarize_shard, write_manifest
from shards.reader import DatasetReader, Sample, ShardReader
from shards.stats import DatasetStats, Section, compute_stats, format_table, write_stats
from shards.verify import VerifyReport, format_report, verify_dataset
from shards.writer import ShardWriter

__all__ = [
    "ChecksumError",
    "CorruptShard",
    "DatasetReader",
    "DatasetStats",
    "DuplicateKey",
    "InvalidKey",
    "InvalidSample",
    "MemberLocation",
    "Sample",
    "SampleEntry",
    "SampleNotFound",
    "Section",
    "ShardError",
    "ShardReader",
    "ShardSummary",
    "ShardWriter",
    "VerifyReport",
    "compute_stats",
    "format_report",
    "format_table",
    "read_manifest",
    "summarize_shard",
    "validate_key",
    "verify_dataset",
    "write_manifest",
    "write_stats",
]
