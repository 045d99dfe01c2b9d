"""Decoding the planned frames of one video, a bounded window at a time.

Frames are decoded with decord at the planned size: the ``VideoReader`` is opened with
``width``/``height`` so FFmpeg's scaler converts and shrinks each sampled frame in one pass, and
frames decord only decodes to reach a sampled one are never converted at all. The alternative,
decoding at full size and resizing afterwards, was measured slower (``tests/bench/bench_encode.py
--resize-compare``, 2-core CI machine, bigbuckbunny 720p looped to 64 s, 128 frames at 2 fps to
588x336, one decode thread, CPU seconds, two runs each):

=====================================  ==========  ==========
path                                   run 1       run 2
=====================================  ==========  ==========
decord resizes while decoding          3.56        3.59
decord full size, then PIL bilinear    5.44        5.58
decord full size, no resize at all     4.41        4.51
=====================================  ==========  ==========

Even without resizing, full-size RGB output costs more than decord's resize, so the choice is
clear. The frames are then exactly what ``VideoReader(path, width=W, height=H).get_batch(idx)``
returns, which the tests check.

Memory is bounded by the window: each window is one ``get_batch`` call (decord dedups repeated
indices inside it) handed to numpy without a copy, and decord keeps only its decoder state
between calls. Sorted indices never make decord seek backwards, so windowing costs no extra decode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import decord
import numpy as np

from pipeline.errors import DecodeError


def iter_frame_windows(path, frame_indices: Sequence[int], height: int, width: int, window: int = 32, *,
                       id: str | None = None, num_threads: int = 1) -> Iterator[np.ndarray]:
    """Yield the frames at ``frame_indices`` as read-only ``(n, height, width, 3)`` uint8 arrays,
    ``window`` frames at a time (the last window may be shorter).

    ``frame_indices`` must be non-decreasing (a plan's padding repeats the last index).
    ``num_threads`` is decord's decoder thread count; 1 by default because the encode step runs
    one task per core. Problems with the file raise :class:`DecodeError`.
    """
    path = str(path)
    indices = [int(i) for i in frame_indices]
    _check_request(indices, height, width, window)
    if not indices:
        return
    try:
        reader = decord.VideoReader(path, width=width, height=height, num_threads=num_threads)
    except Exception as exc:
        raise DecodeError(path, "cannot open video", id=id, detail=str(exc)) from None
    if indices[-1] >= len(reader):
        raise DecodeError(path, "frame index out of range", id=id,
                          detail=f"index {indices[-1]}, video has {len(reader)} frames")
    for start in range(0, len(indices), window):
        chunk = indices[start : start + window]
        try:
            batch = reader.get_batch(chunk)
        except Exception as exc:  # decord surfaces decoder failures as DECORDError
            raise DecodeError(path, "truncated or corrupt", id=id, detail=str(exc)) from None
        frames = np.from_dlpack(_DLPackView(batch))
        if frames.shape != (len(chunk), height, width, 3):
            raise DecodeError(path, "unexpected frame shape", id=id, detail=str(frames.shape))
        yield frames


def _check_request(indices: list[int], height: int, width: int, window: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if indices and indices[0] < 0:
        raise ValueError(f"negative frame index {indices[0]}")
    if any(b < a for a, b in zip(indices, indices[1:])):
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
