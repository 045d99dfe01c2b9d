"""Small MP4 files holding only the samples that some planned frames need, for decord to decode.

No longer on the decode path: decoding moved to PyAV (:mod:`pipeline.decode`), which streams
packets and keeps no copy of them, so the memory problem below is gone there. ``mp4_header``
serves :mod:`pipeline.mp4_loop`; ``ExcerptPlan`` stays, tested, for decord-based tools.

Why: decord reads and keeps packets in proportion to the whole file (it reads the file when it
opens it and again at each seek), so decoding an hour-long video through one reader costs memory
that grows with the video. An excerpt is a stand-alone MP4 of a few GOPs, built in memory from
the sample table (:mod:`pipeline.mp4_track`) with the stream copied byte for byte, so decord's
memory is bounded by the excerpt, whatever the video's length.

An excerpt also leaves out what nothing needs, which a reader of the whole file must decode:

* the samples of a GOP after the last one a wanted frame depends on, and whole GOPs without
  wanted frames;
* H.264 samples that no other picture references (``nal_ref_idc`` 0 in every slice, typically
  most B-frames) unless they are wanted themselves. Leaving them out changes no other picture:
  that is what "non-reference" means, and why H.264 keeps ``frame_num`` gap-free without them.

This is exact only when every GOP decodes on its own: each keyframe starts a closed GOP (an H.264
IDR picture; for HEVC, an IRAP picture with no leading pictures from the previous GOP, which
HEVC's rules then make independent). Otherwise :func:`excerpts` raises
:class:`~pipeline.mp4_track.NoSampleTable` before yielding anything and the caller decodes the
whole file. Frame numbers are presentation order, as decord numbers them; the tests check that
excerpts decode to exactly the frames decord gives for the whole file.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.mp4_track import NoSampleTable, VideoTrack

DEFAULT_EXCERPT_BYTES = 8 << 20  # media bytes per excerpt: bounds decord's memory per reader

_H264_IDR = 5
_HEVC_IRAP = range(16, 24)


@dataclass(frozen=True)
class Excerpt:
    """An MP4 file's bytes, and for each requested frame it serves, that frame's number in it."""

    data: bytes
    frames: list[int]  # local frame numbers (presentation order), one per requested frame
    samples: int  # samples stored in the excerpt


class ExcerptPlan:
    """Checks, before anything is decoded, that excerpts of ``track`` serve ``frame_indices``
    exactly (raises :class:`~pipeline.mp4_track.NoSampleTable` if not); then builds them."""

    def __init__(self, f, track: VideoTrack, frame_indices: Sequence[int]):
        layout = _GopLayout(track)
        indices = np.asarray(frame_indices, dtype=np.int64)
        if indices.size and (indices[0] < 0 or indices[-1] >= len(track)):
            raise ValueError(f"frame index out of range 0..{len(track) - 1}")
        decode_idx = layout.order[indices]
        gops = np.searchsorted(layout.starts, decode_idx, side="right") - 1
        gop_ids, firsts = np.unique(gops, return_index=True)
        self._f, self._track = f, track
        self._starts = layout.starts[gop_ids]
        self._wanted = np.split(decode_idx, firsts[1:]) if indices.size else []
        _check_keyframes(f, track, self._starts)

    def excerpts(self, max_bytes: int = DEFAULT_EXCERPT_BYTES) -> Iterator[Excerpt]:
        """Excerpts serving the requested frames in order; GOPs are added to an excerpt until its
        media reaches ``max_bytes`` (a GOP is never split)."""
        pending: list[_GopPart] = []
        pending_bytes = 0
        for start, wanted in zip(self._starts, self._wanted):
            part = _gop_part(self._f, self._track, int(start), wanted)
            pending.append(part)
            pending_bytes += sum(len(b) for b in part.media)
            if pending_bytes >= max_bytes:
                yield _build(self._track, pending)
                pending, pending_bytes = [], 0
        if pending:
            yield _build(self._track, pending)


class _GopLayout:
    """Where GOPs start (decode indices of keyframes); refuses streams whose GOPs overlap."""

    def __init__(self, track: VideoTrack):
        self.order = track.presentation_order()
        self.starts = np.flatnonzero(track.sync)
        if self.starts.size == 0 or self.starts[0] != 0:
            raise NoSampleTable("the first sample is not a keyframe")
        shown_as = np.empty(len(track), np.int64)
        shown_as[self.order] = np.arange(len(track))
        # A closed GOP's samples are shown at or after its keyframe and before the next one.
        gop_of = np.searchsorted(self.starts, np.arange(len(track)), side="right") - 1
        first_shown = shown_as[self.starts]
        bounds = np.append(first_shown, len(track))
        if np.any(shown_as < bounds[gop_of]) or np.any(shown_as >= bounds[gop_of + 1]):
            raise NoSampleTable("open GOPs: pictures shown before their keyframe")


def _nal_units(sample: bytes, length_size: int) -> Iterator[int]:
    """The first byte of each NAL unit of a length-prefixed sample."""
    pos = 0
    while pos + length_size < len(sample):
        length = int.from_bytes(sample[pos : pos + length_size], "big")
        yield sample[pos + length_size]
        pos += length_size + length


def _read(f, track: VideoTrack, i: int) -> bytes:
    f.seek(int(track.offsets[i]))
    data = f.read(int(track.sizes[i]))
    if len(data) != track.sizes[i]:
        raise NoSampleTable(f"sample {i} is cut off")
    return data


def _check_keyframes(f, track: VideoTrack, keyframes: np.ndarray) -> None:
    """Every GOP used must start with a picture that needs nothing before it."""
    for i in keyframes:
        headers = list(_nal_units(_read(f, track, int(i)), track.nal_length_size))
        if track.codec == "h264":
            ok = any(h & 0x1F == _H264_IDR for h in headers)
        else:
            ok = any((h >> 1) & 0x3F in _HEVC_IRAP for h in headers)
        if not ok:
            raise NoSampleTable(f"keyframe {int(i)} is not an IDR/IRAP picture")


@dataclass
class _GopPart:
    kept: np.ndarray  # decode indices of the samples stored, in decode order
    media: list[bytes]  # their bytes
    wanted: np.ndarray  # decode indices of the requested frames, in request order


def _gop_part(f, track: VideoTrack, start: int, wanted: np.ndarray) -> _GopPart:
    """The samples to keep for the wanted samples of the GOP starting at ``start``."""
    span = np.arange(start, int(wanted.max()) + 1)
    media = [_read(f, track, int(i)) for i in span]
    keep = np.isin(span, wanted)
    if track.codec == "h264":
        keep |= np.array([_is_reference(m, track.nal_length_size) for m in media])
    else:
        keep[:] = True
    return _GopPart(span[keep], [m for m, k in zip(media, keep) if k], wanted)


def _is_reference(sample: bytes, length_size: int) -> bool:
    """H.264: does any slice of this picture have a non-zero nal_ref_idc?"""
    return any(h & 0x60 and 1 <= h & 0x1F <= 5 for h in _nal_units(sample, length_size))


def _build(track: VideoTrack, parts: list[_GopPart]) -> Excerpt:
    kept = np.concatenate([p.kept for p in parts])
    wanted = np.concatenate([p.wanted for p in parts])
    dts, pts = _closed_up_times(track, parts)
    local_order = np.argsort(pts, kind="stable")
    shown_as = np.empty(len(kept), np.int64)
    shown_as[local_order] = np.arange(len(kept))
    position = {int(d): j for j, d in enumerate(kept)}
    frames = [int(shown_as[position[int(d)]]) for d in wanted]
    media = [m for p in parts for m in p.media]
    return Excerpt(b"".join([mp4_header(track, kept, dts, pts), *media]), frames, len(kept))  # one copy


def _closed_up_times(track: VideoTrack, parts: list[_GopPart]) -> tuple[np.ndarray, np.ndarray]:
    """Decode and presentation times with the gaps between GOPs closed, starting at 0.

    Skipped GOPs would otherwise leave gaps that overflow 32-bit MP4 durations on long videos.
    Each GOP keeps its own relative times, and every GOP shows after the one before it.
    """
    dts, pts, clock = [], [], 0
    for part in parts:
        base = min(int(track.dts[part.kept[0]]), int(track.pts[part.kept].min()))
        dts.append(track.dts[part.kept] - base + clock)
        pts.append(track.pts[part.kept] - base + clock)
        clock = int(max(dts[-1][-1], pts[-1].max())) + 1
    return np.concatenate(dts), np.concatenate(pts)


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, *parts: bytes, flags: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags), *parts)


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """Run-length encoding as (count, value) pairs."""
    if values.size == 0:
        return []
    edges = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], edges])
    counts = np.diff(np.append(starts, values.size))
    return [(int(c), int(values[s])) for c, s in zip(counts, starts)]


def _table(kind: bytes, rows: list[tuple[int, ...]], fmt: str, version: int = 0) -> bytes:
    return _full_box(kind, version, struct.pack(">I", len(rows)),
                     b"".join(struct.pack(">" + fmt, *r) for r in rows))


def mp4_header(track: VideoTrack, kept: np.ndarray, dts: np.ndarray, pts: np.ndarray) -> bytes:
    """A minimal MP4 up to its media: one video track with the source's sample description, and
    the samples ``kept`` (decode indices of ``track``, in the order stored) in one chunk, at
    decode times ``dts`` and presentation times ``pts``.

    The samples' bytes, in that order, follow it to make the file: the caller writes them, so a
    file much larger than memory (:mod:`pipeline.mp4_loop`) is never held whole.
    """
    deltas = np.diff(dts)
    last = int(deltas[-1]) if deltas.size else 1
    deltas = np.append(deltas, max(last, 1))
    duration = int(dts[-1] + deltas[-1])
    composition = pts - dts
    stbl_parts = [
        track.stsd,
        _table(b"stts", _runs(deltas), "II"),
        _table(b"ctts", _runs(composition), "Ii", version=1) if composition.any() else b"",
        _table(b"stss", [(int(i) + 1,) for i in np.flatnonzero(track.sync[kept])], "I"),
        _table(b"stsc", [(1, len(kept), 1)], "III"),
        _full_box(b"stsz", 0, struct.pack(">II", 0, len(kept)),
                  np.asarray(track.sizes[kept], ">u4").tobytes()),
    ]
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")

    def moov(chunk_offset: int) -> bytes:
        stbl = _box(b"stbl", *stbl_parts, _table(b"co64", [(chunk_offset,)], "Q"))
        dref = _full_box(b"dref", 0, struct.pack(">I", 1), _full_box(b"url ", 0, flags=1))
        dinf = _box(b"dinf", dref)
        minf = _box(b"minf", _full_box(b"vmhd", 0, bytes(8), flags=1), dinf, stbl)
        hdlr = _full_box(b"hdlr", 0, bytes(4), b"vide", bytes(12), b"video\0")
        mdhd = _full_box(b"mdhd", 0, struct.pack(">IIIIHH", 0, 0, track.timescale, duration, 0x55C4, 0))
        matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
        tkhd = _full_box(b"tkhd", 0, struct.pack(">IIIII", 0, 0, 1, 0, duration), bytes(8),
                         struct.pack(">hhHH", 0, 0, 0, 0), matrix,
                         struct.pack(">II", track.width << 16, track.height << 16), flags=3)
        mvhd = _full_box(b"mvhd", 0, struct.pack(">IIII", 0, 0, track.timescale, duration),
                         struct.pack(">IH", 0x10000, 0x100), bytes(10), matrix, bytes(24),
                         struct.pack(">I", 2))
        return _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf)))

    header_size = len(ftyp) + len(moov(0)) + 16  # 16: an mdat header with a 64-bit size
    mdat = struct.pack(">I4sQ", 1, b"mdat", 16 + int(track.sizes[kept].sum()))
    return b"".join([ftyp, moov(header_size), mdat])
