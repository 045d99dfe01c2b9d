"""Random access to samples of one shard (``ShardReader``) or a dataset folder (``DatasetReader``).

Readers never scan a tar: the Parquet index gives every member's offset, size and crc32, and
each member read checks its crc32 (``ChecksumError`` names shard, key and member). Frames are
decoded in a stream, so checking a multi-gigabyte member needs no second copy of it, by the
codec each sample records (``shards.frame_codecs``: zstd, JPEG).

Files are read with ``os.pread``; a reader can be shared by threads and pickled into
DataLoader workers (the file descriptor is reopened lazily on the other side).
"""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa

from shards.errors import ChecksumError, CorruptShard, DuplicateKey, SampleNotFound
from shards.format import (
    FRAMES,
    JSON,
    MANIFEST_FILE,
    MEMBERS,
    SHARD_PREFIX,
    SHARDS_DIR,
    TAR_SUFFIX,
    TEXT,
    index_path_for,
    member_name,
    name_from_path,
)
from shards.frame_codecs import AnyFramesInfo, decode_any, frames_info_from_json
from shards.index import INDEX_SCHEMA, MemberLocation, read_index
from shards.manifest import read_manifest
from shards.meta_codec import FRAMES_FIELD, decode_meta
from shards.ranges import RangeReader
from shards.text_codec import decode_text

_DECODE_CHUNK_BYTES = 64 << 20  # frames decoded per step when filling a whole array


@dataclass(frozen=True)
class Sample:
    key: str
    meta: dict
    frames: np.ndarray  # (T, H, W, 3) uint8
    text: np.ndarray  # (n,) int32


class ShardReader:
    """One shard tar and the index beside it."""

    def __init__(self, tar_path: str | Path):
        self.tar_path = Path(tar_path)
        self.index_path = index_path_for(self.tar_path)
        self.name = name_from_path(self.tar_path)
        if not self.tar_path.is_file():
            raise FileNotFoundError(f"{self.tar_path}: shard tar not found")
        try:
            self.index: pa.Table = read_index(self.index_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.index_path}: index of shard {self.tar_path} not found") from e
        self._keys: list[str] = self.index["key"].to_pylist()
        self._rows = {key: row for row, key in enumerate(self._keys)}
        if len(self._rows) != len(self._keys):
            dupes = sorted({k for k in self._keys if self._keys.count(k) > 1})
            raise CorruptShard(f"{self.index_path}: keys {dupes[:5]} appear more than once in the index")
        self._columns = {
            member: tuple(self.index[f"{member}_{part}"].to_numpy() for part in ("offset", "size", "crc32"))
            for member in MEMBERS
        }
        self._codecs: list[str] = self.index["frames_codec"].to_pylist()
        self._fd: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: __init__ failed early
            self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        return state

    # -- lookup ----------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def location(self, key: str, member: str) -> MemberLocation:
        """Offset, size and crc32 of one member (``frames``, ``json`` or ``text``) from the index."""
        offsets, sizes, crcs = self._columns[member]
        row = self._row(key)
        return MemberLocation(offset=int(offsets[row]), size=int(sizes[row]), crc32=int(crcs[row]))

    # -- reads -----------------------------------------------------------------------------
    def read_member(self, key: str, member: str) -> bytes:
        """Raw bytes of one member, crc32-checked."""
        loc = self.location(key, member)
        reader = RangeReader(self._file(), loc.offset, loc.size, self._what(key, member))
        data = reader.read()
        self._check_crc(reader, key, member, loc)
        return data

    def read_meta(self, key: str) -> dict:
        return decode_meta(self.read_member(key, JSON), self._what(key, JSON))

    def read_text(self, key: str) -> np.ndarray:
        return decode_text(self.read_member(key, TEXT), self._what(key, TEXT))

    def frames_codec(self, key: str) -> str:
        """The frame codec of sample ``key``, from the index."""
        return self._codecs[self._row(key)]

    def member_name(self, key: str, member: str) -> str:
        """Tar member name of one member of sample ``key`` (the frames member's depends on its codec)."""
        return member_name(key, member, self.frames_codec(key))

    def frames_info(self, key: str) -> AnyFramesInfo:
        return self._frames_info(key, self.read_meta(key))

    def compressed_frames(self, key: str) -> tuple[AnyFramesInfo, bytes]:
        """The frames member as stored (crc32-checked) and its metadata: for decoding elsewhere (a GPU)."""
        return self.frames_info(key), self.read_member(key, FRAMES)

    def read_frames(self, key: str) -> np.ndarray:
        """All frames, (T, H, W, 3) uint8, with frame delta undone."""
        return self._decode_all(key, self.frames_info(key))

    def iter_frame_chunks(self, key: str, chunk_frames: int = 8) -> Iterator[np.ndarray]:
        """Frames in chunks of up to ``chunk_frames``; memory stays one chunk whatever T is.

        The crc32 of the member is checked before the last chunk is yielded.
        """
        return self._decode(key, self.frames_info(key), chunk_frames=chunk_frames, out=None)

    def read(self, key: str) -> Sample:
        meta = self.read_meta(key)
        info = self._frames_info(key, meta)
        return Sample(key=key, meta=meta, frames=self._decode_all(key, info), text=self.read_text(key))

    # -- internals -------------------------------------------------------------------------
    def _frames_info(self, key: str, meta: dict) -> AnyFramesInfo:
        info = frames_info_from_json(meta.get(FRAMES_FIELD), self._what(key, JSON))
        if info.codec != self.frames_codec(key):
            raise CorruptShard(
                f"{self._what(key, JSON)}: frames codec is {info.codec}, the index says {self.frames_codec(key)}"
            )
        return info

    def _decode_all(self, key: str, info: AnyFramesInfo) -> np.ndarray:
        out = np.empty(info.shape, np.uint8)
        for _ in self._decode(
            key, info, chunk_frames=max(1, _DECODE_CHUNK_BYTES // info.frame_bytes), out=out
        ):
            pass
        return out

    def _decode(
        self, key: str, info: AnyFramesInfo, *, chunk_frames: int, out: np.ndarray | None
    ) -> Iterator[np.ndarray]:
        loc = self.location(key, FRAMES)
        what = self._what(key, FRAMES)
        source = RangeReader(self._file(), loc.offset, loc.size, what)

        def check_whole_member() -> None:
            source.drain()
            self._check_crc(source, key, FRAMES, loc)

        try:
            yield from decode_any(
                source, info, what=what, chunk_frames=chunk_frames, out=out, on_end=check_whole_member
            )
        except CorruptShard:
            # Damaged data usually trips the decoder before the end; report it as the checksum failure it is.
            source.drain()
            self._check_crc(source, key, FRAMES, loc)
            raise

    def _check_crc(self, reader: RangeReader, key: str, member: str, loc: MemberLocation) -> None:
        if reader.crc32 != loc.crc32:
            raise ChecksumError(
                f"{self.tar_path}: sample {key!r} member {self.member_name(key, member)!r}: crc32 {reader.crc32:08x} "
                f"does not match {loc.crc32:08x} in the index"
            )

    def _row(self, key: str) -> int:
        try:
            return self._rows[key]
        except KeyError:
            raise SampleNotFound(f"{self.tar_path}: no sample with key {key!r}") from None

    def _what(self, key: str, member: str) -> str:
        return f"{self.tar_path}: sample {key!r} member {self.member_name(key, member)!r}"

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.tar_path, os.O_RDONLY)
        return self._fd


