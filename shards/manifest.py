"""``DIR/dataset.parquet``: one row per shard (name, samples, tokens, bytes, sha256 of tar and index).

The manifest is what makes a dataset folder complete: readers list shards from it and
``verify`` checks every file against its digests. Rows are sorted by shard name so the same
shards always give the same file.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards.checksums import sha256_file
from shards.errors import CorruptShard, DuplicateKey
from shards.format import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    index_path_for,
    name_from_path,
    shard_tar_path,
    validate_shard_name,
)
from shards.index import read_index

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("tokens", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("tar_sha256", pa.string(), nullable=False),
        pa.field("index_sha256", pa.string(), nullable=False),
    ],
    metadata={"longshot.shard_format": str(FORMAT_VERSION)},
)


@dataclass(frozen=True)
class ShardSummary:
    """One finished shard: a manifest row plus where its files are."""

    name: str
    tar_path: Path
    index_path: Path
    samples: int
    tokens: int
    bytes: int
    tar_sha256: str
    index_sha256: str

    def row(self) -> dict:
        return {field.name: getattr(self, field.name) for field in MANIFEST_SCHEMA}


def summarize_shard(tar_path: str | Path, name: str | None = None) -> ShardSummary:
    """Summary of a shard already on disk, from its index and file digests.

    For a job that resumes after some shards were committed and needs their manifest rows.
    """
    tar_path = Path(tar_path)
    index_path = index_path_for(tar_path)
    index = read_index(index_path)
    return ShardSummary(
        name=name or name_from_path(tar_path),
        tar_path=tar_path,
        index_path=index_path,
        samples=index.num_rows,
        tokens=int(pc.sum(index["tokens"]).as_py() or 0),
        bytes=tar_path.stat().st_size,
        tar_sha256=sha256_file(tar_path),
        index_sha256=sha256_file(index_path),
    )


def write_manifest(
    dataset_dir: str | Path, summaries: list[ShardSummary], *, path: str | Path | None = None
) -> Path:
    """Write the manifest (default ``DIR/dataset.parquet``; a job may pass a temporary ``path``)."""
    ordered = sorted(summaries, key=lambda s: s.name)
    for summary in ordered:
        validate_shard_name(summary.name)
    names = [s.name for s in ordered]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DuplicateKey(f"{dataset_dir}: shard name(s) {duplicates} appear more than once in the manifest")
    path = Path(path) if path is not None else Path(dataset_dir) / MANIFEST_FILE
    table = pa.Table.from_pylist([s.row() for s in ordered], schema=MANIFEST_SCHEMA)
    with open(path, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_manifest(dataset_dir: str | Path) -> list[ShardSummary]:
    """Shards of a dataset folder, in name order, with their paths under ``DIR/shards``."""
    path = Path(dataset_dir) / MANIFEST_FILE
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: dataset manifest not found (is {dataset_dir} a finished dataset?)")
    except (pa.ArrowException, OSError) as e:
        raise CorruptShard(f"{path}: cannot read dataset manifest: {e}") from e
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in table.column_names]
    if missing:
        raise CorruptShard(f"{path}: dataset manifest lacks column(s) {missing}")
    summaries = []
    for row in table.select(MANIFEST_SCHEMA.names).to_pylist():
        try:
            validate_shard_name(row["name"])
        except ValueError as e:
            raise CorruptShard(f"{path}: {e}") from e
        tar_path = shard_tar_path(dataset_dir, row["name"])
        summaries.append(ShardSummary(tar_path=tar_path, index_path=index_path_for(tar_path), **row))
    return sorted(summaries, key=lambda s: s.name)
