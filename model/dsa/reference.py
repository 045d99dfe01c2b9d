"""Plain PyTorch reference of DSA for GQA: selection, attention and the indexer's KL loss.

Written for obviousness, not speed: each query chunk builds a boolean mask of the keys its rows may
see (selected list + always-attended range, causal, same document) over a key window and runs
masked dense softmax attention on it in float32 (float64 if given float64). Chunks keep memory at
O(chunk x window), so it runs at 32K on a GPU; each chunk is checkpointed so the backward does
not keep every chunk's probabilities either. The Triton path must agree with this.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .config import DSAConfig
from .plan import Plan


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def index_logits(q_idx: torch.Tensor, w_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
    """I[c, s] = sum_j w[c, j] * relu(q_idx[c, j] . k_idx[s]) for rows c (any leading shape)."""
    dt = _work_dtype(q_idx)
    z = torch.einsum("...jd,sd->...js", q_idx.to(dt), k_idx.to(dt))
    return (torch.relu(z) * w_idx.to(dt).unsqueeze(-1)).sum(-2)


def pooled_rows(q_idx, w_idx, plan: Plan, owners: torch.Tensor):
    """The pooled indexer query of each owner: (sum of its rows of q_idx, sum of its rows of w_idx)."""
    q0 = plan.own_q0[owners].long()
    nq = plan.own_nq[owners].long()
    j = torch.arange(plan.max_nq, device=q_idx.device)
    valid = (j[None, :] < nq[:, None]).to(_work_dtype(q_idx))
    rows = torch.where(valid > 0, q0[:, None] + j[None, :], q0[:, None])
    qp = (q_idx[rows].to(valid.dtype) * valid[:, :, None, None]).sum(1)
    wp = (w_idx[rows].to(valid.dtype) * valid[:, :, None]).sum(1)
    return qp, wp


def _aggregate(q_idx, w_idx, plan: Plan, cfg: DSAConfig, owners: torch.Tensor, keys: torch.Tensor):
    """Per-owner scores of ``keys`` ([width, d_I] shared, or [n, width, d_I] per owner), no masking."""
    dev = q_idx.device
    nq_max = plan.max_nq
    if cfg.block_agg == "pooled" and cfg.granularity == "block":
        qp, wp = pooled_rows(q_idx, w_idx, plan, owners)
        if keys.dim() == 2:
            return index_logits(qp, wp, keys)
        dt = _work_dtype(q_idx)
        z = torch.einsum("njd,nsd->njs", qp.to(dt), keys.to(dt))
        return (torch.relu(z) * wp.to(dt).unsqueeze(-1)).sum(-2)
    q0 = plan.own_q0[owners].long()
    nq = plan.own_nq[owners].long()
    j = torch.arange(nq_max, device=dev)
    rows = q0[:, None] + j[None, :]
    valid = j[None, :] < nq[:, None]
    rows = torch.where(valid, rows, q0[:, None])
    if keys.dim() == 2:
        lg = index_logits(q_idx[rows], w_idx[rows], keys)  # [n, nq_max, width]
    else:
        dt = _work_dtype(q_idx)
        z = torch.einsum("nqjd,nsd->nqjs", q_idx[rows].to(dt), keys.to(dt))
        lg = (torch.relu(z) * w_idx[rows].to(dt).unsqueeze(-1)).sum(-2)
    if cfg.block_agg == "max" or nq_max == 1:
        return lg.masked_fill(~valid[:, :, None], float("-inf")).amax(1)
    return lg.masked_fill(~valid[:, :, None], 0.0).sum(1)


def owner_scores(q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, owners: torch.Tensor, base: int, width: int):
    """Selection scores of ``owners`` over keys [base, base+width): [n, width], -inf outside candidates.

    ``token``: the query's own logits. ``block``: the aggregate (max, sum, or the pooled query's
    logits) over the owner's rows.
    """
    dev = q_idx.device
    sc = _aggregate(q_idx, w_idx, plan, cfg, owners, k_idx[base:base + width])
    col = base + torch.arange(width, device=dev)
    inside = (col[None, :] >= plan.cand_lo[owners, None].long()) & (col[None, :] < plan.cand_hi[owners, None].long())
    sc = torch.where(sc == 0, torch.zeros_like(sc), sc)  # -0.0 == +0.0, as in the kernel
    return sc.masked_fill(~inside, float("-inf"))


def _topk_ascending(sc, n, k):
    """Ascending column positions of the top min(n, k) of each row (ties to the lower column), -1 padded."""
    order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :k]
    take = torch.arange(order.shape[1], device=sc.device)[None, :] < n[:, None]
    idx = torch.where(take, order, torch.full_like(order, 1 << 30))
    idx = torch.sort(idx, dim=1).values
    return torch.where(idx >= (1 << 30), torch.full_like(idx, -1), idx)


@torch.no_grad()
def select(q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, chunk_elems: int = 1 << 26):
    """Exact top-k per owner, ties to the lower key index: (sel [n_own, k] int32 ascending, -1 padded, count).

    An owner with at most k candidates takes all of them. With ``cfg.coarse`` (block max/sum), the
    pooled scores first pick coarse*k candidates and the exact aggregation ranks only those.
    """
    if cfg.coarse and cfg.granularity == "block" and cfg.block_agg != "pooled":
        return _select_coarse(q_idx, k_idx, w_idx, plan, cfg, chunk_elems)
    dev = q_idx.device
    k = cfg.topk
    n_own = plan.n_owners
    sel = torch.full((n_own, k), -1, dtype=torch.int32, device=dev)
    cnt = (plan.cand_hi - plan.cand_lo).clamp(max=k).to(torch.int32)
    lo_all, hi_all = plan.cand_lo.cpu(), plan.cand_hi.cpu()
    per_owner = plan.max_nq * cfg.index_heads
    o = 0
    while o < n_own:
        width_all = int(hi_all[o:].max() - lo_all[o:].min()) if o < n_own else 1
        step = max(1, chunk_elems // max(1, per_owner * max(width_all, 1)))
        owners = torch.arange(o, min(n_own, o + step), device=dev)
        base = int(lo_all[o:o + step].min())
        width = max(1, int(hi_all[o:o + step].max()) - base)
        sc = owner_scores(q_idx, k_idx, w_idx, plan, cfg, owners, base, width)
        idx = _topk_ascending(sc, cnt[owners].long(), k)
        idx = torch.where(idx >= 0, idx + base, idx)
        sel[owners, : idx.shape[1]] = idx.to(torch.int32)
        o += step
    return sel, cnt


def _select_coarse(q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, chunk_elems: int):
    """Coarse-to-fine: pooled top-(coarse*k) candidates, then the exact max/sum top-k among them."""
    from dataclasses import replace

    k = cfg.topk
    cand, cand_n = select(q_idx, k_idx, w_idx, plan, replace(cfg, block_agg="pooled", coarse=0,
                                                            topk=cfg.coarse * k), chunk_elems)
    dev = q_idx.device
    n_own = plan.n_owners
    sel = torch.full((n_own, k), -1, dtype=torch.int32, device=dev)
    cnt = cand_n.clamp(max=k).to(torch.int32)
    step = max(1, chunk_elems // max(1, plan.max_nq * cfg.index_heads * cand.shape[1]))
    for o in range(0, n_own, step):
        owners = torch.arange(o, min(n_own, o + step), device=dev)
        lst = cand[owners].long()
        sc = _aggregate(q_idx, w_idx, plan, cfg, owners, k_idx[lst.clamp(min=0)])
        sc = torch.where(sc == 0, torch.zeros_like(sc), sc)
        sc = sc.masked_fill(lst < 0, float("-inf"))
        pos = _topk_ascending(sc, cnt[owners].long(), k)
        idx = torch.where(pos >= 0, torch.gather(lst, 1, pos.clamp(min=0)), pos)
        sel[owners, : idx.shape[1]] = idx.to(torch.int32)
    return sel, cnt


def _visible_mask(plan: Plan, rows: torch.Tensor, sel, base: int, width: int) -> torch.Tensor:
    """[C, width] bool: the keys each query row attends to (its owner's list + range, causal)."""
    dev = rows.device
    own = plan.owner_of_row[rows].long()
    col = base + torch.arange(width, device=dev)
    pos = plan.q_pos[rows].long()
    m = (col[None, :] >= plan.rng_lo[own, None].long()) & (col[None, :] < plan.rng_hi[own, None].long())
    if sel is not None:
        lst = sel[own].long()  # [C, k]
        ok = lst >= 0
        tgt = torch.where(ok, lst - base, torch.full_like(lst, width))  # padding goes to a spare column
        ml = torch.zeros(m.shape[0], width + 1, dtype=torch.bool, device=dev)
        ml.scatter_(1, tgt, True)
        m |= ml[:, :width]
    return m & (col[None, :] <= pos[:, None])


def _chunk(q, k, v, q_idx, k_idx, w_idx, mask, rows, base: int, scale: float, want_kl: bool):
    dt = _work_dtype(q)
    hq, hkv = q.shape[1], k.shape[1]
    g = hq // hkv
    qc = q[rows].to(dt).unflatten(1, (hkv, g))  # [C, hkv, g, D]
    kw = k[base:base + mask.shape[1]].to(dt)
    vw = v[base:base + mask.shape[1]].to(dt)
    s = torch.einsum("cgjd,wgd->cgjw", qc, kw) * scale
    s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("cgjw,wgd->cgjd", p, vw).flatten(1, 2)
    lse = torch.logsumexp(s, dim=-1).flatten(1, 2)
    if not want_kl:
        return out, lse, out.new_zeros(())
    pt = p.detach().mean(dim=(1, 2))  # head-mean attention distribution (the KL target)
    il = index_logits(q_idx[rows], w_idx[rows], k_idx[base:base + mask.shape[1]])
    logq = torch.log_softmax(il.masked_fill(~mask, float("-inf")), dim=-1)
    keep = mask & (pt > 0)
    logp = torch.log(torch.where(keep, pt, torch.ones_like(pt)))
    term = torch.where(keep, pt * (logp - torch.where(mask, logq, torch.zeros_like(logq))), torch.zeros_like(pt))
    return out, lse, term.sum()


def attention_and_kl(q, k, v, q_idx, k_idx, w_idx, plan: Plan, sel, softmax_scale=None,
                     chunk_elems: int = 1 << 27, return_lse: bool = False, want_kl: bool = True):
    """Reference forward of one DSA layer given the owners' selection (``sel`` None = dense warm-up).

    Returns (out [Tq, Hq, D] in q's dtype, loss = mean over query rows of KL(p_t || softmax(I_t))),
    where p_t is the head-mean attention distribution over the row's visible keys (detached: no
    gradient reaches q or k from the loss) and I_t the indexer logits over the same keys. Autograd
    gives the attention gradient to q, k, v and the loss gradient to q_idx, k_idx, w_idx.
    ``want_kl=False``: the loss is None and not computed.
    """
    tq, hq, d = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    pos_cpu, doc_cpu = plan.q_pos.cpu(), plan.q_doc.cpu()
    outs, lses, kl = [], [], None
    a = 0
    while a < tq:
        width_all = int(pos_cpu[a:].max()) + 1 - int(doc_cpu[a:].min())
        step = max(1, min(tq - a, chunk_elems // max(1, hq * width_all)))
        b = a + step
        base = int(doc_cpu[a:b].min())
        width = int(pos_cpu[a:b].max()) + 1 - base
        rows = torch.arange(a, b, device=q.device)
        mask = _visible_mask(plan, rows, sel, base, width)
        args = (q, k, v, q_idx, k_idx, w_idx, mask, rows, base, scale, want_kl)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, q_idx, k_idx, w_idx)):
            o, lse, t = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            o, lse, t = _chunk(*args)
        outs.append(o)
        lses.append(lse)
        kl = t if kl is None else kl + t
        a = b
    out = torch.cat(outs).to(q.dtype)
    loss = (kl / tq).to(torch.float32) if want_kl else None
    if return_lse:
        return out, loss, torch.cat(lses)
    return out, loss


def dsa_reference(q, k, v, q_idx, k_idx, w_idx, plan: Plan, cfg: DSAConfig, softmax_scale=None, sel=None):
    """The whole layer: selection (unless ``sel`` is given, or warm-up), attention and KL loss."""
    if cfg.stage == "warmup":
        return attention_and_kl(q, k, v, q_idx, k_idx, w_idx, plan, None, softmax_scale)
    if sel is None:
        sel, _ = select(q_idx.detach(), k_idx.detach(), w_idx.detach(), plan, cfg)
    return attention_and_kl(q, k, v, q_idx, k_idx, w_idx, plan, sel, softmax_scale)
