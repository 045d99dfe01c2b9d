"""Where each ViT patch of a pack sits: its (row, col) in its frame and its frame group.

The loader lays out a video's patches as temporal group t, merged row i, merged col j, then the
2x2 sub-patch (di, dj) (shards/batch.py); from `video_grid_thw` alone this module recovers each
patch's row 2i+di and column 2j+dj for the ViT's 2-D rotary, and the segment boundaries of the
frame groups, within which the ViT attends.
"""
from __future__ import annotations

import torch


def patch_rows_cols(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """[2, N] (row, col) of every patch, videos in order, in the loader's patch order."""
    pieces = []
    for groups, rows, cols in grid_thw.tolist():
        mr, mc = rows // merge, cols // merge
        i = torch.arange(mr).view(mr, 1, 1, 1)
        j = torch.arange(mc).view(1, mc, 1, 1)
        di = torch.arange(merge).view(1, 1, merge, 1)
        dj = torch.arange(merge).view(1, 1, 1, merge)
        r = (i * merge + di).expand(mr, mc, merge, merge).reshape(-1)
        c = (j * merge + dj).expand(mr, mc, merge, merge).reshape(-1)
        pieces.append(torch.stack([r, c]).repeat(1, groups))
    if not pieces:
        return torch.zeros(2, 0, dtype=torch.int64)
    return torch.cat(pieces, dim=1)


def frame_group_cu_seqlens(grid_thw: torch.Tensor) -> torch.Tensor:
    """int32 boundaries of the frame groups of every video: each group is rows*cols patches."""
    lengths = [rows * cols for groups, rows, cols in grid_thw.tolist() for _ in range(groups)]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    if lengths:
        cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu
