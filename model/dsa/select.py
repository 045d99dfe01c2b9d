"""Selection on the Triton path: indexer scores in row chunks, then exact top-k per owner.

The score matrix of all owners over all keys is O(L^2) (O(L^2 / B_q) in block mode), so it never
exists whole: owners are processed in chunks whose score buffer stays under ``buf_bytes``
(1 GiB by default), the buffer is reused, and only the [n_owners, k] int32 selection survives.
Token rows go first through kernels/pivot_filter.py, which keeps only scores above a sampled
pivot and writes no score buffer; the rows it cannot finish take the buffered path.

Block rules (config.py): ``max``/``sum`` score B_q query rows per key; ``pooled`` scores one
pooled row per block (pool_rows, then the token-row kernel); ``coarse`` > 0 runs ``pooled`` with
coarse*k first and then the exact max/sum over each block's candidate list only.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .config import DSAConfig
from .kernels import topk as topk_mod
from .kernels.index_scores import owner_scores, pool_rows
from .kernels.pivot_filter import filter_rows
from .kernels.topk import topk_in_scratch, topk_rows
from .plan import Plan


def _rows_source(q_idx, w_idx, plan: Plan, cfg: DSAConfig):
    """(q rows, w rows, own_q0, token-row kernel?) that the score kernel reads for ``cfg``."""
    if cfg.granularity == "block" and cfg.block_agg == "pooled":
        qp, wp = pool_rows(q_idx, w_idx, plan.own_q0, plan.own_nq)
        ar = torch.arange(plan.n_owners, dtype=torch.int32, device=q_idx.device)
        return qp, wp, ar, True
    return q_idx, w_idx, plan.own_q0, cfg.granularity == "token"


@torch.no_grad()
def select(q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, buf_bytes: int = 1 << 30, fallbacks=None):
    """(sel [n_own, k] int32 ascending key rows, -1 padded; sel_n [n_own] int32).

    ``fallbacks`` (int32 [1], optional) counts rows whose sampled top-k pivot missed (topk.py).
    """
    if cfg.coarse and cfg.granularity == "block" and cfg.block_agg != "pooled":
        return _select_coarse(q_idx, k_idx, w_idx, plan, cfg, buf_bytes, fallbacks)
    dev = q_idx.device
    k = cfg.topk
    n_own = plan.n_owners
    sel = torch.empty((n_own, k), dtype=torch.int32, device=dev)
    sel_n = torch.empty(n_own, dtype=torch.int32, device=dev)
    lo, hi = plan.host_bounds()
    if int((hi - lo).max()) <= k:  # every owner takes all of its candidates: no scores needed
        dummy = torch.empty((1, 1), dtype=torch.float32, device=dev)
        topk_rows(dummy, 0, plan.cand_lo, plan.cand_hi, sel, sel_n, 0, n_own, k)
        return sel, sel_n
    runs = [(0, n_own)]
    ns = topk_mod.CONFIG["sample"]
    if cfg.granularity == "token" and topk_mod.CONFIG["filter"] and ns > 1 \
            and int((hi - lo).max()) > max(topk_mod.SCRATCH * k, ns):  # else no row could be sampled
        runs = _select_filtered(q_idx, k_idx, w_idx, plan, k, buf_bytes, fallbacks, sel, sel_n)
    for a, b in runs:
        _select_buffered(q_idx, k_idx, w_idx, plan, cfg, buf_bytes, fallbacks, sel, sel_n, a, b, lo, hi)
    return sel, sel_n


def _select_buffered(q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, buf_bytes: int, fallbacks, sel, sel_n,
                     first: int, end: int, lo, hi) -> None:
    """Owners first..end-1: scores in chunks of a reused buffer, then top-k per row."""
    k = cfg.topk
    span = int(hi[first:end].max()) - int(lo[first:end].min())
    rows = max(1, min(end - first, buf_bytes // (4 * span)))
    buf = torch.empty(rows * span, dtype=torch.float32, device=q_idx.device)
    qsrc, wsrc, q0src, token = _rows_source(q_idx, w_idx, plan, cfg)
    for o in range(first, end, rows):
        nr = min(rows, end - o)
        base = int(lo[o:o + nr].min())
        width = max(1, int(hi[o:o + nr].max()) - base)
        view = buf[: nr * width].view(nr, width)
        owner_scores(qsrc, wsrc, k_idx, q0src, plan.own_nq, plan.cand_lo, plan.cand_hi, o, nr,
                     base, width, view, k, token, cfg.block_agg == "max")
        topk_rows(view, base, plan.cand_lo, plan.cand_hi, sel, sel_n, o, nr, k, fallbacks=fallbacks)


def filtered_chunks(q_idx, k_idx, w_idx, plan: Plan, k: int, buf_bytes: int, sel, sel_n, redo,
                    with_topk: bool = True) -> None:
    """pivot_filter over all token owners in chunks whose scratch stays under buf_bytes, each chunk's
    top-k taken in its scratch (unless ``with_topk`` is False: the benchmark times the parts); rows
    left unfinished are marked in redo [n_own] int8."""
    n_own = plan.n_owners
    cap = topk_mod.SCRATCH * k
    rows = max(1, min(n_own, buf_bytes // (4 * (2 * cap + topk_mod.CONFIG["sample"]))))
    scr = torch.empty((rows, 2 * cap), dtype=torch.int32, device=q_idx.device)
    copied = torch.empty(rows, dtype=torch.int32, device=q_idx.device)
    for o in range(0, n_own, rows):
        nr = min(rows, n_own - o)
        filter_rows(q_idx, w_idx, k_idx, plan, o, nr, k, scr[:nr], copied[:nr])
        if with_topk:
            topk_in_scratch(scr[:nr], copied[:nr], plan.cand_lo, plan.cand_hi, sel, sel_n, o, nr, k, redo)


def _select_filtered(q_idx, k_idx, w_idx, plan: Plan, k: int, buf_bytes: int, fallbacks, sel, sel_n):
    """Token owners through pivot_filter (no score buffer); returns the (first, end) runs of owners
    it could not finish (short rows, rows of a document that starts inside a program's group,
    missed pivots) for the buffered path."""
    redo = torch.zeros(plan.n_owners, dtype=torch.int8, device=q_idx.device)
    filtered_chunks(q_idx, k_idx, w_idx, plan, k, buf_bytes, sel, sel_n, redo)
    marks = redo.cpu()
    if fallbacks is not None:
        fallbacks += int((marks == 1).sum())
    left = torch.nonzero(marks).flatten()
    if left.numel() == 0:
        return []
    breaks = torch.nonzero(torch.diff(left) != 1).flatten()
    firsts = torch.cat([left[:1], left[breaks + 1]])
    ends = torch.cat([left[breaks], left[-1:]]) + 1
    return list(zip(firsts.tolist(), ends.tolist()))


def _select_coarse(q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, buf_bytes: int, fallbacks):
    """Pooled top-(coarse*k) candidates per block, then the exact max/sum top-k among them."""
    k = cfg.topk
    cand, cand_n = select(q_idx, k_idx, w_idx, plan, replace(cfg, block_agg="pooled", coarse=0,
                                                            topk=cfg.coarse * k), buf_bytes, fallbacks)
    dev = q_idx.device
    n_own, width = cand.shape
    zeros = torch.zeros(n_own, dtype=torch.int32, device=dev)
    pos = torch.empty((n_own, k), dtype=torch.int32, device=dev)
    sel_n = torch.empty(n_own, dtype=torch.int32, device=dev)
    rows = max(1, min(n_own, buf_bytes // (4 * width)))
    buf = torch.empty(rows * width, dtype=torch.float32, device=dev)
    for o in range(0, n_own, rows):
        nr = min(rows, n_own - o)
        view = buf[: nr * width].view(nr, width)
        owner_scores(q_idx, w_idx, k_idx, plan.own_q0, plan.own_nq, zeros, cand_n, o, nr, 0, width, view, k,
                     False, cfg.block_agg == "max", key_list=cand)
        topk_rows(view, 0, zeros, cand_n, pos, sel_n, o, nr, k, fallbacks=fallbacks)
    sel = torch.where(pos >= 0, torch.gather(cand, 1, pos.long().clamp(min=0)), pos)
    return sel, sel_n


@torch.no_grad()
def score_rows(q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, owner0: int, n_rows: int):
    """The scores buffer the selection would see for owners owner0.., as (buf, base); for tests."""
    lo = plan.cand_lo[owner0:owner0 + n_rows].cpu()
    hi = plan.cand_hi[owner0:owner0 + n_rows].cpu()
    base = int(lo.min())
    width = max(1, int(hi.max()) - base)
    buf = torch.full((n_rows, width), float("nan"), dtype=torch.float32, device=q_idx.device)
    qsrc, wsrc, q0src, token = _rows_source(q_idx, w_idx, plan, cfg)
    owner_scores(qsrc, wsrc, k_idx, q0src, plan.own_nq, plan.cand_lo, plan.cand_hi, owner0, n_rows,
                 base, width, buf, cfg.topk, token, cfg.block_agg == "max")
    return buf, base
