"""Selection recall against a brute-force computation on small random tensors: each query's dense
attention, head by head, summed over the keys an independent top-k (by the indexer formula, per
query or by the block max) picks; recall 1 where k covers every key."""
from __future__ import annotations

import math

import pytest
import torch

from model.dsa.config import DSAConfig
from model.dsa.recall import selection_recall

T, HQ, HKV, D, HI, DI = 41, 4, 2, 8, 2, 4
CU = torch.tensor([0, 27, 41], dtype=torch.int32)


def tensors(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    # positive indexer inputs: no relu zeros, so no ties between scores (the brute force breaks none)
    return r(T, HQ, D) * 2, r(T, HKV, D), r(T, HI, DI).abs(), r(T, DI).abs(), r(T, HI).abs()


def brute_force(q, k, qi, ki, wi, cfg):
    """[T, heads]: per query and head, the head's dense softmax mass on the attended keys."""
    logits = torch.einsum("tjd,sd->tjs", qi, ki).relu().mul(wi[:, :, None]).sum(1)  # [T, T] indexer scores
    out = []
    for t in range(T):
        d0 = max(int(c) for c in CU[:-1] if c <= t)
        if cfg.granularity == "token":
            cand = list(range(d0, t + 1))
            scores = logits[t, d0:t + 1]
            attended = set(cand) if len(cand) <= cfg.topk else {cand[i] for i in scores.topk(cfg.topk).indices}
        else:
            b0 = d0 + (t - d0) // cfg.block_q * cfg.block_q
            block_rows = [r for r in range(b0, min(b0 + cfg.block_q, T)) if max(int(c) for c in CU[:-1] if c <= r) == d0]
            cand = list(range(d0, b0))
            if len(cand) <= cfg.topk:
                picked = set(cand)
            else:
                agg = logits[block_rows][:, d0:b0].amax(0)
                picked = {cand[i] for i in agg.topk(cfg.topk).indices}
            attended = picked | set(range(b0, t + 1))
        kept = []
        for h in range(HQ):
            s = (k[d0:t + 1, h // (HQ // HKV)] @ q[t, h]) / math.sqrt(D)
            p = torch.softmax(s, 0)
            kept.append(sum(float(p[j - d0]) for j in attended))
        out.append(kept)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("granularity", ["token", "block"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recall_equals_brute_force(granularity, seed):
    cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=6, block_q=4, granularity=granularity, coarse=0)
    q, k, qi, ki, wi = tensors(seed)
    got = selection_recall(q, k, qi, ki, wi, CU, cfg)
    want = brute_force(q, k, qi, ki, wi, cfg)
    assert torch.allclose(got.head_share.double(), want, atol=1e-5)
    assert torch.allclose(got.share.double(), want.mean(1), atol=1e-5)
    assert (want.max(1).values - want.min(1).values).max() > 0.1  # heads keep different shares
    assert got.share.min() < 0.9  # the selection drops real mass somewhere: the comparison means something
    visible = torch.tensor([t - max(int(c) for c in CU[:-1] if c <= t) + 1 for t in range(T)])
    assert torch.equal(got.selective, visible > cfg.topk)
    assert torch.all(got.share[~got.selective] > 1 - 1e-6)
    # spread: exp of each head's dense entropy; 1 for a query that sees only itself
    for t in (0, 13, T - 1):
        d0 = max(int(c) for c in CU[:-1] if c <= t)
        for h in range(HQ):
            p = torch.softmax((k[d0:t + 1, h // (HQ // HKV)] @ q[t, h]) / math.sqrt(D), 0)
            assert math.isclose(float(got.spread[t, h]), float(torch.exp(-(p * p.log()).sum())), rel_tol=1e-5)
    assert torch.allclose(got.spread[0], torch.ones(HQ)) and got.spread.max() > 2


@pytest.mark.parametrize("granularity", ["token", "block"])
def test_recall_is_one_when_k_covers_every_key(granularity):
    cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=T, block_q=4, granularity=granularity)
    got = selection_recall(*tensors(3), CU, cfg)
    assert torch.allclose(got.share, torch.ones(T), atol=1e-6)
    assert not got.selective.any() and got.stats()["queries"] == 0


def test_stats_are_mean_and_fifth_percentile_of_selective_queries():
    cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=6, block_q=4, granularity="token")
    got = selection_recall(*tensors(4), CU, cfg)
    v = got.share[got.selective].double().sort().values
    stats = got.stats()
    assert stats["queries"] == v.numel()
    assert stats["mean"] == pytest.approx(float(v.mean()))
    assert v[0] <= stats["p5"] <= v[max(1, int(0.05 * v.numel()) + 1)]


@pytest.mark.parametrize("granularity", ["token", "block"])
def test_triton_selection_gives_the_reference_recall(granularity):
    cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=6, block_q=4, granularity=granularity)
    args = [x.float() for x in tensors(5)]
    want = selection_recall(*args, CU, cfg)
    got = selection_recall(*args, CU, cfg, backend="triton")
    assert torch.allclose(got.share, want.share, atol=1e-6)
