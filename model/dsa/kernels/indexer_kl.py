"""The indexer's KL loss over each query's attended keys, with its gradients.

Per query t with attended key set S_t (its owner's list and range, causal):
  p_t(s) = mean over the Hq heads of softmax(scale * q_h . k_s) over S_t  (the target; from the
           attention forward's log-sum-exp, so no gradient reaches q or k),
  I_t(s) = sum_j w[t, j] relu(q_I[t, j] . k_I[s]),   KL_t = sum_s p log p - sum_s p I + lse_s I_t(s).
In the warm-up S_t is every visible key (dense), in sparse training the selected set.

Pass 1 computes lse of I_t over S_t; pass 2 recomputes the head-mean probabilities (one dot per KV
head and tile) and I_t, accumulates the KL terms and, when gradients are wanted, dI = softmax(I) - p
back through the relu: dq_I and dw are written per query (one program owns each query), dk_I is
added into a float32 buffer shared by all programs (reduce_add.py). The gradients are thus
computed with the loss, in the forward, for a unit weight per query; the autograd Function scales
them by grad / T. That trades storing dq_I (the size of q_I) for not recomputing the Hq-head
probabilities in backward.

The target can instead come from its own kernel first (_target_kernel, SPLIT_TARGET per launch
kind): programs shaped like the attention forward's, each holding the Q rows of 32 queries x one KV
group's heads for its whole walk, so every gathered key tile feeds one dot of all those rows; pass 2
then reads the target from a float32 buffer. Pass 2's own head loop reloads four KV heads' Q rows
and K tiles per key tile, which is what the head-mean target costs there (half of the KL, per
tests/bench/bench_kl_ablation.py). The buffer is [owners, queries, attended keys]; the dense
warm-up's is Tq x Tq / 2, so the owners go through in waves within a memory budget.

A head-major walk of pass 2 for block owners (one KV head at a time over a chunk of key tiles,
its query rows loaded once per chunk, the head sums kept in a float32 scratch slice per
persistent program) was built and measured within 2.5% of this tile-major walk with gradients
(H100, tests/bench/RESULTS.md, 2026-12-07; the code is at commit 94dd5ff) and not kept. So was pass
2 as one loop over (tile, KV head) pairs, which lets Triton's pipeliner prefetch across tiles at 3
stages: 45% slower on block owners and 2.7x on token owners (H100, 2026-12-07, commit 2c196e6).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

from .attention import _selected_by, _tile_keys, config_key
from .common import ieee, next_pow2
from .reduce_add import add_tile, mode_for


@triton.jit
def _indexer_logits(qi_, wi, KI, kofs, km, di, dim_, s_kit, prec: tl.constexpr, QS: tl.constexpr,
                    HIP: tl.constexpr, BN: tl.constexpr):
    """(indexer key tile [DIP, BN], per-head dots z [QS*HIP, BN], logits I [QS, BN]) of one key tile."""
    kit = tl.load(KI + kofs[None, :] * s_kit + di[:, None], mask=km[None, :] & dim_[:, None], other=0.0)
    z = tl.dot(qi_, kit, input_precision=prec)
    il = tl.sum(tl.reshape(tl.maximum(z, 0.0) * wi[:, None], (QS, HIP, BN)), 1)
    return kit, z, il


@triton.jit
def _keys_ok(kidx, km, kb, rows_valid, pos, slot, HAS_BITS: tl.constexpr):
    """[rows, BN]: the row's query sees the key (valid, causal, and selected by that query)."""
    ok = rows_valid[:, None] & km[None, :] & (kidx[None, :] <= pos[:, None])
    if HAS_BITS:
        ok = ok & _selected_by(kb, slot)
    return ok


@triton.jit
def _group_probs(qh, lse2, K, kofs, km, hk, oka, dd, dm, s_kt, s_kh, scale_log2, prec: tl.constexpr,
                 QS: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr):
    """[QS, BN]: KV head hk's query heads' attention probabilities, summed over the heads."""
    kt = tl.load(K + kofs[None, :] * s_kt + hk * s_kh + dd[:, None], mask=km[None, :] & dm[:, None],
                 other=0.0)
    s = tl.dot(qh, kt, input_precision=prec) * scale_log2
    p = tl.where(oka, tl.exp2(s - lse2[:, None]), 0.0)
    return tl.sum(tl.reshape(p, (QS, HP, BN)), 1)


