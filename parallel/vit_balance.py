"""Assigning the ViT's frame groups to ranks by estimated cost.

The ViT attends within one frame group (one temporal patch of one video), so any set of frame
groups is a valid ViT input and a pack's groups can be spread over the ranks that share it.
Videos differ wildly in size (an hour at low resolution next to a clip at high resolution);
giving each video to the rank that owns its tokens leaves the others idle. Groups are instead
assigned largest first to the least loaded rank (LPT), which keeps max/mean load near 1 once
there are several groups per rank.

Cost of a group of n patches, per layer: the matmuls (qkv, out, MLP) grow with n, attention
within the group with n^2 (4h^2 + 2h*ffn multiply-adds per patch, 2h per patch pair).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FrameGroup:
    video: int
    patch_start: int  # first patch in the pack's pixel_patches
    patches: int
    token_start: int  # first merged vision token, counted over the pack's vision tokens
    tokens: int
    rows: int  # grid in patches
    cols: int


def frame_groups(grid_thw: torch.Tensor, merge: int = 2) -> list[FrameGroup]:
    out, patch, token = [], 0, 0
    for v, (groups, rows, cols) in enumerate(grid_thw.tolist()):
        n = rows * cols
        for _ in range(groups):
            out.append(FrameGroup(v, patch, n, token, n // (merge * merge), rows, cols))
            patch += n
            token += n // (merge * merge)
    return out


def group_cost(patches: int, hidden: int, ffn: int) -> float:
    return patches * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * hidden * patches * patches


def assign_by_cost(costs: list[float], ranks: int) -> list[int]:
    """Rank of each item: largest cost first, each to the currently least loaded rank (ties to
    the lower rank, so every rank computes the same answer)."""
    heap = [(0.0, r) for r in range(ranks)]
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(heap)
        owner[i] = r
        heapq.heappush(heap, (load + costs[i], r))
    return owner


def assign_to_token_owner(groups: list[FrameGroup], token_owner: torch.Tensor) -> list[int]:
    """The baseline: every video's groups to the rank owning the video's first token."""
    first = {}
    for g in groups:
        first.setdefault(g.video, int(token_owner[g.token_start]))
    return [first[g.video] for g in groups]


def imbalance(costs: list[float], owner: list[int], ranks: int) -> float:
    """max / mean of the per-rank load."""
    load = [0.0] * ranks
    for c, r in zip(costs, owner):
        load[r] += c
    mean = sum(load) / ranks
    return max(load) / mean if mean else 1.0
