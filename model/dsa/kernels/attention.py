"""Sparse (and dense) attention over an owner's keys with GQA: forward and backward.

One program serves one owner (a query, or a block of B_q queries), one KV head and HPP of its
query heads: QB x HPP query rows that share every key tile it loads. In ``block`` mode that is
64 queries x 4 heads = 256 rows per gathered key tile in the forward, 64 x 2 = 128 in the backward
(BLOCK_ROWS; the tile is reused across the block, which is the point of block selection); in
``token`` mode 1 query x the G heads of the KV group (padded to 16 rows, the smallest tl.dot), so
each gathered 256-byte key row feeds every head of its group.

Keys come from two sources, walked as one loop of BN-key tiles: the owner's selected list
(gathered rows of the global key table, -1 padded) and a contiguous range (the block's own keys,
or the whole document before the block in the dense warm-up). Every key is also masked by
key <= query position, so queries given by global position (context parallel chunks) work.

Backward recomputes P from the saved log-sum-exp, writes dQ directly (each query row belongs to
one program) and adds dK, dV into float32 buffers that other programs add into at the same time
(reduce_add.py): a key may be selected by many owners. Sums in dK, dV are thus not bitwise
deterministic. A key-order backward without atomics (one program per tile of 64 keys over the
owners that attend it) was built and measured slower everywhere: real selections fill 5-19% of a
tile, and even a dense range ran 1.3x slower (tests/bench/RESULTS.md, 2026-12-06).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import gather_index_tile, ieee, next_pow2
from .reduce_add import add_tile, mode_for


@triton.jit
def _tile_keys(t, nt_sel, SEL, BITS, sel_row, n_sel, lo, hi, BN: tl.constexpr, HAS_BITS: tl.constexpr):
    """Key indices, validity and query bits of tile t: list tiles first, then the contiguous range.
    The bits (merged token owners, model/dsa/merge.py) say which of the owner's queries selected
    each listed key; range keys and lists without bits are every query's (all bits set).
    Also the indices as int64 row offsets, widened inside each branch: Triton 3.8's verifier
    rejects a widening of the branches' joined result (mismatched layouts) in about one compile in
    ten (tests/bench/RESULTS.md, 2026-12-07)."""
    offs = tl.arange(0, BN)
    kb = tl.full([BN], -1, tl.int32)
    if t < nt_sel:
        p = t * BN + offs
        km = p < n_sel
        kidx = tl.load(SEL + sel_row + p, mask=km, other=0)
        kofs = kidx.to(tl.int64)
        if HAS_BITS:
            kb = tl.load(BITS + sel_row + p, mask=km, other=0)
    else:
        kidx = lo + (t - nt_sel) * BN + offs
        kofs = kidx.to(tl.int64)
        km = kidx < hi
    return kidx, km, kb, kofs


@triton.jit
def _selected_by(kb, slot):
    """[rows, BN] bool: row r's query (slot[r], its index in the owner) selected the key."""
    return ((kb[None, :] >> slot[:, None]) & 1) != 0



@triton.jit
def _tile_logits(q, K, V, kidx, km, keep, pos, hk, dd, dm, scale_log2, s_kt, s_kh, s_vt, s_vh, prec: tl.constexpr,
                 MASK_K: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, BITS: tl.constexpr):
    """(K tile, V tile, base-2 logits with -inf where a key is masked) for BN keys (rows kidx of the
    global key table).

    ``MASK_K``: some of the tile's keys are padding (``km``); ``CAUSAL``: apply key <= query
    position. Full tiles of a selected list need neither (see the kernel), which keeps the
    predicate and select work out of the loop that carries most of the FLOPs. ``BITS``: ``keep``
    [rows, BN] masks each row to its own query's keys (merged token owners).
    """
    kofs = kidx.to(tl.int64)
    kp = K + kofs[:, None] * s_kt + hk * s_kh + dd[None, :]
    vp = V + kofs[:, None] * s_vt + hk * s_vh + dd[None, :]
    if MASK_K or not EVEN_D:
        lm = km[:, None] & dm[None, :]
        kk = tl.load(kp, mask=lm, other=0.0)
        vv = tl.load(vp, mask=lm, other=0.0)
    else:
        kk = tl.load(kp)
        vv = tl.load(vp)
    s = tl.dot(q, tl.trans(kk), input_precision=prec) * scale_log2
    if CAUSAL:
        s = tl.where(km[None, :] & (kidx[None, :] <= pos[:, None]), s, float("-inf"))
    elif MASK_K:
        s = tl.where(km[None, :], s, float("-inf"))
    if BITS:
        s = tl.where(keep, s, float("-inf"))
    return kk, vv, s


