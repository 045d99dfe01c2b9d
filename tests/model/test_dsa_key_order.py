"""The backward in key order (model/dsa/key_tiles.py, kernels/attention_dkdv.py) against brute force
and the PyTorch reference (TRITON_INTERPRET=1 on machines without CUDA)."""
import pytest
import torch

from model.dsa import DSAConfig, dsa_attention_rows
from model.dsa.kernels import attention as attn_mod
from model.dsa.key_tiles import key_tiles
from model.dsa.plan import build_plan
from model.dsa.select import select
from tests.model.dsa_cases import DEV, case, gen, rel, rows_of


def _key_sets(plan, sel, sel_n):
    """Each owner's keys (list and range) as a Python set, straight from the plan."""
    sets = []
    for o in range(plan.n_owners):
        s = set(range(int(plan.rng_lo[o]), int(plan.rng_hi[o])))
        if sel is not None:
            s |= set(sel[o, : int(sel_n[o])].tolist())
        sets.append(s)
    return sets


@pytest.mark.parametrize("stage,bn,max_pairs", [("sparse", 16, 2), ("sparse", 64, 3), ("warmup", 16, 4)])
def test_key_tiles_are_the_transpose_of_the_owners_key_sets(stage, bn, max_pairs):
    g = gen()
    t = 150
    pos, doc = rows_of([0, 7, 70, t], t)  # documents that start inside a tile
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=11, granularity="block", block_q=8, stage=stage)
    plan = build_plan(pos, doc, cfg, dense=stage == "warmup")
    sel = sel_n = None
    if stage == "sparse":
        qi, ki, wi = (x.detach() for x in case(g, t, 2, 1)[3:])
        sel, sel_n = select(qi, ki, wi, plan, cfg)
    tiles = key_tiles(plan, sel, sel_n, t, bn, max_pairs)
    sets = _key_sets(plan, sel, sel_n)
    want = {}  # (tile, owner) -> bits
    for o, keys in enumerate(sets):
        for key in keys:
            want[(key // bn, o)] = want.get((key // bn, o), 0) | (1 << (key % bn))
    covered = []
    for c in range(tiles.n_chunks):
        tile, lo, hi = int(tiles.chunk_tile[c]), int(tiles.chunk_lo[c]), int(tiles.chunk_hi[c])
        assert 0 < hi - lo <= max_pairs
        for p in range(lo, hi):
            bits = int(tiles.pair_bits[p]) & ((1 << 64) - 1)
            covered.append(((tile, int(tiles.pair_owner[p])), bits))
    assert sorted(covered) == sorted(want.items())
    assert [k for k, _ in covered] == sorted(k for k, _ in covered)  # by tile, then owner
    # a tile of several chunks owns their scratch slots, in chunk order; others own none
    per_tile = {}
    for c in range(tiles.n_chunks):
        per_tile.setdefault(int(tiles.chunk_tile[c]), []).append(int(tiles.chunk_slot[c]))
    split = {int(x): (int(a), int(b)) for x, a, b in zip(tiles.split_tile, tiles.split_lo, tiles.split_hi)}
    for tile, slots in per_tile.items():
        if len(slots) == 1:
            assert slots == [-1] and tile not in split
        else:
            assert slots == list(range(*split[tile]))
    assert any(len(s) > 1 for s in per_tile.values())
    nq = plan.own_nq.tolist()
    attended = sum(nq[o] * len(s) for o, s in enumerate(sets))
    assert tiles.density == pytest.approx(attended / sum(nq[o] * bn for _, o in want))


@pytest.mark.parametrize("stage,rows", [("sparse", None), ("sparse", "cp"), ("warmup", None)])
def test_key_order_backward_matches_reference_and_query_order(stage, rows, monkeypatch):
    """dq, dk, dv of the key order against the reference and against the query order (atomics),
    with tiles small enough that some are split over several programs."""
    g = gen()
    t = 90
    args = case(g, t, 8, 2)
    pos, doc = rows_of([0, 5, 41, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=9, granularity="block", block_q=8, stage=stage,
                    warmup_kernel="triton")
    idx = torch.arange(t, device=DEV) if rows is None else torch.cat([torch.arange(8, 24), torch.arange(56, 80)]).to(DEV)
    xs = [(a[idx] if i in (0, 3, 5) else a).detach().requires_grad_() for i, a in enumerate(args)]
    dout = torch.randn(len(idx), 8, 16, generator=g, device=DEV)
    monkeypatch.setattr(attn_mod, "KEY_TILE", (16, 2))
    monkeypatch.setattr(attn_mod, "KEY_ORDER_MIN_DENSITY", 0.0)
    grads = {}
    o_ref, _, aux = dsa_attention_rows(*xs, pos[idx], doc[idx], cfg, backend="reference")
    sel = (aux["sel"], aux["sel_n"]) if stage == "sparse" else None
    grads["reference"] = torch.autograd.grad((o_ref * dout).sum(), xs[:3])
    for order in ("query", "key"):
        monkeypatch.setitem(attn_mod.BWD_ORDER, "block", order)
        o, _, _ = dsa_attention_rows(*xs, pos[idx], doc[idx], cfg, backend="triton", sel=sel)
        grads[order] = torch.autograd.grad((o * dout).sum(), xs[:3])
    for name, a, b, c in zip("qkv", grads["key"], grads["query"], grads["reference"]):
        assert rel(a, c) < 1e-4, (name, rel(a, c))
        assert rel(a, b) < 1e-5, (name, rel(a, b))