def list_shards(dataset_dir: str | Path) -> list[Path]:
    """Shard tars of a dataset folder: from ``dataset.parquet`` when present, else the ``shards/`` folder."""
    dataset_dir = Path(dataset_dir)
    if (dataset_dir / MANIFEST_FILE).exists():
        return [summary.tar_path for summary in read_manifest(dataset_dir)]
    return sorted((dataset_dir / SHARDS_DIR).glob(f"{SHARD_PREFIX}*{TAR_SUFFIX}"))


class DatasetReader:
    """All shards of a dataset folder; keys must be unique across the dataset."""

    def __init__(self, dataset_dir: str | Path):
        self.dataset_dir = Path(dataset_dir)
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"{self.dataset_dir}: dataset folder not found")
        self.shards: dict[str, ShardReader] = {}
        for tar_path in list_shards(self.dataset_dir):
            shard = ShardReader(tar_path)
            self.shards[shard.name] = shard
        self._shard_of: dict[str, ShardReader] = {}
        for shard in self.shards.values():
            for key in shard.keys:
                other = self._shard_of.setdefault(key, shard)
                if other is not shard:
                    raise DuplicateKey(
                        f"{self.dataset_dir}: key {key!r} is in both {other.name} and {shard.name}"
                    )
        self._keys = [key for shard in self.shards.values() for key in shard.keys]
        self._index: pa.Table | None = None

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def index(self) -> pa.Table:
        """Every shard's index, concatenated in shard order, with a ``shard`` (name) column."""
        if self._index is None:
            tables = [
                shard.index.append_column("shard", pa.array([shard.name] * len(shard), pa.string()))
                for shard in self.shards.values()
            ]
            self._index = pa.concat_tables(tables) if tables else _empty_dataset_index()
        return self._index

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._shard_of

    def shard_for(self, key: str) -> ShardReader:
        try:
            return self._shard_of[key]
        except KeyError:
            raise SampleNotFound(f"{self.dataset_dir}: no sample with key {key!r}") from None

    def read(self, key: str) -> Sample:
        return self.shard_for(key).read(key)

    def read_meta(self, key: str) -> dict:
        return self.shard_for(key).read_meta(key)

    def read_text(self, key: str) -> np.ndarray:
        return self.shard_for(key).read_text(key)

    def read_frames(self, key: str) -> np.ndarray:
        return self.shard_for(key).read_frames(key)

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _empty_dataset_index() -> pa.Table:
    return INDEX_SCHEMA.append(pa.field("shard", pa.string())).empty_table()
