"""Which frames to ask decord for, so that it decodes straight on instead of seeking.

When the next wanted frame lies in the next GOP, decord's ``get_batch`` seeks: it rewinds to the
start of the file, seeks forward to the keyframe, checks the frame it landed on, and often seeks
again. Each such seek also makes decord's FFmpeg 4.1 demuxer read packets in proportion to the
file's length (a one-off count with a perf uprobe on ``av_read_frame``: 2,636 reads per GOP on a
1-minute remux of bigbuckbunny, 10,763 on a 5-minute one), so on long videos a seek costs more
than decoding a few frames. Asking for the last frame before that keyframe as well (a "bridge",
decoded and then dropped) lets decord decode straight through into the next GOP without seeking.

A bridge costs decoding the frames between the previous wanted frame and the keyframe, which a
seek would skip, so it is used only when that tail is short (``max_tail`` frames; bridging every
crossing at 0.5 fps, tails ~25 frames, was slower than seeking in a one-off run on the 5-minute
remux: 18.05 vs 15.95 CPU s). ``tests/bench/bench_encode.py`` (bigbuckbunny 720p remuxed to
10 min, 5.3 s GOPs, 2-core CI machine shared with other jobs, CPU seconds): 2 fps 33.71 with
bridges vs 39.24 seeking at every GOP; 0.5 fps 31.79 vs 33.24. Jumps over whole GOPs are left to
decord's seek: they skip far more decoding than they cost.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

DEFAULT_MAX_TAIL = 16


def bridged_request(indices: Sequence[int], key_indices: Sequence[int], previous: int | None,
                    max_tail: int = DEFAULT_MAX_TAIL) -> tuple[list[int], list[bool]]:
    """Frames to request for ``indices`` (sorted), and which of them were wanted.

    ``previous`` is the last frame already requested from the same reader (None for a fresh one);
    ``key_indices`` are the reader's keyframe indices, sorted.
    """
    request: list[int] = []
    wanted: list[bool] = []
    for index in indices:
        if previous is not None:
            gop = bisect.bisect_right(key_indices, index) - 1
            if gop >= 1 and bisect.bisect_right(key_indices, previous) - 1 == gop - 1:
                bridge = key_indices[gop] - 1
                if previous < bridge <= previous + max_tail:
                    request.append(bridge)
                    wanted.append(False)
        request.append(index)
        wanted.append(True)
        previous = index
    return request, wanted
