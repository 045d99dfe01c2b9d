"""Multimodal rotary positions (t, h, w) of one document: text, one video block, text; or, in
Qwen3-VL's layout, text with each temporal group of the video at its own place (``group_positions``).

Why three coordinates: a video token's neighbours in time, row and column should each be near
it in position, so the LM's rotary embedding rotates separate frequency bands by time, row and
column (Qwen2-VL's M-RoPE). Text tokens use the same running index on all three.

Why time from timestamps rather than the group index: the sampling rate differs between videos
(an hour-long video is sampled sparser than a clip), so positions step by real seconds
(``tokens_per_second`` steps per second) and the model sees the same time scale for every video.

Rounding is half up (``floor(x + 0.5)``), not Python's half-to-even, so a timestamp exactly
between two steps always goes the same way.
"""

import numpy as np


def group_times(timestamps: np.ndarray | list[float], temporal_patch: int = 2) -> np.ndarray:
    """Start time (seconds) of each temporal group: the timestamp of its first frame.

    Raises ValueError when the count is not a multiple of ``temporal_patch`` or the timestamps
    go backwards (positions must not decrease along a video).
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.ndim != 1 or timestamps.size % temporal_patch:
        raise ValueError(f"{timestamps.size} timestamps: need one per frame, a multiple of {temporal_patch}")
    if not np.all(np.isfinite(timestamps)) or np.any(np.diff(timestamps) < 0):
        raise ValueError("timestamps must be finite and non-decreasing")
    return timestamps[::temporal_patch]


def document_positions(
    n_text: int,
    vision_at: int = 0,
    grid: tuple[int, int, int] | None = None,
    times: np.ndarray | None = None,
    tokens_per_second: float = 2.0,
) -> np.ndarray:
    """int64 [3, n_text + G*h*w] positions of a document, starting at 0.

    The document is ``text[:vision_at]``, then a video block of ``grid = (G, h, w)`` merged tokens
    in (t, row, col) row-major order whose group g starts at ``times[g]`` seconds, then
    ``text[vision_at:]``. Without ``grid`` the document is text only.
    Block positions: t = base + round(times[g] * tokens_per_second), h = base + row,
    w = base + col, with base the running index at the block; text after the block resumes at
    one past the largest position the block used.
    """
    if not 0 <= vision_at <= n_text:
        raise ValueError(f"vision_at {vision_at} is outside the {n_text} text tokens")
    if grid is None:
        return np.broadcast_to(np.arange(n_text, dtype=np.int64), (3, n_text)).copy()
    groups, rows, cols = grid
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (groups,) or min(grid) < 1:
        raise ValueError(f"grid {grid} needs G, h, w >= 1 and {groups} group times, got {times.shape}")
    if tokens_per_second < 0:
        raise ValueError(f"tokens_per_second must be >= 0, got {tokens_per_second}")
    t_steps = np.floor(times * tokens_per_second + 0.5).astype(np.int64)
    if np.any(np.diff(t_steps) < 0) or (t_steps.size and t_steps[0] < 0):
        raise ValueError("group times must be >= 0 and non-decreasing")

    base = vision_at
    block = np.empty((3, groups, rows, cols), np.int64)
    block[0] = (base + t_steps)[:, None, None]
    block[1] = (base + np.arange(rows))[None, :, None]
    block[2] = (base + np.arange(cols))[None, None, :]
    after = base + max(int(t_steps[-1]), rows - 1, cols - 1) + 1
    before = np.arange(vision_at, dtype=np.int64)
    tail = np.arange(after, after + n_text - vision_at, dtype=np.int64)
    return np.concatenate(
        [
            np.broadcast_to(before, (3, before.size)),
            block.reshape(3, -1),
            np.broadcast_to(tail, (3, tail.size)),
        ],
        axis=1,
    )


def group_positions(n_text: int, slots: tuple[int, ...], grid: tuple[int, int, int]) -> np.ndarray:
    """int64 [3, n_text + G*h*w] positions of a document whose temporal group g sits before text
    index ``slots[g]`` (the text around the groups holds their times and markers).

    Qwen3-VL's numbering: text counts up by one per token; a group is numbered like a picture of
    its own at the running index p, t = p, h = p + row, w = p + col, and the text after it
    resumes at p + max(h, w). Time is in the text, not in the positions.
    """
    groups, rows, cols = grid
    if min(grid) < 1 or len(slots) != groups:
        raise ValueError(f"grid {grid} needs G, h, w >= 1 and {groups} group places, got {len(slots)}")
    if any(b < a for a, b in zip((0, *slots), (*slots, n_text), strict=True)):
        raise ValueError(f"group places {list(slots)} must be non-decreasing within the {n_text} text tokens")
    picture = np.stack(np.broadcast_arrays(np.zeros((rows, 1), np.int64), np.arange(rows)[:, None],
                                           np.arange(cols)[None, :])).reshape(3, -1)
    pieces, pos = [], 0
    for i, (start, end) in enumerate(zip((0, *slots), (*slots, n_text), strict=True)):
        if i:  # group i - 1 comes before this stretch of text
            pieces.append(pos + picture)
            pos += max(rows, cols)
        pieces.append(np.broadcast_to(np.arange(pos, pos + end - start, dtype=np.int64), (3, end - start)))
        pos += end - start
    return np.concatenate(pieces, axis=1)