@triton.jit
def _kl_step(pt, qi_, wi, KI, DKI, kofs, km, ok, lse_i, a_plogp, a_pi, dqi, dwi, di, dim_, s_kit, s_dkit,
             prec: tl.constexpr, WITH_GRAD: tl.constexpr, QS: tl.constexpr, HIP: tl.constexpr,
             BN: tl.constexpr, ADD: tl.constexpr):
    """One key tile's KL terms (target pt [QS, BN]) and, with gradients, its dq_I, dw and dk_I parts."""
    kit, z, il = _indexer_logits(qi_, wi, KI, kofs, km, di, dim_, s_kit, prec, QS, HIP, BN)
    a_plogp += tl.sum(tl.where(pt > 0.0, pt * tl.log(tl.where(pt > 0.0, pt, 1.0)), 0.0), 1)
    a_pi += tl.sum(tl.where(ok, pt * il, 0.0), 1)
    if WITH_GRAD:
        dil = tl.exp(tl.where(ok, il - lse_i[:, None], float("-inf"))) - pt
        dil_r = tl.reshape(tl.broadcast_to(dil[:, None, :], (QS, HIP, BN)), (QS * HIP, BN))
        dwi += tl.sum(dil_r * tl.maximum(z, 0.0), 1)
        dz = tl.where(z > 0.0, dil_r * wi[:, None], 0.0).to(qi_.dtype)
        dqi += tl.dot(dz, tl.trans(kit), input_precision=prec)
        dk = tl.dot(tl.trans(dz), qi_, input_precision=prec)
        add_tile(DKI + kofs[:, None] * s_dkit + di[None, :], dk, km[:, None] & dim_[None, :], ADD)
    return a_plogp, a_pi, dqi, dwi


@triton.jit
def _owner_walk(o, own_q0, own_nq, SEL_N, rng_lo, rng_hi, stride_sel, BN: tl.constexpr, HAS_SEL: tl.constexpr):
    """Owner o's queries and key walk, as the KL pass and the target kernel both number it: (first
    query row, query count, listed keys, list tiles, range start, range end, all tiles, list row
    offset). A key's slot in the target buffer is its tile * BN + lane in this walk."""
    q0 = tl.load(own_q0 + o)
    nq = tl.load(own_nq + o)
    n_sel = 0
    if HAS_SEL:
        n_sel = tl.load(SEL_N + o)
    nt_sel = tl.cdiv(n_sel, BN)
    lo = tl.load(rng_lo + o)
    hi = tl.load(rng_hi + o)
    return q0, nq, n_sel, nt_sel, lo, hi, nt_sel + tl.cdiv(hi - lo, BN), o.to(tl.int64) * stride_sel


