"""dK and dV in key order: one program per chunk of a key tile's owners, no atomics.

The query-order backward (attention.py) makes one pass per owner and adds every key tile's dK, dV
into float32 buffers with atomics. Here the keys come first (model/dsa/key_tiles.py): a program
holds one tile of BN keys of one KV head (K, V and the dK, dV sums in registers) and walks the
owners that attend the tile, R (query, head) rows at a time, recomputing P from the saved
log-sum-exp with the tile's bit mask and the causal mask. It writes the tile's dK, dV once, in
the keys' dtype, or, for a tile split over several chunks, a float32 partial that
``_sum_slots_kernel`` adds in chunk order. dQ then comes from the query-order kernel with its dK,
dV work switched off (``DKV=False``): three dots per tile there, four here, against five plus the
atomics in one pass.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import ieee, next_pow2


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, SCR, QPOS, own_q0, own_nq,
    chunk_tile, chunk_lo, chunk_hi, chunk_slot, pair_owner, pair_bits,
    sm_scale, scale_log2, G, HKV, n_keys,
    s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_ot, s_oh, s_lt, s_dkt, s_dkh,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, R: tl.constexpr, IEEE: tl.constexpr,
):
    c = tl.program_id(0)
    hk = tl.program_id(1)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    tile = tl.load(chunk_tile + c)
    p0 = tl.load(chunk_lo + c)
    p1 = tl.load(chunk_hi + c)
    bit = tl.arange(0, BN)
    keys = tile * BN + bit
    kv = keys < n_keys
    dd = tl.arange(0, DP)
    dm = dd < D
    km = kv[:, None] & dm[None, :]
    kofs = keys.to(tl.int64)
    kk = tl.load(K + kofs[:, None] * s_kt + hk * s_kh + dd[None, :], mask=km, other=0.0)
    vv = tl.load(V + kofs[:, None] * s_vt + hk * s_vh + dd[None, :], mask=km, other=0.0)
    dk = tl.zeros([BN, DP], tl.float32)
    dv = tl.zeros([BN, DP], tl.float32)
    r = tl.arange(0, R)
    for p in range(p0, p1):
        o = tl.load(pair_owner + p)
        inset = ((tl.load(pair_bits + p) >> bit.to(tl.int64)) & 1) != 0
        q0 = tl.load(own_q0 + o)
        rows = tl.load(own_nq + o) * G
        for r0 in range(0, rows, R):  # row i of the owner is query i // G, head hk * G + i % G
            rv = r0 + r < rows
            qrow = (q0 + (r0 + r) // G).to(tl.int64)
            head = hk * G + (r0 + r) % G
            pos = tl.load(QPOS + qrow, mask=rv, other=-1)
            rm = rv[:, None] & dm[None, :]
            q = tl.load(Q + qrow[:, None] * s_qt + head[:, None] * s_qh + dd[None, :], mask=rm, other=0.0)
            do = tl.load(DO + qrow[:, None] * s_ot + head[:, None] * s_oh + dd[None, :], mask=rm, other=0.0)
            lse2 = tl.load(LSE + qrow * s_lt + head, mask=rv, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + qrow * s_lt + head, mask=rv, other=0.0)
            st = tl.dot(kk, tl.trans(q), input_precision=prec) * scale_log2  # [BN, R]
            ok = inset[:, None] & (keys[:, None] <= pos[None, :])
            pt = tl.where(ok, tl.exp2(st - lse2[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=prec)
            dpt = tl.dot(vv, tl.trans(do), input_precision=prec)
            dk += tl.dot((pt * (dpt - delta[None, :])).to(q.dtype), q, input_precision=prec)
    dk = dk * sm_scale
    slot = tl.load(chunk_slot + c)
    if slot < 0:
        out = kofs[:, None] * s_dkt + hk * s_dkh + dd[None, :]
        tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=km)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=km)
    else:
        sp = ((slot * HKV + hk) * 2).to(tl.int64) * BN * DP + bit[:, None] * DP + dd[None, :]
        tl.store(SCR + sp, dk)
        tl.store(SCR + sp + BN * DP, dv)


@triton.jit
def _sum_slots_kernel(SCR, DK, DV, split_tile, split_lo, split_hi, HKV, n_keys, s_dkt, s_dkh,
                      D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr):
    """dK, dV of a split tile: its chunks' partials summed in chunk order (deterministic)."""
    i = tl.program_id(0)
    hk = tl.program_id(1)
    bit = tl.arange(0, BN)
    dd = tl.arange(0, DP)
    keys = tl.load(split_tile + i) * BN + bit
    dk = tl.zeros([BN, DP], tl.float32)
    dv = tl.zeros([BN, DP], tl.float32)
    for s in range(tl.load(split_lo + i), tl.load(split_hi + i)):
        sp = ((s * HKV + hk) * 2).to(tl.int64) * BN * DP + bit[:, None] * DP + dd[None, :]
        dk += tl.load(SCR + sp)
        dv += tl.load(SCR + sp + BN * DP)
    km = (keys < n_keys)[:, None] & (dd < D)[None, :]
    out = keys.to(tl.int64)[:, None] * s_dkt + hk * s_dkh + dd[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=km)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=km)


# (R query rows per inner step, num_warps, num_stages); bench_dsa.py --bwd-order times them.
CONFIG = (64, 4, 2)


def dkdv(q, k, v, dout, lse, delta, plan, tiles, scale: float, rows: int | None = None,
         num_warps: int | None = None, num_stages: int | None = None):
    """(dk, dv) in k's dtype from the key tiles ``tiles`` (key_tiles.key_tiles) of ``plan``'s owners."""
    d = q.shape[2]
    hkv = k.shape[1]
    g = q.shape[1] // hkv
    dp = max(16, next_pow2(d))
    bn = tiles.bn
    dk = torch.zeros_like(k)  # tiles no owner attends keep zeros
    dv = torch.zeros_like(v)
    scr = torch.empty((max(1, tiles.n_slots), hkv, 2, bn, dp), dtype=torch.float32, device=q.device)
    if tiles.n_chunks:
        _dkdv_kernel[(tiles.n_chunks, hkv)](
            q, k, v, dout, lse, delta, dk, dv, scr, plan.q_pos, plan.own_q0, plan.own_nq,
            tiles.chunk_tile, tiles.chunk_lo, tiles.chunk_hi, tiles.chunk_slot, tiles.pair_owner, tiles.pair_bits,
            scale, scale * 1.4426950408889634, g, hkv, k.shape[0],
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            dout.stride(0), dout.stride(1), lse.stride(0), dk.stride(0), dk.stride(1),
            D=d, DP=dp, BN=bn, R=rows or CONFIG[0], IEEE=ieee(q),
            num_warps=num_warps or CONFIG[1], num_stages=num_stages or CONFIG[2],
        )
    n_split = int(tiles.split_tile.numel())
    if n_split:
        _sum_slots_kernel[(n_split, hkv)](scr, dk, dv, tiles.split_tile, tiles.split_lo, tiles.split_hi, hkv,
                                          k.shape[0], dk.stride(0), dk.stride(1), D=d, DP=dp, BN=bn)
    return dk, dv
