"""Owners: the unit that shares one key set, built from query positions and document starts.

Every kernel and the reference loop over *owners*. An owner is a run of consecutive query rows
that share one selected key list, plus a contiguous key range that all of them attend to
causally:

| mode              | owner                         | candidates (list)      | range (always attended) |
| ----------------- | ----------------------------- | ---------------------- | ----------------------- |
| sparse, ``token`` | one query row                 | [doc_start, pos + 1)   | empty                   |
| sparse, ``block`` | the rows of one B_q block     | [doc_start, blk_start) | [blk_start, last + 1)   |
| warm-up (dense)   | the rows of one B_q block     | empty                  | [doc_start, last + 1)   |

Queries are given by their *global* position (``q_pos``) and the start of their document
(``q_doc``), and keys are rows of a global key table, so a context-parallel rank can pass its own
query chunk (any subset of positions, e.g. the 2*CP load-balanced chunks) against the all-gathered
keys. Blocks are aligned to the document start (block j covers doc positions [j*B_q, (j+1)*B_q));
a rank whose chunk splits a block gets a block of fewer queries with the same candidates and range,
so results match one process exactly only when chunk borders fall on block borders.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.flash_varlen import VarlenLayout, layout_of_rows

from .config import DSAConfig


@dataclass
class Plan:
    """Per-row and per-owner int32 tensors on the queries' device (see the module docstring)."""

    q_pos: torch.Tensor  # [Tq] global position of each local query row
    q_doc: torch.Tensor  # [Tq] global position of its document's first token
    own_q0: torch.Tensor  # [n_own] first local query row of the owner
    own_nq: torch.Tensor  # [n_own] number of query rows
    cand_lo: torch.Tensor  # [n_own] candidate key range for selection (global key rows)
    cand_hi: torch.Tensor
    rng_lo: torch.Tensor  # [n_own] contiguous key range always attended, causally masked
    rng_hi: torch.Tensor
    max_nq: int  # the most query rows of any owner (1 in token mode)
    owner_of_row: torch.Tensor  # [Tq] owner index of each query row
    max_rng: int = 0  # the longest contiguous range of any owner (at most B_q when sparse, 0 in token mode)

    _host_bounds: tuple[torch.Tensor, torch.Tensor] | None = None
    _host_ranges: torch.Tensor | None = None
    _varlen: VarlenLayout | None = None

    @property
    def n_owners(self) -> int:
        return int(self.own_q0.numel())

    def host_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cand_lo, cand_hi) on the host, read from the device once per plan: the selection
        sizes its buffers from them in every layer that shares this plan."""
        if self._host_bounds is None:
            self._host_bounds = (self.cand_lo.cpu(), self.cand_hi.cpu())
        return self._host_bounds

    def host_ranges(self) -> torch.Tensor:
        """Each owner's contiguous range length on the host, read once per plan: the indexer KL
        sizes its target buffer's waves of owners from them (kernels/indexer_kl.py)."""
        if self._host_ranges is None:
            self._host_ranges = (self.rng_hi - self.rng_lo).cpu()
        return self._host_ranges


    def varlen_layout(self) -> VarlenLayout:
        """The rows as FlashAttention segments (runs of one document, each against its causal key
        prefix), read from the device once per plan like host_bounds."""
        if self._varlen is None:
            self._varlen = layout_of_rows(self.q_pos.cpu(), self.q_doc.cpu(), self.q_pos.device)
        return self._varlen


def doc_starts_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Start position of each token's document, for packed rows 0..total-1."""
    cu = cu_seqlens.to(torch.int64)
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at T={total}, got {cu_seqlens.tolist()}")
    pos = torch.arange(total, device=cu.device)
    doc = torch.searchsorted(cu, pos, right=True) - 1
    return cu[doc].to(torch.int32)


def build_plan(q_pos: torch.Tensor, q_doc: torch.Tensor, cfg: DSAConfig, dense: bool) -> Plan:
    """Owners for ``cfg`` (``dense`` = warm-up) from sorted, per-document-contiguous query rows."""
    dev = q_pos.device
    pos = q_pos.to(torch.int64)
    doc = q_doc.to(torch.int64)
    tq = pos.numel()
    if tq == 0:
        raise ValueError("no query rows")
    if bool((pos < doc).any()):
        raise ValueError("a query position lies before its document start")
    token = cfg.granularity == "token" and not dense
    rows = torch.arange(tq, device=dev)
    if token:
        starts = rows
    else:
        bq = cfg.block_q
        blk = (pos - doc) // bq
        new = torch.ones(tq, dtype=torch.bool, device=dev)
        if tq > 1:
            new[1:] = (doc[1:] != doc[:-1]) | (blk[1:] != blk[:-1]) | (pos[1:] != pos[:-1] + 1)
        starts = rows[new]
    ends = torch.cat([starts[1:], torch.tensor([tq], device=dev)])
    nq = ends - starts
    first = pos[starts]
    last = pos[ends - 1]
    d0 = doc[starts]
    if token:
        cand_lo, cand_hi = d0, first + 1
        rng_lo = rng_hi = first + 1
    else:
        bstart = d0 + ((first - d0) // cfg.block_q) * cfg.block_q
        if dense:
            cand_lo = cand_hi = d0
            rng_lo, rng_hi = d0, last + 1
        else:
            cand_lo, cand_hi = d0, bstart
            rng_lo, rng_hi = bstart, last + 1
    owner_of_row = torch.repeat_interleave(torch.arange(starts.numel(), device=dev), nq)
    i32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
    max_nq, max_rng = torch.stack([nq.max(), (rng_hi - rng_lo).max()]).tolist()  # one read from the device
    return Plan(
        q_pos=i32(pos), q_doc=i32(doc), own_q0=i32(starts), own_nq=i32(nq),
        cand_lo=i32(cand_lo), cand_hi=i32(cand_hi), rng_lo=i32(rng_lo), rng_hi=i32(rng_hi),
        max_nq=int(max_nq), owner_of_row=i32(owner_of_row), max_rng=int(max_rng),
    )


def plan_for_packed(cu_seqlens: torch.Tensor, total: int, cfg: DSAConfig, dense: bool, device) -> Plan:
    """Plan for a whole packed sequence on one process (queries == keys, rows 0..T-1)."""
    cu = cu_seqlens.to(device)
    doc = doc_starts_from_cu_seqlens(cu, total)
    pos = torch.arange(total, device=device, dtype=torch.int32)
    return build_plan(pos, doc, cfg, dense)
