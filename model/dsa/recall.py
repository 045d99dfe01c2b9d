"""Selection recall: how much of a query's dense attention the keys DSA lets it see hold.

For one layer of a pack: q [T, Hq, D] and k [T, Hkv, D] as the attention uses them (after norm
and rotary), the indexer's q_I, k_I, w and the pack's cu_seqlens. Per query t, with p_h(t, .)
head h's dense causal softmax over its document's keys up to t,

    recall(t) = sum_h sum_{s in A(t)} p_h(t, s) / sum_h sum_s p_h(t, s)

where A(t) is what t attends to in sparse mode: its owner's selected keys, plus (``block``) the
block's own keys up to t. That is the attention mass summed over heads that the selection keeps,
as a share of the whole (each head's mass is 1, so the denominator is Hq); ``head_share`` keeps
the terms per head, sum over s in A(t) of p_h(t, s). A query with at most k visible keys sees
them all (recall 1); ``selective`` marks the others, where the rule matters. ``spread`` is how many
keys a head's dense attention effectively covers, exp of its entropy: a head spread over many more
keys than k loses mass under any selection, however good the indexer (a layer to keep dense, or
for the sparse stage to re-train).
The selection is the one the model runs: model/dsa/reference.py's on the CPU, the Triton path's
(model/dsa/select.py) with ``backend="triton"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from . import reference as ref
from .config import DSAConfig
from .plan import plan_for_packed


@dataclass
class Recall:
    share: torch.Tensor  # [T] float32: the kept share of each query's head-summed dense attention mass
    selective: torch.Tensor  # [T] bool: the query has more visible keys than k
    # [T, Hq] float32: the kept share of each head's own mass. The head sum can look fine while
    # one head (e.g. the one that copies from far back) loses the only key it attends to.
    head_share: torch.Tensor
    spread: torch.Tensor  # [T, Hq] float32: exp(entropy) of each head's dense attention, in keys

    def stats(self, only_selective: bool = True) -> dict:
        """mean and 5th percentile (of the selective queries by default), and how many queries."""
        v = self.share[self.selective] if only_selective else self.share
        if v.numel() == 0:
            return {"mean": float("nan"), "p5": float("nan"), "queries": 0}
        v = v.double()
        return {"mean": float(v.mean()), "p5": float(torch.quantile(v, 0.05)), "queries": int(v.numel())}


@torch.no_grad()
def selection_recall(q, k, q_idx, k_idx, w_idx, cu_seqlens, cfg: DSAConfig, backend: str = "reference",
                     chunk_elems: int = 1 << 26) -> Recall:
    """Recall of ``cfg``'s selection (its granularity, k, block rule) for every query of the pack."""
    t, hq, d = q.shape
    cfg = replace(cfg, stage="sparse")
    plan = plan_for_packed(cu_seqlens, t, cfg, dense=False, device=q.device)
    select = ref.select if backend == "reference" else _triton_select()
    sel, _ = select(q_idx.float(), k_idx.float(), w_idx.float(), plan, cfg)
    scale = 1.0 / math.sqrt(d)
    hkv = k.shape[1]
    pos, doc = plan.q_pos.long(), plan.q_doc.long()
    head_share = torch.empty(t, hq, dtype=torch.float32, device=q.device)
    spread = torch.empty_like(head_share)
    pos_cpu, doc_cpu = pos.cpu(), doc.cpu()
    a = 0
    while a < t:
        width_all = int(pos_cpu[a:].max()) + 1 - int(doc_cpu[a:].min())
        b = a + max(1, min(t - a, chunk_elems // max(1, hq * width_all)))
        base = int(doc_cpu[a:b].min())
        width = int(pos_cpu[a:b].max()) + 1 - base
        rows = torch.arange(a, b, device=q.device)
        col = base + torch.arange(width, device=q.device)
        visible = (col[None, :] >= doc[rows, None]) & (col[None, :] <= pos[rows, None])
        kept = ref._visible_mask(plan, rows, sel, base, width)
        qc = q[rows].float().unflatten(1, (hkv, hq // hkv))
        s = torch.einsum("cgjd,wgd->cgjw", qc, k[base:base + width].float()) * scale
        p = torch.softmax(s.masked_fill(~visible[:, None, None, :], float("-inf")), dim=-1)
        head_share[a:b] = (p * kept[:, None, None, :]).sum(-1).flatten(1)
        spread[a:b] = torch.special.entr(p).sum(-1).exp().flatten(1)
        a = b
    return Recall(share=head_share.mean(1), selective=(pos - doc + 1) > cfg.topk, head_share=head_share,
                  spread=spread)


def _triton_select():
    from .select import select

    return select
