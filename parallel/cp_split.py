"""Splitting a pack over context-parallel ranks, per document, load-balanced for causal attention.

Each document is cut into 2*CP chunks and rank r takes chunks r and 2*CP-1-r (REFERENCES.md):
an early chunk (cheap: few keys) pairs with a late one, so every rank gets about the same
attention work. Chunk borders are rounded to multiples of `align` from the document start: DSA's
block mode shares one key selection per B_q block aligned to the document start
(model/dsa/plan.py), so borders on block borders keep each block whole on one rank and the
result equal to one process. A rank's rows stay sorted by global position, so its tokens,
labels and (t, h, w) positions are plain gathers, and its local cu_seqlens has one segment per
chunk it holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shards.batch import IGNORE_INDEX


def chunk_borders(length: int, cp: int, align: int = 1) -> list[int]:
    """2*cp+1 non-decreasing borders of one document of `length` tokens (the last is `length`).

    Each border is a multiple of `align` or the document's end: DSA blocks start at the
    document's start, so both are block borders; a short document leaves its later chunks empty.
    """
    n = 2 * cp
    borders = [min(length, align * ((i * length + n * align // 2) // (n * align))) for i in range(n)]
    return borders + [length]


def rank_rows(cu_seqlens: torch.Tensor, cp: int, align: int = 1) -> list[torch.Tensor]:
    """Sorted global positions (int64) of every context rank's rows."""
    per_rank: list[list[torch.Tensor]] = [[] for _ in range(cp)]
    cu = [int(x) for x in cu_seqlens.tolist()]
    for a, b in zip(cu[:-1], cu[1:]):
        borders = chunk_borders(b - a, cp, align)
        for r in range(cp):
            for c in (r, 2 * cp - 1 - r):
                per_rank[r].append(torch.arange(a + borders[c], a + borders[c + 1]))
    return [torch.cat(p) if p else torch.zeros(0, dtype=torch.int64) for p in per_rank]


@dataclass
class LocalPack:
    """One rank's part of a pack (see the module docstring)."""

    rows: list[torch.Tensor]  # every rank's global positions, on the host (for plans)
    rows_on_device: list[torch.Tensor]  # the same on the pack's device (for the gathers)
    rank: int
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor  # [3, T_local]
    cu_seqlens: torch.Tensor  # int32, one segment per chunk held
    q_pos: torch.Tensor  # int32 global positions of the local rows
    q_doc: torch.Tensor  # int32 document start of each local row
    total: int  # tokens of the whole pack
    n_labels: int  # labeled tokens of the whole pack
    _host_doc: torch.Tensor | None = None

    @property
    def host_pos(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_pos, q_doc) on the host, for code that walks them in Python."""
        return self.rows[self.rank], self._host_doc

    @property
    def share(self) -> float:
        return self.q_pos.numel() / self.total


def local_pack(batch, cp: int, rank: int, align: int = 1) -> LocalPack:
    """This rank's part of ``batch``. The split is planned on the host copy of the pack's
    metadata (``batch.host``, kept by PackedBatch.to; else the batch itself) and reaches the
    device by asynchronous copies, so splitting never waits for the GPU."""
    host = getattr(batch, "host", None) or batch
    dev = batch.input_ids.device
    cu = host.cu_seqlens.cpu().to(torch.int64)
    rows = rank_rows(cu, cp, align)
    on_dev = [r.to(dev, non_blocking=True) for r in rows]
    mine_h = rows[rank]
    total = batch.num_tokens
    doc_start = cu[torch.searchsorted(cu, mine_h, right=True) - 1]
    # a new local segment wherever the global position jumps or a document starts
    jump = torch.ones(mine_h.numel(), dtype=torch.bool)
    jump[1:] = (mine_h[1:] != mine_h[:-1] + 1) | (doc_start[1:] != doc_start[:-1])
    starts = jump.nonzero()[:, 0]
    local_cu = torch.cat([starts, torch.tensor([mine_h.numel()])]).to(torch.int32)
    mine = on_dev[rank]
    n_labels = int((host.labels != IGNORE_INDEX).sum())
    to_dev = lambda t: t.to(dev, non_blocking=True)
    return LocalPack(rows=rows, rows_on_device=on_dev, rank=rank, input_ids=batch.input_ids[mine],
                     labels=batch.labels[mine], position_ids=batch.position_ids[:, mine],
                     cu_seqlens=to_dev(local_cu), q_pos=to_dev(mine_h.to(torch.int32)),
                     q_doc=to_dev(doc_start.to(torch.int32)), total=total, n_labels=n_labels,
                     _host_doc=doc_start)
