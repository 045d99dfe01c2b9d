"""Selection on the Triton path: indexer scores in row chunks, then exact top-k per owner.

The score matrix of all owners over all keys is O(L^2) (O(L^2 / B_q) in block mode), so it never
exists whole: owners are processed in chunks whose score buffer stays under ``buf_bytes``
(1 GiB by default), the buffer is reused, and only the [n_owners, k] int32 selection survives.

Block rules (config.py): ``max``/``sum`` score B_q query rows per key; ``pooled`` scores one
pooled row per block (pool_rows, then the token-row kernel); ``coarse`` > 0 runs ``pooled`` with
coarse*k first and then the exact max/sum over each block's candidate list only.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .config import DSAConfig
from .kernels.index_scores import owner_scores, pool_rows
from .kernels.topk import topk_rows
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
    lo = plan.cand_lo.cpu()
    hi = plan.cand_hi.cpu()
    n = hi - lo
    if int(n.max()) <= k:  # every owner takes all of its candidates: no scores needed
        dummy = torch.empty((1, 1), dtype=torch.float32, device=dev)
        topk_rows(dummy, 0, plan.cand_lo, plan.cand_hi, sel, sel_n, 0, n_own, k)
        return sel, sel_n
    span = int(hi.max()) - int(lo.min())
    rows = max(1, min(n_own, buf_bytes // (4 * span)))
    buf = torch.empty(rows * span, dtype=torch.float32, device=dev)
    qsrc, wsrc, q0src, token = _rows_source(q_idx, w_idx, plan, cfg)
    for o in range(0, n_own, rows):
        nr = min(rows, n_own - o)
        base = int(lo[o:o + nr].min())
        width = max(1, int(hi[o:o + nr].max()) - base)
        view = buf[: nr * width].view(nr, width)
        owner_scores(qsrc, wsrc, k_idx, q0src, plan.own_nq, plan.cand_lo, plan.cand_hi, o, nr,
                     base, width, view, k, token, cfg.block_agg == "max")
        topk_rows(view, base, plan.cand_lo, plan.cand_hi, sel, sel_n, o, nr, k, fallbacks=fallbacks)
    return sel, sel_n


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
