"""Video layouts as data: how a video is spelled among a document's tokens.

A model family was trained with one layout, and an imported model must see it again:

- ``block`` (longshot's own, and Qwen2/2.5-VL's): the chat format's ``vision_open``, one
  placeholder per vision token of the whole video, ``vision_close``; the loader numbers the
  block's rotary positions by time (shards/positions.py).
- ``timestamped-groups`` (Qwen3-VL): every temporal group (``temporal_patch`` frames) is its own
  small block, preceded by its time as text: ``<1.5 seconds>`` ``vision_open`` placeholders
  ``vision_close``, group after group. The time of a group is the mean of its first and last
  frame's time, each frame at (source index / source fps), as Qwen3-VL's processor computes it;
  the positions number each group like a picture of its own (shards/positions.py).

The layout's extra text (times and per-group markers) is ordinary text of the document: the
encode step tokenizes it into the stored ids, so every token count downstream (the shard index,
the pack plan) holds it, and the budget counts it before a video is planned (``GroupText``).
Each time text is tokenized on its own, like every other piece of the chat format.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.chat_formats import ChatFormat


@dataclass(frozen=True)
class VideoLayout:
    name: str
    per_group: bool  # markers (and a time) around each temporal group, not around the video
    group_time: str = ""  # text before each group's markers; {seconds} is the group's time


BLOCK = VideoLayout("block", per_group=False)
TIMESTAMPED_GROUPS = VideoLayout("timestamped-groups", per_group=True, group_time="<{seconds:.1f} seconds>")
LAYOUTS = {layout.name: layout for layout in (BLOCK, TIMESTAMPED_GROUPS)}


def video_layout(name: str) -> VideoLayout:
    """The layout called ``name``, or ValueError naming the known ones."""
    if name not in LAYOUTS:
        raise ValueError(f"video layout {name!r}: choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def group_seconds(timestamps, temporal_patch: int) -> list[float]:
    """Time of each temporal group: the mean of its first and last frame's time."""
    ts = [float(t) for t in timestamps]
    if not ts or len(ts) % temporal_patch:
        raise ValueError(f"{len(ts)} frame times: need a positive multiple of {temporal_patch}")
    return [(ts[g] + ts[g + temporal_patch - 1]) / 2 for g in range(0, len(ts), temporal_patch)]


class GroupText:
    """The token ids a layout puts around each temporal group, for one tokenizer and format.

    ``timestamps`` are the planned frame times (source index / source fps, the last group padded
    by repeating its last frame), the same numbers for the budget and for the stored text.
    """

    def __init__(self, layout: VideoLayout, fmt: ChatFormat, encode, temporal_patch: int):
        self.layout, self.temporal_patch, self._encode = layout, temporal_patch, encode
        self._open, self._close = encode(fmt.vision_open), encode(fmt.vision_close)
        self._times: dict[str, list[int]] = {}

    def _time_ids(self, seconds: float) -> list[int]:
        text = self.layout.group_time.format(seconds=seconds)
        if text not in self._times:
            self._times[text] = self._encode(text)
        return self._times[text]

    def extra_tokens(self, timestamps) -> int:
        """Tokens the layout adds to a document for a video with these frame times."""
        if not self.layout.per_group:
            return 0  # the block's markers are text of the turn already
        per_group = len(self._open) + len(self._close)
        return sum(len(self._time_ids(s)) + per_group for s in group_seconds(timestamps, self.temporal_patch))

    def expand(self, ids: np.ndarray, loss_mask: np.ndarray, vision_at: int, timestamps):
        """Ids and loss mask with the groups' text inserted at ``vision_at``, and where each
        group's placeholders go (a tuple, one index per group); unchanged for the block layout."""
        if not self.layout.per_group:
            return ids, loss_mask, vision_at
        pieces, slots, at = [ids[:vision_at]], [], vision_at
        for seconds in group_seconds(timestamps, self.temporal_patch):
            before = self._time_ids(seconds) + self._open
            slots.append(at + len(before))
            pieces += [np.asarray(before, ids.dtype), np.asarray(self._close, ids.dtype)]
            at += len(before) + len(self._close)
        pieces.append(ids[vision_at:])
        added = at - vision_at
        mask = np.concatenate([loss_mask[:vision_at], np.zeros(added, bool), loss_mask[vision_at:]])
        return np.concatenate(pieces), mask, tuple(slots)
