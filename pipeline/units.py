"""Grouping planned samples into units of work of similar stored size.

One encode task writes one shard per unit, so units of similar byte size give shards of similar
size and tasks of similar duration (decode cost follows the frames stored, and so the bytes).
"""

from __future__ import annotations

from pipeline.budget import VideoPlan

# Per stored segment: three tar members (header 512 B each, data padded to 512 B) and the JSON metadata.
_SEGMENT_OVERHEAD_BYTES = 4096


def split_into_units(items: list[tuple[str, int]], target_bytes: int) -> list[list[str]]:
    """Group ``(key, estimated bytes)`` into units of about ``target_bytes``.

    Items are taken in the order given (the caller fixes the order, e.g. sorted by key, so the
    units are deterministic) and keep that order inside a unit. An item joins the open unit while
    that brings the unit's size closer to the target, so units land within half an item of the
    target rather than always under it. An item larger than the target is a unit by itself.
    """
    if target_bytes <= 0:
        raise ValueError(f"target_bytes must be positive, got {target_bytes}")
    units: list[list[str]] = []
    current: list[str] = []
    size = 0
    seen = set()
    for key, nbytes in items:
        if nbytes < 0:
            raise ValueError(f"negative size {nbytes} for {key!r}")
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen.add(key)
        if nbytes > target_bytes:
            if current:
                units.append(current)
            units.append([key])
            current, size = [], 0
            continue
        if current and abs(size + nbytes - target_bytes) > abs(size - target_bytes):
            units.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    if current:
        units.append(current)
    return units


def estimate_stored_bytes(plan: VideoPlan, compression_ratio: float) -> int:
    """Bytes a plan will take in a shard: raw uint8 RGB frames (padding included) over the
    compression ratio measured for the frame codec, plus the per-segment tar and metadata overhead."""
    if compression_ratio <= 0:
        raise ValueError(f"compression_ratio must be positive, got {compression_ratio}")
    raw = plan.n_frames * plan.height * plan.width * 3
    return int(raw / compression_ratio) + _SEGMENT_OVERHEAD_BYTES * len(plan.segments)
