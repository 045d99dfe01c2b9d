"""Which packet holds each frame a video shows, from one pass of PyAV's demuxer plus two short decodes.

Frame ``i`` is the ``i``-th frame FFmpeg shows (display order) and its timestamp is its
presentation time from the first shown frame. Both come from the packets: every packet of the
video stream in decode order, with its presentation time (pts), keyframe flag and FFmpeg's
"discard" flag (an MP4 edit list that starts inside a GOP: decoded as a reference, never shown).
The frames shown are the packets not discarded, sorted by pts GOP by GOP (the packets from one
keyframe to the next in decode order), when every packet has a distinct pts (``exact``: MP4, MOV,
MKV, WebM, MPEG-TS, MPEG-PS in practice). Sorting within GOPs rather than over the whole file is
what the decoder does at a timestamp discontinuity (streams joined by stream copy, where one
part's times overlap the next): it shows the next GOP after this one, whatever their times say.
Then any frame can be reached from a keyframe and recognized by its pts when it comes out of the
decoder.

Two things the packets cannot say are checked by decoding, the first and the last frames:

* whether the decoder shows them all: a stream cut inside a GOP starts with frames that reference
  pictures before the cut, and a truncated file ends with frames that do not decode; FFmpeg shows
  neither, so they leave the index (frames past the real end are never planned, let alone invented);
* whether frames leave the decoder in pts order. AVI stores no presentation times (FFmpeg fills in
  decode times), so with B-frames the pts of decoded frames go backwards: such a stream is not
  ``exact`` and is decoded from its start, frames numbered as they come out.

The entry keyframe of frame ``i`` is the last keyframe at or before its packet in decode order
whose own pts is not later than the frame's: a leading picture of an open GOP (shown before its
keyframe, decoded after it) needs the GOP before, so it enters one keyframe earlier.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property, lru_cache

import numpy as np

from pipeline.av_runs import NO_PTS, Desync, PacketCursor, decode_run
from pipeline.av_stream import VideoUnusable, open_video


@dataclass(frozen=True)
class FrameIndex:
    path: str
    codec: str
    pix_fmt: str
    width: int  # as shown, after rotation
    height: int
    rotation: int  # degrees counter-clockwise the picture is turned to show it (0, 90, 180, 270)
    time_base: Fraction
    packet_pts: np.ndarray  # int64 per packet in decode order (NO_PTS where missing)
    packet_dts: np.ndarray
    shown: np.ndarray  # int64 packet number of each frame shown, in display order
    times: np.ndarray = field(repr=False)  # float64 seconds of each shown frame from the first
    exact: bool  # frames are recognized by pts (else numbered as they come out of a full decode)
    entries: np.ndarray = field(repr=False)  # int64 packet number of each shown frame's entry keyframe
    nominal_fps: float  # the stream's declared rate: the rate of a one-frame video

    def __len__(self) -> int:
        return len(self.shown)

    @property
    def fps(self) -> float:
        """Average rate over the shown frames (frames per second of presentation time)."""
        span = float(self.times[-1] - self.times[0]) if len(self) > 1 else 0.0
        return (len(self) - 1) / span if span > 0 else self.nominal_fps

    @cached_property
    def shown_by_packet(self) -> np.ndarray:
        """Display indices ordered by their packet number (decode order)."""
        return np.argsort(self.shown, kind="stable")

    @cached_property
    def shown_packets_sorted(self) -> np.ndarray:
        return self.shown[self.shown_by_packet]

    def timestamps(self, indices) -> list[float]:
        return [float(t) for t in self.times[np.asarray(indices, dtype=np.int64)]]


@lru_cache(maxsize=4)
def _cached_index(path: str, size: int, mtime_ns: int) -> FrameIndex:
    return build_index(path)


def frame_index(path: str) -> FrameIndex:
    """:func:`build_index`, remembered for the last few files (segments of one video share it)."""
    st = os.stat(path)
    return _cached_index(path, st.st_size, st.st_mtime_ns)


def build_index(path: str) -> FrameIndex:
    """Index the video stream of ``path``; raises :class:`~pipeline.av_stream.VideoUnusable`."""
    container, stream = open_video(path)
    with container:
        codec, pix_fmt = stream.codec_context.codec.canonical_name, stream.codec_context.pix_fmt or "unknown"
        time_base = stream.time_base or Fraction(1, 90000)
        nominal_fps = float(stream.average_rate or stream.guessed_rate or 0)
        pts, dts, key, discard = [], [], [], []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    pts.append(NO_PTS if packet.pts is None else packet.pts)
                    dts.append(NO_PTS if packet.dts is None else packet.dts)
                    key.append(packet.is_keyframe)
                    discard.append(packet.is_discard)
        except Exception as exc:  # noqa: BLE001 (a demuxer error mid-file: what was read before is usable)
            if not pts:
                raise VideoUnusable("truncated or corrupt", str(exc)) from None
    if not pts:
        raise VideoUnusable("no video frames")
    packet_pts, packet_dts = np.asarray(pts, np.int64), np.asarray(dts, np.int64)
    kept = np.flatnonzero(~np.asarray(discard, bool))
    exact = bool(NO_PTS not in packet_pts and len(np.unique(packet_pts)) == len(packet_pts))
    keys = np.union1d([0], np.flatnonzero(key))
    shown = _display_order(kept, packet_pts, keys) if exact else kept
    entries = _entries(shown, packet_pts, keys) if exact else np.zeros(len(shown), np.int64)
    seen, rotation, size, exact = _decode_ends(path, packet_pts, packet_dts, shown, entries, exact)
    if not seen:
        raise VideoUnusable("undecodable video stream")
    if exact:
        keep = np.array([(pts_ in seen) or not _checked(i, entries, shown) for i, pts_ in
                         enumerate(packet_pts[shown].tolist())], bool)
        shown, entries = shown[keep], entries[keep]
    else:
        shown, entries = kept, np.zeros(len(kept), np.int64)
    width, height = size if rotation % 180 == 0 else size[::-1]
    return FrameIndex(path, codec, pix_fmt, width, height, rotation, time_base, packet_pts, packet_dts,
                      shown, _times(packet_pts, packet_dts, shown, exact, time_base), exact, entries,
                      nominal_fps)


def _display_order(kept: np.ndarray, packet_pts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Kept packets in display order: by GOP (decode order), then by pts within the GOP."""
    gop = np.searchsorted(keys, kept, side="right") - 1
    return kept[np.lexsort((packet_pts[kept], gop))]


