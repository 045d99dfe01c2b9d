"""DSA for GQA on one GPU: correctness at 32K against the reference, then the benchmark, in one run.

    PYTHONUNBUFFERED=1 python tests/bench/bench_dsa.py [--sizes 8192,32768,131072,262144] [--out DIR]
    python tests/bench/bench_dsa.py --quality        # selection quality on the CPU, no GPU needed

Shapes: one document of T tokens, 32 query heads, 4 KV heads, head dim 128, indexer 8 x 128,
k = 2048, B_q = 64, bf16. Reports, per size: each kernel's time, bytes and TFLOP/s; the whole layer
(sparse stage) forward and forward+backward in both modes; torch SDPA (dense, causal, GQA) on the
same shapes; the token mode's memory-traffic floor; activation memory. Prints a markdown table last
and writes it (and a JSON) under --out. Every section runs even if an earlier one fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from model.dsa import DSAConfig, dsa_attention_rows  # noqa: E402
from model.dsa import attention as dsa_api  # noqa: E402
from model.dsa import reference as ref  # noqa: E402
from model.dsa.functions import KLInBackward  # noqa: E402
from model.dsa.kernels import attention as attn_mod  # noqa: E402
from model.dsa.kernels import index_scores as scores_mod  # noqa: E402
from model.dsa.kernels import indexer_kl as kl_mod  # noqa: E402
from model.dsa.kernels import pivot_filter as filter_mod  # noqa: E402
from model.dsa.kernels import reduce_add  # noqa: E402
from model.dsa.kernels import topk as topk_mod  # noqa: E402
from model.dsa.kernels.attention import attn_bwd, attn_fwd  # noqa: E402
from model.dsa.kernels.index_scores import owner_scores  # noqa: E402
from model.dsa.kernels.indexer_kl import indexer_kl  # noqa: E402
from model.dsa.plan import build_plan  # noqa: E402
from model.dsa.select import _rows_source, filtered_chunks, select  # noqa: E402
from tests.bench.cuda_timing import timeit  # noqa: E402

HQ, HKV, D, HI, DI, K, BQ = 32, 4, 128, 8, 128, 2048, 64
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only for a smoke run under TRITON_INTERPRET
ROWS: list[dict] = []


def log(*a):
    print(*a, flush=True)


def row(size, what, sec, flop=None, nbytes=None, note=""):
    r = dict(T=size, what=what, ms=sec * 1e3, tflops=(flop / sec / 1e12) if flop else None,
             gbytes=(nbytes / 1e9) if nbytes else None, tbps=(nbytes / sec / 1e12) if nbytes else None, note=note)
    ROWS.append(r)
    tf = f"{r['tflops']:.1f} TFLOP/s" if flop else ""
    bw = f"{r['gbytes']:.1f} GB {r['tbps']:.2f} TB/s" if nbytes else ""
    log(f"  T={size:>7} {what:<34} {sec * 1e3:10.2f} ms  {tf:>16} {bw:>22} {note}")
    return r


def section(name, fn, *a):
    log(f"== {name}")
    try:
        return fn(*a)
    except Exception:  # noqa: BLE001 - a failed section must not stop the others
        log(traceback.format_exc())
        ROWS.append(dict(T=0, what=f"FAILED {name}", ms=float("nan"), note="see log"))
        return None


def inputs(t, dtype=torch.bfloat16, seed=0, grad=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=DEV, dtype=dtype, generator=g)  # noqa: E731
    x = dict(q=r(t, HQ, D), k=r(t, HKV, D), v=r(t, HKV, D), q_idx=r(t, HI, DI) * 0.3, k_idx=r(t, DI) * 0.3,
             w_idx=r(t, HI) * 0.5)
    if grad:
        for v in x.values():
            v.requires_grad_(True)
    return x


def ceilings():
    n = 1 << 29  # 1 GiB of bf16... 2 bytes each
    a = torch.empty(n, dtype=torch.bfloat16, device=DEV).normal_()
    b = torch.empty_like(a)
    s = timeit(lambda: b.copy_(a))
    bw = 2 * a.numel() * 2 / s
    row(0, "device copy (read+write)", s, nbytes=2 * a.numel() * 2)
    m = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    s = timeit(lambda: m @ m)
    row(0, "bf16 matmul 8192^3", s, flop=2 * 8192**3)
    return bw


def try_time(fn, **kw):
    """timeit, or infinity if this launch config does not compile or run here."""
    try:
        return timeit(fn, **kw)
    except Exception as e:  # noqa: BLE001
        log(f"  config failed: {type(e).__name__}: {str(e)[:200]}")
        return float("inf")


def sweep(t=131072):
    """Pick launch configs on this GPU (one document of T tokens) and install them as defaults."""
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    x = inputs(t, seed=3)
    scale = 1 / math.sqrt(D)
    for gran in ("block", "token"):
        token = gran == "token"
        cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=K, granularity=gran, block_q=BQ)
        plan = build_plan(pos, doc, cfg, dense=False)
        if not token:
            best = None
            for bn, nw, hd in ((64, 8, False), (128, 8, False), (64, 8, True), (128, 8, True), (64, 4, True)):
                scores_mod.CONFIG["block"].update(block_n=bn, num_warps=nw, head_dot=hd)
                s = try_time(lambda: select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg), min_total=0.3, max_reps=4)
                log(f"  sweep T={t} selection block_n={bn} warps={nw} head_dot={hd}: {s * 1e3:.2f} ms")
                if best is None or s < best[0]:
                    best = (s, dict(block_n=bn, num_warps=nw, head_dot=hd))
            scores_mod.CONFIG["block"].update(best[1])
            ROWS.append(dict(T=t, what="sweep: index scores config", ms=best[0] * 1e3, note=str(best[1])))
        sel, sel_n = select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg)
        fwd_opts = [(64, 8, 2), (64, 8, 3), (128, 8, 2), (64, 4, 2)] if not token else \
            [(64, 4, 2), (64, 4, 3), (128, 4, 2), (64, 8, 2)]
        best = None
        for c in fwd_opts:
            s = try_time(lambda: attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token, *c), min_total=0.3,
                       max_reps=4)
            log(f"  sweep T={t} {gran} attn fwd (BN, warps, stages)={c}: {s * 1e3:.2f} ms")
            if best is None or s < best[0]:
                best = (s, c)
        attn_mod.FWD_CONFIG[gran] = best[1]
        ROWS.append(dict(T=t, what=f"sweep: {gran} attn fwd config", ms=best[0] * 1e3, note=str(best[1])))
        out, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token)
        dout = torch.randn_like(out)
        bwd_opts = [(64, 8, 2), (32, 8, 2), (64, 8, 1)] if not token else [(64, 4, 2), (32, 4, 2), (64, 8, 2)]
        best = None
        for c in bwd_opts:
            s = try_time(lambda: attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, token, *c),
                       min_total=0.3, max_reps=3)
            log(f"  sweep T={t} {gran} attn bwd (BN, warps, stages)={c}: {s * 1e3:.2f} ms")
            if best is None or s < best[0]:
                best = (s, c)
        attn_mod.BWD_CONFIG[gran] = best[1]
        ROWS.append(dict(T=t, what=f"sweep: {gran} attn bwd config", ms=best[0] * 1e3, note=str(best[1])))
        sel = sel_n = out = lse = dout = None
    x = None
    torch.cuda.empty_cache()


def best_of(label, t, opts, install, run, **kw):
    """Time run() under each option (install(opt) first), log each, keep and install the fastest."""
    best = None
    for opt in opts:
        install(opt)
        s_ = try_time(run, **kw)
        log(f"  sweep T={t} {label} {opt}: {s_ * 1e3:.2f} ms")
        if best is None or s_ < best[0]:
            best = (s_, opt)
    install(best[1])
    ROWS.append(dict(T=t, what=f"sweep: {label}", ms=best[0] * 1e3, note=str(best[1])))
    return best[1]


def sweep_token(t=131072):
    """Token-mode launch configs of the pivot filter, the attention forward and backward and the
    indexer KL; installs the best. (The score and top-k configs of the buffered path, which token
    mode now uses for short rows only, keep their defaults: their sweeps picked by noise.)"""
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    x = inputs(t, seed=3)
    scale = 1 / math.sqrt(D)
    cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=K, granularity="token", block_q=BQ)
    plan = build_plan(pos, doc, cfg, dense=False)
    fkeys = ("block_n", "num_warps", "num_stages", "longest_first")
    best_of("token pivot filter (block_n, warps, stages, longest first), timed with selection", t,
            [(64, 4, 3, True), (64, 8, 3, True), (64, 4, 4, True), (32, 4, 3, True)],
            lambda o: filter_mod.CONFIG.update(zip(fkeys, o)),
            lambda: select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg), min_total=0.3, max_reps=3)
    sel, sel_n = select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg)
    # from 3 stages the list loop's gathers overlap the dots (attention.py, 2026-12-07 night)
    best_of("token attn fwd (BN, warps, stages)", t,
            [(64, 2, 2), (64, 2, 3), (64, 4, 3), (64, 4, 4), (32, 4, 3), (32, 2, 4)],
            lambda o: attn_mod.FWD_CONFIG.update(token=o),
            lambda: attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, True), min_total=0.3, max_reps=3)
    out, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, True)
    dout = torch.randn_like(out)
    best_of("token attn bwd (BN, warps, stages)", t,
            # a 4th value caps registers: at 168 three 4-warp programs share an SM, at 128 four
            # (sm_90: 220 registers uncapped, 136 / 296 bytes spilled capped; kernel_schedule.py)
            [(16, 4, 3), (32, 4, 2), (16, 4, 2), (16, 4, 4), (16, 2, 3), (16, 8, 3), (16, 4, 3, 168),
             (16, 4, 3, 128)],
            lambda o: attn_mod.BWD_CONFIG.update(token=o),
            lambda: attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, True), min_total=0.3,
            max_reps=2)
    dout = None
    # at 2 stages its loops wait with num 0 (no overlap); at 3, (32, 2) and (64, 4) spill 8 bytes, (64, 2) 340
    best_of("token indexer KL (BN, warps, stages)", t, [(64, 2, 2), (32, 2, 2), (32, 2, 3), (64, 4, 3), (32, 4, 3)],
            lambda o: kl_mod.CONFIG.update(token=o),
            lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel, sel_n, scale,
                               True, True), min_total=0.3, max_reps=3)

    def install_target(o):  # None: the head-mean target in the KL pass's head loop (the default)
        kl_mod.SPLIT_TARGET["token"] = o is not None
        kl_mod.TARGET_CONFIG["token"] = o or kl_mod.TARGET_CONFIG["token"]
    best_of("token indexer KL target: in the pass (None) or its own kernel (warps, stages, queries, KV loop)", t,
            [None, (4, 2, 1, 0), (4, 3, 1, 0), (2, 2, 1, 0), (4, 2, 1, 1)], install_target,
            lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel, sel_n, scale,
                               True, True), min_total=0.3, max_reps=3)
    x = sel = sel_n = out = lse = None
    torch.cuda.empty_cache()


def sweep_block_attn(t=131072, rule="pooled"):
    """Block-mode attention launch configs (BN, warps, stages, rows per program), then the indexer
    KL's (BN, warps, stages, queries per step), at T; installs the best."""
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    x = inputs(t, seed=3)
    scale = 1 / math.sqrt(D)
    cfg = rule_cfg(rule)
    plan = build_plan(pos, doc, cfg, dense=False)
    sel, sel_n = select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg)
    npairs = attended(plan, sel_n, False)
    # Triton issues a loop's next copies after the body at 2 stages and waits for them at the top of
    # the next iteration (sm_90 TTGIR), so the load overlaps nothing; 3 and more stages overlap it
    # (BN, warps, stages, rows[, register cap]); a cap of 128 at 8 warps fits two programs an SM
    for kind, opts in (("fwd", [(64, 16, 4, 256), (64, 16, 3, 256), (32, 16, 4, 256), (32, 16, 6, 256),
                                (32, 8, 3, 128, 128), (32, 8, 4, 128, 128)]),
                       ("bwd", [(64, 8, 3, 128), (32, 8, 3, 128), (32, 8, 4, 128), (32, 8, 5, 128)])):
        configs = attn_mod.FWD_CONFIG if kind == "fwd" else attn_mod.BWD_CONFIG
        best = None
        for opt in opts:
            attn_mod.BLOCK_ROWS[kind] = opt[3]
            configs["block"] = opt[:3] + opt[4:]
            if kind == "fwd":
                fn = lambda: attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, False)  # noqa: E731
            else:
                fn = lambda: attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, False)  # noqa: E731
            s_ = try_time(fn, min_total=0.2, max_reps=4)
            fl = 4 * D * HQ * npairs * (1 if kind == "fwd" else 2.5)
            log(f"  sweep T={t} block attn {kind} (BN, warps, stages, rows[, register cap])={opt}: {s_ * 1e3:.2f} ms "
                f"{fl / s_ / 1e12:.1f} TFLOP/s")
            if best is None or s_ < best[0]:
                best = (s_, opt)
        attn_mod.BLOCK_ROWS[kind] = best[1][3]
        configs["block"] = best[1][:3] + best[1][4:]
        ROWS.append(dict(T=t, what=f"sweep: block attn {kind} config", ms=best[0] * 1e3, note=str(best[1])))
        if kind == "fwd":
            out, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, False)
            dout = torch.randn_like(out)

    def install_kl(o):
        kl_mod.CONFIG["block"], kl_mod.BLOCK_QUERIES = o[:3], o[3]
    best_of("block indexer KL (BN, warps, stages, queries per step)", t,
            [(64, 8, 2, 16), (64, 8, 3, 16)],
            install_kl,
            lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel, sel_n, scale,
                               False, True), min_total=0.2, max_reps=4)
    x = sel = out = lse = dout = None
    torch.cuda.empty_cache()


