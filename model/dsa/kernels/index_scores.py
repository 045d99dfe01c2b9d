"""Indexer scores for selection, written to a chunk buffer of owner rows x key columns.

``token`` rows: I(t, s) = sum_j w[t, j] relu(q_I[t, j] . k_I[s]) for the owner's query t.
``block`` rows: the max (or sum) of I(t, s) over the owner's B_q queries, so that top-k runs on
B_q times fewer rows. Only candidate columns are written; owners with at most k candidates are
skipped (they take all their candidates without scores). The dot runs over (query, index head)
rows, QS queries at a time, so a key tile loaded once serves QS*H_I rows; the head sum and the
aggregation happen in registers. -0.0 is written as +0.0 so that the radix top-k sees one zero.

``pooled`` block rows (block_agg="pooled") are token rows of a pseudo-query per block: pool_rows
sums the block's q_I and w rows first, then the token path scores one row per block, B_q times
fewer FLOPs than the max/sum rows. The coarse-to-fine refinement scores a block's max/sum over a
*list* of candidate keys (LIST: the key of column c is list[c], not col_base + c).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import gather_index_tile, ieee, next_pow2

# Launch defaults per row kind: "token" rows (token mode, pooled block rows) and "block" rows (a
# block's max/sum); tests/bench/bench_dsa.py sweeps them on the GPU. head_dot applies
# to bf16/fp16 inputs only: fp32 inputs keep the exact fp32 head sum. chunk: key columns per program.
CONFIG = {"block": dict(block_n=64, num_warps=8, num_stages=3, head_dot=True, chunk=1024),
          "token": dict(block_n=64, num_warps=8, num_stages=3, head_dot=True, chunk=1024)}


@triton.jit
def _query_rows(QI, WI, qrow, rv, hj, dd, s_qt, s_qh, s_wt, DI):
    """(q_I rows [QS*HIP, DIP], their weights [QS*HIP] float32) of QS queries (row r = query * HIP +
    head). Loaded once before a key loop, not per key tile: the loops store scores, so Triton cannot
    hoist a load out of them itself, and q_I is twice a key tile's bytes."""
    q = tl.load(QI + qrow[:, None] * s_qt + hj[:, None] * s_qh + dd[None, :],
                mask=rv[:, None] & (dd[None, :] < DI), other=0.0)
    return q, tl.load(WI + qrow * s_wt + hj, mask=rv, other=0.0).to(tl.float32)