def _entries(shown: np.ndarray, packet_pts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Entry keyframe (packet number) of each shown frame; see the module docstring."""
    j = np.searchsorted(keys, shown, side="right") - 1
    frame_pts = packet_pts[shown]
    while True:
        leading = (j > 0) & (packet_pts[keys[j]] > frame_pts)
        if not leading.any():
            return keys[j]
        j[leading] -= 1


def _checked(i: int, entries: np.ndarray, shown: np.ndarray) -> bool:
    """Was shown frame ``i`` among those the end checks decoded (first and last entry's frames)?"""
    return entries[i] == entries[0] or entries[i] == entries[-1]


def _decode_ends(path, packet_pts, packet_dts, shown, entries, exact):
    """Decode the frames of the first and the last entry keyframe: (pts seen, rotation, coded
    (width, height), exact). ``exact`` turns False if frames come out in another order."""
    cursor = PacketCursor(path, packet_pts, packet_dts, seekable=exact)
    position = {int(p): i for i, p in enumerate(packet_pts[shown].tolist())} if exact else {}
    seen: set[int] = set()
    rotation, size = 0, (0, 0)
    try:
        runs = {(int(entries[0]), int(shown[entries == entries[0]].max()))}
        runs.add((int(entries[-1]), len(packet_pts) - 1))
        for start, stop in sorted(runs):
            last = None
            for frame in decode_run(cursor, start, stop, None):
                shown_at = position.get(frame.pts, -1)
                if last is not None and shown_at <= last:
                    exact = False  # frames leave the decoder in another order than the index's
                last = shown_at
                seen.add(frame.pts)
                rotation, size = int(frame.rotation) % 360, (frame.width, frame.height)
    except Desync:
        pass  # a file that changes under us or a demuxer that is not repeatable: what was seen stands
    except Exception as exc:  # noqa: BLE001 (FFmpeg errors of any kind: the stream does not decode)
        if not seen:
            raise VideoUnusable("undecodable video stream", str(exc)) from None
    finally:
        cursor.close()
    return seen, rotation, size, exact


def _times(packet_pts, packet_dts, shown, exact, time_base) -> np.ndarray:
    """Seconds from the first shown frame. Without usable pts (not ``exact``: AVI), FFmpeg's
    best-effort timestamps are the decode times, one per frame in the order frames come out."""
    if exact:
        ticks = packet_pts[shown]
    else:
        ticks = np.where(packet_dts[shown] != NO_PTS, packet_dts[shown], packet_pts[shown])
        if NO_PTS in ticks:
            return np.arange(len(shown), dtype=np.float64)  # no times at all: refused by fps check
        ticks = np.sort(ticks)
    return (ticks - ticks[0]).astype(np.float64) * float(time_base)
