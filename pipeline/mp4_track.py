"""An MP4's video track as a table of samples: where each compressed frame lies, and when it shows.

decord (FFmpeg's MP4 demuxer under it) reads every packet of the file when it opens it, and again
when it seeks, and keeps packets it has read: on a long video its memory grows with the file
(``tests/bench/RESULTS.md``, "Encode throughput"). The sample table in the ``moov`` box says the
same things without reading the media data: each sample's byte range, decode time, composition
offset and whether it is a keyframe. :mod:`pipeline.mp4_excerpt` uses it to hand decord small
MP4 files holding only the samples that a window of planned frames needs.

Only what an excerpt needs is parsed; a file this module can't describe exactly (fragmented MP4,
several video tracks, an edit list that hides frames, a codec without length-prefixed NAL units)
raises :class:`NoSampleTable`, and the caller decodes the whole file with decord instead.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from pipeline.container import HEAD_BYTES, child_box, child_boxes, sniff_kind, top_box_at

_NAL_CODECS = {b"avc1": ("h264", b"avcC", 4), b"avc3": ("h264", b"avcC", 4),
               b"hvc1": ("hevc", b"hvcC", 21), b"hev1": ("hevc", b"hvcC", 21)}
_VISUAL_SAMPLE_ENTRY_HEADER = 78  # bytes between a visual sample entry's box header and its children
_MAX_MOOV_BYTES = 256 << 20


class NoSampleTable(Exception):
    """The file is not an MP4 whose video track this module can describe exactly (the reason)."""


@dataclass(frozen=True)
class VideoTrack:
    """One video track's samples in decode order (the order they are stored and decoded in).

    ``stsd`` is the track's sample description box, copied verbatim into excerpts so that the
    decoder gets the same parameter sets. ``pts`` are presentation times in ``timescale`` units.
    """

    codec: str
    timescale: int
    width: int
    height: int
    stsd: bytes
    nal_length_size: int
    offsets: np.ndarray  # int64 byte offset of each sample in the file
    sizes: np.ndarray  # int64
    dts: np.ndarray  # int64 decode times
    pts: np.ndarray  # int64 presentation times (dts + composition offset)
    sync: np.ndarray  # bool, True for keyframes

    def __len__(self) -> int:
        return len(self.sizes)

    def presentation_order(self) -> np.ndarray:
        """Decode indices sorted by presentation time: entry i is the sample shown as frame i."""
        return np.argsort(self.pts, kind="stable")


def read_video_track(path) -> VideoTrack:
    """The sample table of the only video track of the MP4 at ``path``; raises :class:`NoSampleTable`."""
    path = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if sniff_kind(f.read(HEAD_BYTES)) != "mp4":
            raise NoSampleTable("not an MP4 file")
        moov = _read_moov(f, size)
    tracks = [(p, e) for kind, p, e in child_boxes(moov, 0, len(moov))
              if kind == b"trak" and _handler(moov, p, e) == b"vide"]
    if len(tracks) != 1:
        raise NoSampleTable(f"{len(tracks)} video tracks")
    if child_box(moov, 0, len(moov), b"mvex"):
        raise NoSampleTable("fragmented MP4")
    return _parse_track(moov, *tracks[0], size)


def _read_moov(f, size: int) -> bytes:
    pos = 0
    while pos < size:
        box = top_box_at(f, pos, size)
        if box is None:
            break
        kind, payload, end = box
        if kind == b"moov":
            if end - payload > _MAX_MOOV_BYTES:
                raise NoSampleTable("moov box too large")
            f.seek(payload)
            return f.read(end - payload)
        pos = end
    raise NoSampleTable("no complete moov box")


def _handler(buf: bytes, start: int, end: int) -> bytes | None:
    mdia = child_box(buf, start, end, b"mdia")
    hdlr = mdia and child_box(buf, *mdia, b"hdlr")
    return buf[hdlr[0] + 8 : hdlr[0] + 12] if hdlr else None


def _parse_track(moov: bytes, start: int, end: int, file_size: int) -> VideoTrack:
    def need(box, *path):
        where = box
        for kind in path:
            where = where and child_box(moov, *where, kind)
        if not where:
            raise NoSampleTable(f"no {'/'.join(k.decode() for k in path)} box")
        return where

    trak = (start, end)
    mdia = need(trak, b"mdia")
    stbl = need(mdia, b"minf", b"stbl")
    timescale = _timescale(moov, need(mdia, b"mdhd"))
    stsd = need(stbl, b"stsd")
    codec, nal_length_size, width, height = _sample_entry(moov, *stsd)

    sizes = _sample_sizes(moov, need(stbl, b"stsz"))
    n = len(sizes)
    if n == 0:
        raise NoSampleTable("no samples in the moov box")
    chunk_offsets = _chunk_offsets(moov, stbl)
    offsets = _sample_offsets(_u32_rows(moov, need(stbl, b"stsc"), 3), chunk_offsets, sizes)
    if offsets[0] < 0 or int((offsets + sizes).max()) > file_size:
        raise NoSampleTable("samples lie outside the file (truncated?)")
    dts = _expand_runs(_u32_rows(moov, need(stbl, b"stts"), 2), n, "stts").astype(np.int64)
    dts = np.concatenate([[0], np.cumsum(dts[:-1])])
    ctts = child_box(moov, *stbl, b"ctts")
    offsets_ct = (_expand_runs(_u32_rows(moov, ctts, 2), n, "ctts").astype(np.uint32).view(np.int32)
                  if ctts else np.zeros(n, np.int32))
    pts = dts + offsets_ct.astype(np.int64)
    stss = child_box(moov, *stbl, b"stss")
    sync = np.ones(n, bool)
    if stss:
        numbers = _u32_rows(moov, stss, 1)[:, 0].astype(np.int64) - 1
        if numbers.size and (numbers.min() < 0 or numbers.max() >= n):
            raise NoSampleTable("stss names a sample that does not exist")
        sync[:] = False
        sync[numbers] = True
    _check_edit_list(moov, trak, pts)
    return VideoTrack(codec, timescale, width, height, moov[stsd[0] - 8 : stsd[1]], nal_length_size,
                      offsets, sizes, dts, pts, sync)


def _full_box_body(buf: bytes, box) -> tuple[int, int]:
    """(version, body start) of a full box: its payload starts with version (1) and flags (3)."""
    return buf[box[0]], box[0] + 4


def _timescale(buf: bytes, mdhd) -> int:
    version, body = _full_box_body(buf, mdhd)
    timescale = struct.unpack_from(">I", buf, body + (16 if version == 1 else 8))[0]
    if timescale == 0:
        raise NoSampleTable("mdhd timescale is 0")
    return timescale


def _sample_entry(buf: bytes, start: int, end: int) -> tuple[str, int, int, int]:
    entries = list(child_boxes(buf, start + 8, end))  # after version+flags and entry_count
    if len(entries) != 1:
        raise NoSampleTable(f"{len(entries)} sample descriptions")
    fourcc, payload, entry_end = entries[0]
    if fourcc not in _NAL_CODECS:
        raise NoSampleTable(f"codec {fourcc.decode('latin-1')!r} is not H.264 or HEVC")
    codec, config_kind, length_byte = _NAL_CODECS[fourcc]
    width, height = struct.unpack_from(">HH", buf, payload + 24)
    config = child_box(buf, payload + _VISUAL_SAMPLE_ENTRY_HEADER, entry_end, config_kind)
    if not config or config[1] - config[0] <= length_byte:
        raise NoSampleTable(f"no {config_kind.decode()} decoder configuration")
    return codec, (buf[config[0] + length_byte] & 3) + 1, width, height


def _u32_rows(buf: bytes, box, columns: int) -> np.ndarray:
    """The entry table of a full box made of a u32 entry count and rows of u32 columns."""
    _, body = _full_box_body(buf, box)
    count = struct.unpack_from(">I", buf, body)[0]
    if body + 4 + count * 4 * columns > box[1]:
        raise NoSampleTable("sample table box shorter than its entry count")
    return np.frombuffer(buf, ">u4", count * columns, body + 4).reshape(count, columns).astype(np.int64)


def _expand_runs(rows: np.ndarray, n: int, name: str) -> np.ndarray:
    """(count, value) runs to one value per sample."""
    values = np.repeat(rows[:, 1], rows[:, 0])
    if len(values) != n:
        raise NoSampleTable(f"{name} describes {len(values)} samples, stsz {n}")
    return values


def _sample_sizes(buf: bytes, stsz) -> np.ndarray:
    _, body = _full_box_body(buf, stsz)
    uniform, count = struct.unpack_from(">II", buf, body)
    if uniform:
        return np.full(count, uniform, np.int64)
    if body + 8 + 4 * count > stsz[1]:
        raise NoSampleTable("stsz shorter than its sample count")
    return np.frombuffer(buf, ">u4", count, body + 8).astype(np.int64)


def _chunk_offsets(buf: bytes, stbl) -> np.ndarray:
    stco = child_box(buf, *stbl, b"stco")
    if stco:
        return _u32_rows(buf, stco, 1)[:, 0]
    co64 = child_box(buf, *stbl, b"co64")
    if not co64:
        raise NoSampleTable("no stco or co64 box")
    _, body = _full_box_body(buf, co64)
    count = struct.unpack_from(">I", buf, body)[0]
    if body + 4 + 8 * count > co64[1]:
        raise NoSampleTable("co64 shorter than its entry count")
    return np.frombuffer(buf, ">u8", count, body + 4).astype(np.int64)


def _sample_offsets(stsc: np.ndarray, chunk_offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each sample's byte offset: samples fill chunks in order, as stsc's runs say."""
    n_chunks = len(chunk_offsets)
    first = stsc[:, 0] - 1
    if len(first) == 0 or first[0] != 0 or np.any(np.diff(first) <= 0) or first[-1] >= n_chunks:
        raise NoSampleTable("stsc does not describe the chunks")
    per_chunk = np.repeat(stsc[:, 1], np.diff(np.append(first, n_chunks)))
    if int(per_chunk.sum()) != len(sizes):
        raise NoSampleTable(f"stsc places {int(per_chunk.sum())} samples, stsz has {len(sizes)}")
    chunk_of = np.repeat(np.arange(n_chunks), per_chunk)
    before = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # bytes of all earlier samples
    chunk_start = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])  # first sample of each chunk
    return chunk_offsets[chunk_of] + before - before[chunk_start[chunk_of]]


def _check_edit_list(buf: bytes, trak, pts: np.ndarray) -> None:
    """Refuse edit lists that hide or repeat frames: decord would number frames differently.

    Remuxers write one edit starting at the first frame's composition offset (hiding nothing),
    optionally after an empty edit that delays the track; both are fine.
    """
    elst = child_box(buf, *trak, b"edts")
    elst = elst and child_box(buf, *elst, b"elst")
    if not elst:
        return
    version, body = _full_box_body(buf, elst)
    count = struct.unpack_from(">I", buf, body)[0]
    row = 20 if version == 1 else 12
    fmt = ">Qq" if version == 1 else ">Ii"
    media = [struct.unpack_from(fmt, buf, body + 4 + i * row)[1] for i in range(count)]
    real = [m for m in media if m != -1]
    if len(real) > 1 or (real and real[0] > int(pts.min())):
        raise NoSampleTable("edit list hides or repeats frames")
