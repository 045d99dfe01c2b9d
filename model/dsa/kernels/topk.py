"""Exact top-k per row by radix select, ties to the lower key index, output in ascending key order.

Why not sort: a row has up to 256K scores and only k = 2048 survive. The kernel maps each float to
an order-preserving 32-bit integer and fixes the k-th largest key 8 bits at a time: four passes
each build a 256-bin histogram of the next byte among the elements that still match the prefix,
and pick the bin where the count from the top reaches the remaining k. A last pass compacts every
element above the threshold and the first (k - count_above) elements equal to it, in index order
(a running cumsum), so ties resolve to lower indices deterministically. Five reads of the row, no
sort, no extra memory. A row with at most k candidates takes all of them without reading scores.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ordered(x):
    """float32 -> int32 whose signed order is the float order (with -0.0 folded onto +0.0)."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _topk_kernel(BUF, stride_buf, col_base, cand_lo, cand_hi, SEL, SEL_N, owner0, stride_sel, K_SEL,
                 TILE: tl.constexpr):
    r = tl.program_id(0)
    o = owner0 + r
    lo = tl.load(cand_lo + o)
    hi = tl.load(cand_hi + o)
    n = hi - lo
    out = SEL + o.to(tl.int64) * stride_sel
    offs0 = tl.arange(0, TILE)
    if n <= K_SEL:
        for j in range(0, K_SEL, TILE):
            offs = j + offs0
            tl.store(out + offs, tl.where(offs < n, lo + offs, -1), mask=offs < K_SEL)
        tl.store(SEL_N + o, tl.maximum(n, 0))
    else:
        row = BUF + r.to(tl.int64) * stride_buf + (lo - col_base)
        bins = tl.arange(0, 256)
        prefix = tl.zeros([], tl.int32)
        pmask = tl.zeros([], tl.int32)
        krem = tl.zeros([], tl.int32) + K_SEL
        for p in tl.static_range(4):
            shift = 24 - 8 * p
            hist = tl.zeros([256], tl.int32)
            for j in range(0, n, TILE):
                offs = j + offs0
                m = offs < n
                u = _ordered(tl.load(row + offs, mask=m, other=0.0)) ^ (-2147483648)
                match = m & ((u & pmask) == prefix)
                b = tl.where(match, (u >> shift) & 255, 0)
                h = tl.histogram(b, 256)
                nout = TILE - tl.sum(match.to(tl.int32), 0)
                hist += tl.where(bins == 0, h - nout, h)
            total = tl.sum(hist, 0)
            suffix = total - tl.cumsum(hist, 0) + hist  # elements in bins >= b
            bstar = tl.sum((suffix >= krem).to(tl.int32), 0) - 1
            krem -= tl.sum(tl.where(bins > bstar, hist, 0), 0)
            prefix = prefix | (bstar << shift)
            pmask = tl.full([], -1, tl.int32) << shift
        thr = prefix ^ (-2147483648)  # back to the signed order of _ordered
        pos = tl.zeros([], tl.int32)
        neq = tl.zeros([], tl.int32)
        for j in range(0, n, TILE):
            offs = j + offs0
            m = offs < n
            s = _ordered(tl.load(row + offs, mask=m, other=0.0))
            eq = m & (s == thr)
            eqrank = neq + tl.cumsum(eq.to(tl.int32), 0) - 1
            take = (m & (s > thr)) | (eq & (eqrank < krem))
            dest = pos + tl.cumsum(take.to(tl.int32), 0) - 1
            tl.store(out + dest, lo + offs, mask=take)
            pos += tl.sum(take.to(tl.int32), 0)
            neq += tl.sum(eq.to(tl.int32), 0)
        tl.store(SEL_N + o, K_SEL)


def topk_rows(buf: torch.Tensor, col_base: int, cand_lo, cand_hi, sel: torch.Tensor, sel_n: torch.Tensor,
              owner0: int, n_rows: int, topk: int, tile: int = 2048, num_warps: int = 8):
    """sel[owner0 + r] = ascending top-k key indices of buf[r, cand_lo-col_base : cand_hi-col_base]."""
    _topk_kernel[(n_rows,)](buf, buf.stride(0), col_base, cand_lo, cand_hi, sel, sel_n, owner0,
                            sel.stride(0), topk, TILE=tile, num_warps=num_warps)