@triton.jit
def _row_logits(q, w, kt, QS: tl.constexpr, HIP: tl.constexpr, BN: tl.constexpr, prec: tl.constexpr,
                HEAD_DOT: tl.constexpr):
    """I[QS, BN] for the query rows of _query_rows against a transposed key tile.

    The weighted sum over index heads is a reshape-and-sum, or (HEAD_DOT) a second tf32 dot with
    a block-diagonal [QS, QS*HIP] weight matrix, which keeps the reduction on the tensor cores.
    """
    z = tl.dot(q, kt, input_precision=prec)
    if HEAD_DOT:
        r = tl.arange(0, QS * HIP)
        wbd = tl.where(tl.arange(0, QS)[:, None] == (r // HIP)[None, :], w[None, :], 0.0)
        return tl.dot(wbd, tl.maximum(z, 0.0), input_precision="tf32")
    return tl.sum(tl.reshape(tl.maximum(z, 0.0) * w[:, None], (QS, HIP, BN)), 1)


@triton.jit
def _scores_kernel(
    QI, WI, KI, BUF, own_q0, own_nq, cand_lo, cand_hi,
    owner0, n_rows, col_base, width, stride_buf,
    s_qt, s_qh, s_wt, s_kt,
    HI, DI, K_SEL,
    LIST, stride_list,
    TOKEN: tl.constexpr, AGG_MAX: tl.constexpr, HAS_LIST: tl.constexpr, QS: tl.constexpr, HIP: tl.constexpr,
    DIP: tl.constexpr, BN: tl.constexpr, CH: tl.constexpr, IEEE: tl.constexpr, HEAD_DOT: tl.constexpr,
):
    """One program: a row group (QS token owners, or one block owner) x a chunk of CH key columns.

    The queries' rows stay in registers while the chunk's key tiles stream by. In block mode the
    owner's queries are taken QS at a time and folded into the buffer row (store, then
    load-aggregate-store, a barrier between), so no query is ever reloaded per key tile.
    """
    pid_r = tl.program_id(0)
    c0 = tl.program_id(1) * CH
    r = tl.arange(0, QS * HIP)
    qi = r // HIP
    hj = r % HIP
    dd = tl.arange(0, DIP)
    offs = tl.arange(0, BN)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    if TOKEN:
        oi = tl.arange(0, QS)
        orow = pid_r * QS + oi
        ov = orow < n_rows
        lo_i = tl.load(cand_lo + owner0 + orow, mask=ov, other=0)
        hi_i = tl.load(cand_hi + owner0 + orow, mask=ov, other=0)
        big = ov & (hi_i - lo_i > K_SEL)
        # Column range of this program; rows with at most k candidates need no scores. The
        # sentinels stay far from int32 overflow: a software-pipelined prologue may compute
        # (predicated) addresses from the bounds even when the loop runs zero times.
        c_end = tl.minimum(c0 + CH, width)
        c_lo = tl.maximum(tl.min(tl.where(big, lo_i - col_base, c_end), 0), c0)
        c_hi = tl.minimum(tl.max(tl.where(big, hi_i - col_base, c0), 0), c_end)
        rv = ((pid_r * QS + qi) < n_rows) & (hj < HI)
        qrow = tl.load(own_q0 + owner0 + pid_r * QS + qi, mask=rv, other=0).to(tl.int64)
        q, w = _query_rows(QI, WI, qrow, rv, hj, dd, s_qt, s_qh, s_wt, DI)
        for cs in range(c_lo, c_hi, BN):
            cols = cs + offs
            keys = col_base + cols
            kt = tl.load(KI + keys.to(tl.int64)[None, :] * s_kt + dd[:, None],
                         mask=(cols[None, :] < c_hi) & (dd[:, None] < DI), other=0.0)
            sc = _row_logits(q, w, kt, QS, HIP, BN, prec, HEAD_DOT)
            sc = tl.where(sc == 0.0, 0.0, sc)
            ok = big[:, None] & (keys[None, :] >= lo_i[:, None]) & (keys[None, :] < hi_i[:, None])
            tl.store(BUF + orow.to(tl.int64)[:, None] * stride_buf + cols[None, :], sc, mask=ok)
    else:
        o = owner0 + pid_r
        lo = tl.load(cand_lo + o)
        hi = tl.load(cand_hi + o)
        c_lo = tl.maximum(lo - col_base, c0)
        c_hi = tl.minimum(hi - col_base, tl.minimum(c0 + CH, width))
        if (hi - lo > K_SEL) & (c_lo < c_hi):
            q0 = tl.load(own_q0 + o)
            nq = tl.load(own_nq + o)
            row = BUF + pid_r.to(tl.int64) * stride_buf
            for s0 in range(0, nq, QS):
                rv = (s0 + qi < nq) & (hj < HI)
                qrow = (q0 + s0 + qi).to(tl.int64)
                qv = (s0 + tl.arange(0, QS)) < nq
                q, w = _query_rows(QI, WI, qrow, rv, hj, dd, s_qt, s_qh, s_wt, DI)
                for cs in range(c_lo, c_hi, BN):
                    cols = cs + offs
                    cm = cols < c_hi
                    keys = col_base + cols
                    if HAS_LIST:  # hi > lo holds whenever there is a list (common.py says why it is asked)
                        keys = gather_index_tile(LIST + o.to(tl.int64) * stride_list + cols, keys, hi > lo, cm)
                    kt = tl.load(KI + keys.to(tl.int64)[None, :] * s_kt + dd[:, None],
                                 mask=cm[None, :] & (dd[:, None] < DI), other=0.0)
                    sc = _row_logits(q, w, kt, QS, HIP, BN, prec, HEAD_DOT)
                    if AGG_MAX:
                        part = tl.max(tl.where(qv[:, None], sc, float("-inf")), 0)
                        if s0 > 0:
                            part = tl.maximum(part, tl.load(row + cols, mask=cm, other=0.0))
                    else:
                        part = tl.sum(tl.where(qv[:, None], sc, 0.0), 0)
                        if s0 > 0:
                            part += tl.load(row + cols, mask=cm, other=0.0)
                    tl.store(row + cols, tl.where(part == 0.0, 0.0, part), mask=cm)
                tl.debug_barrier()


@triton.jit
def _pool_kernel(QI, WI, QP, WP, own_q0, own_nq, s_qt, s_wt, s_pt, s_wpt, HD, HI,
                 R: tl.constexpr, HDP: tl.constexpr, HIP: tl.constexpr):
    """QP[o] = sum of the owner's rows of q_I (flattened H_I*d_I), WP[o] = sum of its w rows, in fp32."""
    o = tl.program_id(0)
    q0 = tl.load(own_q0 + o)
    nq = tl.load(own_nq + o)
    c = tl.arange(0, HDP)
    ch = tl.arange(0, HIP)
    rr = tl.arange(0, R)
    acc = tl.zeros([HDP], tl.float32)
    accw = tl.zeros([HIP], tl.float32)
    for r0 in range(0, nq, R):
        rv = r0 + rr < nq
        row = (q0 + r0 + rr).to(tl.int64)
        x = tl.load(QI + row[:, None] * s_qt + c[None, :], mask=rv[:, None] & (c[None, :] < HD), other=0.0)
        acc += tl.sum(x.to(tl.float32), 0)
        y = tl.load(WI + row[:, None] * s_wt + ch[None, :], mask=rv[:, None] & (ch[None, :] < HI), other=0.0)
        accw += tl.sum(y.to(tl.float32), 0)
    tl.store(QP + o.to(tl.int64) * s_pt + c, acc.to(QP.dtype.element_ty), mask=c < HD)
    tl.store(WP + o.to(tl.int64) * s_wpt + ch, accw, mask=ch < HI)


def pool_rows(q_idx, w_idx, own_q0, own_nq):
    """(q_pool [n_own, H_I, d_I] in q_idx's dtype, w_pool [n_own, H_I] float32): per-owner row sums."""
    n_own = own_q0.numel()
    t, hi_, di = q_idx.shape
    q_idx, w_idx = q_idx.contiguous(), w_idx.contiguous()
    qp = torch.empty((n_own, hi_, di), dtype=q_idx.dtype, device=q_idx.device)
    wp = torch.empty((n_own, hi_), dtype=torch.float32, device=q_idx.device)
    _pool_kernel[(n_own,)](q_idx, w_idx, qp, wp, own_q0, own_nq, q_idx.stride(0), w_idx.stride(0),
                           qp.stride(0), wp.stride(0), hi_ * di, hi_, R=8, HDP=next_pow2(hi_ * di),
                           HIP=next_pow2(hi_), num_warps=4)
    return qp, wp


def owner_scores(q_idx, w_idx, k_idx, own_q0, own_nq, cand_lo, cand_hi, owner0: int, n_rows: int,
                 col_base: int, width: int, buf: torch.Tensor, topk: int, token: bool, agg_max: bool,
                 key_list: torch.Tensor | None = None):
    """Fill buf[:n_rows, :width] with the scores of owners owner0..owner0+n_rows-1 (candidates only).

    ``token`` rows read q_idx row own_q0[o] (pooled rows: pass the pooled arrays and own_q0 =
    arange). ``key_list`` [n_own, width] (block rows only): column c of owner o is key
    key_list[o, c], with cand_lo/cand_hi then giving the columns in use (0 and the list's count).
    """
    c = CONFIG["token" if token else "block"]
    block_n, chunk = c["block_n"], c["chunk"]
    hi_, di = q_idx.shape[1], q_idx.shape[2]
    hip, dip = next_pow2(hi_), max(16, next_pow2(di))
    qs = max(1, 128 // hip)  # QS*HIP = 128 rows per dot (>= 16 as tl.dot needs)
    grid = (triton.cdiv(n_rows, qs) if token else n_rows, triton.cdiv(width, chunk))
    has_list = key_list is not None
    lst = key_list if has_list else own_q0
    _scores_kernel[grid](
        q_idx, w_idx, k_idx, buf, own_q0, own_nq, cand_lo, cand_hi,
        owner0, n_rows, col_base, width, buf.stride(0),
        q_idx.stride(0), q_idx.stride(1), w_idx.stride(0), k_idx.stride(0),
        hi_, di, topk,
        lst, lst.stride(0) if has_list else 0,
        TOKEN=token, AGG_MAX=agg_max, HAS_LIST=has_list, QS=qs, HIP=hip, DIP=dip, BN=block_n, CH=chunk,
        IEEE=ieee(q_idx), HEAD_DOT=c["head_dot"] and not ieee(q_idx),
        num_warps=c["num_warps"], num_stages=c["num_stages"],
    )
