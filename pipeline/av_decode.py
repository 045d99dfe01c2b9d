"""The exact decode path for every container: PyAV, GOPs that hold planned frames, nothing else.

Planned frames (display indices, sorted) are grouped into runs (:mod:`pipeline.av_runs`): a run
starts at the entry keyframe of its first frame (:mod:`pipeline.av_index`) and ends at the last
packet a frame of it needs; a frame whose entry keyframe lies inside the current run joins it,
the others start a new run, and the packets between runs are never decoded (far ones are skipped
by a seek, near ones read and dropped). Inside a run, packets of unwanted frames go to the decoder
with ``skip_frame = NONREF``. Each frame leaving the decoder is recognized by its pts, and only
wanted ones are converted, by the filters the ffmpeg command line runs (autorotate, scale with
``SCALE_FLAGS``, RGB), so the pixels are the command line's own.

If a wanted frame does not come out (a decoder that drops a skipped picture it should not, an
entry keyframe that is not a clean entry point), the run is retried without skipping, then from
one entry keyframe earlier at a time, down to the start of the stream; a frame that even a decode
from the start does not show is an error, never a substitute. Streams whose frames cannot be
recognized by pts (``FrameIndex.exact`` False) are decoded from the start and numbered as they
come out, which is what FFmpeg does.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.av_index import FrameIndex, Occurrences, frame_index
from pipeline.av_runs import Desync, PacketCursor, decode_run
from pipeline.av_stream import VideoUnusable, captured_logs, summarize_logs
from pipeline.errors import DecodeError

log = logging.getLogger("longshot.decode")


class _Missing(Exception):
    """Wanted frame (position in the request) did not come out of its run."""

    def __init__(self, position: int):
        self.position = position


def open_index(path: str, id: str | None) -> FrameIndex:
    try:
        return frame_index(path)
    except VideoUnusable as exc:
        raise exc.as_input_error(DecodeError, path, id) from None


def check_range(index: FrameIndex, indices: Sequence[int], id: str | None) -> None:
    if indices and max(indices) >= len(index):
        raise DecodeError(index.path, "frame index out of range", id=id,
                          detail=f"index {max(indices)}, video has {len(index)} frames")


def decode_windows(path: str, indices: Sequence[int], height: int, width: int, window: int, *,
                   id: str | None = None) -> Iterator[np.ndarray]:
    """Frames at display ``indices`` (non-decreasing) as ``(n, height, width, 3)`` uint8 windows."""
    index = open_index(path, id)
    check_range(index, indices, id)
    wanted = np.unique(np.asarray(indices, np.int64))
    repeats = np.searchsorted(wanted, np.asarray(indices, np.int64))  # request slot -> wanted slot
    concealed = 0
    with captured_logs() as logs:
        cursor = PacketCursor(path, index.packet_pts, index.packet_dts, seekable=index.exact)
        converter = _Converter(index, cursor.stream, height, width)
        try:
            frames = _wanted_frames(cursor, index, wanted)
            buffer = np.empty((min(window, len(indices)), height, width, 3), np.uint8)
            filled, held, held_at = 0, None, -1
            for slot in repeats:
                while held_at < slot:
                    frame = next(frames)
                    concealed += bool(frame.is_corrupt)
                    held, held_at = converter(frame), held_at + 1
                buffer[filled] = held
                filled += 1
                if filled == len(buffer):
                    yield buffer
                    buffer, filled = np.empty_like(buffer), 0
            if filled:
                yield buffer[:filled]
        except av.FFmpegError as exc:
            raise DecodeError(path, "truncated or corrupt", id=id, detail=str(exc)) from None
        finally:
            cursor.close()
    summary = summarize_logs(Path(path).name, list(logs), concealed)
    if summary:
        log.warning(summary)


def _wanted_frames(cursor: PacketCursor, index: FrameIndex, wanted: np.ndarray) -> Iterator:
    """The decoded frames of ``wanted`` (sorted display indices), in order."""
    if not index.exact:
        yield from _counted_frames(cursor, index, wanted)
        return
    done = 0
    attempt = 0
    while done < len(wanted):
        start, stop, members = _run(index, wanted, done)
        skip, start = _attempt(index, start, attempt)
        skip = skip and wanted[done + members - 1] < index.continuous_from
        try:
            for frame in _run_frames(cursor, index, wanted[done:done + members], start, stop, skip):
                yield frame
                done += 1
                attempt = 0
        except (_Missing, Desync) as exc:
            if start == 0 and not skip:
                raise DecodeError(index.path, "frame does not decode",
                                  detail=f"frame {int(wanted[done])} is not shown even decoding from the start"
                                  f" ({exc!r})") from None
            attempt += 1
            if isinstance(exc, Desync):
                cursor.move_to(0)  # back to a known state; the next attempt enters earlier


def _run(index: FrameIndex, wanted: np.ndarray, first: int) -> tuple[int, int, int]:
    """(entry packet, last packet, frames) of the run starting at ``wanted[first]``."""
    start = int(index.entries[wanted[first]])
    stop = int(index.shown[wanted[first]])
    members = 1
    for i in wanted[first + 1:]:
        if index.entries[i] > stop:
            break
        stop = max(stop, int(index.shown[i]))
        members += 1
    return start, stop, members


def _attempt(index: FrameIndex, start: int, attempt: int) -> tuple[bool, int]:
    """Attempt 0 skips non-reference pictures; 1 decodes everything; each later one enters one
    keyframe earlier (the entries in use are the keyframes frames enter at)."""
    if attempt == 0:
        return True, start
    earlier = np.unique(index.entries[index.entries < start])
    step = attempt - 1
    return False, int(earlier[-step]) if 0 < step <= len(earlier) else (start if step == 0 else 0)


def _run_frames(cursor, index: FrameIndex, members: np.ndarray, start: int, stop: int, skip: bool):
    """Yield the frames of ``members`` from one run; raise :class:`_Missing` if one is not shown,
    :class:`~pipeline.av_runs.Desync` if frames come out in another order than the index's."""
    first, last = np.searchsorted(index.shown_packets_sorted, [start, stop + 1])
    in_run = index.shown_by_packet[first:last]  # display indices of the frames of packets start..stop
    in_run = np.sort(in_run)  # display order: repeated times are taken in turn
    shown_at = Occurrences(index.packet_pts[index.shown[in_run]].tolist(), in_run.tolist())
    mask = None
    if skip:
        mask = np.ones(stop - start + 1, bool)
        mask[index.shown[members] - start] = False
    position, previous = 0, -1
    for frame in decode_run(cursor, start, stop, mask):
        at = shown_at.take(frame.pts)
        if at is None:
            continue  # a discarded picture (edit list) that a decoder showed anyway
        if at <= previous:
            raise Desync(f"frame {at} came out after frame {previous}")
        previous = at
        if position < len(members) and at > members[position]:
            raise _Missing(position)
        if position < len(members) and at == members[position]:
            position += 1
            yield frame
    if position < len(members):
        raise _Missing(position)