def sweep_add_modes(t=131072, rule="max+coarse2"):
    """How the backward adds dK, dV (and the KL kernel dk_I) into float32 buffers
    (model/dsa/kernels/reduce_add.py): each mode's attention backward and KL at T, block (``rule``)
    and token selections; installs the mode with the fastest block backward as the block default."""
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    x = inputs(t, seed=3)
    scale = 1 / math.sqrt(D)
    best = None
    for gran in ("block", "token"):
        token = gran == "token"
        cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=K, granularity="token",
                        block_q=BQ) if token else rule_cfg(rule)
        plan = build_plan(pos, doc, cfg, dense=False)
        sel, sel_n = select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg)
        fl = 4 * D * HQ * attended(plan, sel_n, token)
        out, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token)
        dout = torch.randn_like(out)
        for name in reduce_add.MODES:
            s_b = try_time(lambda: attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, token,  # noqa: B023
                                            add_mode=name), min_total=0.3, max_reps=4)
            row(t, f"{gran}: attn bwd, adds {name}", s_b, flop=2.5 * fl)
            s_kl = try_time(lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel,  # noqa: B023
                                               sel_n, scale, token, True, add_mode=name), min_total=0.3, max_reps=4)
            row(t, f"{gran}: indexer KL, adds {name}", s_kl)
            if not token and (best is None or s_b < best[0]):
                best = (s_b, name)
        out = lse = dout = sel = sel_n = None
    reduce_add.DEFAULT["block"] = reduce_add.MODES[best[1]]
    ROWS.append(dict(T=t, what="sweep: float32 adds (block)", ms=best[0] * 1e3, note=best[1]))
    x = None
    torch.cuda.empty_cache()


