"""Small helpers shared by the kernel launchers and kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def ieee(t: torch.Tensor) -> bool:
    """fp32/fp64 inputs get IEEE fp32 dots (tests compare at fp32 tolerance); bf16/fp16 use the tensor cores."""
    return t.dtype in (torch.float32, torch.float64)


@triton.jit
def gather_index_tile(ptrs, fallback, holds, mask=None):
    """A loop's tile of gather indices, loaded under ``holds`` (a condition true wherever the tile
    is used). At a loop's top level Triton's pipeliner makes an index load an async copy with a
    stage of its own and leaves the gathers it names a distance of one, issued after the tile's
    work and awaited at the next tile's top: they overlap nothing at any depth. Under an `if` it
    stays a register load issued the loop's depth ahead, and every stage holds gathered rows
    (sm_90 TTGIR waits num 0 -> 4 in the attention forward; tests/bench/kernel_schedule.py,
    tests/bench/RESULTS.md 2026-12-07 night)."""
    idx = fallback
    if holds:
        if mask is None:
            idx = tl.load(ptrs)
        else:
            idx = tl.load(ptrs, mask=mask, other=0)
    return idx
