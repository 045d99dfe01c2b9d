"""Rotary position embedding over several position axes: (t, h, w) for the LM, (h, w) for the ViT.

Each axis owns a contiguous section of the rotary frequency pairs, so a token's angle on a pair
comes from the position on that pair's axis. With one axis (or equal positions on every axis,
as text tokens have) this is ordinary RoPE. Packed documents need no special case: positions
are given per token and restart per document upstream.
"""
from __future__ import annotations

import torch


def multi_axis_cos_sin(positions: torch.Tensor, sections: tuple[int, ...], head_dim: int,
                       theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [S, head_dim] (float32) for `positions` [n_axes, S].

    `sections[a]` frequency pairs go to axis a, in order; they sum to head_dim // 2.
    """
    if positions.dim() != 2 or positions.shape[0] != len(sections):
        raise ValueError(f"positions must be [{len(sections)}, S], got {tuple(positions.shape)}")
    if sum(sections) * 2 != head_dim:
        raise ValueError(f"sections {sections} must sum to head_dim/2 = {head_dim // 2}")
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, device=positions.device, dtype=torch.float32) / half)
    axis_of_pair = torch.repeat_interleave(
        torch.arange(len(sections), device=positions.device), torch.tensor(sections, device=positions.device))
    pos = positions.to(torch.float32)[axis_of_pair]  # [half, S]: the axis each pair reads
    angles = pos.t() * inv_freq[None, :]  # [S, half]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [S, H, D] by cos/sin [S, D] (half-split layout), in float32, back to x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    out = xf * cos[:, None, :] + rotated * sin[:, None, :]
    return out.to(x.dtype)