def rule_cfg(rule, stage="sparse"):
    """DSAConfig (block) for a rule name: max | sum | pooled | max+coarse2 | ..."""
    agg, _, c = rule.partition("+coarse")
    return DSAConfig(index_heads=HI, index_dim=DI, topk=K, granularity="block", block_q=BQ, stage=stage,
                     block_agg=agg, coarse=int(c or 0))


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def correctness(t, cases=(("block", "sparse", "max"), ("token", "sparse", "max"), ("block", "warmup", "max"))):
    """Triton vs the reference at T tokens (bf16 inputs, reference in fp32), same selection."""
    cu_docs = [0, t // 2 + 123, t]  # two documents, odd lengths
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    doc[cu_docs[1]:] = cu_docs[1]
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    for gran, stage, rule in cases:
        cfg = rule_cfg(rule, stage=stage) if gran == "block" else DSAConfig(index_heads=HI, index_dim=DI, topk=K,
                                                                            granularity=gran, block_q=BQ, stage=stage)
        x = inputs(t, seed=1, grad=True)
        names = ["q", "k", "v", "q_idx", "k_idx", "w_idx"]
        args = [x[n] for n in names]
        o1, l1, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton")
        dout = torch.randn_like(o1)
        g1 = torch.autograd.grad((o1.float() * dout.float()).sum() + 100 * l1, args)
        msg = ""
        sel = None
        ok_sel = True
        if stage == "sparse":
            sel = (aux["sel"], aux["sel_n"])
            rs, rn = ref.select(x["q_idx"].detach(), x["k_idx"].detach(), x["w_idx"].detach(), aux["plan"], cfg)
            same = (rs == aux["sel"]).all(1).float().mean().item()
            msg = f"identical selections {same:.4f}, counts equal {bool(torch.equal(rn, aux['sel_n']))}"
            saved = dict(topk_mod.CONFIG)  # the sampled-pivot and filtered top-k must equal the five passes
            topk_mod.CONFIG.update(sample=0, filter=False)
            s5, n5 = select(x["q_idx"].detach(), x["k_idx"].detach(), x["w_idx"].detach(), aux["plan"], cfg)
            topk_mod.CONFIG.update(saved)
            five = bool(torch.equal(s5, aux["sel"]) and torch.equal(n5, aux["sel_n"]))
            msg += f", equal to five-pass top-k {five}"
            ok_sel = five
        o2, l2, _ = dsa_attention_rows(*args, pos, doc, cfg, backend="reference", sel=sel)
        g2 = torch.autograd.grad((o2.float() * dout.float()).sum() + 100 * l2, args)
        errs = {n: rel(a, b) for n, a, b in zip(names, g1, g2)}
        log(f"  {gran}/{stage}/{rule} T={t}: out {rel(o1, o2):.2e} loss {l1.item():.6f} vs {l2.item():.6f} "
            f"grads {', '.join(f'{n} {e:.2e}' for n, e in errs.items())} {msg}")
        ok = rel(o1, o2) < 2e-2 and abs(l1.item() - l2.item()) < 2e-2 * abs(l2.item()) + 1e-3 and max(errs.values()) < 5e-2 \
            and ok_sel
        ROWS.append(dict(T=t, what=f"correctness {gran}/{stage}/{rule}", ms=float("nan"),
                         note=f"{'PASS' if ok else 'FAIL'} out {rel(o1, o2):.1e} maxgrad {max(errs.values()):.1e} {msg}"))
        o1 = o2 = g1 = g2 = x = args = None
        torch.cuda.empty_cache()


def attended(plan, sel_n, token):
    """Total (query row, key) pairs attended, summed over query rows."""
    nq = plan.own_nq.long()
    if token:
        return int(sel_n.long().sum())
    own = plan.owner_of_row.long()
    diag = plan.q_pos.long() - plan.rng_lo[own].long() + 1
    return int((sel_n.long() * nq).sum() + diag.sum())


def bench_filtered(t, q_idx, k_idx, w_idx, plan, cfg, n_big):
    """The pivot-filtered token selection in parts: sample + pivot + filtered scores, top-k in the
    scratch, and the rows handed back to the buffered path."""
    k = cfg.topk
    sel = torch.empty((plan.n_owners, k), dtype=torch.int32, device=DEV)
    sel_n = torch.empty(plan.n_owners, dtype=torch.int32, device=DEV)
    redo = torch.zeros(plan.n_owners, dtype=torch.int8, device=DEV)
    run = lambda with_topk: filtered_chunks(q_idx, k_idx, w_idx, plan, k, 1 << 30, sel, sel_n, redo,  # noqa: E731
                                            with_topk)
    s_f = timeit(lambda: run(False))
    s_ft = timeit(lambda: run(True))
    marks = redo.cpu()
    row(t, "token: pivot-filtered scores (sample, pivot, filter)", s_f,
        note=f"no score buffer; rows handed back: {int((marks == 1).sum())} missed pivots, "
             f"{int((marks == 2).sum())} not sampled, of {n_big} rows with more than k candidates")
    row(t, "token: top-k in the scratch", max(s_ft - s_f, 1e-9))


def bench_size(t, bw, modes=("block", "token"), rules=("max",), sdpa=True, kl_bwd=True):
    """Per size: for each block rule (and token mode) selection, kernels (first rule only) and layer."""
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    x = inputs(t)
    scale = 1 / math.sqrt(D)
    jobs = [("block", r) for r in rules if "block" in modes] + ([("token", "")] if "token" in modes else [])
    for i, (gran, rule) in enumerate(jobs):
        token = gran == "token"
        cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=K, granularity="token", block_q=BQ,
                        stage="sparse") if token else rule_cfg(rule)
        name = "token" if token else f"block[{rule}]"
        kernels = token or i == 0
        plan = build_plan(pos, doc, cfg, dense=False)
        cand = (plan.cand_hi - plan.cand_lo).long()
        big = cand > K
        # -- selection: scores only, then scores + top-k
        s_sel = timeit(lambda: select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg))
        sel, sel_n = select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg)
        if not cfg.coarse or token:
            lo, hi = plan.cand_lo.cpu(), plan.cand_hi.cpu()
            span = int(hi.max()) - int(lo.min())
            rows_ = max(1, min(plan.n_owners, (1 << 30) // (4 * span)))
            buf = torch.empty(rows_ * span, dtype=torch.float32, device=DEV)

            def scores_only():
                qsrc, wsrc, q0src, tok = _rows_source(x["q_idx"], x["w_idx"], plan, cfg)
                for o in range(0, plan.n_owners, rows_):
                    nr = min(rows_, plan.n_owners - o)
                    base = int(lo[o:o + nr].min())
                    width = max(1, int(hi[o:o + nr].max()) - base)
                    owner_scores(qsrc, wsrc, x["k_idx"], q0src, plan.own_nq, plan.cand_lo, plan.cand_hi, o, nr,
                                 base, width, buf[: nr * width].view(nr, width), K, tok, cfg.block_agg == "max")
            s_sc = timeit(scores_only)
            rows_per = 1 if cfg.block_agg == "pooled" and not token else plan.own_nq[big].long()
            pairs_sc = int((cand[big] * rows_per).sum())
            sc_bytes = 4 * int(cand[big].sum())
            row(t, f"{name}: indexer scores", s_sc, flop=2 * HI * DI * pairs_sc, nbytes=sc_bytes,
                note="bytes = scores written" + ("; pooled: one row per block, pooling included" if
                                                 cfg.block_agg == "pooled" and not token else ""))
            fb = torch.zeros(1, dtype=torch.int32, device=DEV)
            saved = dict(topk_mod.CONFIG)
            topk_mod.CONFIG["filter"] = False  # the buffered path: scores written, then top-k
            s_buf = timeit(lambda: select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg))
            select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg, fallbacks=fb)
            topk_mod.CONFIG.update(saved)
            row(t, f"{name}: top-k (buffered selection - scores)", max(s_buf - s_sc, 1e-9), nbytes=sc_bytes,
                note=f"bytes = one read of the scores; pivot fallbacks {int(fb)} of {int(big.sum())} rows")
            buf = None
            if token:
                row(t, "token: selection total, buffered path", s_buf)
                bench_filtered(t, x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg, int(big.sum()))
                # the same on indexer inputs with video structure (clustered top keys)
                vq, vk, vw = (z.to(DEV, torch.bfloat16) for z in
                              video_indexer(t, 256, HI, DI, torch.Generator().manual_seed(5)))
                s_v = timeit(lambda: select(vq, vk, vw, plan, cfg))
                fb.zero_()
                select(vq, vk, vw, plan, cfg, fallbacks=fb)
                row(t, "token: selection total, video-structured indexer inputs", s_v,
                    note=f"pivot fallbacks {int(fb)} of {int(big.sum())} rows")
                vq = vk = vw = None
        row(t, f"{name}: selection total", s_sel)
        npairs = attended(plan, sel_n, token)
        fl_fwd = 4 * D * HQ * npairs
        if kernels:
            # -- attention kernels
            if token:
                gather = npairs * HKV * D * 2 * 2  # K and V rows, once per query
            else:
                hpp = min(HQ // HKV, attn_mod.BLOCK_ROWS["fwd"] // BQ)
                gather = int(sel_n.long().sum()) * HKV * (HQ // HKV // hpp) * D * 2 * 2 + t * HKV * D * 2 * 2
            io = 2 * x["q"].numel() * 2  # read q, write out
            s_f = timeit(lambda: attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token))
            row(t, f"{name}: sparse attn fwd", s_f, flop=fl_fwd, nbytes=gather + io,
                note=f"{npairs / t:.0f} keys/query; bytes = K,V gathered (L2 hits incl.) + q,o")
            out, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token)
            dout = torch.randn_like(out)
            s_b = timeit(lambda: attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, token))
            atom = gather // 2 * 2 * 2  # fp32 dK, dV adds: twice the bf16 row bytes each
            row(t, f"{name}: sparse attn bwd", s_b, flop=2.5 * fl_fwd, nbytes=gather + atom + 3 * io,
                note="bytes = gathers + fp32 atomics + q,o,do,dq")
            s_kl = timeit(lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel,
                                             sel_n, scale, token, True))
            fl_kl = npairs * (2 * HQ * D + 4 * 2 * HI * DI)
            key = attn_mod.config_key(token, None)
            split = kl_mod.SPLIT_TARGET[key]
            row(t, f"{name}: indexer KL (fwd+grads)", s_kl, flop=fl_kl,
                note="target from its own kernel" if split else "target in the KL pass")
            if split:  # the two parts, and the other way for comparison
                bn = kl_mod.CONFIG.get(key + "+pt", kl_mod.CONFIG[key])[0]
                s_tg = timeit(lambda: kl_mod.head_mean_target(x["q"], x["k"], lse, plan, sel, sel_n, scale, key, bn))
                row(t, f"{name}: indexer KL: target kernel (in the row above)", s_tg, flop=2 * HQ * D * npairs)
                s_kf = timeit(lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel,
                                                 sel_n, scale, token, True, split=False))
                row(t, f"{name}: indexer KL, target in the KL pass", s_kf, flop=fl_kl)
            if not token and kl_bwd:  # the target added by the attention backward instead (KL in backward)
                def bwd_with_target(c=None):
                    tb = kl_mod.target_buffer(plan, sel, x["q"])
                    attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, False, *(c or ()),
                             target=tb)
                    return tb
                for c in (attn_mod.BWD_CONFIG["block+pt"], (32, 8, 3), (64, 8, 2)):
                    s_bt = timeit(lambda: bwd_with_target(c))  # noqa: B023
                    row(t, f"{name}: sparse attn bwd adding the KL target {c}", s_bt, flop=2.5 * fl_fwd,
                        note=f"+{(s_bt - s_b) * 1e3:.2f} ms over the backward (buffer zeroed incl.)")
                tb = bwd_with_target()
                s_kp = timeit(lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel,
                                                 sel_n, scale, False, True, target=tb))
                row(t, f"{name}: indexer KL pass over the backward's target", s_kp, flop=fl_kl - 2 * HQ * D * npairs)
                tb = None
            out = lse = dout = None
        # -- whole layer
        xg = {n: v.detach().clone().requires_grad_(True) for n, v in x.items()}
        args = [xg[n] for n in ("q", "k", "v", "q_idx", "k_idx", "w_idx")]

        def fwd():
            return dsa_attention_rows(*args, pos, doc, cfg, backend="triton")

        def fwd_bwd():
            o, loss, _ = fwd()
            torch.autograd.backward([o, loss], [dout2, torch.ones_like(loss)])

        dout2 = torch.randn_like(x["q"])
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
        s_lf = timeit(fwd)
        o_, l_, _ = fwd()
        act = torch.cuda.memory_allocated() - base_mem
        o_ = l_ = None
        s_lfb = timeit(fwd_bwd)
        peak = torch.cuda.max_memory_allocated() - base_mem
        row(t, f"{name}: DSA layer fwd", s_lf, note=f"saved activations {act / 2**30:.2f} GiB (incl. out)")
        row(t, f"{name}: DSA layer fwd+bwd", s_lfb, note=f"peak above inputs {peak / 2**30:.2f} GiB")
        if not token and kl_bwd:  # the KL in the attention's backward (dsa_attention's kl_in_backward)
            saved_flag, dsa_api.KL_IN_BACKWARD = dsa_api.KL_IN_BACKWARD, True

            def fwd_late():
                late = KLInBackward(1.0)
                return dsa_attention_rows(*args, pos, doc, cfg, backend="triton", kl_in_backward=late)[0], late

            def fwd_bwd_late():
                o, late = fwd_late()
                o.backward(dout2)
                return late.value
            torch.cuda.reset_peak_memory_stats()
            s_lf2 = timeit(fwd_late)
            s_lfb2 = timeit(fwd_bwd_late)
            peak2 = torch.cuda.max_memory_allocated() - base_mem
            kl_gap = abs(float(fwd_bwd_late()) - float(fwd()[1].detach()))
            dsa_api.KL_IN_BACKWARD = saved_flag
            row(t, f"{name}: DSA layer fwd, KL in backward", s_lf2)
            row(t, f"{name}: DSA layer fwd+bwd, KL in backward", s_lfb2,
                note=f"peak above inputs {peak2 / 2**30:.2f} GiB; loss differs from the KL in forward by {kl_gap:.1e}")
        if token:
            # memory-traffic floor: K,V gathers fwd + bwd, fp32 dK/dV scatter, KL gathers of K and k_I,
            # scores written once and read once.
            per_pair_fwd = HKV * D * 2 * 2 + HKV * D * 2 + 2 * DI * 2
            score_bytes = 0 if topk_mod.CONFIG["filter"] else 4 * int(cand.sum()) * 2  # filtered: none stored
            floor_f = (npairs * per_pair_fwd + score_bytes + 2 * x["q"].numel() * 2) / bw
            floor_fb = floor_f + (npairs * (HKV * D * 2 * 2 + HKV * D * 4 * 2 * 2)) / bw
            row(t, "token: memory floor fwd", floor_f, note=f"measured/floor {s_lf / floor_f:.2f}")
            row(t, "token: memory floor fwd+bwd", floor_fb, note=f"measured/floor {s_lfb / floor_fb:.2f}")
        xg = args = sel = sel_n = dout2 = None
        torch.cuda.empty_cache()
    if not sdpa:
        return
    # -- SDPA
    qs = x["q"].transpose(0, 1).unsqueeze(0)
    ks = x["k"].transpose(0, 1).unsqueeze(0)
    vs = x["v"].transpose(0, 1).unsqueeze(0)
    f = torch.nn.functional.scaled_dot_product_attention
    fl = 4 * D * HQ * t * (t + 1) / 2
    s = timeit(lambda: f(qs, ks, vs, is_causal=True, enable_gqa=True), max_reps=5)
    row(t, "SDPA fwd (causal, GQA)", s, flop=fl)
    qg, kg, vg = (z.detach().clone().requires_grad_(True) for z in (qs, ks, vs))
    do = torch.randn_like(qs)

    def sdpa_fb():
        o = f(qg, kg, vg, is_causal=True, enable_gqa=True)
        o.backward(do)
    s = timeit(sdpa_fb, max_reps=4)
    row(t, "SDPA fwd+bwd (causal, GQA)", s, flop=3.5 * fl)
    qs = ks = vs = qg = kg = vg = do = x = None
    torch.cuda.empty_cache()


