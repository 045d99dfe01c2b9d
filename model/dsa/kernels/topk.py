"""Exact top-k per row, ties to the lower key index, output in ascending key order.

Why not sort: a row has up to 256K scores and only k = 2048 survive. Scores map to
order-preserving 32-bit integers, and a radix select fixes the k-th largest key 8 bits at a time:
four passes each build a 256-bin histogram of the next byte among the elements that still match
the prefix; an emit pass then takes every element above the threshold and the first
(k - count_above) elements equal to it, in index order (a running cumsum), so ties resolve to
lower indices deterministically and the output comes out sorted.

Five reads of a 64K-256K row cost more than the scores took to write, so long rows (more than
4k candidates) first guess a pivot: the row is sampled (2048 scores spread evenly) and the pivot
is the sample's score whose rank predicts about 2k elements at or above it. One read of the row then copies every element >= pivot (score and key index, in index order) to
a per-row scratch of 4k slots, and the radix select and emit run over that copy. The copy holds
every element >= pivot, so when it holds at least k of them the k-th largest and all of its ties
are in it and the result is exactly the one over the whole row. When the guess was off (fewer
than k, or more than 4k elements at or above the pivot: structured rows, heavy ties) the row
falls back to the five passes; ``fallbacks`` counts such rows. A row with at most k candidates
takes all of them without reading scores.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PIVOT_TARGET = 2  # the pivot aims at this many times k elements at or above it
# Launch defaults (tests/bench/bench_dsa.py sweeps tile and warps). sample: scores sampled per long
# row, single scores spread evenly (0: no sampling). Runs of 16 adjacent scores (one run per ~8
# frames of a 256K row) missed clustered top keys: 4% of the rows of video-structured indexer inputs
# fell back at 256K (H100, tests/bench/RESULTS.md). filter: token rows skip the score buffer
# (pivot_filter.py).
CONFIG = dict(tile=2048, num_warps=8, sample=2048, filter=True)
SCRATCH = 4  # scratch slots per row in multiples of k; rows longer than this (and the sample) sample


@triton.jit
def _ordered(x):
    """float32 -> int32 whose signed order is the float order (with -0.0 folded onto +0.0)."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _load_keys(src, offs, m, FLOAT: tl.constexpr):
    """Order keys of src[offs]: float scores (the row) or already-ordered int32 (the scratch)."""
    if FLOAT:
        return _ordered(tl.load(src + offs, mask=m, other=0.0))
    else:
        return tl.load(src + offs, mask=m, other=0)


@triton.jit
def _radix_threshold(src, n, k, FLOAT: tl.constexpr, TILE: tl.constexpr):
    """(k-th largest order key of src[:n], how many elements equal to it to take)."""
    offs0 = tl.arange(0, TILE)
    bins = tl.arange(0, 256)
    prefix = tl.zeros([], tl.int32)
    pmask = tl.zeros([], tl.int32)
    krem = tl.zeros([], tl.int32) + k
    for p in tl.static_range(4):
        shift = 24 - 8 * p
        hist = tl.zeros([256], tl.int32)
        for j in range(0, n, TILE):
            offs = j + offs0
            m = offs < n
            u = _load_keys(src, offs, m, FLOAT) ^ (-2147483648)  # unsigned order as int32 bits
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
    return prefix ^ (-2147483648), krem  # back to the signed order of _ordered


@triton.jit
def _emit(src, idx_src, n, thr, krem, out, lo, FLOAT: tl.constexpr, TILE: tl.constexpr):
    """Write the key indices above thr and the first krem equal to it, in index order."""
    offs0 = tl.arange(0, TILE)
    pos = tl.zeros([], tl.int32)
    neq = tl.zeros([], tl.int32)
    for j in range(0, n, TILE):
        offs = j + offs0
        m = offs < n
        s = _load_keys(src, offs, m, FLOAT)
        eq = m & (s == thr)
        eqrank = neq + tl.cumsum(eq.to(tl.int32), 0) - 1
        take = (m & (s > thr)) | (eq & (eqrank < krem))
        if FLOAT:
            idx = lo + offs
        else:
            idx = tl.load(idx_src + offs, mask=m, other=0)
        dest = pos + tl.cumsum(take.to(tl.int32), 0) - 1
        tl.store(out + dest, idx, mask=take)
        pos += tl.sum(take.to(tl.int32), 0)
        neq += tl.sum(eq.to(tl.int32), 0)


