"""A/B of the indexer KL kernel: the model's nested loop against the flat loop of _kl_flat.py, same inputs.

    python3 tests/bench/_kl_ab.py [T_SPARSE] [T_DENSE] ['[("old"|"flat", BN, warps, stages, queries), ...]']
"""
import math, sys, os, itertools
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch
from tests.bench.bench_dsa import inputs, rule_cfg, attended, try_time, DEV, D, HQ, HI, DI
from model.dsa.plan import build_plan
from model.dsa.select import select
from model.dsa.kernels.attention import attn_fwd
from model.dsa.kernels import indexer_kl as old  # the nested loop ("old" in the table)
from tests.bench import _kl_flat as new

def run(t, dense, variants):
    pos = torch.arange(t, dtype=torch.int32, device=DEV); doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    x = inputs(t, seed=3); scale = 1 / math.sqrt(D)
    cfg = rule_cfg("max+coarse2", "warmup" if dense else "sparse")
    plan = build_plan(pos, doc, cfg, dense=dense)
    sel, sel_n = (None, None) if dense else select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg)
    out, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, False)
    pairs = attended(plan, sel_n, False) if not dense else t * (t + 1) // 2
    fl = pairs * 2 * (HQ * D + 4 * HI * DI)
    ref = None
    for name, mod, bn, nw, ns, qs in variants:
        mod.BLOCK_QUERIES = qs
        fn = lambda: mod.indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel, sel_n, scale,
                                    False, True, block_n=bn, num_warps=nw, num_stages=ns)
        try:
            kl, (dq, dk, dw) = fn()
        except Exception as e:
            print(f"| {t} | {'dense' if dense else 'sparse'} | {name} | {(bn, nw, ns, qs)} | failed: {str(e)[:120]} |", flush=True); continue
        if ref is None:
            ref = (kl, dq.float(), dk, dw)
        err = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
                  for a, b in zip((kl, dq, dk, dw), ref))
        s = try_time(fn, min_total=0.3, max_reps=5)
        print(f"| {t} | {'dense' if dense else 'sparse'} | {name} | {(bn, nw, ns, qs)} | {s*1e3:.2f} ms | {fl/s/1e12:.1f} TFLOP/s | rel err vs first {err:.2e} |", flush=True)

if __name__ == "__main__":
    t = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
    V = [("old", old, 64, 8, 1, 16), ("flat", new, 64, 8, 2, 16), ("flat", new, 64, 8, 1, 16), ("old", old, 64, 8, 2, 16),
         ("flat", new, 64, 8, 2, 8), ("flat", new, 32, 8, 2, 16), ("flat", new, 32, 8, 3, 16), ("flat", new, 64, 16, 2, 16),
         ("flat", new, 64, 4, 2, 8), ("flat", new, 32, 8, 3, 32)]
    if len(sys.argv) > 3:
        V = [(n, old if n == "old" else new, *c) for n, *c in eval(sys.argv[3])]
    print("| T | stage | kernel | (BN, warps, stages, QS) | ms | TFLOP/s | check |\n|---|---|---|---|---|---|---|")
    run(t, False, V)
    run(int(sys.argv[2]) if len(sys.argv) > 2 else 32768, True, V[:4] + V[4:6])