def bench_warmup(t):
    """The indexer warm-up's per-layer work on one document of T tokens, as a warm-up step runs it
    (model/attention.py, local_indexer_grads): the frozen backbone's attention forward without a
    graph, then the dense KL with its indexer gradients; the dense attention from FlashAttention's
    packed kernel (the default) or the DSA kernel over each block's causal prefix. Held to SDPA's
    forward+backward of the same attention (bench_size's SDPA rows): the dense step's share."""
    from dataclasses import replace

    from model.flash_varlen import flash_varlen

    x = inputs(t)
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    cfg = DSAConfig(index_heads=HI, index_dim=DI, topk=K, block_q=BQ, stage="warmup")
    plan = build_plan(pos, doc, cfg, True)
    scale = D ** -0.5
    fl = 4 * D * HQ * t * (t + 1) / 2
    s = timeit(lambda: flash_varlen(x["q"], x["k"], x["v"], plan.varlen_layout(), True, scale), max_reps=5)
    row(t, "warm-up: attention fwd, FlashAttention packed", s, flop=fl)
    s = timeit(lambda: attn_fwd(x["q"], x["k"], x["v"], plan, None, None, scale, False), max_reps=5)
    row(t, "warm-up: attention fwd, DSA kernel (dense range)", s, flop=fl)
    _, lse = flash_varlen(x["q"], x["k"], x["v"], plan.varlen_layout(), True, scale)
    s = timeit(lambda: indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, None, None,
                                  scale, False, True), max_reps=5)
    row(t, "warm-up: indexer KL dense (fwd+grads)", s, flop=t * (t + 1) / 2 * (2 * HQ * D + 4 * 2 * HI * DI))
    lse = None
    idx = [x[n].detach().clone().requires_grad_(True) for n in ("q_idx", "k_idx", "w_idx")]
    for kernel in ("flash", "triton"):
        c = replace(cfg, warmup_kernel=kernel)

        def layer():
            _, loss, _ = dsa_attention_rows(x["q"], x["k"], x["v"], *idx, pos, doc, c, backend="triton")
            loss.backward()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        s = timeit(layer, max_reps=5)
        row(t, f"warm-up layer ({kernel}): attention fwd + KL + indexer grads", s,
            note=f"peak above inputs {(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB")
    x = idx = None
    torch.cuda.empty_cache()