@triton.jit
def _kl_kernel(
    Q, K, LSE, QI, WI, KI, QPOS, own_q0, own_nq, SEL, SEL_N, SBITS, rng_lo, rng_hi,
    KL, DQI, DWI, DKI, PT,
    scale_log2, inv_hq, G, HKV, HI, DI, o_base,
    s_qt, s_qh, s_kt, s_kh, s_lt, s_qit, s_qih, s_wt, s_kit, s_dqit, s_dqih, s_dwt, s_dkit, stride_sel, s_po, s_pq,
    HAS_SEL: tl.constexpr, WITH_GRAD: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, QS: tl.constexpr,
    HP: tl.constexpr, HIP: tl.constexpr, DIP: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
    HAS_BITS: tl.constexpr, ADD: tl.constexpr, PT_IN: tl.constexpr,
):
    """One program per owner. ``PT_IN``: the head-mean target was written by _target_kernel into PT
    [owner, query in owner, key slot] (slot = the key's place in the walk, tile * BN + lane), so
    pass 2 reads it instead of recomputing it from Q, K and LSE; PT holds the owners from o_base on
    (a wave of them, when the whole target would not fit)."""
    o = o_base + tl.program_id(0)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    q0, nq, n_sel, nt_sel, lo, hi, nt, sel_row = _owner_walk(o, own_q0, own_nq, SEL_N, rng_lo, rng_hi,
                                                              stride_sel, BN, HAS_SEL)
    dd = tl.arange(0, DP)
    dm = dd < D
    di = tl.arange(0, DIP)
    dim_ = di < DI
    qa = tl.arange(0, QS)
    ri = tl.arange(0, QS * HIP)
    iq = ri // HIP
    ij = ri % HIP
    ra = tl.arange(0, QS * HP)
    aq = ra // HP
    ah = ra % HP
    lanes = tl.arange(0, BN)
    for s0 in range(0, nq, QS):
        qv = s0 + qa < nq
        pos_q = tl.load(QPOS + q0 + s0 + qa, mask=qv, other=-1)
        riv = (s0 + iq < nq) & (ij < HI)
        irow = (q0 + s0 + iq).to(tl.int64)
        qi_ = tl.load(QI + irow[:, None] * s_qit + ij[:, None] * s_qih + di[None, :],
                      mask=riv[:, None] & dim_[None, :], other=0.0)
        wi = tl.load(WI + irow * s_wt + ij, mask=riv, other=0.0).to(tl.float32)
        rav = (s0 + aq < nq) & (ah < G)
        arow = (q0 + s0 + aq).to(tl.int64)
        pos_a = tl.load(QPOS + arow, mask=rav, other=-1)
        # pass 1: log-sum-exp of the indexer logits over the attended keys
        m_i = tl.full([QS], -1.0e30, tl.float32)
        l_i = tl.zeros([QS], tl.float32)
        for t in range(0, nt):
            kidx, km, kb, kofs = _tile_keys(t, nt_sel, SEL, SBITS, sel_row, n_sel, lo, hi, BN, HAS_BITS)
            _, _, il = _indexer_logits(qi_, wi, KI, kofs, km, di, dim_, s_kit, prec, QS, HIP, BN)
            il = tl.where(_keys_ok(kidx, km, kb, qv, pos_q, s0 + qa, HAS_BITS), il, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(il, 1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(il - m_new[:, None]), 1)
            m_i = m_new
        lse_i = m_i + tl.log(tl.where(l_i == 0.0, 1.0, l_i))
        # pass 2: head-mean attention probabilities, KL terms, gradients
        a_plogp = tl.zeros([QS], tl.float32)
        a_pi = tl.zeros([QS], tl.float32)
        dqi = tl.zeros([QS * HIP, DIP], tl.float32)
        dwi = tl.zeros([QS * HIP], tl.float32)
        for t in range(0, nt):
            kidx, km, kb, kofs = _tile_keys(t, nt_sel, SEL, SBITS, sel_row, n_sel, lo, hi, BN, HAS_BITS)
            if PT_IN:
                pt = tl.load(PT + tl.program_id(0).to(tl.int64) * s_po + (s0 + qa)[:, None] * s_pq + t * BN
                             + lanes[None, :],
                             mask=qv[:, None], other=0.0)
            else:
                oka = _keys_ok(kidx, km, kb, rav, pos_a, s0 + aq, HAS_BITS)
                pt = tl.zeros([QS, BN], tl.float32)
                for hk in range(0, HKV):
                    head = hk * G + ah
                    qh = tl.load(Q + arow[:, None] * s_qt + head[:, None] * s_qh + dd[None, :],
                                 mask=rav[:, None] & dm[None, :], other=0.0)
                    lse2 = tl.load(LSE + arow * s_lt + head, mask=rav, other=0.0) * 1.4426950408889634
                    pt += _group_probs(qh, lse2, K, kofs, km, hk, oka, dd, dm, s_kt, s_kh, scale_log2, prec,
                                       QS, HP, BN)
                pt = pt * inv_hq
            a_plogp, a_pi, dqi, dwi = _kl_step(
                pt, qi_, wi, KI, DKI, kofs, km, _keys_ok(kidx, km, kb, qv, pos_q, s0 + qa, HAS_BITS),
                lse_i, a_plogp, a_pi, dqi, dwi, di, dim_, s_kit, s_dkit, prec, WITH_GRAD, QS, HIP, BN, ADD)
        kl = a_plogp - a_pi + lse_i
        tl.store(KL + q0 + s0 + qa, kl, mask=qv)
        if WITH_GRAD:
            tl.store(DQI + irow[:, None] * s_dqit + ij[:, None] * s_dqih + di[None, :],
                     dqi.to(DQI.dtype.element_ty), mask=riv[:, None] & dim_[None, :])
            tl.store(DWI + irow * s_dwt + ij, dwi, mask=riv)


@triton.jit
def _target_kernel(
    Q, K, LSE, QPOS, own_q0, own_nq, SEL, SEL_N, SBITS, rng_lo, rng_hi, PT,
    scale_log2, inv_hq, G, HKV, o_base,
    s_qt, s_qh, s_kt, s_kh, s_lt, s_po, s_pq, stride_sel,
    HAS_SEL: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, QT: tl.constexpr, HP: tl.constexpr,
    BN: tl.constexpr, IEEE: tl.constexpr, HAS_BITS: tl.constexpr, ADD: tl.constexpr, KV_LOOP: tl.constexpr,
):
    """The KL's head-mean target of QT queries of one owner, from one KV head's query heads, added
    into PT: a program holds those QT x HP rows of Q for the whole walk (as the attention forward
    does), so each key tile it gathers feeds one dot of QT x HP rows; the KV heads' programs add
    their shares of the same PT entries. PT is padded to whole tiles and query chunks, so every add
    lands inside it (masked pairs add 0) and the adds need no mask. ``KV_LOOP``: one program walks
    every KV head in turn instead (grid axis 1 of size 1) and sums into its own rows of PT with
    plain loads and stores: no atomics, a quarter of the programs. PT holds the owners from o_base on."""
    o = o_base + tl.program_id(0)
    qc = tl.program_id(2)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    q0, nq, n_sel, nt_sel, lo, hi, nt, sel_row = _owner_walk(o, own_q0, own_nq, SEL_N, rng_lo, rng_hi,
                                                              stride_sel, BN, HAS_SEL)
    dd = tl.arange(0, DP)
    dm = dd < D
    ra = tl.arange(0, QT * HP)
    aq = qc * QT + ra // HP
    ah = ra % HP
    rav = (aq < nq) & (ah < G)
    arow = (q0 + aq).to(tl.int64)
    pos_a = tl.load(QPOS + arow, mask=rav, other=-1)
    prow = tl.program_id(0).to(tl.int64) * s_po + (qc * QT + tl.arange(0, QT)).to(tl.int64) * s_pq
    lanes = tl.arange(0, BN)
    hk0 = 0 if KV_LOOP else tl.program_id(1)
    for hk in range(hk0, HKV if KV_LOOP else hk0 + 1):
        head = hk * G + ah
        qh = tl.load(Q + arow[:, None] * s_qt + head[:, None] * s_qh + dd[None, :],
                     mask=rav[:, None] & dm[None, :], other=0.0)
        lse2 = tl.load(LSE + arow * s_lt + head, mask=rav, other=0.0) * 1.4426950408889634
        for t in range(0, nt):
            kidx, km, kb, kofs = _tile_keys(t, nt_sel, SEL, SBITS, sel_row, n_sel, lo, hi, BN, HAS_BITS)
            oka = _keys_ok(kidx, km, kb, rav, pos_a, aq, HAS_BITS)
            pt = _group_probs(qh, lse2, K, kofs, km, hk, oka, dd, dm, s_kt, s_kh, scale_log2, prec, QT, HP, BN)
            ptrs = PT + prow[:, None] + t * BN + lanes[None, :]
            if KV_LOOP:  # these rows are this program's alone; the same pointer tensor, so each
                pt = pt * inv_hq  # element is loaded by the thread that stored it
                if hk > 0:
                    pt += tl.load(ptrs)
                tl.store(ptrs, pt)
            else:
                add_tile(ptrs, pt * inv_hq, None, ADD, False)


# Launch defaults (BN, num_warps, num_stages) per mode; tests/bench/bench_dsa.py sweeps them. Token
# programs own one query (16-row dots): 2 warps and 2 stages ran 129 ms against 278 ms for 8 warps
# and 1 stage at 128K. Block: 2 stages 39.0 ms against 44.5 for 1 and 44.1 for 3 at 128K, 87
# against 95 ms for the dense 32K warm-up (H100, tests/bench/RESULTS.md, 2026-12-06). At 2 stages
# the Q and K rows are copied to shared memory asynchronously but overlap no work (sm_90 TTGIR,
# tests/bench/kernel_schedule.py); 3 stages overlap them within a tile's head loop only.
CONFIG = {"block": (64, 8, 2), "token": (64, 2, 2), "merged": (64, 4, 2)}

# A register cap per thread (ptxas maxnreg) per mode, None: the compiler's choice. The block KL
# takes 255 registers with 8 warps, so one program runs per SM and nothing hides its load and
# atomic latency; at 128 two fit, at the price of spills (ptxas -v for sm_90 at (32, 8, 1): 0
# bytes uncapped, 520 at 128). The other way to twice the warps an SM: one 16-warp program, which
# ptxas fits in 128 registers with 84 bytes spilled at (32, 16, 1). bench_indexer_kl.py times both
# beside the default.
MAX_REGISTERS: dict[str, int | None] = {"block": None, "token": None, "merged": None}


# Queries per inner step of a block owner. Every step walks all of the owner's keys twice, so a
# 64-query block at 16 reads its key tiles 4 times over (the KL ran at 98 TFLOP/s against the
# forward's 376 for the same FLOPs, H100, 2026-12-06); more queries per step hold more rows in
# registers. bench_dsa.py's block sweep times 8, 16, 32 and 64 (ptxas -v for sm_90 at (64, 8, 1):
# 255 registers at each, spilling 724 bytes at 8 and 1,456 at 16).
BLOCK_QUERIES = 16

TUNE_ENV = "LONGSHOT_KL_BLOCK"


def tune_block_from_env(env=os.environ) -> None:
    """Install the block KL's launch from ``LONGSHOT_KL_BLOCK=BN,warps,stages,queries[,register cap]``:
    the best config differs between GPUs (tests/bench/bench_indexer_kl.py times them), and a user
    tuning for theirs should not have to edit the code."""
    global BLOCK_QUERIES
    text = env.get(TUNE_ENV, "").strip()
    if not text:
        return
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        vals = []
    pow2 = all(v & (v - 1) == 0 for v in (vals[0], vals[1], vals[3])) if len(vals) in (4, 5) else False
    if not pow2 or min(vals[:4]) < 1 or min(vals[4:] or [0]) < 0:
        raise ValueError(f"{TUNE_ENV}={text!r}: expected BN,warps,stages,queries[,register cap] as integers, "
                         "BN, warps and queries powers of two (e.g. 32,16,1,32)")
    CONFIG["block"] = tuple(vals[:3])
    BLOCK_QUERIES = vals[3]
    MAX_REGISTERS["block"] = (vals[4] or None) if len(vals) == 5 else None


tune_block_from_env()


# The head-mean target as its own kernel (_target_kernel, then the KL pass reads it) or inside the
# KL pass (its head loop), per launch kind ("dense": the warm-up's block owners over every visible
# key). The split keeps the target in a float32 buffer of [owners, queries, attended keys]: 1.1 GB
# at 128K for block owners with k = 2,048, but Tq x Tq / 2 for the dense warm-up, so the owners go
# through in waves whose buffer stays within SPLIT_MAX_BYTES and half the GPU's free memory. Each
# wave is two launches of one program per owner (or per 32 queries), so a small budget leaves SMs
# idle: at 256K the dense warm-up's last owners take 64 MiB each.
# Measured (H100, tests/bench/RESULTS.md, 2026-12-07): block owners 36.0 ms against 39.8 at 128K,
# the dense warm-up 61.6 against 87.1 at 32K, and its 256K training step 16.1 s against 18.8.
# Token owners and merged groups were not timed split.
SPLIT_TARGET = {"block": True, "token": False, "merged": False, "dense": True}
SPLIT_MAX_BYTES = 16 << 30
SPLIT_ENV = "LONGSHOT_KL_SPLIT"
# (num_warps, num_stages, queries a program, KV heads in one program) of _target_kernel; rows =
# queries x the KV group's heads.
# The KV heads' programs adding into the buffer beat one program walking all four with plain loads
# and stores: 36.0 against 37.2 ms (block, 128K), 61.6 against 67.2 (dense, 32K; H100, 2026-12-07).
# The dense warm-up keeps the one-program walk until the adding launch is timed at 256K, where its
# waves also zero their buffer: the 256K warm-up step was measured with the walk.
TARGET_CONFIG = {"block": (8, 3, 32, 0), "token": (4, 2, 1, 0), "merged": (4, 2, 16, 0), "dense": (8, 3, 32, 1)}
# The KL pass over a stored target: (BN, num_warps, num_stages), for block owners' lists and for
# the dense warm-up, and queries a step. For lists (32, 8, 2) ran 35.28 / 69.07 ms against 36.26 /
# 71.84 at (64, 8, 2) and 36.86 / 72.47 at (64, 8, 3), 128K / 256K (H200, tests/bench/RESULTS.md,
# 2026-12-07; sm_90 spills 8 bytes against 324). At 3 stages the key gathers overlap the previous
# tile's work: (32, 8, 3) ran 33.42 / 65.15 ms against 34.19 / 67.88 at (32, 8, 2) and 34.78 at (32, 8,
# 4), 128K / 256K (H100, same run, 2026-12-07 night). The dense warm-up keeps (64, 8, 2) with its
# one-program target walk, its 256K step's launch: at 32K that pair ran 67.46 ms, against 64.02 for
# (32, 8, 3) after the adding target (80.44 / 77.92 for (32, 8, 2 / 3) after the walk), not yet
# timed at 256K, where the adding target's waves also zero their buffer.
CONFIG["block+pt"] = (32, 8, 3)
CONFIG["dense+pt"] = (64, 8, 2)
MAX_REGISTERS["block+pt"] = MAX_REGISTERS["dense+pt"] = None
PT_QUERIES = 16


def split_from_env(env=os.environ) -> None:
    """``LONGSHOT_KL_SPLIT=block,dense`` (or ``none``): the launch kinds whose KL target comes from
    its own kernel, the others computing it in the KL pass; unset keeps SPLIT_TARGET's defaults.
    Which is faster depends on the GPU and the stage (tests/bench/bench_indexer_kl.py times both)."""
    text = env.get(SPLIT_ENV, "").strip()
    if not text:
        return
    kinds = set() if text == "none" else {v.strip() for v in text.split(",") if v.strip()}
    unknown = kinds - set(SPLIT_TARGET)
    if unknown:
        raise ValueError(f"{SPLIT_ENV}={text!r}: unknown kinds {sorted(unknown)}; expected 'none' or a comma list "
                         f"of {sorted(SPLIT_TARGET)}")
    for kind in SPLIT_TARGET:
        SPLIT_TARGET[kind] = kind in kinds


split_from_env()


LAUNCH_ENV = "LONGSHOT_KL_LAUNCH"


def launch_from_env(env=os.environ) -> None:
    """``LONGSHOT_KL_LAUNCH=dense:32,8,3,16/8,3,32,0[;block:...]``: split launches (install_split_launch's
    text) per kind, so that a training run's worker processes take a launch a bench found faster
    without a code change; unset keeps the defaults above."""
    text = env.get(LAUNCH_ENV, "").strip()
    launches = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        kind, sep, launch = (v.strip() for v in part.partition(":"))
        if not sep or kind not in SPLIT_TARGET:
            raise ValueError(f"{LAUNCH_ENV}={text!r}: {part!r} is not KIND:LAUNCH with KIND one of "
                             f"{sorted(SPLIT_TARGET)}")
        try:
            launches.append((kind, parse_split_launch(launch)))
        except ValueError as e:
            raise ValueError(f"{LAUNCH_ENV}={text!r}: {e}") from None
    for kind, (kl, tgt) in launches:  # all parsed first: a bad part changes nothing
        _install_split(kl, tgt, (kind,))


def parse_split_launch(text: str) -> tuple[list[int], list[int]]:
    """``BN,warps,stages,queries/warps,stages,queries[,KV heads in one program]`` -> (pass, target)."""
    try:
        kl, tgt = ([int(v) for v in part.split(",")] for part in text.strip().split("/"))
        ok = len(kl) == 4 and len(tgt) in (3, 4)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"split launch {text!r}: expected BN,warps,stages,queries/warps,stages,queries[,kv loop]")
    return kl, tgt