@triton.jit
def _fwd_tile(q, K, V, kidx, km, keep, pos, hk, dd, dm, m_i, l_i, acc, scale_log2, s_kt, s_kh, s_vt, s_vh,
              prec: tl.constexpr, MASK_K: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
              BITS: tl.constexpr):
    """One online-softmax step over a key tile."""
    kk, vv, s = _tile_logits(q, K, V, kidx, km, keep, pos, hk, dd, dm, scale_log2, s_kt, s_kh, s_vt, s_vh, prec,
                             MASK_K, CAUSAL, EVEN_D, BITS)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=prec)
    return m_new, l_i, acc


@triton.jit
def _bwd_tile(q, do, lse2, delta, rv, K, V, DK, DV, kidx, km, keep, pos, hk, dd, dm, dq, sm_scale, scale_log2,
              s_kt, s_kh, s_vt, s_vh, s_dkt, s_dkh, ptp, inv_hq, prec: tl.constexpr, MASK_K: tl.constexpr,
              CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, BITS: tl.constexpr, ADD: tl.constexpr,
              PT_OUT: tl.constexpr):
    """Recompute P for a key tile, accumulate dQ, add this tile's dK and dV into the shared float32
    buffers (reduce_add, mode ``ADD``); padded rows (``rv``) get P = 0. ``PT_OUT``: also add
    P / Hq into the indexer KL's target at ``ptp`` [rows] + the tile's lanes (each query's two, four... head
    rows of this program, and the other programs' heads, add into the same entry)."""
    kk, vv, s = _tile_logits(q, K, V, kidx, km, keep, pos, hk, dd, dm, scale_log2, s_kt, s_kh, s_vt, s_vh, prec,
                             MASK_K, CAUSAL, EVEN_D, BITS)
    p = tl.where(rv[:, None], tl.exp2(s - lse2[:, None]), 0.0)
    dkp = kidx.to(tl.int64)[:, None] * s_dkt + hk * s_dkh + dd[None, :]
    cm = km[:, None] & dm[None, :]
    # each of dV and dK is added as soon as it exists, so that its registers are free for the next dot
    add_tile(DV + dkp, tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=prec), cm, ADD, MASK_K or not EVEN_D)
    dp = tl.dot(do, tl.trans(vv), input_precision=prec)
    ds = p * (dp - delta[:, None])
    if PT_OUT:  # p holds each element once (a dot's layout), as the quads need
        add_tile(ptp[:, None] + tl.arange(0, kidx.shape[0])[None, :], p * inv_hq, rv[:, None] & km[None, :], ADD,
                 MASK_K)
    dq += tl.dot(ds.to(kk.dtype), kk, input_precision=prec)
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=prec) * sm_scale
    add_tile(DK + dkp, dk, cm, ADD, MASK_K or not EVEN_D)
    return dq


@triton.jit
def _owner_rows(QPOS, own_q0, own_nq, o, hk, hg, G, D: tl.constexpr, DP: tl.constexpr,
                QB: tl.constexpr, HPP: tl.constexpr):
    """The rows one program owns: QB queries of owner `o` x HPP heads of KV head `hk`'s group.

    Forward and backward walk the same (query, head) rows in the same order, so both take them
    from here: row r is query r // HPP and head hg*HPP + r % HPP; `rv` masks rows past the
    owner's queries or the group's heads.
    """
    q0 = tl.load(own_q0 + o)
    nq = tl.load(own_nq + o)
    r = tl.arange(0, QB * HPP)
    qi = r // HPP
    hh = hg * HPP + r % HPP
    rv = (qi < nq) & (hh < G)
    qrow = (q0 + qi).to(tl.int64)
    head = hk * G + hh
    pos = tl.load(QPOS + qrow, mask=rv, other=-1)
    dd = tl.arange(0, DP)
    dm = dd < D
    return rv, qrow, head, pos, dd, dm