def bench_token_merge(t, merges, sweep_merged=True):
    """Token mode with m neighbouring queries merged over the union of their selections
    (model/dsa/merge.py) against one program per query (m = 1), on video-structured indexer inputs
    (bench_token_bytes.py counts the bytes on such selections): the merge pass, the attention
    forward and backward, the KL, and the whole layer; for m > 1 first a sweep of the launch
    configs (``sweep_merged``), whose best is installed for the rows after it."""
    from dataclasses import replace

    from model.dsa.merge import merge_selection, merged_plan

    x = inputs(t)
    vq, vk, vw = (z.to(DEV, torch.bfloat16) for z in video_indexer(t, 256, HI, DI, torch.Generator().manual_seed(5)))
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    scale = 1 / math.sqrt(D)
    base = DSAConfig(index_heads=HI, index_dim=DI, topk=K, granularity="token", stage="sparse")
    tplan = build_plan(pos, doc, base, dense=False)
    tsel, tsel_n = select(vq, vk, vw, tplan, base)
    for m in [1] + [m for m in merges if m > 1]:
        cfg = replace(base, token_merge=m)
        plan, sel, sel_n, bits, token = tplan, tsel, tsel_n, None, True
        note = ""
        if m > 1:
            plan = merged_plan(tplan, m)
            sel, bits, sel_n = merge_selection(tplan, plan, tsel, tsel_n)
            token = False
            note = f"union {sel_n.float().mean():.0f} keys/group of {m} ({int(tsel_n.sum()) / int(sel_n.sum()):.1f}x fewer rows)"
            for how in ("sort", "bitmap"):  # merge.MERGE_METHOD
                s_m = timeit(lambda: merge_selection(tplan, plan, tsel, tsel_n, method=how))
                row(t, f"token m={m}: merge pass ({how})", s_m, note=note)
        name = f"token m={m}"
        if m > 1 and sweep_merged:  # merged groups are m x G rows: their own launch defaults
            # from 3 stages the list loops' gathers overlap the dots (token mode's backward: 26% faster)
            # (32, 8, 3): no spills for any m in 4-16 forward, 0-128 bytes backward, 0-56 KL, where the
            # default (64, 4, 2) spills up to 1,088 / 3,396 / 4,012 at m = 16 (sm_90, kernel_schedule.py)
            opts = [(64, 4, 2), (64, 8, 2), (32, 4, 2), (64, 8, 3), (64, 4, 3), (32, 4, 3), (32, 8, 3)]
            best_of(f"{name} attn fwd (BN, warps, stages)", t, opts,
                    lambda c: attn_mod.FWD_CONFIG.__setitem__("merged", c),
                    lambda: attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token, bits=bits), min_total=0.2)
            o_, l_ = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token, bits=bits)
            d_ = torch.randn_like(o_)
            best_of(f"{name} attn bwd (BN, warps, stages)", t, opts,
                    lambda c: attn_mod.BWD_CONFIG.__setitem__("merged", c),
                    lambda: attn_bwd(x["q"], x["k"], x["v"], o_, l_, d_, plan, sel, sel_n, scale, token, bits=bits),
                    min_total=0.2)
            best_of(f"{name} indexer KL (BN, warps, stages)", t, opts,
                    lambda c: kl_mod.CONFIG.__setitem__("merged", c),
                    lambda: indexer_kl(x["q"], x["k"], l_, vq, vk, vw, plan, sel, sel_n, scale, token, True, bits=bits),
                    min_total=0.2)
            o_ = l_ = d_ = None
        s_f = timeit(lambda: attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token, bits=bits))
        row(t, f"{name}: sparse attn fwd", s_f, flop=4 * D * HQ * int(tsel_n.sum()), note=note)
        out, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, token, bits=bits)
        dout = torch.randn_like(out)
        s_b = timeit(lambda: attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, token,
                                      bits=bits))
        row(t, f"{name}: sparse attn bwd", s_b, flop=10 * D * HQ * int(tsel_n.sum()))
        s_kl = timeit(lambda: indexer_kl(x["q"], x["k"], lse, vq, vk, vw, plan, sel, sel_n, scale, token, True,
                                         bits=bits))
        row(t, f"{name}: indexer KL (fwd+grads)", s_kl)
        out = lse = dout = None
        args = [z.detach().clone().requires_grad_(True) for z in (x["q"], x["k"], x["v"], vq, vk, vw)]
        dout2 = torch.randn_like(x["q"])

        def fwd_bwd(c=cfg):
            o, loss, _ = dsa_attention_rows(*args, pos, doc, c, backend="triton", sel=(tsel, tsel_n))
            torch.autograd.backward([o, loss], [dout2, torch.ones_like(loss)])
        s_l = timeit(fwd_bwd)
        row(t, f"{name}: DSA layer fwd+bwd (selection given)", s_l)
        if m > 1:  # forward and KL per query, the backward alone on the groups (merged in backward)
            s_h = timeit(lambda: fwd_bwd(replace(base, token_merge_backward=m)))
            row(t, f"token m=1, backward on groups of {m}: DSA layer fwd+bwd (selection given)", s_h)
        args = dout2 = None
    x = vq = vk = vw = None
    torch.cuda.empty_cache()


