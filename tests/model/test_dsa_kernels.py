"""DSA Triton kernels against the PyTorch reference (TRITON_INTERPRET=1 on machines without CUDA).

Fresh random inputs every run; small sizes because the interpreter runs each program in numpy.
"""
import pytest
import torch  # TRITON_INTERPRET is set for the session in tests/conftest.py

from model.dsa import DSAConfig, dsa_attention, dsa_attention_rows, set_backend  # noqa: E402
from model.dsa import reference as ref  # noqa: E402
from model.dsa.kernels import topk as topk_mod  # noqa: E402
from model.dsa.kernels.pivot_filter import filter_rows  # noqa: E402
from model.dsa.kernels.topk import topk_in_scratch, topk_rows  # noqa: E402
from model.dsa.plan import build_plan  # noqa: E402
from model.dsa.select import score_rows, select  # noqa: E402
from tests.model.dsa_cases import DEV, case, gen, rel, rows_of  # noqa: E402


# ------------------------------------------------------------------------------------------ top-k
def test_topk_kernel_is_exact_with_ties():
    g = gen()
    k = 16
    n_rows, width = 12, 300
    lo = torch.randint(0, 40, (n_rows,), generator=g, device=DEV).int()
    n = torch.randint(1, 250, (n_rows,), generator=g, device=DEV).int()
    n[:3] = torch.tensor([k, k + 1, 3], dtype=torch.int32)  # at, just above and below k
    hi = (lo + n).clamp(max=width).int()
    buf = torch.randint(-3, 4, (n_rows, width), generator=g, device=DEV).float()  # heavy ties
    buf[::2] = torch.randn(n_rows // 2, width, generator=g, device=DEV)
    buf[1, : width // 2] = 0.0
    buf[1, width // 2:] = -0.0  # one zero for the radix select, as for sorting
    sel = torch.empty(n_rows, k, dtype=torch.int32, device=DEV)
    cnt = torch.empty(n_rows, dtype=torch.int32, device=DEV)
    topk_rows(buf, 0, lo, hi, sel, cnt, 0, n_rows, k, tile=64)
    for r in range(n_rows):
        a, b = int(lo[r]), int(hi[r])
        order = torch.sort(buf[r, a:b], descending=True, stable=True).indices[:k] + a
        want = torch.sort(order).values
        assert int(cnt[r]) == min(k, b - a)
        assert sel[r, : want.numel()].tolist() == want.tolist(), r
        assert (sel[r, want.numel():] == -1).all()


def exact_topk(row, k):
    """Ascending indices of the k largest, ties to the lower index (what the kernel promises)."""
    return torch.sort(torch.sort(row, descending=True, stable=True).indices[:k]).values


def test_topk_sampled_pivot_path_is_exact_and_falls_back_when_the_guess_misses():
    """Rows longer than 4k and the sample go through a sampled pivot and a scratch copy.

    Random rows take that path; rows built so that the pivot misses (all ties: more than 4k
    elements at the pivot; the sampled runs holding the row's largest values: fewer than k at or
    above it) must fall back, and every row must equal the exact top-k either way.
    """
    g = gen()
    k, ns = 8, 32  # scratch 32 slots, a 32-score sample
    n_rows, width = 10, 300
    buf = torch.randn(n_rows, width, generator=g, device=DEV)
    buf[:4] = torch.round(buf[:4] * 4)  # ties, but not so many that the copy overflows
    buf[4] = 1.5  # every element a tie: the copy overflows, fallback
    sampled = torch.tensor([(i * (width - 1)) // (ns - 1) for i in range(ns)], device=DEV)
    buf[5, sampled] = 100.0 + torch.arange(sampled.numel(), device=DEV, dtype=torch.float32)
    lo = torch.zeros(n_rows, dtype=torch.int32, device=DEV)
    hi = torch.full((n_rows,), width, dtype=torch.int32, device=DEV)
    sel = torch.empty(n_rows, k, dtype=torch.int32, device=DEV)
    cnt = torch.empty(n_rows, dtype=torch.int32, device=DEV)
    fallbacks = torch.zeros(1, dtype=torch.int32, device=DEV)
    topk_rows(buf, 0, lo, hi, sel, cnt, 0, n_rows, k, tile=64, fallbacks=fallbacks, sample=ns)
    for r in range(n_rows):
        assert sel[r].tolist() == exact_topk(buf[r], k).tolist(), r
    assert (cnt == k).all()
    assert 2 <= int(fallbacks) < n_rows  # rows 4 and 5 at least; most rows keep their copy
    # the same rows through the five-pass path alone
    sel2 = torch.empty_like(sel)
    topk_rows(buf, 0, lo, hi, sel2, cnt, 0, n_rows, k, tile=64, sample=0)
    assert torch.equal(sel, sel2)


def test_pivot_filtered_token_selection_is_exact(monkeypatch):
    """Token rows scored against a sampled pivot, no score buffer (pivot_filter.py): the rows it
    finishes equal the reference's exact top-k; short rows and rows of a document that starts
    inside a program's row group are handed back; select() as a whole equals the reference."""
    monkeypatch.setitem(topk_mod.CONFIG, "sample", 64)
    g = gen()
    t, k = 170, 7
    _, _, _, qi, ki, wi = case(g, t, 2, 1, grad=False)
    pos, doc = rows_of([0, 25, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=k, granularity="token", block_q=4)
    plan = build_plan(pos, doc, cfg, dense=False)
    n_own, cap = plan.n_owners, topk_mod.SCRATCH * k
    scr = torch.empty((n_own, 2 * cap), dtype=torch.int32, device=DEV)
    copied = torch.empty(n_own, dtype=torch.int32, device=DEV)
    sel = torch.full((n_own, k), -5, dtype=torch.int32, device=DEV)
    sel_n = torch.full((n_own,), -5, dtype=torch.int32, device=DEV)
    redo = torch.zeros(n_own, dtype=torch.int8, device=DEV)
    filter_rows(qi, wi, ki, plan, 0, n_own, k, scr, copied)
    topk_in_scratch(scr, copied, plan.cand_lo, plan.cand_hi, sel, sel_n, 0, n_own, k, redo)
    want, want_n = ref.select(qi, ki, wi, plan, cfg)
    n = plan.cand_hi - plan.cand_lo
    done = (redo == 0) & (n > k)
    assert int(done.sum()) >= 40  # most of the 81 sampled rows keep their pivot
    assert torch.equal(sel[done], want[done]) and (sel_n[done] == k).all()
    assert (redo[(n > k) & (n <= max(cap, 64))] == 2).all()  # too short to sample
    s1, n1 = select(qi, ki, wi, plan, cfg)
    assert torch.equal(s1, want) and torch.equal(n1, want_n)


# ----------------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("gran,agg", [("token", "max"), ("block", "max"), ("block", "sum"), ("block", "pooled")])
def test_score_kernel_matches_reference(gran, agg):
    g = gen()
    t = 70
    _, _, _, qi, ki, wi = case(g, t, 2, 1, hi=8, grad=False)
    pos, doc = rows_of([0, 21, t], t)
    # block_q 32 with 8 index heads: two query sub-chunks of 16 per block (the read-modify-write path)
    cfg = DSAConfig(index_heads=8, index_dim=16, topk=5, granularity=gran, block_q=32, block_agg=agg)
    plan = build_plan(pos, doc, cfg, dense=False)
    buf, base = score_rows(qi, ki, wi, plan, cfg, 0, plan.n_owners)
    want = ref.owner_scores(qi, ki, wi, plan, cfg, torch.arange(plan.n_owners, device=DEV), base, buf.shape[1])
    need = ((plan.cand_hi - plan.cand_lo) > cfg.topk)[:, None] & torch.isfinite(want)
    assert need.any()
    # fp32 summation order differs between kernel and reference; pooled rows sum a block's queries,
    # so their error scales with the scores' magnitude (the scale is 1 for the other rules)
    scale = max(1.0, want[need].abs().max().item())
    torch.testing.assert_close(buf[need], want[need], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("gran,agg,coarse,sample", [
    ("token", "max", 0, 2048), ("token", "max", 0, 8), ("block", "max", 0, 2048), ("block", "sum", 0, 2048),
    ("block", "pooled", 0, 2048), ("block", "max", 2, 2048), ("block", "sum", 2, 2048)])
def test_selection_is_exact_topk_on_integer_scores(gran, agg, coarse, sample, monkeypatch):
    """Integer indexer inputs make every score exact in fp32 (pooled rows are sums, also exact), so
    kernel and reference must pick the same keys, including every tie (ties go to the lower key
    index); coarse-to-fine must agree on the candidate list and on the final pick. An 8-score
    sample sends long token rows through the pivot filter, ties at the pivot included."""
    monkeypatch.setitem(topk_mod.CONFIG, "sample", sample)
    g = gen()
    t = 61
    qi = torch.randint(-2, 3, (t, 2, 16), generator=g, device=DEV).float()
    ki = torch.randint(-2, 3, (t, 16), generator=g, device=DEV).float()
    wi = torch.randint(-1, 3, (t, 2), generator=g, device=DEV).float()
    pos, doc = rows_of([0, 5, 33, t], t)  # one document shorter than k
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=7, granularity=gran, block_q=4, block_agg=agg, coarse=coarse)
    plan = build_plan(pos, doc, cfg, dense=False)
    s1, n1 = select(qi, ki, wi, plan, cfg, buf_bytes=4 * 30 * 8)  # force several chunks
    if coarse:  # some block must have more than k but at most coarse*k candidates, some more than that
        n = plan.cand_hi - plan.cand_lo
        assert ((n > 7) & (n <= 14)).any() and (n > 14).any()
    s2, n2 = ref.select(qi, ki, wi, plan, cfg)
    assert torch.equal(n1, n2)
    assert torch.equal(s1, s2)


# ------------------------------------------------------------------------------- layer vs reference
LAYER_CASES = [
    # (granularity, stage, T, cu, Hq, Hkv, k, B_q, block_agg, coarse)
    ("token", "sparse", 29, [0, 29], 2, 2, 40, 4, "max", 0),  # whole sequence shorter than k: dense
    ("token", "sparse", 41, [0, 6, 41], 4, 2, 9, 4, "max", 0),  # a document shorter than k, GQA 2
    ("block", "sparse", 43, [0, 17, 43], 8, 1, 6, 4, "max", 0),  # GQA 8, odd lengths
    ("block", "sparse", 50, [0, 50], 2, 2, 8, 8, "max", 0),  # GQA 1
    ("block", "sparse", 45, [0, 19, 45], 8, 2, 6, 4, "pooled", 0),  # pooled selection
    ("block", "sparse", 42, [0, 42], 4, 1, 5, 4, "sum", 2),  # coarse-to-fine
    ("token", "sparse", 33, [0, 33], 8, 1, 6, 4, "max", 0),  # GQA 8 per token
    ("block", "warmup", 37, [0, 12, 37], 4, 2, 6, 4, "max", 0),
    ("token", "warmup", 30, [0, 30], 8, 1, 6, 8, "max", 0),
]


@pytest.mark.parametrize("gran,stage,t,cu,hq,hkv,k,bq,agg,coarse", LAYER_CASES)
def test_layer_matches_reference(gran, stage, t, cu, hq, hkv, k, bq, agg, coarse):
    g = gen()
    args = case(g, t, hq, hkv)
    pos, doc = rows_of(cu, t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=k, granularity=gran, block_q=bq, stage=stage,
                    block_agg=agg, coarse=coarse)
    o1, l1, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton")
    sel = None
    if stage == "sparse":
        sel = (aux["sel"], aux["sel_n"])
        rs, rn = ref.select(*(a.detach() for a in args[3:]), aux["plan"], cfg)
        # random fp32 scores: the kernel and the reference sum in different orders, so allow a
        # near-tie to differ, but no more than that; attention is compared on the kernel's selection.
        assert torch.equal(rn, aux["sel_n"])
        assert (rs != aux["sel"]).any(1).float().mean() <= 0.1
    o2, l2, _ = dsa_attention_rows(*args, pos, doc, cfg, backend="reference", sel=sel)
    dout = torch.randn(o1.shape, generator=g, device=DEV)
    g1 = torch.autograd.grad((o1 * dout).sum() + 3 * l1, args)
    g2 = torch.autograd.grad((o2 * dout).sum() + 3 * l2, args)
    assert rel(o1, o2) < 1e-5
    l1, l2 = float(l1.detach()), float(l2.detach())
    assert abs(l1 - l2) <= 1e-5 * abs(l2) + 1e-6
    for name, a, b in zip(["q", "k", "v", "q_idx", "k_idx", "w_idx"], g1, g2):
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < 1e-4, (name, rel(a, b))


def test_api_backends_agree_on_packed_sequence():
    g = gen()
    t = 34
    q, k, v, qi, ki, wi = case(g, t, 4, 2, grad=False)
    cu = torch.tensor([0, 13, t], dtype=torch.int32, device=DEV)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=5, granularity="block", block_q=4)
    set_backend("reference")
    try:
        o2, l2 = dsa_attention(q, k, v, qi, ki, wi, cu, cfg)
    finally:
        set_backend("triton")
    o1, l1 = dsa_attention(q, k, v, qi, ki, wi, cu, cfg)
    assert rel(o1, o2) < 1e-5 and abs(float(l1) - float(l2)) < 1e-5


def test_query_chunk_at_offset_matches_full_rows():
    """Context-parallel use: a chunk of query rows (global positions) against the whole key table
    gives the same rows as the full run (chunk borders on block borders)."""
    g = gen()
    t = 48
    q, k, v, qi, ki, wi = case(g, t, 4, 2, grad=False)
    pos, doc = rows_of([0, 20, t], t)
    for gran in ("token", "block"):
        cfg = DSAConfig(index_heads=2, index_dim=16, topk=6, granularity=gran, block_q=4)
        full, _, _ = dsa_attention_rows(q, k, v, qi, ki, wi, pos, doc, cfg)
        rows = torch.cat([torch.arange(8, 16), torch.arange(28, 40)]).to(DEV)  # two chunks, as CP's 2-chunk split
        part, _, _ = dsa_attention_rows(q[rows], k, v, qi[rows], ki, wi[rows], pos[rows], doc[rows], cfg)
        assert rel(part, full[rows]) < 1e-6


# ------------------------------------------------------------------------- merged token groups
@pytest.mark.parametrize("method", ["sort", "bitmap", "auto"])
def test_merged_selection_is_the_union_with_each_querys_bit(method):
    """Every way of forming the union (merge.MERGE_METHOD) gives each group its queries' keys in
    ascending order, each with the bits of the queries that selected it, on a packed sequence and
    on a context-parallel chunk of rows (whose keys start at a document start, not at 0)."""
    from model.dsa.merge import merge_selection, merged_plan

    g = gen()
    t, k, m = 70, 9, 4
    pos, doc = rows_of([0, 13, 14, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=k, granularity="token", token_merge=m)
    plan = build_plan(pos, doc, cfg, dense=False)
    qi, ki, wi = (x.detach() for x in case(g, t, 2, 1)[3:])
    sel, sel_n = select(qi, ki, wi, plan, cfg)
    mplan = merged_plan(plan, m)
    union, bits, n = merge_selection(plan, mplan, sel, sel_n, rows_per_chunk=8, method=method)  # several chunks
    _check_union(mplan, sel, sel_n, doc, union, bits, n, m)
    rows = torch.arange(20, t, device=DEV)  # a chunk of rows in the second and third documents
    cplan = build_plan(pos[rows], doc[rows], cfg, dense=False)
    csel, csel_n = select(qi[rows], ki, wi[rows], cplan, cfg)
    cm = merged_plan(cplan, m)
    _check_union(cm, csel, csel_n, doc[rows], *merge_selection(cplan, cm, csel, csel_n, rows_per_chunk=8,
                                                               method=method), m)


def _check_union(mplan, sel, sel_n, doc, union, bits, n, m):
    for o in range(mplan.n_owners):
        q0, nq = int(mplan.own_q0[o]), int(mplan.own_nq[o])
        assert nq <= m and len(set(doc[q0:q0 + nq].tolist())) == 1
        want = {}
        for i in range(nq):
            for key in sel[q0 + i, : int(sel_n[q0 + i])].tolist():
                want[key] = want.get(key, 0) | (1 << i)
        got = union[o, : int(n[o])].tolist()
        assert got == sorted(want), o
        assert bits[o, : int(n[o])].tolist() == [want[key] for key in got]
        assert (union[o, int(n[o]):] == -1).all()


@pytest.mark.parametrize("field,m", [("token_merge", 2), ("token_merge", 4), ("token_merge", 16),
                                     ("token_merge_backward", 3), ("token_merge_backward", 16)])
def test_merged_token_groups_equal_token_mode(field, m):
    """Token mode over groups of m neighbours (each row masked to its own keys) against the
    reference's token mode on the same selection: output, indexer loss and every gradient, for a
    packed sequence and for a context-parallel chunk of rows (groups cut at document and chunk
    borders). ``token_merge`` runs everything on the groups; ``token_merge_backward`` only the
    attention's backward (the forward and the KL one program per query, the union built in backward)."""
    g = gen()
    t = 53
    args = case(g, t, 8, 2)
    pos, doc = rows_of([0, 6, 31, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=7, granularity="token", **{field: m})
    for rows in (torch.arange(t, device=DEV), torch.cat([torch.arange(3, 17), torch.arange(40, 50)]).to(DEV)):
        xs = [(a[rows] if i in (0, 3, 5) else a).detach().requires_grad_() for i, a in enumerate(args)]
        plans = {}
        o1, l1, aux = dsa_attention_rows(*xs, pos[rows], doc[rows], cfg, backend="triton", plans=plans)
        o2, l2, _ = dsa_attention_rows(*xs, pos[rows], doc[rows], cfg, backend="reference",
                                       sel=(aux["sel"], aux["sel_n"]))
        dout = torch.randn(o1.shape, generator=g, device=DEV)
        g1 = torch.autograd.grad((o1 * dout).sum() + 3 * l1, xs)
        g2 = torch.autograd.grad((o2 * dout).sum() + 3 * l2, xs)
        groups = [p for key, p in plans.items() if key[-1] in ("merged", "merged-bwd")]
        assert len(groups) == 1 and int(groups[0].own_nq.sum()) == len(rows)
        assert 1 < int(groups[0].own_nq.max()) <= m
        assert rel(o1, o2) < 1e-5
        assert abs(float(l1) - float(l2)) <= 1e-5 * abs(float(l2)) + 1e-6
        for name, a, b in zip(["q", "k", "v", "q_idx", "k_idx", "w_idx"], g1, g2):
            assert rel(a, b) < 1e-4, (name, rel(a, b))


@pytest.mark.parametrize("queries", [8, 32, 64])
def test_block_kl_with_more_queries_per_step_matches_reference(queries, monkeypatch):
    """The KL kernel's block owners walked with more queries per inner step (kl_mod.BLOCK_QUERIES,
    which bench_dsa sweeps): same loss and indexer gradients as the reference, on blocks of 64
    queries cut short by document ends."""
    from model.dsa.kernels import indexer_kl as kl_mod

    monkeypatch.setattr(kl_mod, "BLOCK_QUERIES", queries)
    _check_block_kl_against_reference()


def _check_block_kl_against_reference():
    """Block owners of 64 queries cut short by document ends: the KL kernel's loss and indexer
    gradients against the reference's on the same selection."""
    g = gen()
    t = 150
    args = case(g, t, 4, 2)
    pos, doc = rows_of([0, 90, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=20, granularity="block", block_q=64)
    _, l1, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton")
    _, l2, _ = dsa_attention_rows(*args, pos, doc, cfg, backend="reference", sel=(aux["sel"], aux["sel_n"]))
    g1 = torch.autograd.grad(l1, args[3:])
    g2 = torch.autograd.grad(l2, args[3:])
    assert abs(float(l1) - float(l2)) <= 1e-5 * abs(float(l2)) + 1e-6
    for name, a, b in zip(["q_idx", "k_idx", "w_idx"], g1, g2):
        assert rel(a, b) < 1e-4, (name, rel(a, b))


def test_block_kl_launch_from_env(monkeypatch):
    """LONGSHOT_KL_BLOCK installs the block KL's launch (a user tuning for their GPU): the kernel
    then runs that launch and still matches the reference; a malformed value is refused, naming
    the variable, and leaves the launch as it was."""
    from model.dsa.kernels import indexer_kl as kl_mod

    monkeypatch.setitem(kl_mod.CONFIG, "block", kl_mod.CONFIG["block"])  # restored after the test
    monkeypatch.setattr(kl_mod, "BLOCK_QUERIES", kl_mod.BLOCK_QUERIES)
    monkeypatch.setitem(kl_mod.MAX_REGISTERS, "block", kl_mod.MAX_REGISTERS["block"])
    kl_mod.tune_block_from_env({kl_mod.TUNE_ENV: "16,4,1,32,96"})
    launch = (kl_mod.CONFIG["block"], kl_mod.BLOCK_QUERIES, kl_mod.MAX_REGISTERS["block"])
    assert launch == ((16, 4, 1), 32, 96)
    _check_block_kl_against_reference()
    for bad in ["16,4,1", "16,4,x,32", "24,4,1,32", "16,4,1,0", "16,4,1,32,-1"]:
        with pytest.raises(ValueError, match=kl_mod.TUNE_ENV):
            kl_mod.tune_block_from_env({kl_mod.TUNE_ENV: bad})
        assert (kl_mod.CONFIG["block"], kl_mod.BLOCK_QUERIES) == ((16, 4, 1), 32)



@pytest.mark.parametrize("stage", ["sparse", "warmup"])
def test_block_kl_over_many_key_tiles_matches_reference(stage, monkeypatch):
    """The KL kernel's block owners over many 16-key tiles (list tiles, the partial one, the
    causal range): loss and indexer gradients equal the reference's, GQA 4 over 2 KV heads,
    documents cutting blocks short."""
    from model.dsa.kernels import indexer_kl as kl_mod

    monkeypatch.setitem(kl_mod.CONFIG, "block", (16, 4, 1))
    g = gen()
    t = 150
    args = case(g, t, 8, 2)
    pos, doc = rows_of([0, 90, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=40, granularity="block", block_q=32, stage=stage)
    _, l1, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton")
    sel = (aux["sel"], aux["sel_n"]) if stage == "sparse" else None
    _, l2, _ = dsa_attention_rows(*args, pos, doc, cfg, backend="reference", sel=sel)
    g1 = torch.autograd.grad(l1, args[3:])
    g2 = torch.autograd.grad(l2, args[3:])
    assert abs(float(l1) - float(l2)) <= 1e-5 * abs(float(l2)) + 1e-6
    for name, a, b in zip(["q_idx", "k_idx", "w_idx"], g1, g2):
        assert rel(a, b) < 1e-4, (name, rel(a, b))


@pytest.mark.parametrize("gran,merge,stage", [("block", 1, "sparse"), ("token", 1, "sparse"), ("token", 4, "sparse"),
                                              ("block", 1, "warmup")])
def test_kl_target_from_its_own_kernel_matches_the_reference(gran, merge, stage, monkeypatch):
    """The head-mean target written by its own kernel and read by the KL pass (SPLIT_TARGET; one
    program a KV head adding into the target, or one walking every KV head; all owners at once, or
    in waves of a few when the buffer's budget is small), and the KL pass's own
    head loop: the same indexer loss and gradients as the reference, for block
    owners, token owners and merged token groups, and the dense warm-up, on a packed sequence and on
    a context-parallel chunk of rows (GQA 4 over 2 KV heads)."""
    from model.dsa.kernels import indexer_kl as kl_mod

    g = gen()
    t = 61
    args = case(g, t, 8, 2)
    pos, doc = rows_of([0, 21, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=9, granularity=gran, block_q=8, token_merge=merge,
                    stage=stage)
    chunk = torch.cat([torch.arange(8, 24), torch.arange(40, 56)]).to(DEV)  # block borders, as CP's split
    for rows in (torch.arange(t, device=DEV), chunk):
        xs = [(a[rows] if i in (0, 3, 5) else a).detach().requires_grad_() for i, a in enumerate(args)]
        key = "dense" if stage == "warmup" else "block" if gran == "block" else ("merged" if merge > 1 else "token")
        for split, kv_loop, budget in ((True, 0, 1 << 30), (True, 1, 1 << 30), (True, 0, 9000), (True, 1, 3000),
                                       (False, 0, 1 << 30)):
            monkeypatch.setitem(kl_mod.SPLIT_TARGET, key, split)
            monkeypatch.setitem(kl_mod.TARGET_CONFIG, key, kl_mod.TARGET_CONFIG[key][:3] + (kv_loop,))
            monkeypatch.setattr(kl_mod, "SPLIT_MAX_BYTES", budget)  # small: the owners in waves
            _, got, aux = dsa_attention_rows(*xs, pos[rows], doc[rows], cfg, backend="triton")
            _, want, _ = dsa_attention_rows(*xs, pos[rows], doc[rows], cfg, backend="reference",
                                            sel=(aux["sel"], aux["sel_n"]) if stage == "sparse" else None)
            grads = torch.autograd.grad(got, xs[3:])
            want_grads = torch.autograd.grad(want, xs[3:])
            assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want)) + 1e-6, (split, kv_loop, budget)
            for name, a, b in zip(["q_idx", "k_idx", "w_idx"], grads, want_grads):
                assert rel(a, b) < 1e-4, (split, kv_loop, budget, name, rel(a, b))


def test_owners_in_a_spread_order_give_the_same_attention(monkeypatch):
    """The attention kernels with their programs serving owners in a strided order
    (attention.owner_stride: every owner once) give the reference's output and gradients, as in
    order, and the stride is a permutation for every owner count."""
    import math

    from model.dsa.kernels import attention as attn_mod

    for n in (264, 1000, 4096, 4097, 131072):
        s = attn_mod.owner_stride(n, True)
        assert s > 1 and math.gcd(s, n) == 1
        assert len({i * s % n for i in range(min(n, 5000))}) == min(n, 5000)
    assert attn_mod.owner_stride(4096, False) == 1
    g = gen()
    t = 70
    args = case(g, t, 4, 2)
    pos, doc = rows_of([0, 33, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=12, granularity="block", block_q=4)
    dout = torch.randn(t, 4, 16, generator=g, device=DEV)
    for stride in (None, 7):
        if stride:
            monkeypatch.setattr(attn_mod, "owner_stride", lambda n, spread: stride if math.gcd(stride, n) == 1 else 1)
            monkeypatch.setitem(attn_mod.SPREAD_OWNERS, "fwd", True)
            monkeypatch.setitem(attn_mod.SPREAD_OWNERS, "bwd", True)
        out, _, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton")
        assert aux["plan"].n_owners % 7 != 0
        want, _, _ = dsa_attention_rows(*args, pos, doc, cfg, backend="reference", sel=(aux["sel"], aux["sel_n"]))
        got = [out, *torch.autograd.grad((out * dout).sum(), args[:3])]
        ref_res = [want, *torch.autograd.grad((want * dout).sum(), args[:3])]
        for a, b in zip(got, ref_res):
            assert rel(a, b) < 1e-4, stride


@pytest.mark.parametrize("topk", [32, 40])
def test_block_attention_over_full_list_tiles_matches_the_reference(topk, monkeypatch):
    """The attention's list loop over whole 16-key tiles, forward and backward: output and q, k, v
    gradients equal the reference's on the kernel's selection. topk 32: owners with enough
    candidates list exactly two whole tiles (the last tile of the loop is the list's end); 40: two
    whole tiles and a partial one. The loop loads each tile's key indices under a condition that
    always holds (attention.py: kept a register load for Triton's pipeliner), so a condition that
    fails on any whole tile gives wrong keys here."""
    from model.dsa.kernels import attention as attn_mod

    monkeypatch.setitem(attn_mod.FWD_CONFIG, "block", (16, 4, 2))
    monkeypatch.setitem(attn_mod.BWD_CONFIG, "block", (16, 4, 2))
    g = gen()
    t = 150
    args = case(g, t, 4, 2)
    pos, doc = rows_of([0, 100, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=topk, granularity="block", block_q=8)
    out, _, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton")
    assert (aux["sel_n"] == topk).sum() >= 4 and int(aux["sel_n"].max()) == topk
    want, _, _ = dsa_attention_rows(*args, pos, doc, cfg, backend="reference", sel=(aux["sel"], aux["sel_n"]))
    dout = torch.randn(out.shape, generator=g, device=DEV)
    got = [out, *torch.autograd.grad((out * dout).sum(), args[:3])]
    ref_res = [want, *torch.autograd.grad((want * dout).sum(), args[:3])]
    for name, a, b in zip(["out", "q", "k", "v"], got, ref_res):
        assert rel(a, b) < 1e-4, (name, rel(a, b))


def test_target_waves_cover_every_owner_once_within_the_budget():
    """The KL target's waves of owners (indexer_kl.target_waves) for the dense warm-up of a packed
    sequence: consecutive, covering every owner once, each wave's buffer within the budget unless it
    is a single owner, and each wave's slots at least its longest owner's walk."""
    from model.dsa.kernels import indexer_kl as kl_mod

    t = 3000
    pos, doc = rows_of([0, 700, 710, t], t)
    plan = build_plan(pos, doc, DSAConfig(index_heads=2, index_dim=16, topk=9, granularity="block", block_q=64,
                                          stage="warmup"), dense=True)
    ranges = (plan.rng_hi - plan.rng_lo).cpu()
    for budget in (1, 200_000, 3_000_000, 1 << 40):
        waves = kl_mod.target_waves(plan, None, 64, 64, budget)
        assert waves[0][0] == 0 and waves[-1][1] == plan.n_owners
        assert all(w1[1] == w2[0] for w1, w2 in zip(waves, waves[1:]))
        for a, b, width in waves:
            assert b > a and width % 64 == 0 and width >= int(ranges[a:b].max())
            assert (b - a) * 64 * width * 4 <= budget or b - a == 1
            if b < plan.n_owners:  # as large as the budget allows: the next owner would not fit
                wider = max(width, -(-int(ranges[b]) // 64) * 64)
                assert (b - a + 1) * 64 * wider * 4 > budget
        assert len(waves) == plan.n_owners if budget == 1 else len(waves) == 1 if budget == 1 << 40 else len(waves) > 2


def test_kl_split_kinds_from_env(monkeypatch):
    """LONGSHOT_KL_SPLIT picks the launch kinds whose KL target has its own kernel; 'none' turns
    every one off; an unknown kind is refused, naming the variable, and changes nothing."""
    from model.dsa.kernels import indexer_kl as kl_mod

    monkeypatch.setattr(kl_mod, "SPLIT_TARGET", dict(kl_mod.SPLIT_TARGET))
    kl_mod.split_from_env({kl_mod.SPLIT_ENV: "dense, token"})
    assert {k for k, on in kl_mod.SPLIT_TARGET.items() if on} == {"dense", "token"}
    kl_mod.split_from_env({kl_mod.SPLIT_ENV: "none"})
    assert not any(kl_mod.SPLIT_TARGET.values())
    with pytest.raises(ValueError, match=kl_mod.SPLIT_ENV):
        kl_mod.split_from_env({kl_mod.SPLIT_ENV: "block,sparse"})
    assert not any(kl_mod.SPLIT_TARGET.values())


def test_kl_launches_from_env(monkeypatch):
    """LONGSHOT_KL_LAUNCH sets the KL's split launch per kind (what bench_parallel's worker processes
    read); a bad kind or a malformed launch is refused, naming the variable, and changes nothing."""
    from model.dsa.kernels import indexer_kl as kl_mod

    monkeypatch.setattr(kl_mod, "CONFIG", dict(kl_mod.CONFIG))
    monkeypatch.setattr(kl_mod, "TARGET_CONFIG", dict(kl_mod.TARGET_CONFIG))
    monkeypatch.setattr(kl_mod, "PT_QUERIES", kl_mod.PT_QUERIES)
    block_before = kl_mod.CONFIG["block+pt"], kl_mod.TARGET_CONFIG["block"]
    kl_mod.launch_from_env({kl_mod.LAUNCH_ENV: "dense: 16,4,3,8/4,2,16"})
    assert (kl_mod.CONFIG["dense+pt"], kl_mod.TARGET_CONFIG["dense"], kl_mod.PT_QUERIES) == \
        ((16, 4, 3), (4, 2, 16, 0), 8)
    assert (kl_mod.CONFIG["block+pt"], kl_mod.TARGET_CONFIG["block"]) == block_before
    before = dict(kl_mod.CONFIG), dict(kl_mod.TARGET_CONFIG)
    for bad in ("block:32,8,3,16/8,3,32;dens:32,8,3,16/8,3,32", "block:32,8,3,16/8,3,32;dense:32,8,3/8,3,32"):
        with pytest.raises(ValueError, match=kl_mod.LAUNCH_ENV):
            kl_mod.launch_from_env({kl_mod.LAUNCH_ENV: bad})
        assert (dict(kl_mod.CONFIG), dict(kl_mod.TARGET_CONFIG)) == before


@pytest.mark.parametrize("bwd_bn,kl_bn", [(16, 16), (32, 16), (16, 32)])
def test_kl_in_the_attention_backward_matches_the_reference(bwd_bn, kl_bn, monkeypatch):
    """Block owners' KL run in the attention's backward (KL_IN_BACKWARD), its head-mean target added
    by the backward kernel into the KL pass's slots (tiles of the two kernels of different sizes:
    the list's whole tiles, the partial one and the causal range): the output, the reported loss
    and all six gradients equal the reference's with the loss's weight as its gradient, on a packed
    sequence and a context-parallel chunk of rows; the loss reads NaN until the backward has run.
    With the target buffer over its budget the backward takes the KL's own target kernel instead."""
    from model.dsa import attention as dsa_api
    from model.dsa.functions import KLInBackward
    from model.dsa.kernels import attention as attn_mod
    from model.dsa.kernels import indexer_kl as kl_mod

    monkeypatch.setattr(dsa_api, "KL_IN_BACKWARD", True)
    monkeypatch.setitem(attn_mod.BWD_CONFIG, "block+pt", (bwd_bn, 4, 1))
    monkeypatch.setitem(kl_mod.CONFIG, "block+pt", (kl_bn, 4, 1))
    g = gen()
    t = 150
    args = case(g, t, 8, 2)
    pos, doc = rows_of([0, 90, t], t)
    cfg = DSAConfig(index_heads=2, index_dim=16, topk=40, granularity="block", block_q=32)
    chunk = torch.cat([torch.arange(32, 64), torch.arange(90, 122)]).to(DEV)  # block borders, as CP's split
    weight = 3.0
    for rows, budget in ((torch.arange(t, device=DEV), 1 << 30), (chunk, 1 << 30), (torch.arange(t, device=DEV), 4096)):
        monkeypatch.setattr(kl_mod, "SPLIT_MAX_BYTES", budget)
        xs = [(a[rows] if i in (0, 3, 5) else a).detach().requires_grad_() for i, a in enumerate(args)]
        late = KLInBackward(weight, report_scale=0.5)
        out, loss, aux = dsa_attention_rows(*xs, pos[rows], doc[rows], cfg, backend="triton", kl_in_backward=late)
        assert loss is late.value and torch.isnan(loss)
        want, want_loss, _ = dsa_attention_rows(*xs, pos[rows], doc[rows], cfg, backend="reference",
                                                sel=(aux["sel"], aux["sel_n"]))
        dout = torch.randn(out.shape, generator=g, device=DEV)
        got = torch.autograd.grad((out * dout).sum(), xs)
        ref_grads = torch.autograd.grad((want * dout).sum() + weight * want_loss, xs)
        assert rel(out, want) < 1e-5
        want_loss = float(want_loss.detach())
        assert abs(float(loss) - 0.5 * want_loss) <= 1e-5 * abs(want_loss) + 1e-6, budget
        for name, a, b in zip(["q", "k", "v", "q_idx", "k_idx", "w_idx"], got, ref_grads):
            assert rel(a, b) < 1e-4, (budget, name, rel(a, b))
