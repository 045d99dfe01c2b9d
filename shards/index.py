"""The Parquet index beside each shard: one row per sample, in tar order.

It holds every member's data offset, size and crc32, so readers seek straight to a member
and check it, and the per-sample numbers that later stages select and pack by (token counts,
duration, size) without opening the tar. ``frames_codec`` names each sample's frames codec (and
so its frames member's name); indexes written before it existed read back as ``zstd``.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shards.errors import CorruptShard, InvalidSample
from shards.format import DEFAULT_FRAME_CODEC, FORMAT_VERSION, MEMBERS

TOKEN_FIELDS = ("vision_tokens", "text_tokens")
# Per-sample fields beside the token counts. ``duration_s`` and ``id`` come from the metadata
# when present (null otherwise); ShardWriter fills ``n_frames``, ``height`` and ``width`` from
# the frames it wrote (checked against the metadata's values when those are given).
OPTIONAL_INT_FIELDS = ("n_frames", "height", "width")
OPTIONAL_FIELDS = (*OPTIONAL_INT_FIELDS, "duration_s", "id")

INDEX_SCHEMA = pa.schema(
    [pa.field("key", pa.string(), nullable=False)]
    + [
        pa.field(f"{member}_{part}", pa.int64(), nullable=False)
        for member in MEMBERS
        for part in ("offset", "size", "crc32")
    ]
    + [pa.field(name, pa.int64(), nullable=False) for name in (*TOKEN_FIELDS, "tokens")]
    + [pa.field(name, pa.int64()) for name in OPTIONAL_INT_FIELDS]
    + [pa.field("duration_s", pa.float64()), pa.field("id", pa.string())]
    + [pa.field("frames_codec", pa.string(), nullable=False)],
    metadata={"longshot.shard_format": str(FORMAT_VERSION)},
)


@dataclass(frozen=True)
class MemberLocation:
    """Where one member's data lies in the tar (after its header) and its crc32."""

    offset: int
    size: int
    crc32: int


@dataclass(frozen=True)
class SampleEntry:
    """One index row: what ``ShardWriter.add`` returns for a written sample."""

    key: str
    members: dict[str, MemberLocation]
    vision_tokens: int
    text_tokens: int
    n_frames: int | None = None
    height: int | None = None
    width: int | None = None
    duration_s: float | None = None
    id: str | None = None
    frames_codec: str = DEFAULT_FRAME_CODEC

    @property
    def tokens(self) -> int:
        return self.vision_tokens + self.text_tokens

    def row(self) -> dict:
        row: dict = {"key": self.key}
        for member in MEMBERS:
            loc = self.members[member]
            row.update(
                {f"{member}_offset": loc.offset, f"{member}_size": loc.size, f"{member}_crc32": loc.crc32}
            )
        row.update(vision_tokens=self.vision_tokens, text_tokens=self.text_tokens, tokens=self.tokens)
        row.update({name: getattr(self, name) for name in OPTIONAL_FIELDS})
        row["frames_codec"] = self.frames_codec
        return row


def index_fields_from_meta(meta: dict, what: str) -> dict:
    """The index's per-sample fields found in a sample's metadata, type-checked.

    Token counts default to 0; the optional fields default to None. ``what`` names the sample
    in error messages.
    """
    fields: dict = {}
    for name in TOKEN_FIELDS:
        fields[name] = _int_field(meta, name, what, default=0)
    for name in OPTIONAL_INT_FIELDS:
        fields[name] = _int_field(meta, name, what, default=None)
    duration = meta.get("duration_s")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration >= 0:
            raise InvalidSample(f"{what}: meta 'duration_s' must be a number >= 0, got {duration!r}")
        duration = float(duration)
    fields["duration_s"] = duration
    sample_id = meta.get("id")
    if sample_id is not None and not isinstance(sample_id, str):
        raise InvalidSample(
            f"{what}: meta 'id' must be a string, got {type(sample_id).__name__} {sample_id!r}"
        )
    fields["id"] = sample_id
    return fields


def _int_field(meta: dict, name: str, what: str, default: int | None) -> int | None:
    value = meta.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSample(f"{what}: meta {name!r} must be an int >= 0, got {value!r}")
    return value


def build_index_table(entries: list[SampleEntry]) -> pa.Table:
    return pa.Table.from_pylist([entry.row() for entry in entries], schema=INDEX_SCHEMA)


def write_index(path: str | Path, table: pa.Table) -> None:
    """Write the index deterministically (same rows, same bytes) and fsync it."""
    with open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", write_statistics=True)
        f.flush()
        os.fsync(f.fileno())


def read_index(path: str | Path) -> pa.Table:
    """Read a shard index and check it has the index schema; errors name the file."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise CorruptShard(f"{path}: cannot read shard index: {e}") from e
    if "frames_codec" not in table.column_names:  # format 1: every sample's frames were zstd
        table = table.append_column("frames_codec", pa.array([DEFAULT_FRAME_CODEC] * table.num_rows, pa.string()))
    missing = [f.name for f in INDEX_SCHEMA if f.name not in table.column_names]
    if missing:
        raise CorruptShard(f"{path}: shard index lacks column(s) {missing}")
    table = table.select(INDEX_SCHEMA.names)
    try:
        return table.cast(INDEX_SCHEMA)
    except (pa.ArrowException, ValueError) as e:
        raise CorruptShard(f"{path}: shard index columns have wrong types: {e}") from e