def summary(sizes):
    by = {(r["T"], r["what"]): r for r in ROWS}
    lines = []
    for t in sizes:
        sd_f, sd_fb = by.get((t, "SDPA fwd (causal, GQA)")), by.get((t, "SDPA fwd+bwd (causal, GQA)"))
        names = sorted({r["what"].split(":")[0] for r in ROWS if r["T"] == t and r["what"].endswith("DSA layer fwd")})
        for name in names:
            lf, lfb = by.get((t, f"{name}: DSA layer fwd")), by.get((t, f"{name}: DSA layer fwd+bwd"))
            if lf and lfb and sd_f and sd_fb:
                lines.append(f"T={t} {name}: fwd {lf['ms']:.1f} ms ({sd_f['ms'] / lf['ms']:.2f}x SDPA), "
                             f"fwd+bwd {lfb['ms']:.1f} ms ({sd_fb['ms'] / lfb['ms']:.2f}x SDPA)")
        for kernel in ("flash", "triton"):
            w = by.get((t, f"warm-up layer ({kernel}): attention fwd + KL + indexer grads"))
            if w and sd_fb:
                lines.append(f"T={t} warm-up layer ({kernel}): {w['ms']:.1f} ms = {w['ms'] / sd_fb['ms']:.2f}x "
                             f"SDPA fwd+bwd (the dense step's attention)")
    return lines


