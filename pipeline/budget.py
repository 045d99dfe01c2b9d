"""The token budget of a video: which frames, at what size, in how many segments.

A sample (its vision tokens plus its text tokens) must fit one sequence of ``max_seq_tokens``. The
planner keeps as much of the video as it can and gives up quality in a fixed order:

1. start at ``cfg.fps`` (never above the source rate) and the largest frame size of at most
   ``max_pixels`` that keeps the aspect ratio with both sides multiples of ``patch * merge``
   (28 px by default), never larger than the source (but at least 28 px a side);
2. lower the sampling rate, down to ``min_fps``;
3. then lower the frame size, down to the smallest size of at least ``min_pixels``;
4. past those floors, split the video into consecutive segments that each fit (at the floor rate
   and size), or with ``overflow="refuse"`` raise a :class:`PlanError`.

Sampling: sample ``i`` is at time ``i / sample_fps`` and takes the source frame nearest to it,
``floor(i * src_fps / sample_fps + 0.5)``, for as long as that frame exists. Since the sample
rate never exceeds the source rate, indices are strictly increasing. A frame's timestamp here is
the plan's estimate, ``index / src_fps`` (segment bounds use it); the encode step stores each
frame's presentation time instead (``pipeline.decode.frame_timestamps``), which differs on
variable-rate video. The frame count is rounded up to whole temporal groups
(``temporal_patch`` frames) by repeating the last index at the end of the last segment, so those
padded frames carry the last index and timestamp again; the ViT sees a still frame there.

A video layout may add text of its own per temporal group (Qwen3-VL's ``<1.5 seconds>`` and
markers around each group, pipeline/video_layout.py); ``extra_tokens`` gives its count for a
segment's planned frame times, and a plan is chosen so that vision, text and that extra text
fit together (the rate is lowered, or segments added, until the exact count fits).

Everything is a pure function of (VideoInfo, text tokens, config, extra_tokens): the same inputs
give the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import PlanError
from pipeline.probe import VideoInfo


@dataclass(frozen=True)
class BudgetConfig:
    """Budget knobs. ``reserve_text_tokens``: None reserves exactly the sample's own text tokens;
    a number reserves at least that many (for planning before the text is tokenized)."""

    max_seq_tokens: int = 262144
    reserve_text_tokens: int | None = None
    fps: float = 2.0
    min_fps: float = 0.5
    max_pixels: int = 448 * 448
    min_pixels: int = 112 * 112
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    overflow: str = "split"

    def __post_init__(self):
        if self.overflow not in ("split", "refuse"):
            raise ValueError(f"overflow must be 'split' or 'refuse', not {self.overflow!r}")
        if min(self.max_seq_tokens, self.patch, self.temporal_patch, self.merge) < 1:
            raise ValueError("max_seq_tokens, patch, temporal_patch and merge must be positive")
        if not 0 < self.min_fps <= self.fps:
            raise ValueError(f"need 0 < min_fps <= fps, got {self.min_fps} and {self.fps}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.max_pixels < self.block**2:
            raise ValueError(f"max_pixels {self.max_pixels} is below one {self.block}x{self.block} block")

    @property
    def block(self) -> int:
        """Pixels per side of one LM token: a patch, merged ``merge`` times."""
        return self.patch * self.merge


@dataclass(frozen=True)
class Segment:
    index: int
    t_start: float
    t_end: float
    frame_indices: list[int]
    timestamps: list[float]
    vision_tokens: int


@dataclass(frozen=True)
class VideoPlan:
    sample_fps: float
    height: int
    width: int
    segments: list[Segment]

    @property
    def vision_tokens(self) -> int:
        return sum(s.vision_tokens for s in self.segments)

    @property
    def n_frames(self) -> int:
        """Frames to decode and store, padding included."""
        return sum(len(s.frame_indices) for s in self.segments)


def vision_tokens(n_frames: int, height: int, width: int, cfg: BudgetConfig = BudgetConfig()) -> int:
    """LM tokens of ``n_frames`` frames at ``height`` x ``width`` (sides must be multiples of the block)."""
    block = cfg.block
    if height <= 0 or width <= 0 or height % block or width % block:
        raise ValueError(f"frame size {height}x{width} is not a positive multiple of {block}")
    return math.ceil(n_frames / cfg.temporal_patch) * (height // block) * (width // block)


# planned frame times -> the layout's extra tokens; per temporal group, so they add up over groups
ExtraTokens = Callable[[Sequence[float]], int]


def _no_extra(timestamps: Sequence[float]) -> int:
    return 0


def plan_video(info: VideoInfo, text_tokens: int, cfg: BudgetConfig = BudgetConfig(), *,
               id: str | None = None, extra_tokens: ExtraTokens | None = None) -> VideoPlan:
    """Choose sampling rate, frame size and segments for one video; see the module docstring."""
    extra = extra_tokens or _no_extra
    if text_tokens < 0:
        raise ValueError(f"text_tokens must be >= 0, got {text_tokens}")
    if info.n_frames < 1 or not info.fps > 0 or info.height < 1 or info.width < 1:
        raise ValueError(f"implausible VideoInfo {info}")
    reserved = text_tokens if cfg.reserve_text_tokens is None else max(text_tokens, cfg.reserve_text_tokens)
    room = cfg.max_seq_tokens - reserved
    ladder = _size_ladder(info.height, info.width, cfg)
    top_fps = min(cfg.fps, info.fps)
    low_fps = min(cfg.min_fps, top_fps)
    floor_h, floor_w = ladder[-1]
    if room < vision_tokens(cfg.temporal_patch, floor_h, floor_w, cfg) + extra([0.0] * cfg.temporal_patch):
        raise PlanError(info.path, "text leaves no room for video", id=id,
                        detail=f"{reserved} text tokens of {cfg.max_seq_tokens}")
    for rung, (height, width) in enumerate(ladder):
        fps = _fitting_fps(info, room, height, width, top_fps if rung == 0 else low_fps, low_fps, cfg, extra)
        if fps is not None:
            return _single_segment_plan(info, fps, height, width, cfg)
    if cfg.overflow == "refuse":
        need = _tokens(info, low_fps, floor_h, floor_w, cfg, extra)
        raise PlanError(info.path, "exceeds token budget at minimum fps and size", id=id,
                        detail=f"{need} vision (and layout text) + {reserved} text tokens > {cfg.max_seq_tokens}")
    return _split_plan(info, room, low_fps, floor_h, floor_w, cfg, extra, id)


def _size_ladder(src_h: int, src_w: int, cfg: BudgetConfig) -> list[tuple[int, int]]:
    """Allowed frame sizes, largest first: from the largest within ``max_pixels`` down to the
    smallest of at least ``min_pixels`` (or just the first, if that is already below the floor).

    Each rung shortens the long side by one block and rounds the short side to the nearest block
    for the source aspect ratio; neither side exceeds the source (rounded down to a block).
    """
    block = cfg.block
    long_src, short_src = max(src_h, src_w), min(src_h, src_w)
    long_cap = max(block, long_src // block * block)
    short_cap = max(block, short_src // block * block)
    ladder = []
    for long_side in range(long_cap, 0, -block):
        short_side = math.floor(short_src * long_side / long_src / block + 0.5) * block
        short_side = min(max(short_side, block), short_cap)
        size = (long_side, short_side) if src_h >= src_w else (short_side, long_side)
        if size[0] * size[1] > cfg.max_pixels:
            continue
        if ladder and size[0] * size[1] < cfg.min_pixels:
            break
        ladder.append(size)
    return ladder


def _tokens(info: VideoInfo, fps: float, height: int, width: int, cfg: BudgetConfig, extra: ExtraTokens,
            room: float = math.inf) -> int:
    """Vision tokens of the whole video at this rate and size, plus the layout's extra text
    (not counted when the vision tokens alone exceed ``room``)."""
    indices = _sample_indices(info, fps)
    vision = vision_tokens(len(indices), height, width, cfg)  # counts the padded last group
    if vision > room or extra is _no_extra:
        return vision
    return vision + extra([i / info.fps for i in _padded(indices.tolist(), cfg.temporal_patch)])


def _fitting_fps(info: VideoInfo, room: int, height: int, width: int, high: float, low: float,
                 cfg: BudgetConfig, extra: ExtraTokens) -> float | None:
    """The highest rate in [low, high] whose tokens fit ``room`` at this size, or None. Without
    extra text the first candidate fits; with it, groups are taken away (about as many as the
    excess holds) until the exact count fits."""
    tp = cfg.temporal_patch
    if _tokens(info, high, height, width, cfg, extra, room) <= room:
        return high
    per_group = vision_tokens(tp, height, width, cfg)
    max_frames = room // per_group * tp
    while max_frames >= tp:
        # frames(fps) = ceil((n - 0.5) * fps / src_fps); solve frames <= max_frames, then settle floats
        fps = max_frames * info.fps / (info.n_frames - 0.5)
        while fps >= low and len(_sample_indices(info, fps)) > max_frames:
            fps = math.nextafter(fps, 0.0)
        if fps < low:
            return None
        over = _tokens(info, fps, height, width, cfg, extra) - room
        if over <= 0:
            return fps
        groups = max_frames // tp
        max_frames -= tp * max(1, over * groups // (room + over))  # the excess's share of groups
    return None


def _sample_indices(info: VideoInfo, sample_fps: float) -> np.ndarray:
    """Source frame nearest to each sample time ``i / sample_fps``, while such a frame exists."""
    step = max(1.0, info.fps / sample_fps)
    count = max(1, math.ceil((info.n_frames - 0.5) / step))
    indices = np.floor(np.arange(count + 1) * step + 0.5).astype(np.int64)
    indices = indices[indices < info.n_frames]
    assert len(indices) and np.all(np.diff(indices) > 0), "sample indices must strictly increase"
    return indices


def _single_segment_plan(info: VideoInfo, fps: float, height: int, width: int, cfg: BudgetConfig) -> VideoPlan:
    frames = _padded(_sample_indices(info, fps).tolist(), cfg.temporal_patch)
    segment = _segment(0, frames, info, height, width, t_end=info.duration_s, cfg=cfg)
    return VideoPlan(fps, height, width, [segment])


def _split_plan(info: VideoInfo, room: int, fps: float, height: int, width: int, cfg: BudgetConfig,
                extra: ExtraTokens, id: str | None) -> VideoPlan:
    """Consecutive segments that each fit ``room``, groups spread as evenly as possible: the
    fewest segments for which every segment's vision tokens and layout text fit (each group's
    cost computed once, segments summed from them; without layout text the first count fits)."""
    tp = cfg.temporal_patch
    frames = _sample_indices(info, fps).tolist()
    padded = _padded(frames, tp)
    vision = vision_tokens(tp, height, width, cfg)
    starts = range(0, len(padded), tp)
    costs = (np.full(len(starts), vision) if extra is _no_extra else  # no layout text: no per-group calls
             np.array([vision + extra([i / info.fps for i in padded[g:g + tp]]) for g in starts]))
    if costs.max() > room:
        raise PlanError(info.path, "text leaves no room for video", id=id,
                        detail=f"one frame group and its layout text exceed the {room} tokens left")
    prefix = np.concatenate([[0], np.cumsum(costs)])
    n_segments = math.ceil(costs.size / (room // int(costs.min())))
    while True:
        base, rem = divmod(costs.size, n_segments)
        sizes = base + (np.arange(n_segments) < rem)  # groups per segment, as _even_segments deals them
        ends = np.cumsum(sizes)
        if np.all(prefix[ends] - prefix[ends - sizes] <= room):
            return VideoPlan(fps, height, width, _even_segments(info, frames, n_segments, height, width, cfg))
        n_segments += 1


def _even_segments(info: VideoInfo, frames: list[int], n_segments: int, height: int, width: int,
                   cfg: BudgetConfig) -> list[Segment]:
    tp = cfg.temporal_patch
    base, extra = divmod(math.ceil(len(frames) / tp), n_segments)
    bounds, start = [], 0
    for k in range(n_segments):
        end = start + base + (1 if k < extra else 0)
        bounds.append((start * tp, min(end * tp, len(frames))))
        start = end
    starts = [frames[a] / info.fps for a, _ in bounds[1:]] + [info.duration_s]
    segments = []
    for k, (a, b) in enumerate(bounds):
        chunk = frames[a:b] if k < n_segments - 1 else _padded(frames[a:b], tp)
        segments.append(_segment(k, chunk, info, height, width, t_end=starts[k], cfg=cfg))
    return segments


def _padded(frames: list[int], group: int) -> list[int]:
    return frames + [frames[-1]] * (-len(frames) % group)


def _segment(index: int, frames: list[int], info: VideoInfo, height: int, width: int, *, t_end: float,
             cfg: BudgetConfig) -> Segment:
    timestamps = [i / info.fps for i in frames]
    return Segment(index, timestamps[0], t_end, frames, timestamps,
                   vision_tokens(len(frames), height, width, cfg))
