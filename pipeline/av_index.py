"""Which packet holds each frame a video shows, from one pass of PyAV's demuxer plus a few decodes.

Frame ``i`` is the ``i``-th frame FFmpeg shows (display order) and its timestamp is its
presentation time from the first shown frame. Both come from the packets: every packet of the
video stream in decode order, with its presentation time (pts), keyframe flag and FFmpeg's
"discard" flag (an MP4 edit list that starts inside a GOP: decoded as a reference, never shown).
The frames shown are the packets not discarded, sorted by pts GOP by GOP (the packets from one
keyframe to the next in decode order), when every packet has a pts (``exact``: MP4, MOV, MKV,
WebM, MPEG-TS, MPEG-PS in practice; a time that repeats, as at the joins of looped streams, is
matched to its frames in turn, :class:`Occurrences`). Sorting within GOPs rather than over the whole file is
what the decoder does at a timestamp discontinuity (streams joined by stream copy, where one
part's times overlap the next): it shows the next GOP after this one, whatever their times say.
Then any frame can be reached from a keyframe and recognized by its pts when it comes out of the
decoder.

What the packets cannot say is checked by decoding a few GOPs: the first, the last, and every
GOP whose packet timing is irregular (decode times going back or skipping packets; a frame shown
before frames of the GOP before, or at another frame's time): a stream cut inside a GOP starts with frames that
reference pictures before the cut, a truncated file ends with frames that do not decode, and at
the joins of streams stream-copied end to end, packets are lost and the decoder drops or
reorders frames there. FFmpeg shows what the decoder gives, so in those GOPs the index takes the
frames that came out, in the order they came out; frames past the real end are never planned,
let alone invented. One more thing is checked there: whether frames leave the decoder in pts
order where the timing is regular. AVI stores no presentation times (FFmpeg fills in decode
times), so with B-frames the pts of decoded frames go backwards: such a stream is not ``exact``
and is decoded from its start, frames numbered as they come out.

The entry keyframe of frame ``i`` is the last keyframe at or before its packet in decode order
whose own pts is not later than the frame's: a leading picture of an open GOP (shown before its
keyframe, decoded after it) needs the GOP before, so it enters one keyframe earlier; after lost
packets, frames enter before the damage (:mod:`pipeline.entry_points`).
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property, lru_cache

import numpy as np

from pipeline.av_runs import NO_PTS, Desync, PacketCursor, decode_run
from pipeline.av_stream import VideoUnusable, captured_logs, open_video, summarize_logs
from pipeline.entry_points import gop_entries

# Not "longshot.decode": an index is built once per process and cached, so its lines would land
# in whichever unit's decode log happened to build it, and a resumed job's logs would differ.
_INDEX_LOG = logging.getLogger("longshot.index")


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
    continuous_from: int  # frames from here on follow damage: decoded continuously, nothing skipped

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
    keys = np.union1d([0], np.flatnonzero(key))
    exact = NO_PTS not in packet_pts
    irregular = _irregular_gops(packet_pts, packet_dts, keys) if exact else set()
    with captured_logs() as logs:  # FFmpeg's lines go to debug, never to the console
        seen, rotation, size = _decode_runs(path, packet_pts, packet_dts, keys, _check_runs(len(keys), irregular),
                                            exact)
        damaged = _damaged_gops(seen, irregular, kept, packet_pts, keys) if exact else set()
        if damaged:  # from the first damage on, FFmpeg's frames depend on everything before
            after, _, _ = _decode_runs(path, packet_pts, packet_dts, keys, [(min(damaged), len(keys) - 1)], exact)
            seen.update(after)
    summarize_logs(os.path.basename(path), list(logs), details=_INDEX_LOG)
    gop_entry = gop_entries(len(keys), damaged)
    if not any(seen.values()):
        raise VideoUnusable("undecodable video stream")
    if exact and _reordered_without_reason(seen, irregular):
        exact = False  # pts do not say the display order (AVI: FFmpeg fills in decode times)
    if exact:
        shown = _display_order(kept, packet_pts, keys, seen)
        entries = _entries(shown, packet_pts, keys, gop_entry)
    else:
        shown, entries = kept, np.zeros(len(kept), np.int64)
    gop = _gop_of(shown, keys)
    after_damage = np.flatnonzero(gop_entry[gop] != gop)
    continuous_from = (int(after_damage[0]) if after_damage.size else len(shown)) if exact else 0
    width, height = size if rotation % 180 == 0 else size[::-1]
    return FrameIndex(path, codec, pix_fmt, width, height, rotation, time_base, packet_pts, packet_dts,
                      shown, _times(packet_pts, packet_dts, shown, exact, time_base), exact, entries,
                      nominal_fps, continuous_from)


class Occurrences:
    """A pts -> value map where a pts may occur more than once (joined streams): each lookup takes
    the first value not taken yet that ``fits``, so repeated times map to their frames in turn."""

    def __init__(self, keys: list[int], values: list[int]):
        self._values: dict[int, list[int]] = {}
        for k, v in zip(keys, values):
            self._values.setdefault(k, []).append(v)

    def take(self, key: int, fits=lambda v: True):
        values = self._values.get(key, [])
        for i, v in enumerate(values):
            if fits(v):
                return values.pop(i)
        return None


def _gop_of(packets: np.ndarray, keys: np.ndarray) -> np.ndarray:
    return np.searchsorted(keys, packets, side="right") - 1


def _irregular_gops(packet_pts: np.ndarray, packet_dts: np.ndarray, keys: np.ndarray) -> set[int]:
    """GOPs whose packet timing is irregular: decode times going back, or jumping by more than 1.5
    usual steps inside the GOP (packets lost at a join; a jump onto a keyframe is only a pause), a
    frame shown before a frame of the GOP before it or at the same time as another (times that
    overlap at a join). Only these, the first and the last GOP are decoded to learn which frames
    FFmpeg shows and in which order; elsewhere the times say it."""
    n = len(packet_pts)
    known = packet_dts != NO_PTS  # Matroska stores no decode times: FFmpeg leaves some unset
    pairs = known[1:] & known[:-1]
    steps = np.diff(packet_dts)
    usual = float(np.median(steps[pairs & (steps > 0)])) if np.any(pairs & (steps > 0)) else 0.0
    onto_key = np.zeros(n, bool)
    onto_key[keys] = True
    bad = np.zeros(n, bool)
    bad[1:] |= pairs & (((steps > 1.5 * usual) & ~onto_key[1:]) | (steps <= 0))
    gop = _gop_of(np.arange(n), keys)
    gop_max = np.maximum.reduceat(packet_pts, keys)
    if len(keys) > 1:
        later = slice(int(keys[1]), n)
        bad[later] |= packet_pts[later] < gop_max[gop[later] - 1]
    values, counts = np.unique(packet_pts, return_counts=True)
    bad |= np.isin(packet_pts, values[counts > 1])  # the same time twice: only decoding says the order
    return {int(g) for g in np.unique(gop[bad])}


def _damaged_gops(seen: dict[int, list[int]], irregular: set[int], kept: np.ndarray,
                  packet_pts: np.ndarray, keys: np.ndarray) -> set[int]:
    """Irregular GOPs whose decoded frames are not their packets' frames in pts order: the
    decoder dropped or reordered frames there, so packets were lost (:mod:`pipeline.entry_points`)."""
    gop = _gop_of(kept, keys)
    return {g for g in irregular & seen.keys()
            if seen[g] != sorted(packet_pts[kept[gop == g]].tolist())}


def _check_runs(n_gops: int, irregular: set[int]) -> list[tuple[int, int]]:
    """GOP ranges to decode at indexing: the first, the last, each irregular one with the next."""
    wanted = sorted({0, n_gops - 1} | irregular | {min(g + 1, n_gops - 1) for g in irregular})
    runs: list[tuple[int, int]] = []
    for g in wanted:
        if runs and g <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], g)
        else:
            runs.append((g, g))
    return runs


def _decode_runs(path, packet_pts, packet_dts, keys, runs, exact):
    """Decode each run of GOPs (from one GOP earlier, so their leading pictures have their
    references): ({GOP: pts of its frames in the order they came out}, rotation, coded size)."""
    cursor = PacketCursor(path, packet_pts, packet_dts, seekable=exact)
    gop_of_pts = Occurrences(packet_pts.tolist(), _gop_of(np.arange(len(packet_pts)), keys).tolist())
    seen: dict[int, list[int]] = {}
    rotation, size = 0, (0, 0)
    try:
        for first, last in runs:
            for g in range(first, last + 1):
                seen[g] = []
            stop = int(keys[last + 1]) - 1 if last + 1 < len(keys) else len(packet_pts) - 1
            for frame in decode_run(cursor, int(keys[max(first - 1, 0)]), stop, None):
                g = gop_of_pts.take(frame.pts, lambda g, a=first, b=last: a <= g <= b)
                if g is not None and first <= g <= last:
                    seen[g].append(frame.pts)
                rotation, size = int(frame.rotation) % 360, (frame.width, frame.height)
    except Desync:
        pass  # a file that changes under us or a demuxer that is not repeatable: what was seen stands
    except Exception as exc:  # noqa: BLE001 (FFmpeg errors of any kind: the stream does not decode)
        if not any(seen.values()):
            raise VideoUnusable("undecodable video stream", str(exc)) from None
    finally:
        cursor.close()
    return seen, rotation, size


def _reordered_without_reason(seen: dict[int, list[int]], irregular: set[int]) -> bool:
    """Did a GOP with regular timing show its frames out of pts order?"""
    return any(g not in irregular and any(b <= a for a, b in itertools.pairwise(order))
               for g, order in seen.items())


def _display_order(kept: np.ndarray, packet_pts: np.ndarray, keys: np.ndarray, seen) -> np.ndarray:
    """Kept packets in display order: GOP by GOP in decode order; within a GOP that was decoded,
    the frames that came out in the order they came out, else all by pts."""
    gop = _gop_of(kept, keys)
    order = kept[np.lexsort((packet_pts[kept], gop))]
    packet_of = Occurrences(packet_pts[kept].tolist(), kept.tolist())
    bounds = np.searchsorted(gop, np.arange(len(keys) + 1))  # kept is in decode order: gop is sorted

    def bound(g: int) -> int:
        return int(keys[g + 1]) if g + 1 < len(keys) else len(packet_pts)
    parts = []
    for g in range(len(keys)):
        if g in seen:
            in_gop = (packet_of.take(p, lambda k, g=g: keys[g] <= k < bound(g)) for p in seen[g])
            parts.append(np.asarray([k for k in in_gop if k is not None], np.int64))
        else:
            parts.append(order[bounds[g]:bounds[g + 1]])
    return np.concatenate(parts) if parts else order


def _entries(shown: np.ndarray, packet_pts: np.ndarray, keys: np.ndarray, gop_entry: np.ndarray) -> np.ndarray:
    """Entry keyframe (packet number) of each shown frame: its GOP's, one earlier for a leading
    picture (see the module docstring), or from before damage (:mod:`pipeline.entry_points`)."""
    j = gop_entry[_gop_of(shown, keys)]
    frame_pts = packet_pts[shown]
    while True:
        leading = (j > 0) & (packet_pts[keys[j]] > frame_pts)
        if not leading.any():
            return keys[j]
        j[leading] -= 1


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
