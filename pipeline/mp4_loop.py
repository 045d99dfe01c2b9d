"""A long MP4 made by repeating a clip's video track, sample bytes copied, without ffmpeg.

Why: benchmarks and tests loop real clips into long videos, and
:func:`pipeline.sample_videos.remux_loop` does that with the ffmpeg binary of imageio-ffmpeg
(``-stream_loop -c copy``). Machines without ffmpeg (a lent benchmark machine that has no
network to install it) can still make the same long videos this way: the clip's sample table
(:mod:`pipeline.mp4_track`) is written out ``repeats`` times, each copy's decode and presentation
times shifted by the clip's duration, every keyframe still a keyframe, the stream never
re-encoded. Only the video track is kept (the encode job reads nothing else).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.mp4_excerpt import mp4_header
from pipeline.mp4_track import VideoTrack, read_video_track


def loop_video_track(src, dst, repeats: int) -> Path:
    """Write ``dst``: the video track of the MP4 ``src`` played ``repeats`` times; returns ``dst``.

    Raises :class:`~pipeline.mp4_track.NoSampleTable` for a file whose sample table
    :func:`~pipeline.mp4_track.read_video_track` can't describe exactly.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    track = read_video_track(src)
    with open(src, "rb") as f:
        clip_media = b"".join(_read_all(f, track))  # decode order, as the header lists them
    n, period = len(track), clip_duration(track)
    shift = np.repeat(np.arange(repeats, dtype=np.int64) * period, n)
    dts = np.tile(track.dts - track.dts[0], repeats) + shift
    pts = np.tile(track.pts - track.dts[0], repeats) + shift
    kept = np.tile(np.arange(n), repeats)
    with open(dst, "wb") as out:
        out.write(mp4_header(track, kept, dts, pts))
        out.writelines(clip_media for _ in range(repeats))
    return Path(dst)


def loop_to_length(src, dst, min_seconds: float) -> Path:
    """Loop ``src``'s video track until it lasts at least ``min_seconds``; returns ``dst``
    (:func:`pipeline.sample_videos.remux_loop`'s contract, without ffmpeg or audio)."""
    track = read_video_track(src)
    repeats = max(1, math.ceil(min_seconds * track.timescale / clip_duration(track)))
    return loop_video_track(src, dst, repeats)


def clip_duration(track: VideoTrack) -> int:
    """How long one copy lasts, in ``track.timescale`` units: long enough that the next copy
    decodes after this one's last sample and shows after its last frame, one frame later (the
    track's duration for a constant frame rate)."""
    shown = np.sort(track.pts)
    step = int(np.median(np.diff(shown))) if len(shown) > 1 else 1
    span = max(int(track.dts[-1] - track.dts[0]), int(shown[-1] - shown[0]))
    return span + max(step, 1)


def _read_all(f, track: VideoTrack) -> list[bytes]:
    samples = []
    for offset, size in zip(track.offsets, track.sizes):
        f.seek(int(offset))
        samples.append(f.read(int(size)))
    return samples
