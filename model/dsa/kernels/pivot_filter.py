"""Token-row selection without a score buffer: a sampled pivot per row, then one scoring pass that
keeps only the scores at or above it.

Why: the buffered path writes 4 bytes per (query, candidate key) and reads them back, though only
about 2k of a row's up to 256K scores can matter (on an H100 at 128K tokens: scores 112 ms, top-k
84 ms, 34 GB each way). Here, per chunk of rows:

1. ``_sample_kernel`` scores NS keys spread evenly over each row's candidates. The QS rows of a
   program share the positions: they are consecutive queries of one document (its start and the
   group's shortest row set them). Rows of another document, and rows with at most
   max(SCRATCH*k, NS) candidates, are not sampled and go to the buffered path.
2. ``_pivot_kernel``: per row, the sampled score of rank topk.pivot_rank (topk's radix select run
   on the sample).
3. ``_filter_kernel``: a program scores its QS rows over all of their candidates, one key tile at
   a time, and appends the (order key, key index) of every score >= its row's pivot to the row's
   scratch, in key order, counting all of them (past the scratch's end only the count grows).
4. topk.topk_in_scratch then runs the radix select and emit of topk's sampled path on the scratch,
   so the result is the exact top-k whenever k <= count <= scratch; other rows are marked for the
   buffered path (select.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import topk as topk_mod
from .common import ieee, next_pow2
from .index_scores import CONFIG as SCORE_CONFIG
from .index_scores import _query_rows, _row_logits
from .topk import _ordered, _radix_threshold, pivot_rank

# Launch of the filter kernel (tests/bench/bench_dsa.py sweeps it): key tile, warps, pipeline
# stages, and whether programs start from the last rows (the longest, causal rows go first, so no
# long program starts late and runs alone at the end). Since the query rows load once before the
# key loop, 4 warps beat 8: 139.61 against 166.49 ms for the token selection at 128K (H100,
# tests/bench/RESULTS.md, 2026-12-07 late night).
CONFIG = dict(block_n=64, num_warps=4, num_stages=3, longest_first=True)


@triton.jit
def _group(own_q0, cand_lo, cand_hi, owner0, n_rows, MIN_N, HI, QS: tl.constexpr, HIP: tl.constexpr,
           LONGEST_FIRST: tl.constexpr):
    """A program's QS rows: row index, validity, candidate bounds, which are sampled (same document
    as the first row, more than MIN_N candidates), the shared start and the shortest sampled row;
    plus the (query, index head) rows of the dot."""
    pid = tl.program_id(0)
    if LONGEST_FIRST:
        pid = tl.num_programs(0) - 1 - pid
    orow = pid * QS + tl.arange(0, QS)
    ov = orow < n_rows
    lo_i = tl.load(cand_lo + owner0 + orow, mask=ov, other=0)
    hi_i = tl.load(cand_hi + owner0 + orow, mask=ov, other=0)
    lo0 = tl.load(cand_lo + owner0 + pid * QS)
    samp = ov & (lo_i == lo0) & (hi_i - lo_i > MIN_N)
    n_min = tl.min(tl.where(samp, hi_i - lo_i, 2147483647), 0)
    r = tl.arange(0, QS * HIP)
    rv = ((pid * QS + r // HIP) < n_rows) & ((r % HIP) < HI)
    qrow = tl.load(own_q0 + owner0 + pid * QS + r // HIP, mask=rv, other=0).to(tl.int64)
    return orow, ov, lo_i, hi_i, samp, lo0, n_min, rv, qrow, r % HIP


@triton.jit
def _sample_kernel(QI, WI, KI, SBUF, SAMPLED, own_q0, cand_lo, cand_hi, owner0, n_rows, stride_sb,
                   s_qt, s_qh, s_wt, s_kt, HI, DI, MIN_N,
                   NS: tl.constexpr, QS: tl.constexpr, HIP: tl.constexpr, DIP: tl.constexpr, BN: tl.constexpr,
                   IEEE: tl.constexpr, HEAD_DOT: tl.constexpr):
    orow, ov, lo_i, hi_i, samp, lo0, n_min, rv, qrow, hj = _group(own_q0, cand_lo, cand_hi, owner0, n_rows,
                                                                 MIN_N, HI, QS, HIP, False)
    tl.store(SAMPLED + orow, samp.to(tl.int8), mask=ov)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    dd = tl.arange(0, DIP)
    if tl.max(samp.to(tl.int32), 0) > 0:
        q, w = _query_rows(QI, WI, qrow, rv, hj, dd, s_qt, s_qh, s_wt, DI)
        for j0 in range(0, NS, BN):
            jj = j0 + tl.arange(0, BN)
            jm = jj < NS
            keys = lo0 + (jj.to(tl.int64) * (n_min - 1)) // (NS - 1)
            kt = tl.load(KI + keys[None, :] * s_kt + dd[:, None], mask=jm[None, :] & (dd[:, None] < DI), other=0.0)
            sc = _row_logits(q, w, kt, QS, HIP, BN, prec, HEAD_DOT)
            tl.store(SBUF + orow.to(tl.int64)[:, None] * stride_sb + jj[None, :], _ordered(sc),
                     mask=samp[:, None] & jm[None, :])


@triton.jit
def _pivot_kernel(SBUF, SAMPLED, PIVOT, cand_lo, cand_hi, owner0, stride_sb, K_SEL,
                  NS: tl.constexpr, TARGET: tl.constexpr):
    r = tl.program_id(0)
    if tl.load(SAMPLED + r) != 0:
        n = tl.load(cand_hi + owner0 + r) - tl.load(cand_lo + owner0 + r)
        rank = pivot_rank(n, K_SEL, NS, TARGET)
        thr, _ = _radix_threshold(SBUF + r.to(tl.int64) * stride_sb, NS, rank + 1, False, NS)
        tl.store(PIVOT + r, thr)
    else:
        tl.store(PIVOT + r, 2147483647)


@triton.jit
def _filter_kernel(QI, WI, KI, PIVOT, SCR, COPIED, own_q0, cand_lo, cand_hi, owner0, n_rows,
                   s_qt, s_qh, s_wt, s_kt, stride_scr, HI, DI, CAP,
                   QS: tl.constexpr, HIP: tl.constexpr, DIP: tl.constexpr, BN: tl.constexpr,
                   IEEE: tl.constexpr, HEAD_DOT: tl.constexpr, LONGEST_FIRST: tl.constexpr):
    orow, ov, lo_i, hi_i, _, _, _, rv, qrow, hj = _group(own_q0, cand_lo, cand_hi, owner0, n_rows,
                                                         0, HI, QS, HIP, LONGEST_FIRST)
    piv = tl.load(PIVOT + orow, mask=ov, other=2147483647)
    act = ov & (piv != 2147483647)
    # the loop's bounds: a pipelined prologue may form (predicated) addresses from them, so an idle
    # program gets 0..0, not a sentinel far out
    c_hi = tl.max(tl.where(act, hi_i, 0), 0)
    c_lo = tl.min(tl.where(act, lo_i, c_hi), 0)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    dd = tl.arange(0, DIP)
    offs = tl.arange(0, BN)
    srow = SCR + orow.to(tl.int64)[:, None] * stride_scr
    cnt = tl.zeros([QS], tl.int32)
    q, w = _query_rows(QI, WI, qrow, rv, hj, dd, s_qt, s_qh, s_wt, DI)
    for cs in range(c_lo, c_hi, BN):
        keys = cs + offs
        kt = tl.load(KI + keys.to(tl.int64)[None, :] * s_kt + dd[:, None],
                     mask=(keys[None, :] < c_hi) & (dd[:, None] < DI), other=0.0)
        sc = _row_logits(q, w, kt, QS, HIP, BN, prec, HEAD_DOT)
        s = _ordered(sc)
        ok = act[:, None] & (keys[None, :] >= lo_i[:, None]) & (keys[None, :] < hi_i[:, None])
        take = ok & (s >= piv[:, None])
        pos = cnt[:, None] + tl.cumsum(take.to(tl.int32), 1) - 1
        keep = take & (pos < CAP)
        tl.store(srow + pos, s, mask=keep)
        tl.store(srow + CAP + pos, tl.broadcast_to(keys[None, :], (QS, BN)), mask=keep)
        cnt += tl.sum(take.to(tl.int32), 1)
    tl.store(COPIED + orow, tl.where(act, cnt, -1), mask=ov)


def filter_rows(q_idx, w_idx, k_idx, plan, owner0: int, n_rows: int, topk: int, scr: torch.Tensor,
                copied: torch.Tensor) -> None:
    """Steps 1-3 of the module docstring for token owners owner0..owner0+n_rows-1: scr [n_rows,
    2*SCRATCH*topk] int32 gets each row's (order keys | key indices), copied [n_rows] their count
    (-1: not sampled)."""
    ns = topk_mod.CONFIG["sample"]
    cap = topk_mod.SCRATCH * topk
    c = SCORE_CONFIG["token"]
    hi_, di = q_idx.shape[1], q_idx.shape[2]
    hip, dip = next_pow2(hi_), max(16, next_pow2(di))
    qs = max(1, 128 // hip)
    dev = q_idx.device
    sbuf = torch.empty((n_rows, ns), dtype=torch.int32, device=dev)
    sampled = torch.empty(n_rows, dtype=torch.int8, device=dev)
    pivot = torch.empty(n_rows, dtype=torch.int32, device=dev)
    f = CONFIG
    common = dict(QS=qs, HIP=hip, DIP=dip, IEEE=ieee(q_idx), HEAD_DOT=c["head_dot"] and not ieee(q_idx))
    strides = (q_idx.stride(0), q_idx.stride(1), w_idx.stride(0), k_idx.stride(0))
    grid = (triton.cdiv(n_rows, qs),)
    _sample_kernel[grid](q_idx, w_idx, k_idx, sbuf, sampled, plan.own_q0, plan.cand_lo, plan.cand_hi, owner0,
                         n_rows, sbuf.stride(0), *strides, hi_, di, max(cap, ns), NS=ns, BN=c["block_n"],
                         num_warps=c["num_warps"], **common)
    _pivot_kernel[(n_rows,)](sbuf, sampled, pivot, plan.cand_lo, plan.cand_hi, owner0, sbuf.stride(0), topk,
                             NS=ns, TARGET=topk_mod.PIVOT_TARGET, num_warps=4)
    _filter_kernel[grid](q_idx, w_idx, k_idx, pivot, scr, copied, plan.own_q0, plan.cand_lo, plan.cand_hi,
                         owner0, n_rows, *strides, scr.stride(0), hi_, di, cap, BN=f["block_n"],
                         LONGEST_FIRST=f["longest_first"], num_warps=f["num_warps"], num_stages=f["num_stages"],
                         **common)
