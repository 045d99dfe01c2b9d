"""Rotary position embedding over several position axes: (t, h, w) for the LM, (h, w) for the ViT.

Each axis owns some of the rotary frequency pairs (a contiguous section, or every third pair in
Qwen3-VL's interleaved layout), so a token's angle on a pair comes from the position on that
pair's axis. With one axis (or equal positions on every axis,
as text tokens have) this is ordinary RoPE. Packed documents need no special case: positions
are given per token and restart per document upstream.
"""
from __future__ import annotations

import torch


def multi_axis_cos_sin(positions: torch.Tensor, sections: tuple[int, ...], head_dim: int,
                       theta: float, layout: str = "sections") -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [S, head_dim] (float32) for `positions` [n_axes, S].

    `sections[a]` frequency pairs go to axis a; they sum to head_dim // 2. `layout` says which:
    "sections" = contiguous blocks in axis order; "interleaved" = pairs dealt 0, 1, 2, 0, 1, 2,
    ... while every axis still has pairs to take, the rest to axis 0 (Qwen3-VL's text rotary).
    """
    if positions.dim() != 2 or positions.shape[0] != len(sections):
        raise ValueError(f"positions must be [{len(sections)}, S], got {tuple(positions.shape)}")
    if sum(sections) * 2 != head_dim:
        raise ValueError(f"sections {sections} must sum to head_dim/2 = {head_dim // 2}")
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, device=positions.device, dtype=torch.float32) / half)
    axis_of_pair = _axis_of_pair(sections, layout).to(positions.device)
    return _cos_sin(positions.to(torch.float32)[axis_of_pair].t() * inv_freq[None, :])


def axial_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, head_dim] for 2-D positions [2, S] where both axes share one frequency
    ladder of head_dim // 4 pairs (row pairs first, then column pairs): Qwen3-VL's ViT rotary."""
    if positions.dim() != 2 or positions.shape[0] != 2 or head_dim % 4:
        raise ValueError(f"axial rotary needs positions [2, S] and head_dim % 4 == 0, got "
                         f"{tuple(positions.shape)} and {head_dim}")
    quarter = head_dim // 4
    inv_freq = 1.0 / theta ** (torch.arange(0, quarter, device=positions.device, dtype=torch.float32) / quarter)
    pos = positions.to(torch.float32)
    return _cos_sin(torch.cat([pos[0][:, None] * inv_freq, pos[1][:, None] * inv_freq], dim=-1))


def _axis_of_pair(sections: tuple[int, ...], layout: str) -> torch.Tensor:
    if layout == "sections":
        return torch.repeat_interleave(torch.arange(len(sections)), torch.tensor(sections))
    if layout != "interleaved":
        raise ValueError(f"unknown rotary layout {layout!r}")
    n = len(sections)
    axis = torch.zeros(sum(sections), dtype=torch.int64)
    for a in range(1, n):
        axis[a:n * sections[a]:n] = a
    if any(int((axis == a).sum()) != sections[a] for a in range(1, n)):
        raise ValueError(f"sections {sections} cannot be interleaved (a later axis outgrows the first)")
    return axis


def _cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[S, half] angles -> cos, sin [S, 2 * half] in the half-split layout."""
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def block_rotary(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """cos, sin [S, D] -> the one tensor [2, S, D] a Megatron TransformerBlock hands its layers as
    `rotary_pos_emb`. Why not its `rotary_pos_cos`/`rotary_pos_sin`: under activation
    recomputation (megatron.core.recompute.checkpointed_forward) those never reach the layers,
    which then ran without positions; `rotary_pos_emb` is passed through both paths."""
    return torch.stack([cos, sin])


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [S, H, D] by cos/sin [S, D] (half-split layout), in float32, back to x's dtype:
    one Triton pass on a GPU (model/rope_kernel.py), PyTorch elsewhere."""
    if x.is_cuda:
        from model.rope_kernel import rotary_kernel

        return rotary_kernel(x, cos, sin)
    return rotary_reference(x, cos, sin)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rotary in plain PyTorch: the CPU path and the kernel's reference."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    out = xf * cos[:, None, :] + rotated * sin[:, None, :]
    return out.to(x.dtype)