@triton.jit
def pivot_rank(n, k, ns, TARGET: tl.constexpr):
    """Rank (0 = largest) in an ns-score sample of a row of n whose score should leave about
    TARGET*k of the row's elements at or above it."""
    return tl.minimum((TARGET * k * ns) // n, ns - 1)


@triton.jit
def sample_offsets(n, NS: tl.constexpr):
    """NS positions spread evenly over [0, n), int64 (rows past 1M keys)."""
    return (tl.arange(0, NS).to(tl.int64) * (n - 1)) // (NS - 1)


@triton.jit
def _sample_pivot(row, n, k, NS: tl.constexpr, TARGET: tl.constexpr):
    """An order key with about TARGET*k of the row's n elements at or above it, from a sample."""
    ranked = tl.sort(_ordered(tl.load(row + sample_offsets(n, NS))), descending=True)
    return tl.sum(tl.where(tl.arange(0, NS) == pivot_rank(n, k, NS, TARGET), ranked, 0), 0)


@triton.jit
def _topk_kernel(BUF, stride_buf, col_base, cand_lo, cand_hi, SEL, SEL_N, owner0, stride_sel, K_SEL,
                 SCR, stride_scr, COPIED, FALLBACKS, REDO,
                 TILE: tl.constexpr, HAS_SCR: tl.constexpr, PRE: tl.constexpr, NS: tl.constexpr,
                 TARGET: tl.constexpr, SLOTS: tl.constexpr):
    """One row. PRE: the scratch was filled by the pivot-filtered score kernel (pivot_filter.py)
    and COPIED holds its count (-1: row not filtered); a row it cannot finish is marked in REDO
    (1: the pivot missed, 2: not filtered) for the buffered path, with no score row to fall back on."""
    r = tl.program_id(0)
    o = owner0 + r
    lo = tl.load(cand_lo + o)
    hi = tl.load(cand_hi + o)
    n = hi - lo
    out = SEL + o.to(tl.int64) * stride_sel
    offs0 = tl.arange(0, TILE)
    cap = SLOTS * K_SEL
    scr_s = SCR + r.to(tl.int64) * stride_scr
    scr_i = scr_s + cap
    if n <= K_SEL:
        for j in range(0, K_SEL, TILE):
            offs = j + offs0
            tl.store(out + offs, tl.where(offs < n, lo + offs, -1), mask=offs < K_SEL)
        tl.store(SEL_N + o, tl.maximum(n, 0))
    elif PRE:
        copied = tl.load(COPIED + r)
        if (copied >= K_SEL) & (copied <= cap):
            thr, krem = _radix_threshold(scr_s, copied, K_SEL, False, TILE)
            _emit(scr_s, scr_i, copied, thr, krem, out, lo, False, TILE)
            tl.store(SEL_N + o, K_SEL)
        else:
            tl.store(REDO + o, tl.where(copied >= 0, 1, 2).to(tl.int8))
    else:
        row = BUF + r.to(tl.int64) * stride_buf + (lo - col_base)
        copied = tl.zeros([], tl.int32) - 1  # elements >= pivot, or -1: no copy made
        if HAS_SCR:
            if n > tl.maximum(cap, NS):
                pivot = _sample_pivot(row, n, K_SEL, NS, TARGET)
                copied = tl.zeros([], tl.int32)
                for j in range(0, n, TILE):
                    offs = j + offs0
                    m = offs < n
                    s = _ordered(tl.load(row + offs, mask=m, other=0.0))
                    take = m & (s >= pivot)
                    dest = copied + tl.cumsum(take.to(tl.int32), 0) - 1
                    keep = take & (dest < cap)
                    tl.store(scr_s + dest, s, mask=keep)
                    tl.store(scr_i + dest, lo + offs, mask=keep)
                    copied += tl.sum(take.to(tl.int32), 0)
        if (copied >= K_SEL) & (copied <= cap):
            thr, krem = _radix_threshold(scr_s, copied, K_SEL, False, TILE)
            _emit(scr_s, scr_i, copied, thr, krem, out, lo, False, TILE)
        else:
            if copied >= 0:
                tl.atomic_add(FALLBACKS, 1)
            thr, krem = _radix_threshold(row, n, K_SEL, True, TILE)
            _emit(row, row, n, thr, krem, out, lo, True, TILE)
        tl.store(SEL_N + o, K_SEL)


def topk_rows(buf: torch.Tensor, col_base: int, cand_lo, cand_hi, sel: torch.Tensor, sel_n: torch.Tensor,
              owner0: int, n_rows: int, topk: int, tile: int | None = None, num_warps: int | None = None,
              fallbacks: torch.Tensor | None = None, sample: int | None = None):
    """sel[owner0 + r] = ascending top-k key indices of buf[r, cand_lo-col_base : cand_hi-col_base].

    Rows wider than SCRATCH * topk and than the sample (``sample`` scores, CONFIG's by default; 0:
    never) take the sampled-pivot path (scratch memory n_rows x 2 x SCRATCH*topk int32, freed on
    return); ``fallbacks`` (int32 [1]) counts the rows whose pivot missed and took the five passes.
    """
    tile, num_warps = tile or CONFIG["tile"], num_warps or CONFIG["num_warps"]
    ns = CONFIG["sample"] if sample is None else sample
    cap = SCRATCH * topk
    has_scr = ns > 1 and buf.shape[1] > max(cap, ns)
    scr = torch.empty((n_rows, 2 * cap) if has_scr else (1, 1), dtype=torch.int32, device=buf.device)
    if fallbacks is None:
        fallbacks = torch.zeros(1, dtype=torch.int32, device=buf.device)
    _topk_kernel[(n_rows,)](buf, buf.stride(0), col_base, cand_lo, cand_hi, sel, sel_n, owner0,
                            sel.stride(0), topk, scr, scr.stride(0), scr, fallbacks, scr, TILE=tile,
                            HAS_SCR=has_scr, PRE=False, NS=max(ns, 2), TARGET=PIVOT_TARGET, SLOTS=SCRATCH,
                            num_warps=num_warps)


def topk_in_scratch(scr: torch.Tensor, copied: torch.Tensor, cand_lo, cand_hi, sel, sel_n, owner0: int,
                    n_rows: int, topk: int, redo: torch.Tensor):
    """The rows' top-k from a scratch that pivot_filter.filter_rows filled (scr [n_rows, 2 *
    SCRATCH*topk] int32, copied [n_rows]); rows it cannot finish are marked in redo [n_own] int8."""
    _topk_kernel[(n_rows,)](scr, 0, 0, cand_lo, cand_hi, sel, sel_n, owner0, sel.stride(0), topk, scr,
                            scr.stride(0), copied, copied, redo, TILE=CONFIG["tile"], HAS_SCR=False, PRE=True,
                            NS=2, TARGET=PIVOT_TARGET, SLOTS=SCRATCH, num_warps=CONFIG["num_warps"])
