"""Probing a video: the numbers the planner needs, or a clear reason why the file is unusable.

The numbers are FFmpeg's, read through PyAV (:mod:`pipeline.av_index`), the same libraries the
decode step uses, so the probe and the decoder agree on what frame ``i`` is:

* ``n_frames`` is the number of frames FFmpeg shows: the packets of the video stream that are not
  discarded (an edit list), less any that its first and last GOPs do not show when decoded (a
  stream cut inside a GOP, a truncated tail). Frames past the real end are never planned.
* ``fps`` is the average rate of the presentation times, ``(n_frames - 1)`` over the time from
  the first frame shown to the last; ``duration_s`` is ``n_frames / fps``. Variable-rate video
  gets its true timestamps from the decode step; this rate only spaces the planned samples.
* width and height are the frame size as shown: rotation metadata (phone video) is applied, as
  FFmpeg's autorotate and the decode step apply it.

Decoding the first and last GOPs proves the stream decodes. A video stream FFmpeg has no decoder
for is refused as "unsupported codec NAME".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from pipeline.av_index import frame_index
from pipeline.av_stream import VideoUnusable
from pipeline.container import read_container
from pipeline.errors import ProbeError


@dataclass(frozen=True)
class ProbeLimits:
    """Sanity limits; a video outside them is reported instead of planned."""

    min_frames: int = 2
    max_aspect: float = 20.0
    max_fps: float = 1000.0


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration_s: float
    fps: float
    n_frames: int
    width: int
    height: int
    codec: str
    size_bytes: int


def probe_video(path, limits: ProbeLimits = ProbeLimits(), *, id: str | None = None) -> VideoInfo:
    """Read a video's frame count, rate, size and codec; raise :class:`ProbeError` for unusable files."""
    path = str(path)

    def fail(reason: str, detail: str = "") -> ProbeError:
        return ProbeError(path, reason, id=id, detail=detail)

    size, container = _inspect_file(path, fail)
    try:
        index = frame_index(path)
    except VideoUnusable as exc:
        reason = exc.reason
        if reason == "not a video" and container.kind:
            reason = "truncated or corrupt"
        raise fail(reason, exc.detail) from None
    n_frames = len(index)
    _check_frames(n_frames, limits, fail)
    fps = index.fps
    if not (math.isfinite(fps) and 0 < fps <= limits.max_fps):
        raise fail("invalid fps", f"{fps:g} frames per second of presentation time")
    width, height = index.width, index.height
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise fail(f"aspect ratio {aspect:.1f} exceeds {limits.max_aspect:g}")
    return VideoInfo(path, n_frames / fps, fps, n_frames, int(width), int(height), index.codec, size)


def _inspect_file(path: str, fail):
    """Checks that need no decoder: existence, permissions, size, container structure."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise fail("file not found") from None
    except PermissionError:
        raise fail("permission denied") from None
    if not os.path.isfile(path):
        raise fail("not a regular file")
    if st.st_size == 0:
        raise fail("empty file")
    try:
        with open(path, "rb") as f:
            container = read_container(f, st.st_size)
    except PermissionError:
        raise fail("permission denied") from None
    if container.kind is not None and (not container.complete or not container.has_index):
        raise fail("truncated or corrupt")
    if container.video_tracks is not None and not container.video_tracks:
        raise fail("no video stream")
    return st.st_size, container


def _check_frames(n_frames: int, limits: ProbeLimits, fail) -> None:
    if n_frames == 1 and limits.min_frames > 1:
        raise fail("single frame")
    if n_frames < limits.min_frames:
        raise fail(f"{n_frames} frames, fewer than {limits.min_frames}")