def _counted_frames(cursor: PacketCursor, index: FrameIndex, wanted: np.ndarray) -> Iterator:
    """Decode from the start without skipping; frame ``n`` is the ``n``-th to come out."""
    position = 0
    for n, frame in enumerate(decode_run(cursor, 0, len(index.packet_pts) - 1, None)):
        if n == wanted[position]:
            yield frame
            position += 1
            if position == len(wanted):
                return
    raise DecodeError(index.path, "frame index out of range",
                      detail=f"frame {int(wanted[position])} is not shown; the stream ended first")


# swscale's bilinear: scale-aware (its kernel widens with the shrink factor), 0.85 ms a frame
# against 1.95 for bicubic at 640x272 -> 616x252 through the filter graph, on this 2-core machine.
SCALE_FLAGS = "bilinear"
_TURNS = {90: ("transpose=cclock",), 180: ("hflip", "vflip"), 270: ("transpose=clock",)}  # autorotate's


class _Converter:
    """Decoded frame -> RGB at the planned size through FFmpeg's own filters, as the command line
    runs them: autorotate's transpose/flip first, then ``scale`` (``SCALE_FLAGS``), then ``format``. The
    same filter code in the same FFmpeg version gives the command line's pixels exactly, which a
    plain swscale call (``VideoFrame.reformat``) does not: the scale filter also honours chroma
    siting and colour tags (49-57 dB PSNR instead of identity in the conformance inputs)."""

    def __init__(self, index: FrameIndex, stream, height: int, width: int):
        self.filters = [*_TURNS.get(index.rotation, ()),
                        f"scale={width}:{height}:flags={SCALE_FLAGS}", "format=rgb24"]
        self.time_base = stream.time_base or Fraction(1, 90000)  # the stream closes if the cursor reopens
        self.graph = None
        self.size = None

    def _build(self, frame) -> None:
        graph = av.filter.Graph()
        node = graph.add("buffer", f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}"
                                   f":time_base={self.time_base}:pixel_aspect=1/1"
                                   f":colorspace={int(frame.colorspace)}:range={int(frame.color_range)}")
        source = node
        for spec in self.filters:
            name, _, args = spec.partition("=")
            filt = graph.add(name, args or None)
            node.link_to(filt)
            node = filt
        node.link_to(graph.add("buffersink"))
        graph.configure()
        self.graph, self.source, self.size = graph, source, (frame.width, frame.height, frame.format.name)

    def __call__(self, frame) -> np.ndarray:
        if self.graph is None or self.size != (frame.width, frame.height, frame.format.name):
            self._build(frame)
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()