@triton.jit
def _tile_step(q, do, lse2, delta, rv, K, V, DK, DV, kidx, km, keep, pos, hk, dd, dm, m_i, l_i, acc, sm_scale,
               scale_log2, s_kt, s_kh, s_vt, s_vh, s_dkt, s_dkh, ptp, inv_hq, prec: tl.constexpr,
               MASK_K: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, BWD: tl.constexpr,
               BITS: tl.constexpr, ADD: tl.constexpr, PT_OUT: tl.constexpr):
    """One key tile in either direction: ``acc`` is the output rows (forward, with the online
    softmax's m_i, l_i) or the dQ rows (backward, m_i and l_i passed through)."""
    if BWD:
        acc = _bwd_tile(q, do, lse2, delta, rv, K, V, DK, DV, kidx, km, keep, pos, hk, dd, dm, acc, sm_scale,
                        scale_log2, s_kt, s_kh, s_vt, s_vh, s_dkt, s_dkh, ptp, inv_hq, prec, MASK_K, CAUSAL, EVEN_D,
                        BITS, ADD, PT_OUT)
    else:
        m_i, l_i, acc = _fwd_tile(q, K, V, kidx, km, keep, pos, hk, dd, dm, m_i, l_i, acc, scale_log2,
                                  s_kt, s_kh, s_vt, s_vh, prec, MASK_K, CAUSAL, EVEN_D, BITS)
    return m_i, l_i, acc


