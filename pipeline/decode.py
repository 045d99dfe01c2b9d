"""Decoding the planned frames of one video, a bounded window at a time.

Frames are decoded with decord at the planned size: the ``VideoReader`` is opened with
``width``/``height`` so FFmpeg's scaler converts and shrinks each sampled frame in one pass, and
frames decord only decodes to reach a sampled one are never converted at all (except the keyframe
it checks after each seek). The alternative,
decoding at full size and resizing afterwards, was measured slower (``tests/bench/bench_encode.py
--resize-compare``: 2-core CI machine shared with other jobs (load average ~3.4), bigbuckbunny
720p looped by remux to 64 s, 128 frames at 2 fps to 588x336, one decoder thread, each run a
fresh subprocess; CPU seconds (user + sys) and peak RSS):

=====================================  ==========  ==========  ============
path                                   CPU run 1   CPU run 2   peak RSS MiB
=====================================  ==========  ==========  ============
decord resizes while decoding          3.80        3.64        118-123
decord full size, then PIL bilinear    6.11        6.22        549-555
decord full size, no resize at all     4.18        4.32        437-454
=====================================  ==========  ==========  ============

Even without resizing, full-size RGB output costs more than decord's resize, so the choice is
clear. The frames are then exactly what ``VideoReader(path, width=W, height=H).get_batch(idx)``
returns, which the tests check.

Memory does not grow with the video. MP4 files (H.264/HEVC, closed GOPs) are decoded through
excerpts (:mod:`pipeline.mp4_excerpt`): small in-memory MP4s of the samples a run of planned
frames needs, so decord, which keeps the packets it has read, never holds more than one
excerpt's worth; they also leave out GOP tails and non-reference H.264 frames that no planned
frame needs. Other files go through one decord reader of the whole file. Within a reader each
window is one ``get_batch`` call (decord dedups repeated indices inside it; with bridge frames,
see :mod:`pipeline.gop_bridges`, at most twice the window is decoded at once) handed to numpy
without a copy. Sorted indices never make decord seek backwards, so windowing costs no extra decode.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator, Sequence

import decord
import numpy as np

from pipeline.decord_errors import DECORD_ERRORS
from pipeline.errors import DecodeError
from pipeline.gop_bridges import DEFAULT_MAX_TAIL, bridged_request
from pipeline.mp4_excerpt import DEFAULT_EXCERPT_BYTES, ExcerptPlan
from pipeline.mp4_track import NoSampleTable, read_video_track


def iter_frame_windows(path, frame_indices: Sequence[int], height: int, width: int, window: int = 32, *,
                       id: str | None = None, num_threads: int = 1,
                       max_tail: int = DEFAULT_MAX_TAIL,
                       excerpt_bytes: int = DEFAULT_EXCERPT_BYTES) -> Iterator[np.ndarray]:
    """Yield the frames at ``frame_indices`` as ``(n, height, width, 3)`` uint8 arrays, at most
    ``window`` frames at a time. Treat them as read-only: most windows are decord's own buffer,
    handed over without a copy.

    ``frame_indices`` must be non-decreasing (a plan's padding repeats the last index).
    ``num_threads`` is decord's decoder thread count; 1 by default because the encode step runs
    one task per core. MP4 files with closed GOPs are decoded through excerpts of at most about
    ``excerpt_bytes`` of media (:mod:`pipeline.mp4_excerpt`), other files through one reader of
    the whole file; ``max_tail`` bounds the GOP tails decoded to avoid a seek
    (:mod:`pipeline.gop_bridges`; 0 turns that off). Problems with the file raise :class:`DecodeError`.
    """
    path = str(path)
    indices = [int(i) for i in frame_indices]
    _check_request(indices, height, width, window)
    if not indices:
        return
    opened = _open_excerpts(path, indices, id)
    if opened is None:
        reader = _open_reader(path, id, width=width, height=height, num_threads=num_threads)
        if indices[-1] >= len(reader):
            raise _out_of_range(path, id, indices[-1], len(reader))
        yield from _reader_windows(reader, indices, (height, width), window, max_tail, path, id)
        return
    plan, f = opened
    with f:
        for excerpt in plan.excerpts(excerpt_bytes):
            reader = _open_reader(_InMemoryFile(excerpt.data), id, width=width, height=height,
                                  num_threads=num_threads, path=path)
            if len(reader) != excerpt.samples:
                raise DecodeError(path, "truncated or corrupt", id=id,
                                  detail=f"an excerpt of {excerpt.samples} samples decodes to {len(reader)} frames")
            frames = excerpt.frames
            _cyclic_garbage.add(len(excerpt.data))
            del excerpt  # decord holds its own copy; the next excerpt is built before this name is rebound
            yield from _reader_windows(reader, frames, (height, width), window, max_tail, path, id)
            del reader  # free this excerpt's decoder and packets before the next one is read
            _cyclic_garbage.collect_if_due()


class _CyclicGarbage:
    """Frees the copies of excerpt bytes that decord's FFI leaves in reference cycles.

    decord passes an in-memory file through a ctypes array type it creates per call, which sits
    in a reference cycle with a copy of the bytes: left alone, those copies pile up until Python's
    rare full collection (60-min video: 399 MiB peak RSS, 157 MiB collecting after each excerpt).
    A full collection costs ~16 ms, so it runs once that many bytes may be waiting, not per
    excerpt: memory stays bounded and short clips don't pay 16 ms each.
    """

    def __init__(self, limit: int = 32 << 20):
        self.limit = limit
        self.pending = 0

    def add(self, nbytes: int) -> None:
        self.pending += nbytes

    def collect_if_due(self) -> None:
        if self.pending >= self.limit:
            gc.collect()
            self.pending = 0


_cyclic_garbage = _CyclicGarbage()


def _open_excerpts(path: str, indices: list[int], id: str | None):
    """(plan, open file) when the file can be decoded through excerpts, else None."""
    try:
        track = read_video_track(path)
    except (NoSampleTable, OSError):
        return None  # the whole-file reader reports what is wrong, if anything
    if indices[-1] >= len(track):
        raise _out_of_range(path, id, indices[-1], len(track))
    f = open(path, "rb")
    try:
        return ExcerptPlan(f, track, indices), f
    except NoSampleTable:
        f.close()
        return None


def _open_reader(source, id: str | None, *, path: str | None = None, **options):
    try:
        return decord.VideoReader(source, **options)
    except DECORD_ERRORS as exc:
        raise DecodeError(path or source, "cannot open video", id=id, detail=str(exc)) from None


def _out_of_range(path: str, id: str | None, index: int, n_frames: int) -> DecodeError:
    return DecodeError(path, "frame index out of range", id=id,
                       detail=f"index {index}, video has {n_frames} frames")


def _reader_windows(reader, indices: list[int], size: tuple[int, int], window: int, max_tail: int,
                    path: str, id: str | None) -> Iterator[np.ndarray]:
    keys = [int(k) for k in reader.get_key_indices()]
    previous = None
    for start in range(0, len(indices), window):
        chunk = indices[start : start + window]
        request, wanted = bridged_request(chunk, keys, previous, max_tail)
        previous = chunk[-1]
        try:
            batch = reader.get_batch(request)
        except DECORD_ERRORS as exc:
            raise DecodeError(path, "truncated or corrupt", id=id, detail=str(exc)) from None
        frames = np.from_dlpack(_DLPackView(batch))
        if len(request) != len(chunk):
            frames = frames[np.flatnonzero(wanted)]  # drop the bridge frames (a copy)
        if frames.shape != (len(chunk), *size, 3):
            raise DecodeError(path, "unexpected frame shape", id=id, detail=str(frames.shape))
        yield frames


class _InMemoryFile:
    """What decord needs to read a file from memory: ``read()``, returning the bytes uncopied."""

    def __init__(self, data: bytes):
        self._data = data

    def read(self) -> bytes:
        return self._data


def _check_request(indices: list[int], height: int, width: int, window: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if indices and indices[0] < 0:
        raise ValueError(f"negative frame index {indices[0]}")
    if any(b < a for a, b in itertools.pairwise(indices)):
        raise ValueError("frame_indices must be non-decreasing")


class _DLPackView:
    """Lets numpy take a decord NDArray without copying (decord predates the ``__dlpack__`` protocol).

    The capsule keeps decord's buffer alive for as long as the numpy array lives.
    """

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **_):
        return self._array.to_dlpack()

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU, device 0
