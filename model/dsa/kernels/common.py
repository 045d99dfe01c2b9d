"""Small helpers shared by the kernel launchers."""
from __future__ import annotations

import torch


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def ieee(t: torch.Tensor) -> bool:
    """fp32/fp64 inputs get IEEE fp32 dots (tests compare at fp32 tolerance); bf16/fp16 use the tensor cores."""
    return t.dtype in (torch.float32, torch.float64)
