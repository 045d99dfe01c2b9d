"""Token mode with merged neighbours: m consecutive queries share one gathered key list.

Token selection gives each query its own top-k, and the token kernels gather k key and value rows
per query: on video, neighbouring queries pick mostly the same keys (the same frames), so the
same rows are read up to m times. Here m neighbouring queries of one document (aligned to the
document start, like blocks) become one owner whose list is the union of their selections, with
a bit mask per listed key saying which of the m queries selected it (bit i = the owner's i-th
query). The kernels then treat the group like a block owner without a range, masking each
query's row to its own keys: the attention, its gradients and the indexer KL are exactly token
mode's, while each union row is read once per group. The trade, counted by
tests/bench/bench_token_bytes.py on video-structured selections (k = 2,048, 8K-16K tokens): m = 4
reads 2.1-2.6x fewer bytes for 1.6-1.9x the dot FLOPs, m = 16 5.3-7.7x fewer for 2-2.9x; the
dots run on m x G rows instead of G padded to 16. On an H100 (128K, tests/bench/RESULTS.md,
2026-12-06) the layer ran slower merged (m = 4: 966 ms, m = 16: 851 ms, m = 1: 644 ms) with the
block mode's launch defaults; the groups now have their own, which bench_dsa.py sweeps, and the
default stays 1 (DSASettings.token_merge).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .config import MAX_TOKEN_MERGE, DSAConfig
from .plan import Plan, build_plan


def merged_plan(plan: Plan, m: int) -> Plan:
    """Owners of ``m`` consecutive rows of a token plan (aligned to document starts), with an empty
    always-attended range: every key comes from the union list."""
    if not 1 <= m <= MAX_TOKEN_MERGE:
        raise ValueError(f"token groups must hold 1 to {MAX_TOKEN_MERGE} queries (one bit each), got {m}")
    mp = build_plan(plan.q_pos, plan.q_doc, DSAConfig(granularity="block", block_q=m), dense=False)
    return replace(mp, rng_lo=mp.rng_hi, cand_lo=mp.rng_hi, cand_hi=mp.rng_hi, max_rng=0)


# How merge_selection forms each chunk's union: "sort" sorts the chunk's (group, key) codes;
# "bitmap" adds each query's bit into a dense [groups, key range] int32 table (one bit per query of a
# group, so the add is an OR) and reads back the nonzero words, in key order. The table costs
# groups x key range words per chunk, the sort O(entries log); "auto" takes the table while it is
# at most BITMAP_WORDS_PER_ENTRY words per selected entry (which long packs with small groups are not).
MERGE_METHOD = "sort"
BITMAP_WORDS_PER_ENTRY = 8


@torch.no_grad()
def merge_selection(plan: Plan, mplan: Plan, sel: torch.Tensor, sel_n: torch.Tensor,
                    rows_per_chunk: int = 1 << 13, method: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(union [n_groups, U] int32 ascending, -1 padded; bits [n_groups, U] int32; counts [n_groups]
    int32) of the token selection ``sel`` [Tq, k] (one row per query, as ``plan`` owns them) over
    the groups of ``mplan``. Groups are processed in chunks of about ``rows_per_chunk`` queries, so
    the sort (or table, ``method``: MERGE_METHOD's choices) works on chunk x k entries, never Tq x k."""
    if mplan.max_nq > MAX_TOKEN_MERGE:
        raise ValueError(f"token_merge must be at most {MAX_TOKEN_MERGE}, got {mplan.max_nq}")
    method = method or MERGE_METHOD
    if method not in ("sort", "bitmap", "auto"):
        raise ValueError(f"merge method must be 'sort', 'bitmap' or 'auto', got {method!r}")
    dev = sel.device
    n_groups, k = mplan.n_owners, sel.shape[1]
    n_keys = int(plan.q_pos.max()) + 1  # keys are rows of the key table at or before some query
    group_of_row = mplan.owner_of_row.long()
    slot = torch.arange(sel.shape[0], device=dev) - mplan.own_q0.long()[group_of_row]  # query's bit
    valid = torch.arange(k, device=dev)[None, :] < sel_n[:, None]
    parts = []
    step = max(1, rows_per_chunk // max(1, mplan.max_nq))
    ends = (mplan.own_q0 + mplan.own_nq).cpu()  # one device read for every chunk's row range
    chunks = [(g0, min(n_groups, g0 + step)) for g0 in range(0, n_groups, step)]
    rows = [(int(ends[g0 - 1]) if g0 else 0, int(ends[g1 - 1])) for g0, g1 in chunks]
    key_range = [(0, n_keys)] * len(chunks)
    if method != "sort":  # each chunk's keys: from its first document start to its last query (rows are sorted)
        first = torch.tensor([r0 for r0, _ in rows], device=dev)
        last = torch.tensor([r1 - 1 for _, r1 in rows], device=dev)
        key_range = torch.stack([plan.q_doc[first], plan.q_pos[last] + 1], 1).tolist()  # one device read
    for (g0, g1), (r0, r1), (lo, hi) in zip(chunks, rows, key_range):
        grp = group_of_row[r0:r1] - g0
        bit = 1 << slot[r0:r1]
        if method == "bitmap" or (method == "auto" and (g1 - g0) * (hi - lo) <= BITMAP_WORDS_PER_ENTRY * (r1 - r0) * k):
            parts.append((g0, g1) + _union_by_bitmap(grp, sel[r0:r1], valid[r0:r1], bit, g1 - g0, lo, hi))
        else:
            parts.append((g0, g1) + _union_by_sort(grp, sel[r0:r1], valid[r0:r1], bit, g1 - g0, n_keys))
    counts = torch.zeros(n_groups, dtype=torch.int64, device=dev)
    for g0, g1, grp, _, _ in parts:
        counts[g0:g1] = torch.bincount(grp, minlength=g1 - g0)
    width = max(1, int(counts.max()))
    union = torch.full((n_groups, width), -1, dtype=torch.int32, device=dev)
    mask = torch.zeros((n_groups, width), dtype=torch.int32, device=dev)
    for g0, g1, grp, key, bits in parts:
        first = torch.cumsum(counts[g0:g1], 0) - counts[g0:g1]
        col = torch.arange(grp.numel(), device=dev) - first[grp]
        union[g0 + grp, col] = key.to(torch.int32)
        mask[g0 + grp, col] = bits.to(torch.int32)
    return union, mask, counts.to(torch.int32)


def _union_by_sort(grp, sel, valid, bit, n_grp: int, n_keys: int):
    """(group, key, bits) of a chunk's distinct (group, key) pairs, by sorting their codes."""
    k = sel.shape[1]
    code = grp[:, None].expand(-1, k)[valid] * n_keys + sel.long()[valid]
    if n_grp * n_keys < 2**31:  # a 32-bit sort key: half the radix passes
        code = code.to(torch.int32)
    code, order = torch.sort(code)
    uniq, inv = torch.unique_consecutive(code, return_inverse=True)
    bits = torch.zeros(uniq.numel(), dtype=torch.int64, device=sel.device).index_add_(
        0, inv, bit[:, None].expand(-1, k)[valid][order])
    uniq = uniq.long()
    return uniq // n_keys, uniq % n_keys, bits


def _union_by_bitmap(grp, sel, valid, bit, n_grp: int, lo: int, hi: int):
    """The same from a dense [groups, hi - lo] table: padded entries add 0 into word 0."""
    width = hi - lo
    idx = torch.where(valid, grp[:, None] * width + (sel.long() - lo), 0)
    table = torch.zeros(n_grp * width, dtype=torch.int32, device=sel.device)
    table.scatter_add_(0, idx.reshape(-1), torch.where(valid, bit[:, None].to(torch.int32), 0).reshape(-1))
    nz = table.nonzero().squeeze(1)
    return nz // width, nz % width + lo, table[nz].long()