def table(meta):
    out = [f"GPU {meta['gpu']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}, triton {meta['triton']}",
           "", "| T | what | ms | TFLOP/s | GB | TB/s | note |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in ROWS:
        tf = f"{r['tflops']:.1f}" if r.get("tflops") else ""
        gb = f"{r['gbytes']:.1f}" if r.get("gbytes") else ""
        tb = f"{r['tbps']:.2f}" if r.get("tbps") else ""
        ms = "" if r["ms"] != r["ms"] else f"{r['ms']:.2f}"
        out.append(f"| {r['T']} | {r['what']} | {ms} | {tf} | {gb} | {tb} | {r.get('note', '')} |")
    return "\n".join(out)


# ---------------------------------------------------------------- selection quality (CPU)
def video_scores(t, frame, gen):
    """Indexer-like logits with video structure: a local window (own and previous frame), a few
    strong distant frames shared by nearby queries (per 512-query segment) and one per query,
    key salience, and noise. Returns a function rows -> logits [len(rows), t] (causal not applied)."""
    nf = (t + frame - 1) // frame
    sal = torch.randn(t, generator=gen) * 0.5
    seg_frames = torch.randint(0, nf, (t // 512 + 1, 3), generator=gen)
    own_frame = torch.randint(0, nf, (t,), generator=gen)
    kf = torch.arange(t) // frame

    def logits(rows):
        qf = rows // frame
        x = torch.randn(len(rows), t, generator=gen) * 1.0 + sal[None, :]
        x += 4.0 * ((kf[None, :] >= qf[:, None] - 1) & (kf[None, :] <= qf[:, None]))
        sf = seg_frames[rows // 512]  # [r, 3]
        x += 3.0 * (kf[None, :, None] == sf[:, None, :]).any(-1)
        x += 3.0 * (kf[None, :] == (own_frame[rows] % (qf + 1))[:, None])
        return x
    return logits


def quality(t=8192, frame=256, k=1024, bq=64, seed=0):
    """Logit-level harness (kept from the first round): max vs sum on video_scores. Pooled and
    coarse-to-fine rules need indexer vectors, see quality_vectors."""
    gen = torch.Generator().manual_seed(seed)
    logits = video_scores(t, frame, gen)
    res = {}
    for agg in ("max", "sum"):
        kept = []
        for b0 in range(0, t, bq):
            rows = torch.arange(b0, min(t, b0 + bq))
            lg = logits(rows) if agg == "max" else lg_cache[b0]
            if agg == "max":
                lg_cache[b0] = lg
            vis = torch.arange(t)[None, :] <= rows[:, None]
            lgm = lg.masked_fill(~vis, float("-inf"))
            cand = torch.arange(t) < b0
            n_c = int(cand.sum())
            if n_c + 1 <= k:
                continue  # every query of this block sees all its keys in both modes
            a = lgm[:, :b0].amax(0) if agg == "max" else lgm[:, :b0].sum(0)
            chosen = torch.zeros(t, dtype=torch.bool)
            chosen[torch.sort(a, descending=True, stable=True).indices[:k]] = True
            chosen[b0:b0 + bq] = True
            kept.append(_kept_share(lgm, vis, chosen[None, :], k))
        kv = torch.cat(kept)
        res[agg] = (kv.mean().item(), kv.quantile(0.05).item(), kv.min().item())
        log(f"[logits] block_agg={agg}: kept share of own top-{k} mass mean {res[agg][0]:.4f} p5 {res[agg][1]:.4f} "
            f"min {res[agg][2]:.4f} (T={t}, frame={frame} tokens, B_q={bq})")
    return res


def _kept_share(lgm, vis, chosen, k):
    """Per query row: indexer softmax mass of its own top-k keys that ``chosen`` ([rows or 1, T]) keeps,
    over the mass of its own top-k.

    Ties at the k-th logit are shared out: when m visible keys tie there for the s = k - (keys above it)
    remaining places, each counts s/m of its mass, the expectation over which of them a top-k would take.
    A trained indexer has such ties (a query whose weights w are all negative scores every key with all
    relu terms 0 at exactly 0); random synthetic logits have none, and then this is the plain top-k."""
    p = torch.softmax(lgm, -1)
    thr = torch.topk(lgm, k, dim=-1).values[:, -1:]
    above = vis & (lgm > thr)
    at = vis & (lgm == thr)
    frac = (k - above.sum(1, keepdim=True)) / at.sum(1, keepdim=True).clamp(min=1)
    own = above + at * frac  # weight of each key in the own top-k: 1, s/m at the threshold, else 0
    return (p * own * chosen).sum(1) / (p * own).sum(1)


def video_indexer(t, frame, h=8, d=64, gen=None):
    """Indexer inputs (q_I [t, h, d], k_I [t, d], w [t, h]) whose logits have the video structure of
    video_scores: each key carries its frame's embedding, a salience component and noise; each
    query's heads aim at its own frame and the previous one (local window), at 3 distant frames
    shared by its 512-query segment, at one distant frame of its own, at key salience, and noise.
    Heads see a key through relu(q . k), as the real indexer, so pooling a block's queries mixes
    their targets the way a trained indexer's would (per-query targets get diluted)."""
    nf = (t + frame - 1) // frame
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    emb = unit(torch.randn(nf, d, generator=gen))
    u = unit(torch.randn(d, generator=gen))
    kf = torch.arange(t) // frame
    sal = torch.randn(t, generator=gen) * 0.5
    k_idx = emb[kf] + sal[:, None] * u + 1.0 * unit(torch.randn(t, d, generator=gen))
    qf = kf
    seg = torch.randint(0, nf, (t // 512 + 1, 3), generator=gen)
    own = torch.randint(0, nf, (t,), generator=gen) % (qf + 1)
    tgt = torch.stack([qf, (qf - 1).clamp(min=0), seg[qf * 0 + torch.arange(t) // 512, 0],
                       seg[torch.arange(t) // 512, 1], seg[torch.arange(t) // 512, 2], own], 1)  # [t, 6]
    strength = torch.tensor([4.0, 4.0, 3.0, 3.0, 3.0, 3.0])
    q = torch.zeros(t, h, d)
    q[:, :6] = emb[tgt] * strength[None, :, None]
    q[:, 6] = 1.0 * u
    q[:, :h] += 3.0 * unit(torch.randn(t, h, d, generator=gen))  # per-query noise in every head
    w = 1.0 + 0.2 * torch.randn(t, h, generator=gen)
    return q, k_idx, w


QUALITY_RULES = [("max", 0), ("sum", 0), ("pooled", 0), ("max", 2), ("max", 4), ("sum", 2), ("sum", 4)]


def quality_vectors(t=8192, frame=256, k=1024, bq=64, seed=0, rules=QUALITY_RULES, *, indexer=None, doc=None,
                    per_query=False):
    """Share of each query's own top-k indexer mass kept by each block selection rule, with the
    reference selection (the rule the kernels implement).

    By default on video_indexer's inputs (one document of ``t`` tokens). ``indexer`` = (q_I [T, H_I, d_I],
    k_I [T, d_I], w [T, H_I]) gives the inputs instead (``t``, ``frame``, ``seed`` are then unused), e.g. a
    trained model's indexer outputs for one packed sequence; ``doc`` [T] is then each row's document start
    (plan.doc_starts_from_cu_seqlens), default one document. A query's own top-k, its softmax and what
    the rule keeps are taken over the keys it sees: its document's keys at or before it. Blocks whose
    candidates (+1) fit in k are skipped (every query there sees all its keys under every rule).
    Returns {rule: (mean, p5, min)} over the counted queries, or with ``per_query`` {rule: the per-query
    kept shares} (for pooling several sequences) without logging."""
    if indexer is None:
        gen = torch.Generator().manual_seed(seed)
        qi, ki, wi = video_indexer(t, frame, gen=gen)
    else:
        qi, ki, wi = (x.detach().float().cpu() for x in indexer)
        t = qi.shape[0]
    pos = torch.arange(t, dtype=torch.int32)
    doc = torch.zeros(t, dtype=torch.int32) if doc is None else doc.to(torch.int32).cpu()
    res = {}
    lgs = {}
    for agg, coarse in rules:
        cfg = DSAConfig(index_heads=qi.shape[1], index_dim=qi.shape[2], topk=k, granularity="block", block_q=bq,
                        block_agg=agg, coarse=coarse)
        plan = build_plan(pos, doc, cfg, dense=False)
        t0 = time.time()
        sel, sel_n = ref.select(qi, ki, wi, plan, cfg)
        t_sel = time.time() - t0
        kept = []
        for o in range(plan.n_owners):
            b0, nq = int(plan.own_q0[o]), int(plan.own_nq[o])
            lo = int(plan.cand_lo[o])  # the document's first key (0 for one document)
            if int(plan.cand_hi[o]) - lo + 1 <= k:
                continue
            rows = torch.arange(b0, b0 + nq)
            if o not in lgs:
                lgs[o] = ref.index_logits(qi[rows], wi[rows], ki[lo: b0 + nq])
            vis = torch.arange(lo, b0 + nq)[None, :] <= rows[:, None]
            lgm = lgs[o].masked_fill(~vis, float("-inf"))
            chosen = torch.zeros(b0 + nq - lo, dtype=torch.bool)
            s = sel[o, : int(sel_n[o])].long()
            chosen[s - lo] = True
            chosen[int(plan.rng_lo[o]) - lo: int(plan.rng_hi[o]) - lo] = True  # the block's own keys
            kept.append(_kept_share(lgm, vis, chosen[None, :], k))
        kv = torch.cat(kept) if kept else torch.zeros(0)
        name = agg + (f"+coarse{coarse}" if coarse else "")
        if per_query:
            res[name] = kv
            continue
        res[name] = (kv.mean().item(), kv.quantile(0.05).item(), kv.min().item())
        where = f"T={t}, frame={frame}" if indexer is None else f"given indexer, T={t}, {len(kv)} queries"
        log(f"[indexer] {name:<14}: kept share of own top-{k} mass mean {res[name][0]:.4f} p5 {res[name][1]:.4f} "
            f"min {res[name][2]:.4f} ({where}, B_q={bq}; reference select {t_sel:.1f} s on CPU)")
    return res


lg_cache: dict = {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8192,32768,131072,262144")
    ap.add_argument("--check", type=int, default=32768, help="correctness size (0 = skip)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--commit", default=os.environ.get("COMMIT", ""))
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--sweep", type=int, default=1,
                    help="sweep launch configs first: 1 all, 2 block attention, 3 block attention and token "
                         "selection/KL, 0 none")
    ap.add_argument("--modes", default="block,token")
    ap.add_argument("--rules", default="pooled,max", help="block selection rules: max, sum, pooled, max+coarse2, ...")
    ap.add_argument("--check-rules", default="pooled,max+coarse2", help="block rules checked against the reference")
    ap.add_argument("--sdpa", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1, help="time the indexer warm-up's layer work per size")
    ap.add_argument("--token-merge", default="4,8,16", help="merged token groups to time per size ('' = none)")
    ap.add_argument("--kernels", type=int, default=1, help="0 skips the per-size kernel and layer rows")
    ap.add_argument("--kl-split", default="", help="the block KL's split launch, 'BN,warps,stages,queries/"
                    "warps,stages,queries,kv loop' (bench_indexer_kl.py's fastest_split.txt); '' = the defaults")
    ap.add_argument("--spread", default="", help="directions whose programs serve owners in a strided order "
                    "(attention.SPREAD_OWNERS): 'bwd', 'fwd,bwd'; '' = the defaults")
    ap.add_argument("--kl-in-backward", type=int, default=1,
                    help="block: also time the layer with the indexer KL in the attention's backward")
    ap.add_argument("--add-modes", type=int, default=0,
                    help="T > 0: time the backward's float32 add modes at T first and keep the fastest")
    a = ap.parse_args()
    if a.quality:
        quality()
        quality_vectors()
        return
    sizes = [int(s) for s in a.sizes.split(",") if s]
    if a.kl_split.strip():
        kl_mod.install_split_launch(a.kl_split)
        log(f"block KL split launch: pass {kl_mod.CONFIG['block+pt']}, {kl_mod.PT_QUERIES} queries a step; "
            f"target {kl_mod.TARGET_CONFIG['block']}")
    for direction in (d for d in a.spread.split(",") if d):
        if direction not in attn_mod.SPREAD_OWNERS:
            raise SystemExit(f"--spread {a.spread!r}: directions are {sorted(attn_mod.SPREAD_OWNERS)}")
        attn_mod.SPREAD_OWNERS[direction] = True
    log(f"owners spread: {attn_mod.SPREAD_OWNERS}")
    commit = a.commit
    if not commit:
        try:
            commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        except Exception:  # noqa: BLE001
            commit = "unknown"
    import triton
    meta = dict(gpu=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(), commit=commit,
                torch=torch.__version__, triton=triton.__version__)
    log(meta)
    bw = section("ceilings", ceilings) or 3.0e12
    modes = tuple(a.modes.split(","))
    rules = tuple(r for r in a.rules.split(",") if r)
    if a.sweep == 1:
        section("launch-config sweep", sweep)
    if a.sweep in (1, 3) and "token" in modes:
        section("token sweep", sweep_token)
    if a.add_modes:
        section("float32 add modes", sweep_add_modes, a.add_modes, rules[0])
    if a.sweep and "block" in modes:
        section("block attention sweep", sweep_block_attn, 131072, rules[0])
    if a.check:
        cases = [("block", "sparse", r) for r in a.check_rules.split(",") if r] + \
            ([("token", "sparse", "max")] if "token" in modes else []) + [("block", "warmup", "max")]
        section(f"correctness at {a.check}", correctness, a.check, tuple(cases))
    for t in sizes:
        if a.kernels:
            section(f"benchmark T={t}", bench_size, t, bw, modes, rules, bool(a.sdpa), bool(a.kl_in_backward))
        if a.warmup:
            section(f"warm-up T={t}", bench_warmup, t)
        merges = [int(m) for m in a.token_merge.split(",") if m]
        if merges and "token" in modes:
            section(f"token merge T={t}", bench_token_merge, t, merges)
    tab = table(meta)
    summ = summary(sizes)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_dsa.md"), "w") as fh:
        fh.write(tab + "\n\n" + "\n".join(summ) + "\n")
    with open(os.path.join(a.out, "bench_dsa.json"), "w") as fh:
        json.dump(dict(meta=meta, rows=ROWS), fh, indent=1)
    log(tab)
    log("\n".join(summ))


if __name__ == "__main__":
    main()
