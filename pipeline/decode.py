"""Decoding the planned frames of one video, a bounded window at a time: the one entry point.

Every input goes through the same exact path (:mod:`pipeline.av_decode`): PyAV, FFmpeg's own
libraries, demuxing packets and decoding only the GOPs that hold planned frames. Frame ``i`` is
the frame FFmpeg shows at index ``i`` in display order, and its timestamp is that frame's
presentation time from the first frame (:func:`frame_timestamps`), in MP4, MOV, fragmented MP4,
MKV, WebM, AVI, MPEG-TS and MPEG-PS alike; ``tests/pipeline/test_conformance.py`` checks both
against the ``ffmpeg`` command line's decode of the same file.

Why not decord, which did this before: its seeks trust timestamps that MPEG-TS/PS do not give
(frames shifted by a GOP or more, stale frames repeated past the end), it has no AV1, its scaler
differs from FFmpeg's (about 39 dB PSNR from ``ffmpeg -vf scale`` at the planned sizes; through
PyAV the frames go through FFmpeg's own filters and equal the command line's bit for bit), and
it keeps the packets it reads, which is what the MP4 excerpt path (:mod:`pipeline.mp4_excerpt`,
now used only to loop clips) worked around.
PyAV streams packets, so memory stays flat whatever the length (``tests/bench/RESULTS.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.av_decode import check_range, decode_windows, open_index


def iter_frame_windows(path, frame_indices: Sequence[int], height: int, width: int, window: int = 32, *,
                       id: str | None = None) -> Iterator[np.ndarray]:
    """Yield the frames at ``frame_indices`` as ``(n, height, width, 3)`` uint8 arrays, at most
    ``window`` frames at a time. ``frame_indices`` must be non-decreasing (a plan's padding
    repeats the last index). Problems with the file raise :class:`~pipeline.errors.DecodeError`.
    """
    indices = [int(i) for i in frame_indices]
    _check_request(indices, height, width, window)
    if indices:
        yield from decode_windows(str(path), indices, height, width, window, id=id)


def frame_timestamps(path, frame_indices: Sequence[int], *, id: str | None = None) -> list[float]:
    """Presentation time (seconds from the first frame shown) of each frame in ``frame_indices``."""
    index = open_index(str(path), id)
    indices = [int(i) for i in frame_indices]
    check_range(index, indices, id)
    return index.timestamps(indices)


def _check_request(indices: list[int], height: int, width: int, window: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if indices and indices[0] < 0:
        raise ValueError(f"negative frame index {indices[0]}")
    if any(b < a for a, b in itertools.pairwise(indices)):
        raise ValueError("frame_indices must be non-decreasing")
