"""The plain PyTorch DSA reference against independent, naive formulas (no kernels involved)."""
import math

import torch

from model.dsa import DSAConfig, dsa_attention_rows
from model.dsa import reference as ref
from model.dsa.plan import build_plan, doc_starts_from_cu_seqlens


def _rand_case(gen, t, hq, hkv, d=8, hi=2, di=8):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    return r(t, hq, d), r(t, hkv, d), r(t, hkv, d), r(t, hi, di), r(t, di), r(t, hi)


def _cu(gen, t, n_docs):
    cuts = sorted(torch.randperm(t - 1, generator=gen)[: n_docs - 1].add(1).tolist())
    return torch.tensor([0, *cuts, t], dtype=torch.int32)


def _naive_dense(q, k, v, qi, ki, wi, cu):
    """Per document, plain causal softmax attention and KL(head-mean p || softmax(I)), no chunks."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    outs, kl = [], 0.0
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        kk = k[a:b].repeat_interleave(hq // hkv, 1)
        vv = v[a:b].repeat_interleave(hq // hkv, 1)
        s = torch.einsum("thd,shd->hts", q[a:b], kk) / math.sqrt(d)
        n = b - a
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)
        outs.append(torch.einsum("hts,shd->thd", p, vv))
        pt = p.mean(0)
        il = (torch.relu(torch.einsum("tjd,sd->tjs", qi[a:b], ki[a:b])) * wi[a:b, :, None]).sum(1)
        lq = torch.log_softmax(il.masked_fill(~causal, float("-inf")), -1)
        kl = kl + torch.where(causal, pt * (torch.log(pt.clamp_min(1e-300)) - torch.where(causal, lq, 0)), 0).sum()
    return torch.cat(outs), kl / q.shape[0]


def _rows(cu, t):
    return torch.arange(t, dtype=torch.int32), doc_starts_from_cu_seqlens(cu, t)


def test_warmup_reference_matches_naive_dense():
    gen = torch.Generator().manual_seed(torch.seed())
    t = int(torch.randint(20, 60, (1,), generator=gen))
    for hq, hkv in ((4, 4), (4, 2), (8, 1)):
        q, k, v, qi, ki, wi = _rand_case(gen, t, hq, hkv)
        cu = _cu(gen, t, 3)
        pos, doc = _rows(cu, t)
        cfg = DSAConfig(index_heads=2, index_dim=8, topk=4, block_q=4, stage="warmup")
        out, loss, _ = dsa_attention_rows(q, k, v, qi, ki, wi, pos, doc, cfg, backend="reference")
        o2, l2 = _naive_dense(q, k, v, qi, ki, wi, cu)
        torch.testing.assert_close(out, o2, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(loss.double(), l2, rtol=1e-6, atol=1e-7)


def test_sparse_with_k_above_doc_length_is_dense():
    gen = torch.Generator().manual_seed(torch.seed())
    t = 37
    q, k, v, qi, ki, wi = _rand_case(gen, t, 4, 2)
    cu = torch.tensor([0, 11, 30, 37], dtype=torch.int32)
    pos, doc = _rows(cu, t)
    o_dense, l_dense = _naive_dense(q, k, v, qi, ki, wi, cu)
    for gran in ("token", "block"):
        cfg = DSAConfig(index_heads=2, index_dim=8, topk=19, granularity=gran, block_q=4)
        out, loss, aux = dsa_attention_rows(q, k, v, qi, ki, wi, pos, doc, cfg, backend="reference")
        torch.testing.assert_close(out, o_dense, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(loss.double(), l_dense, rtol=1e-6, atol=1e-7)


def _brute_select(qi, ki, wi, plan, cfg):
    """Per owner: rank candidates by (-score, index) with Python sorting; all if at most k.
    Pooled: one row, the sums of the owner's q_I and w rows. Coarse: the pooled top coarse*k first."""
    out = []
    for o in range(plan.n_owners):
        lo, hi = int(plan.cand_lo[o]), int(plan.cand_hi[o])
        q0, nq = int(plan.own_q0[o]), int(plan.own_nq[o])

        def score(s, agg):
            if agg == "pooled":
                v = float((torch.relu(qi[q0:q0 + nq].sum(0) @ ki[s]) * wi[q0:q0 + nq].sum(0)).sum())
            else:
                vals = [float((torch.relu(qi[t] @ ki[s]) * wi[t]).sum()) for t in range(q0, q0 + nq)]
                v = max(vals) if agg == "max" else sum(vals)
            return 0.0 if v == 0 else v

        cands = list(range(lo, hi))
        if cfg.coarse and cfg.block_agg != "pooled" and cfg.granularity == "block":
            sc = {s: score(s, "pooled") for s in cands}
            cands = sorted(sc, key=lambda s: (-sc[s], s))[: cfg.coarse * cfg.topk]
        sc = {s: score(s, cfg.block_agg) for s in cands}
        keys = sorted(sc, key=lambda s: (-sc[s], s))[: cfg.topk]
        out.append(sorted(keys))
    return out


def test_reference_select_is_exact_topk_with_ties():
    gen = torch.Generator().manual_seed(torch.seed())
    t = 45
    # small integers: exact arithmetic and many ties
    qi = torch.randint(-2, 3, (t, 2, 4), generator=gen).double()
    ki = torch.randint(-2, 3, (t, 4), generator=gen).double()
    wi = torch.randint(-1, 3, (t, 2), generator=gen).double()
    cu = torch.tensor([0, 9, 45], dtype=torch.int32)
    pos, doc = _rows(cu, t)
    for gran, agg, coarse in (("token", "max", 0), ("block", "max", 0), ("block", "sum", 0), ("block", "pooled", 0),
                              ("block", "max", 2), ("block", "sum", 2)):
        cfg = DSAConfig(index_heads=2, index_dim=4, topk=6, granularity=gran, block_q=4, block_agg=agg,
                        coarse=coarse)
        plan = build_plan(pos, doc, cfg, dense=False)
        sel, cnt = ref.select(qi, ki, wi, plan, cfg)
        want = _brute_select(qi, ki, wi, plan, cfg)
        for o, w in enumerate(want):
            assert int(cnt[o]) == len(w)
            assert sel[o, : len(w)].tolist() == w, (gran, agg, coarse, o)
            assert (sel[o, len(w):] == -1).all()


def test_plan_owners_cover_rows_and_respect_documents():
    gen = torch.Generator().manual_seed(torch.seed())
    t = int(torch.randint(30, 90, (1,), generator=gen))
    cu = _cu(gen, t, 4)
    pos, doc = _rows(cu, t)
    for gran in ("token", "block"):
        for dense in (False, True):
            cfg = DSAConfig(granularity=gran, block_q=8)
            p = build_plan(pos, doc, cfg, dense)
            assert int(p.own_nq.sum()) == t and torch.equal(p.own_q0[0], torch.tensor(0, dtype=torch.int32))
            q0, nq = p.own_q0.long(), p.own_nq.long()
            first, last = pos[q0].long(), pos[q0 + nq - 1].long()
            assert (doc[q0] == doc[q0 + nq - 1]).all()  # an owner never spans documents
            assert (p.cand_lo >= doc[q0]).all() and (p.rng_hi.long() == torch.where(p.rng_hi > p.rng_lo, last + 1, p.rng_hi.long())).all()
            assert (p.cand_hi.long() <= first + 1).all()