@triton.jit
def _attn_kernel(
    Q, K, V, O, LSE, DO, DELTA, DQ, DK, DV, QPOS, own_q0, own_nq, SEL, SEL_N, SBITS, rng_lo, rng_hi, PT,
    sm_scale, scale_log2, inv_hq, G, n_own, o_stride,
    s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_ot, s_oh, s_lt, s_dkt, s_dkh, stride_sel, s_po, s_pq,
    HAS_SEL: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, QB: tl.constexpr, HPP: tl.constexpr,
    BN: tl.constexpr, IEEE: tl.constexpr, BWD: tl.constexpr, HAS_BITS: tl.constexpr, ADD: tl.constexpr,
    PT_OUT: tl.constexpr, PBN: tl.constexpr,
):
    """Forward (``BWD`` false: writes O, LSE) or backward (reads DO, LSE, DELTA; writes DQ, adds DK,
    DV) of one owner's rows, walking its keys in one order: full list tiles (no mask), the
    partial list tile, then the contiguous range (causal). O, DO and DQ share the strides s_ot, s_oh
    (the launcher makes them contiguous like q). ``HAS_BITS``: SBITS holds the list's query bits
    (merged token owners), laid out like SEL. Program i serves owner i * o_stride mod n_own
    (o_stride coprime to n_own: a permutation; 1 keeps the order). ``PT_OUT`` (backward): also add
    the head-mean probabilities into the indexer KL's target PT [owner, query in owner, key slot],
    numbered as the KL pass walks the keys in tiles of PBN (indexer_kl._owner_walk): a listed key's
    slot is its place in the list, a range key's the list's whole PBN tiles plus its offset."""
    o = ((tl.program_id(0).to(tl.int64) * o_stride) % n_own).to(tl.int32)
    hk = tl.program_id(1)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    EVEN_D: tl.constexpr = D == DP
    rv, qrow, head, pos, dd, dm = _owner_rows(QPOS, own_q0, own_nq, o, hk, tl.program_id(2), G,
                                              D, DP, QB, HPP)
    rm = rv[:, None] & dm[None, :]
    q = tl.load(Q + qrow[:, None] * s_qt + head[:, None] * s_qh + dd[None, :], mask=rm, other=0.0)
    orow = qrow[:, None] * s_ot + head[:, None] * s_oh + dd[None, :]
    m_i = tl.full([QB * HPP], -1.0e30, tl.float32)
    l_i = tl.zeros([QB * HPP], tl.float32)
    acc = tl.zeros([QB * HPP, DP], tl.float32)
    if BWD:
        do = tl.load(DO + orow, mask=rm, other=0.0)
        lse2 = tl.load(LSE + qrow * s_lt + head, mask=rv, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + qrow * s_lt + head, mask=rv, other=0.0)
    else:
        do, lse2, delta = q, m_i, l_i  # unused by the forward step
    n_sel = 0
    if HAS_SEL:
        n_sel = tl.load(SEL_N + o)
    lo = tl.load(rng_lo + o)
    hi = tl.load(rng_hi + o)
    sel_row = o.to(tl.int64) * stride_sel
    offs = tl.arange(0, BN)
    # The selected list: gathered key rows. Selection only offers keys before the owner's first
    # query (Plan.cand_hi), so no list key needs the causal mask; full tiles need no mask at all.
    slot = tl.arange(0, QB * HPP) // HPP  # the row's query within the owner (its bit)
    n_full = (n_sel // BN) * BN
    ptr = PT + o.to(tl.int64) * s_po + slot * s_pq  # [rows]: each row's target row; + the tile's slots
    r_slot = tl.cdiv(n_sel, PBN) * PBN - lo  # a range key's slot, less its index
    for j in range(0, n_full, BN):
        # under a condition that always holds here, so that the K, V gathers pipeline (common.py;
        # sm_90 waits 0 -> 4 forward, 0 -> 2 backward)
        kidx = gather_index_tile(SEL + sel_row + j + offs, offs, j + BN <= n_sel)
        keep = kidx
        if HAS_BITS:
            keep = _selected_by(tl.load(SBITS + sel_row + j + offs), slot)
        m_i, l_i, acc = _tile_step(q, do, lse2, delta, rv, K, V, DK, DV, kidx, offs < BN, keep, pos, hk, dd, dm,
                                   m_i, l_i, acc, sm_scale, scale_log2, s_kt, s_kh, s_vt, s_vh, s_dkt, s_dkh,
                                   ptr + j, inv_hq, prec, False, False, EVEN_D, BWD, HAS_BITS, ADD, PT_OUT)
    if n_full < n_sel:
        km = n_full + offs < n_sel
        kidx = tl.load(SEL + sel_row + n_full + offs, mask=km, other=0)
        keep = kidx
        if HAS_BITS:
            keep = _selected_by(tl.load(SBITS + sel_row + n_full + offs, mask=km, other=0), slot)
        m_i, l_i, acc = _tile_step(q, do, lse2, delta, rv, K, V, DK, DV, kidx, km, keep, pos, hk, dd, dm,
                                   m_i, l_i, acc, sm_scale, scale_log2, s_kt, s_kh, s_vt, s_vh, s_dkt, s_dkh,
                                   ptr + n_full, inv_hq, prec, True, False, EVEN_D, BWD, HAS_BITS, ADD, PT_OUT)
    for j in range(lo, hi, BN):  # the contiguous range: the block's own keys, or the dense prefix
        kidx = j + offs
        m_i, l_i, acc = _tile_step(q, do, lse2, delta, rv, K, V, DK, DV, kidx, kidx < hi, kidx, pos, hk, dd, dm,
                                   m_i, l_i, acc, sm_scale, scale_log2, s_kt, s_kh, s_vt, s_vh, s_dkt, s_dkh,
                                   ptr + (r_slot + j), inv_hq, prec, True, True, EVEN_D, BWD, False, ADD, PT_OUT)
    if BWD:
        tl.store(DQ + orow, (acc * sm_scale).to(DQ.dtype.element_ty), mask=rm)
    else:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        tl.store(O + orow, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=rm)
        tl.store(LSE + qrow * s_lt + head, (m_i + tl.log2(l_safe)) * 0.6931471805599453, mask=rv)


# Launch defaults (BN, num_warps, num_stages) per mode; tests/bench/bench_dsa.py sweeps them.
# "merged": token groups of m queries (merge.py), m x G rows: 32 at m = 4, 128 at m = 16 (not yet swept).
# Block: Triton's pipeliner overlaps a loop's copies with its work only from 3 stages on
# (tests/bench/kernel_schedule.py); the backward at 3 stages ran 53.99 ms against 58.47 at 1, the
# forward at 4 stages 11.57 against 11.82 at 3 (H100, 128K, 2026-12-07).
# A 4th value caps the registers a thread (ptxas maxnreg): at 128 with 8 warps two programs fit an
# SM, so that one's gathers can wait under the other's dots (the forward at (32, 8, 3 or 4) and
# 128 rows compiles for sm_90 at 124-125 registers, no spills, 80-96 KiB of shared memory). Timed
# once the list loop pipelined its gathers, that lost: 11.71 ms against 10.61 for (64, 16, 4) at 256
# rows (H100, 128K, 2026-12-07 night), so no default caps registers.
FWD_CONFIG = {"block": (64, 16, 4), "token": (64, 2, 2), "merged": (64, 4, 2)}  # H100 sweeps, 2026-11-24
# Token backward: 16-key tiles at 3 stages ran 435.57 ms against 585.95 for (32, 4, 2) and 713 for
# (32, 4, 3 or 4), whose stages of 32 gathered K, V rows crowd a 255-register program (H100, 128K,
# 2026-12-07 late night).
BWD_CONFIG = {"block": (64, 8, 3), "token": (16, 4, 3), "merged": (64, 4, 2)}
# The block backward that also adds the indexer KL's target (PT_OUT): compiled for sm_90 it spills
# 288 bytes at (64, 8, 3) against 48 without the target, and 48 at (32, 8, 3)
# (tests/bench/kernel_schedule.py). Timed (H200, 2026-12-07): 69.6 / 147.3 ms at (64, 8, 3), 75.4 /
# 162.9 at (32, 8, 3), 74.1 / 160.3 at (64, 8, 2), 128K / 256K, against 48.5 / 105.9 without it.
BWD_CONFIG["block+pt"] = (64, 8, 3)


# Query rows (queries x heads of one KV group) per program in block mode: every gathered key tile
# feeds this many rows of the dot. Forward: 256 rows (64 queries x 4 heads) over 16 warps ran at
# 377 TFLOP/s vs 296 for 128 rows over 8 warps (H100, 128K, mask-free list tiles,
# tests/bench/RESULTS.md). Backward keeps 128: it holds q, dO and dQ per row.
BLOCK_ROWS = {"fwd": 256, "bwd": 128}


# Spread the owners that run at the same time over the sequence (owner_stride), per direction.
# Programs start in grid order, owners fastest, so the ~one program per SM that run together are
# neighbouring owners of one KV head: with video-like selections they pick many of the same keys, and
# the backward's float32 dK, dV adds to those rows might queue behind each other. They do not, by
# the clock: spread, the backward ran 1.01x / 1.03x and the forward 1.01x / 1.02x the in-order
# times at 128K / 256K (H200, tests/bench/bench_attn_ablation.py, 2026-12-07). Off.
SPREAD_OWNERS = {"fwd": False, "bwd": False}


def owner_stride(n_owners: int, spread: bool) -> int:
    """1, or a stride about n_owners / 132 (an H100's SMs) coprime to n_owners, so that program i's
    owner i * stride mod n_owners visits every owner once and programs running together sit about
    that far apart."""
    if not spread or n_owners < 264:
        return 1
    s = max(2, n_owners // 132)
    while math.gcd(s, n_owners) != 1:
        s += 1
    return s


def config_key(token: bool, bits) -> str:
    """Which launch defaults a call takes: token owners, merged token groups, or blocks."""
    return "token" if token else ("merged" if bits is not None else "block")


def launch_shape(max_nq: int, g: int, token: bool, rows: int = 128):
    """(QB, HPP): queries and heads per program, QB*HPP >= 16 rows and about ``rows`` in block mode."""
    if token:
        return 1, max(16, next_pow2(g))
    qb = next_pow2(max_nq)
    hpp = max(1, min(next_pow2(g), rows // qb))
    hpp = max(hpp, 16 // qb)
    return qb, hpp


def _launch(bwd: bool, q, k, v, o, lse, do, delta, dq, dk, dv, plan, sel, sel_n, scale: float, token: bool,
            block_n, num_warps, num_stages, bits=None, add_mode=None, spread=None, target=None) -> None:
    c = (BWD_CONFIG if bwd else FWD_CONFIG)[config_key(token, bits) + ("+pt" if target is not None else "")]
    d = q.shape[2]
    hkv = k.shape[1]
    g = q.shape[1] // hkv
    qb, hpp = launch_shape(plan.max_nq, g, token, BLOCK_ROWS["bwd" if bwd else "fwd"])
    has_sel = sel is not None
    sel_t = sel if has_sel else plan.own_q0
    sel_n_t = sel_n if has_sel else plan.own_q0
    grid = (plan.n_owners, hkv, triton.cdiv(g, hpp))
    pt_out = target is not None
    if pt_out and (not bwd or token or bits is not None or target[0].shape[1] < qb):
        raise ValueError("the KL target comes from the backward of block owners only, with a row per owner query")
    pt = target[0] if pt_out else lse
    _attn_kernel[grid](
        q, k, v, o, lse, do, delta, dq, dk, dv, plan.q_pos, plan.own_q0, plan.own_nq, sel_t, sel_n_t,
        bits if bits is not None else sel_t, plan.rng_lo, plan.rng_hi, pt, scale, scale * 1.4426950408889634,
        1.0 / q.shape[1], g, plan.n_owners,
        owner_stride(plan.n_owners, SPREAD_OWNERS["bwd" if bwd else "fwd"] if spread is None else spread),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o.stride(0), o.stride(1), lse.stride(0), dk.stride(0), dk.stride(1), sel_t.stride(0) if has_sel else 0,
        pt.stride(0) if pt_out else 0, pt.stride(1) if pt_out else 0,
        HAS_SEL=has_sel, D=d, DP=max(16, next_pow2(d)), QB=qb, HPP=hpp, BN=block_n or c[0], IEEE=ieee(q),
        BWD=bwd, HAS_BITS=bits is not None, ADD=mode_for(q, config_key(token, bits), add_mode), PT_OUT=pt_out,
        PBN=target[1] if pt_out else 16,
        num_warps=num_warps or c[1], num_stages=num_stages or c[2],
        **({"maxnreg": c[3]} if len(c) > 3 and c[3] and q.is_cuda else {}),
    )


def attn_fwd(q, k, v, plan, sel, sel_n, scale: float, token: bool, block_n: int | None = None,
             num_warps: int | None = None, num_stages: int | None = None, bits=None, spread=None):
    """(out like q, lse [Tq, Hq] float32, natural log) of each owner's attention; q, k, v contiguous.
    ``bits``: the list's query bits (merged token owners, model/dsa/merge.py)."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    _launch(False, q, k, v, out, lse, q, lse, q, k, v, plan, sel, sel_n, scale, token,
            block_n, num_warps, num_stages, bits, spread=spread)
    return out, lse


def attn_bwd(q, k, v, out, lse, dout, plan, sel, sel_n, scale: float, token: bool, block_n: int | None = None,
             num_warps: int | None = None, num_stages: int | None = None, bits=None, add_mode=None, spread=None,
             target=None):
    """(dq, dk, dv) for the output gradient ``dout``; dk and dv are summed in float32 (``add_mode``:
    how, reduce_add.MODES; the default of this launch kind when None; ``spread``: SPREAD_OWNERS's
    choice when None). ``target``: (PT, its slot tile), a zeroed float32 buffer [owners, queries,
    key slots] into which the backward also adds the indexer KL's head-mean target (block owners;
    indexer_kl.target_buffer makes it, indexer_kl reads it)."""
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1)  # [Tq, Hq], rowsum(dO * O)
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    _launch(True, q, k, v, dout, lse, dout, delta, dq, dk, dv, plan, sel, sel_n, scale, token,
            block_n, num_warps, num_stages, bits, add_mode, spread, target)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
