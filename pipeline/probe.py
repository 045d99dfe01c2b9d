"""Probing a video: the numbers the planner needs, or a clear reason why the file is unusable.

Which numbers are trusted:

* ``n_frames`` is decord's frame count (for MP4 it comes from the sample table, so it is exact).
  Frame indices are what the decoder is asked for, so everything else is derived from it.
* ``fps`` is decord's average frame rate, which FFmpeg computes as frames over stream duration.
  Only when that is missing or absurd is it recovered from frame timestamps, using frames 1 and
  n-1: decord can report a nonsense timestamp for frame 0 of some MPEG files, so frame 0 is
  never used.
* ``duration_s`` is ``n_frames / fps``. The last frame's end timestamp is cross-checked in the
  tests (it agrees within a frame on the sample clips) but not trusted on its own: it includes
  any container start offset, and the first frame's timestamp may be wrong.

The probe decodes exactly one frame (frame 0), which proves that the stream decodes and gives the
stored frame size. Width and height are the stored size; sample aspect ratio and rotation
metadata are ignored, as decord ignores them when decoding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import decord

from pipeline.container import read_container
from pipeline.decord_errors import DECORD_ERRORS
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
        reader = decord.VideoReader(path, num_threads=1)
    except DECORD_ERRORS as exc:
        message = str(exc)
        if "video stream" in message:
            raise fail("no video stream", message) from None
        raise fail("truncated or corrupt" if container.kind else "not a video", message) from None
    n_frames = len(reader)
    try:
        height, width = reader[0].shape[:2]
    except DECORD_ERRORS as exc:
        raise fail("undecodable video stream", str(exc)) from None
    _check_frames(n_frames, limits, fail)
    fps = _frame_rate(reader, n_frames, limits)
    if fps is None:
        raise fail("invalid fps", f"decord reports {reader.get_avg_fps()}")
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise fail(f"aspect ratio {aspect:.1f} exceeds {limits.max_aspect:g}")
    return VideoInfo(path, n_frames / fps, fps, n_frames, int(width), int(height), container.codec, size)


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


def _frame_rate(reader, n_frames: int, limits: ProbeLimits) -> float | None:
    """decord's average rate if plausible, else one recovered from timestamps (frame 0 skipped)."""

    def plausible(fps) -> bool:
        return math.isfinite(fps) and 0 < fps <= limits.max_fps

    fps = float(reader.get_avg_fps())
    if plausible(fps):
        return fps
    if n_frames >= 3:
        first, last = reader.get_frame_timestamp([1, n_frames - 1])[:, 0]
        if last > first:
            fps = (n_frames - 2) / float(last - first)
            if plausible(fps):
                return fps
    return None