def install_split_launch(text: str, kinds=("block",)) -> None:
    """Install ``BN,warps,stages,queries/warps,stages,queries[,KV heads in one program]`` (the KL
    pass over a stored target / its target kernel; bench_indexer_kl.py's fastest_split.txt) as
    the split launch of ``kinds`` (TARGET_CONFIG keys: "block" for block owners' lists, "dense"
    for the warm-up; the queries a step are shared)."""
    _install_split(*parse_split_launch(text), kinds)


def _install_split(kl: list[int], tgt: list[int], kinds) -> None:
    global PT_QUERIES
    PT_QUERIES = kl[3]
    for kind in kinds:
        CONFIG[kind + "+pt"] = tuple(kl[:3])
        TARGET_CONFIG[kind] = tuple(tgt) + (0,) * (4 - len(tgt))


launch_from_env()


def hp_for(g: int, rows_per_head: int) -> int:
    """Query heads of a KV group padded so that a dot has at least 16 rows."""
    return max(next_pow2(g), 16 // rows_per_head)


def kl_shape(max_nq: int, g: int, h_i: int, token: bool, queries: int | None = None):
    """(QS, HP, HIP): queries per inner step and padded head counts, every dot >= 16 rows."""
    qs = 1 if token else min(queries or BLOCK_QUERIES, next_pow2(max_nq))
    return qs, hp_for(g, qs), hp_for(h_i, qs)


def target_rows(plan, key: str, queries: int | None = None) -> tuple[int, int]:
    """(queries a target program, query rows of the target buffer per owner)."""
    qt = min(queries or TARGET_CONFIG[key][2], next_pow2(plan.max_nq))
    return qt, triton.cdiv(plan.max_nq, qt) * qt


def target_waves(plan, sel, block_n: int, rows: int, budget: int) -> list[tuple[int, int, int]]:
    """[(first owner, end owner, key slots)]: consecutive owners whose target buffer of
    (owners x rows x slots) float32 stays within ``budget`` bytes (one owner at least), slots being
    the wave's longest walk (the list's whole tiles, then the range's)."""
    listed = triton.cdiv(sel.shape[1], block_n) * block_n if sel is not None else 0
    n = plan.n_owners
    if sel is not None:  # lists: every walk within one range of at most B_q keys of the longest
        width = listed + triton.cdiv(plan.max_rng, block_n) * block_n
        per = max(1, budget // (rows * width * 4))
        return [(a, min(n, a + per), width) for a in range(0, n, per)]
    key = (block_n, rows, budget)
    # kept on the plan (shared by its layers) outside its fields, so that dataclasses.replace, which
    # makes plans with other ranges (merge.py), never carries it over
    memo = plan.__dict__.setdefault("_target_waves", {})
    if key not in memo:
        w = ((plan.host_ranges().numpy().astype(np.int64) + block_n - 1) // block_n) * block_n
        waves, a = [], 0
        while a < n:
            widest = np.maximum.accumulate(w[a:])
            fits = np.arange(1, n - a + 1) * rows * widest * 4 <= budget
            count = n - a if fits.all() else max(1, int(fits.argmin()))
            waves.append((a, a + count, max(int(widest[count - 1]), block_n)))
            a += count
        memo[key] = waves
    return memo[key]


def head_mean_target(q, k, lse, plan, sel, sel_n, scale: float, key: str, block_n: int, bits=None,
                     num_warps: int | None = None, num_stages: int | None = None, queries: int | None = None,
                     kv_loop: bool | None = None, owners: tuple[int, int] | None = None, out=None):
    """PT [owners, queries padded, key slots padded to tiles of ``block_n``] float32: each query's
    head-mean attention probability of every key it attends, at the key's place in the owner's
    walk (list tiles, then the range), 0 elsewhere. ``sel`` None: the dense warm-up (the range
    only; TARGET_CONFIG["dense"]). ``owners``: a wave (first, end) of them, written into ``out``
    [end - first, rows, slots] when given (its slots must hold the wave's longest walk)."""
    key = key if sel is not None else "dense"
    tw = TARGET_CONFIG[key]
    num_warps, num_stages = num_warps or tw[0], num_stages or tw[1]
    kv_loop = bool(tw[3]) if kv_loop is None else kv_loop
    tq, hq, d = q.shape
    g = hq // k.shape[1]
    qt, rows = target_rows(plan, key, queries)
    first, end = owners or (0, plan.n_owners)
    if out is None:
        out = torch.empty((end - first, rows, target_waves(plan, sel, block_n, rows, 1 << 62)[0][2]),
                          dtype=torch.float32, device=q.device)
    if not kv_loop:
        out.zero_()  # the KV heads' programs add into it
    sel_t = sel if sel is not None else plan.own_q0
    _target_kernel[(end - first, 1 if kv_loop else k.shape[1], rows // qt)](
        q, k, lse, plan.q_pos, plan.own_q0, plan.own_nq, sel_t, sel_n if sel is not None else sel_t,
        bits if bits is not None else sel_t, plan.rng_lo, plan.rng_hi, out, scale * 1.4426950408889634, 1.0 / hq,
        g, k.shape[1], first, q.stride(0), q.stride(1), k.stride(0), k.stride(1), lse.stride(0), out.stride(0),
        out.stride(1), sel.stride(0) if sel is not None else 0,
        HAS_SEL=sel is not None, D=d, DP=max(16, next_pow2(d)), QT=qt, HP=hp_for(g, qt), BN=block_n, IEEE=ieee(q),
        HAS_BITS=bits is not None, ADD=mode_for(q, "target"), KV_LOOP=kv_loop, num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def target_buffer(plan, sel, q, max_bytes: int | None = None):
    """(PT, its slot tile): a zeroed float32 target buffer [owners, queries, key slots] for every
    owner at once, laid out as the KL pass over a stored target reads it, for the attention
    backward to add the head-mean probabilities into (attention.attn_bwd's ``target``); None when
    it would take more than ``max_bytes`` (SPLIT_MAX_BYTES and half the GPU's free memory when
    None): the caller then takes the KL's own target kernel, whose waves fit any budget."""
    block_n = CONFIG["block+pt"][0]
    rows = max(target_rows(plan, "block")[1], next_pow2(plan.max_nq))  # every row a backward program owns
    width = target_waves(plan, sel, block_n, rows, 1 << 62)[0][2]
    need = plan.n_owners * rows * width * 4
    if need > (split_budget(q) if max_bytes is None else max_bytes):
        return None
    return torch.zeros((plan.n_owners, rows, width), dtype=torch.float32, device=q.device), block_n


def split_budget(q) -> int:
    """Bytes a split target's buffer may take: SPLIT_MAX_BYTES, and at most half the GPU's free
    memory in whole 256 MiB (so that a few distinct wave sizes come up, not one per call)."""
    budget = SPLIT_MAX_BYTES
    if q.is_cuda:
        free_half = torch.cuda.mem_get_info(q.device)[0] // 2
        budget = min(budget, max(256 << 20, free_half >> 28 << 28))
    return budget


def indexer_kl(q, k, lse, q_idx, k_idx, w_idx, plan, sel, sel_n, scale: float, token: bool, with_grad: bool,
               block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None, bits=None,
               add_mode=None, split: bool | None = None, target=None):
    """Per-query KL [Tq] (float32) and, if with_grad, (dq_I, dk_I, dw) of sum_t KL_t. ``bits``: the
    list's query bits (merged token owners, model/dsa/merge.py); ``add_mode``: how dk_I is summed
    (reduce_add.MODES; the KL's default when None); ``split``: the target from its own kernel
    (SPLIT_TARGET's choice for this launch kind when None), in waves of owners whose target buffer
    stays within SPLIT_MAX_BYTES. ``target``: target_buffer's (PT, slot tile), already filled (by
    the attention backward): the KL pass reads it and no target kernel runs."""
    key = config_key(token, bits)
    has_sel = sel is not None
    skey = key if has_sel else "dense"
    split = SPLIT_TARGET[skey] if split is None else split
    if target is not None:
        if not has_sel or key != "block":
            raise ValueError("a given KL target is block owners' (target_buffer)")
        split = True
    kind = skey + "+pt" if split and skey + "+pt" in CONFIG else key
    c = CONFIG[kind]
    cap = MAX_REGISTERS[kind]
    block_n, num_warps, num_stages = block_n or c[0], num_warps or c[1], num_stages or c[2]
    tq, hq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    h_i, d_i = q_idx.shape[1], q_idx.shape[2]
    qs, hp, hip = kl_shape(plan.max_nq, g, h_i, token, PT_QUERIES if kind.endswith("+pt") else None)
    if qs > 1 and qs * hp < 64:  # block owners with small head groups: Triton 3.8 fails to compile
        num_stages = 1  # the 2-stage pipeline for rows this few unless every pointer is 16-byte aligned
    lse = lse.contiguous()  # the kernel reads [Tq, Hq] rows with unit head stride (FlashAttention's is [Hq, Tq])
    kl = torch.empty(tq, dtype=torch.float32, device=q.device)
    if with_grad:
        dqi = torch.empty_like(q_idx)
        dwi = torch.empty(w_idx.shape, dtype=torch.float32, device=q.device)
        dki = torch.zeros(k_idx.shape, dtype=torch.float32, device=q.device)
    else:
        dqi, dwi, dki = q_idx, w_idx, k_idx  # never written
    sel_t = sel if has_sel else plan.own_q0
    sel_n_t = sel_n if has_sel else plan.own_q0
    waves, buf, rows = [(0, plan.n_owners, 0)], kl, 0
    if target is not None:
        if block_n != target[1]:
            raise ValueError(f"the KL pass walks tiles of {block_n} keys, the given target's slots tiles of "
                             f"{target[1]}")
        buf = target[0]
        waves, rows = [(0, plan.n_owners, buf.shape[2])], buf.shape[1]
    elif split:
        rows = target_rows(plan, skey)[1]
        waves = target_waves(plan, sel, block_n, rows, split_budget(q))
        buf = torch.empty(max((b - a) * w for a, b, w in waves) * rows, dtype=torch.float32, device=q.device)
    for first, end, width in waves:
        pt = kl
        if target is not None:
            pt = buf
        elif split:
            pt = head_mean_target(q, k, lse, plan, sel, sel_n, scale, key, block_n, bits, owners=(first, end),
                                  out=buf[: (end - first) * rows * width].view(end - first, rows, width))
        _kl_kernel[(end - first,)](
            q, k, lse, q_idx, w_idx, k_idx, plan.q_pos, plan.own_q0, plan.own_nq, sel_t, sel_n_t,
            bits if bits is not None else sel_t, plan.rng_lo, plan.rng_hi, kl, dqi, dwi, dki, pt,
            scale * 1.4426950408889634, 1.0 / hq, g, hkv, h_i, d_i, first,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), lse.stride(0),
            q_idx.stride(0), q_idx.stride(1), w_idx.stride(0), k_idx.stride(0),
            dqi.stride(0), dqi.stride(1), dwi.stride(0), dki.stride(0), sel_t.stride(0) if has_sel else 0,
            pt.stride(0) if split else 0, pt.stride(1) if split else 0,
            HAS_SEL=has_sel, WITH_GRAD=with_grad, D=d, DP=max(16, next_pow2(d)), QS=qs, HP=hp, HIP=hip,
            DIP=max(16, next_pow2(d_i)), BN=block_n, IEEE=ieee(q), HAS_BITS=bits is not None,
            ADD=mode_for(q, "kl", add_mode), PT_IN=split, num_warps=num_warps, num_stages=num_stages,
            **({"maxnreg": cap} if cap and q.is_cuda else {}),
        )
    if not with_grad:
        return kl, None
    return kl, (dqi, dki, dwi)
