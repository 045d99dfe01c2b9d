"""``ShardWriter``: streams samples into one shard tar and writes its Parquet index on close.

Frames arrive as an iterator of small windows of a long video; they go through the shard's
frame codec (zstd, or JPEG per frame; ``shards.frame_codecs``) straight into the tar, so memory does not grow with video length. The tar header
of the frames member is written with a placeholder size and patched once the compressed size
is known.

``add`` is all or nothing: if the frames iterator raises (a decode error mid-video) or a chunk
is invalid, the tar is cut back to where the sample began and the writer stays usable, so an
encode job can record the error and go on with the next video.

The writer writes exactly the paths it is given and fsyncs them; giving temporary paths and
renaming them into place is the job runtime's business.
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import numpy as np

from shards.checksums import crc32, sha256_file
from shards.errors import DuplicateKey, InvalidSample, ShardError
from shards.format import (
    FRAMES,
    JSON,
    TEXT,
    archive_end,
    member_header,
    member_name,
    name_from_path,
    padding,
    validate_key,
    validate_shard_name,
)
from shards.frame_codecs import FrameCodec
from shards.index import MemberLocation, SampleEntry, build_index_table, index_fields_from_meta, write_index
from shards.manifest import ShardSummary
from shards.meta_codec import FRAMES_FIELD, TEXT_TOKENS_FIELD, encode_meta, normalize_meta
from shards.text_codec import encode_text


class ShardWriter:
    """Writes one shard. Use as a context manager; ``close()`` returns the ``ShardSummary``.

    ``name`` is the shard's name in the dataset manifest; by default the tar file name up to
    its first dot (``shard-000003.tar.tmp`` -> ``shard-000003``).
    On an exception inside the ``with`` block the writer aborts: it closes and deletes the
    partial tar (no index is written), since a shard without its index is unusable.
    """

    def __init__(
        self,
        tar_path: str | Path,
        index_path: str | Path,
        *,
        zstd_level: int = 3,
        frame_delta: bool = False,
        frame_codec: str = "zstd",
        jpeg_quality: int | None = None,
        name: str | None = None,
    ):
        self.tar_path = Path(tar_path)
        self.index_path = Path(index_path)
        options = {} if jpeg_quality is None else {"jpeg_quality": jpeg_quality}
        self.codec = FrameCodec(frame_codec, zstd_level=zstd_level, frame_delta=bool(frame_delta), **options)
        self.name = validate_shard_name(name if name is not None else name_from_path(self.tar_path))
        self._entries: list[SampleEntry] = []
        self._keys: set[str] = set()
        self._summary: ShardSummary | None = None
        self._broken: str | None = None
        self._file = open(self.tar_path, "wb")  # noqa: SIM115 (open across add() calls; closed by close/abort)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def entries(self) -> list[SampleEntry]:
        return list(self._entries)

    @property
    def samples(self) -> int:
        return len(self._entries)

    @property
    def bytes_written(self) -> int:
        """Size of the tar so far (for deciding when to start the next shard)."""
        if self._summary is not None:
            return self._summary.bytes
        return 0 if self._file.closed else self._file.tell()

    def add(
        self, key: str, meta: dict, frame_chunks: Iterable[np.ndarray], text_ids: np.ndarray
    ) -> SampleEntry:
        """Append one sample. ``frame_chunks`` yields (n, H, W, 3) uint8 arrays; n may vary."""
        self._check_writable()
        validate_key(key)
        what = f"{self.tar_path}: sample {key!r}"
        if key in self._keys:
            raise DuplicateKey(f"{what}: key is already in this shard")
        stored_meta = normalize_meta(meta, what)
        text_bytes, text_tokens = encode_text(text_ids, what)
        fields = self._index_fields(stored_meta, text_tokens, what)

        start = self._file.tell()
        try:
            frames_name = member_name(key, FRAMES, self.codec.name)
            frames_loc, info = self._write_frames(frames_name, frame_chunks, what)
            fields.update(_frame_shape_fields(stored_meta, info.shape, what))
            stored_meta[FRAMES_FIELD] = info.to_json()
            stored_meta[TEXT_TOKENS_FIELD] = text_tokens
            json_loc = self._write_member(member_name(key, JSON), encode_meta(stored_meta, what))
            text_loc = self._write_member(member_name(key, TEXT), text_bytes)
        except BaseException:
            self._roll_back(start)
            raise
        members = {FRAMES: frames_loc, JSON: json_loc, TEXT: text_loc}
        entry = SampleEntry(key=key, members=members, frames_codec=self.codec.name, **fields)
        self._entries.append(entry)
        self._keys.add(key)
        return entry

    def close(self) -> ShardSummary:
        """Finish the tar, write the index, fsync both; returns the summary (idempotent)."""
        if self._summary is not None:
            return self._summary
        self._check_writable()
        self._file.write(archive_end(self._file.tell()))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        write_index(self.index_path, build_index_table(self._entries))
        self._summary = ShardSummary(
            name=self.name,
            tar_path=self.tar_path,
            index_path=self.index_path,
            samples=len(self._entries),
            tokens=sum(entry.tokens for entry in self._entries),
            bytes=self.tar_path.stat().st_size,
            tar_sha256=sha256_file(self.tar_path),
            index_sha256=sha256_file(self.index_path),
        )
        return self._summary

    def abort(self) -> None:
        """Close without finishing and delete the partial files."""
        if self._summary is not None:
            return
        self._broken = self._broken or "aborted"
        if not self._file.closed:
            self._file.close()
        for path in (self.tar_path, self.index_path):
            path.unlink(missing_ok=True)

    def _check_writable(self) -> None:
        if self._broken:
            raise ShardError(f"{self.tar_path}: shard writer cannot continue: {self._broken}")
        if self._summary is not None or self._file.closed:
            raise ShardError(f"{self.tar_path}: shard writer is closed")

    @staticmethod
    def _index_fields(stored_meta: dict, text_tokens: int, what: str) -> dict:
        if FRAMES_FIELD in stored_meta:
            raise InvalidSample(
                f"{what}: meta may not set {FRAMES_FIELD!r}; the writer records the frames there"
            )
        given = stored_meta.get(TEXT_TOKENS_FIELD, text_tokens)
        if given != text_tokens:
            raise InvalidSample(
                f"{what}: meta {TEXT_TOKENS_FIELD!r} is {given!r} but text_ids has {text_tokens} ids"
            )
        fields = index_fields_from_meta({**stored_meta, TEXT_TOKENS_FIELD: text_tokens}, what)
        total = fields["vision_tokens"] + fields["text_tokens"]
        if stored_meta.get("tokens", total) != total:
            raise InvalidSample(
                f"{what}: meta 'tokens' is {stored_meta['tokens']!r} but vision_tokens + text_tokens = {total}"
            )
        return fields

    def _write_member(self, name: str, data: bytes) -> MemberLocation:
        self._file.write(member_header(name, len(data)))
        offset = self._file.tell()
        self._file.write(data)
        self._file.write(padding(len(data)))
        return MemberLocation(offset=offset, size=len(data), crc32=crc32(data))

    def _write_frames(self, name: str, frame_chunks: Iterable[np.ndarray], what: str):
        header_pos = self._file.tell()
        placeholder = member_header(name, 0)
        self._file.write(placeholder)
        offset = self._file.tell()
        size = 0
        checksum = 0

        def write(data: bytes) -> None:
            nonlocal size, checksum
            self._file.write(data)
            size += len(data)
            checksum = crc32(data, checksum)

        encoder = self.codec.encoder(write, what)
        for chunk in frame_chunks:
            encoder.add(chunk)
        info = encoder.finish()
        self._file.write(padding(size))
        end = self._file.tell()
        header = member_header(name, size)
        if len(header) != len(placeholder):  # member_header promises a size-independent length
            raise AssertionError(
                f"{what}: tar header length changed from {len(placeholder)} to {len(header)}"
            )
        self._file.seek(header_pos)
        self._file.write(header)
        self._file.seek(end)
        return MemberLocation(offset=offset, size=size, crc32=checksum), info

    def _roll_back(self, start: int) -> None:
        try:
            self._file.seek(start)
            self._file.truncate()
        except OSError as e:
            self._broken = f"could not roll back a failed sample: {e}"


def _frame_shape_fields(meta: dict, shape: tuple[int, int, int, int], what: str) -> dict:
    """``n_frames``, ``height``, ``width`` for the index: the frames as written.

    Metadata may state them (the planned values); if it does they must agree with the frames.
    """
    actual = dict(zip(("n_frames", "height", "width"), shape[:3], strict=True))
    for name, value in actual.items():
        if meta.get(name, value) != value:
            raise InvalidSample(
                f"{what}: meta {name!r} is {meta[name]!r} but the frames written have {name} {value}"
            )
    return actual
