"""Where decoding may start so that it gives what FFmpeg, decoding from the start, gives.

A keyframe is a good start in a clean stream: a run that enters there and recognizes frames by
their pts gets FFmpeg's frames, and a frame that does not come out sends the run back a keyframe
(:mod:`pipeline.av_decode`). Damage breaks this: where packets were lost (streams joined end to
end by stream copy into MPEG-TS), the decoder conceals, drops and reorders frames (the index finds
this by decoding each GOP with irregular timing: its frames do not come out as its packets' times
say), and it keeps state from that moment that no later keyframe resets: FFmpeg's H.264 decoder deepens its reorder buffer when it
meets frames out of order and keeps that depth, which changes which picture a timestamp lands on
at every later join (measured: frames after the second join of a looped MPEG-TS differ when
decoding starts at an IDR after the first join, and match when it starts before it).

So once a stream is damaged, every later frame is decoded continuously from before the first
damage, with nothing skipped: exact, and as slow as FFmpeg for that part of such a file, whose
part before the damage keeps random access.
"""
from __future__ import annotations

import numpy as np


def gop_entries(n_gops: int, damaged: set[int]) -> np.ndarray:
    """For each GOP, the GOP to start decoding from: itself, or from the first damaged GOP on,
    the GOP before it."""
    entry = np.arange(n_gops)
    if damaged:
        first = min(damaged)
        entry[first:] = max(first - 1, 0)
    return entry
