"""The indexer KL kernel of block owners, launch configs side by side, one process: the head-mean
target computed inside the KL pass, or by its own kernel first (indexer_kl.SPLIT_TARGET).

    PYTHONUNBUFFERED=1 python tests/bench/bench_indexer_kl.py [--sparse 131072] [--dense 32768] \
        [--configs "64,8,2,16;32,8,1,16,128;p64,8,2,16/8,3,32"] [--out DIR]

A config is (BN, warps, stages, queries per step[, register cap]) (model/dsa/kernels/indexer_kl.py
CONFIG["block"], BLOCK_QUERIES, MAX_REGISTERS["block"]; no cap or 0: the compiler's choice).
Shapes are bench_dsa.py's (one document of T tokens, 32 / 4 heads of 128, indexer 8 x 128,
k = 2,048, blocks of 64, rule max+coarse2 in the sparse stage; the dense warm-up's KL over every
visible key). Each config's loss and indexer gradients
are compared with the first config's (the row's "rel. err"), then timed with gradients. Prints a
markdown table and writes it under --out, with the fastest config per stage in fastest_STAGE.txt
(the value for LONGSHOT_KL_BLOCK) and the fastest split one in fastest_split.txt (for bench_dsa's
--kl-split).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from model.dsa.kernels import indexer_kl as kl_mod  # noqa: E402
from model.dsa.kernels.attention import attn_fwd  # noqa: E402
from model.dsa.kernels.indexer_kl import indexer_kl  # noqa: E402
from model.dsa.plan import build_plan  # noqa: E402
from model.dsa.select import select  # noqa: E402
from tests.bench.bench_dsa import DEV, HI, HQ, D, DI, attended, inputs, rel, rule_cfg  # noqa: E402
from tests.bench.cuda_timing import print_and_save, timeit  # noqa: E402


def case(t: int, stage: str):
    """(inputs, plan, sel, sel_n, lse, attended pairs) of one document of t tokens. Stages: sparse
    and warmup (block owners), token (one query an owner, its own selection)."""
    x = inputs(t, seed=3)
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    doc = torch.zeros(t, dtype=torch.int32, device=DEV)
    token = stage == "token"
    cfg = replace(rule_cfg("max", "sparse"), granularity="token") if token else rule_cfg("max+coarse2", stage)
    dense = stage == "warmup"
    plan = build_plan(pos, doc, cfg, dense=dense)
    sel = sel_n = None
    if not dense:
        sel, sel_n = select(x["q_idx"], x["k_idx"], x["w_idx"], plan, cfg)
    _, lse = attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, 1 / math.sqrt(D), token)
    pairs = t * (t + 1) // 2 if dense else attended(plan, sel_n, token)
    return x, plan, sel, sel_n, lse, pairs


def parse(text: str):
    """A config: ``BN,warps,stages,queries[,register cap]`` (the target inside the KL pass) or
    ``p`` and a split launch (indexer_kl.install_split_launch: the target from its own kernel,
    then the KL pass over it)."""
    if text.startswith("p"):
        return ("split", text[1:])
    return tuple(int(v) for v in text.split(","))


def install(c) -> bool:
    """Make config ``c`` the block launch (and the dense warm-up's, when split); True when it takes
    the split target."""
    if c[0] == "split":
        kl_mod.install_split_launch(c[1], kinds=("block", "dense"))
        return True
    bn, nw, ns, qs, *cap = c
    kl_mod.CONFIG["block"] = (bn, nw, ns)
    kl_mod.BLOCK_QUERIES = qs
    kl_mod.MAX_REGISTERS["block"] = (cap or [0])[0] or None
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparse", default="131072", help="sizes of the sparse stage ('' = none)")
    ap.add_argument("--dense", default="32768", help="sizes of the dense warm-up ('' = none)")
    ap.add_argument("--token", default="", help="sizes of token mode, at its own launch only ('' = none)")
    ap.add_argument("--configs", default="64,8,2,16;p64,8,2,16/8,3,32,0;p64,8,2,16/8,3,32,1;"
                    "p64,8,2,16/16,3,32,1;p64,8,2,16/8,2,32,1;p64,8,2,16/8,3,16,1",
                    help="';'-separated; see parse()")
    ap.add_argument("--loss-only", type=int, default=1, help="also time each config without the gradients")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    configs = [parse(c) for c in a.configs.split(";") if c]
    name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}", flush=True)
    lines = ["| T | stage | (BN, warps, stages, queries[, register cap]) | ms | TFLOP/s | rel. err vs first "
             "| "
             "peak GiB above inputs |", "|---|---|---|---|---|---|---|"]
    cases = [(int(t), "sparse") for t in a.sparse.split(",") if t]
    cases += [(int(t), "warmup") for t in a.dense.split(",") if t]
    cases += [(int(t), "token") for t in a.token.split(",") if t]
    best = {}  # stage (or "split") -> (ms with gradients, config)
    for t, stage in cases:
        x, plan, sel, sel_n, lse, pairs = case(t, stage)
        flop = pairs * (2 * HQ * D + 4 * 2 * HI * DI)
        first = None
        token_runs = [("token, target in the KL pass",), ("token, target kernel", "split")]
        for c in configs if stage != "token" else token_runs:
            split = install(c) if stage != "token" else c[-1] == "split"

            def run(grad=True):
                return indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel, sel_n,  # noqa: B023
                                  1 / math.sqrt(D), stage == "token", grad, split=split)  # noqa: B023
            try:
                kl, grads = run()
                got = [kl, *grads]
                err = 0.0 if first is None else max(rel(g, f) for g, f in zip(got, first))
                first = first or got
                if a.loss_only and DEV == "cuda":  # the gradients' share: the same walk without them
                    s = timeit(lambda: run(False), min_total=0.3, max_reps=5)  # noqa: B023
                    lines.append(f"| {t:,} | {stage} | {c}, loss only | {s * 1e3:.2f} | | | |")
                    print(lines[-1], flush=True)
                gpu = DEV == "cuda"  # cpu: a smoke run under TRITON_INTERPRET, times meaningless
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() if gpu else 0
                s = timeit(run, min_total=0.3, max_reps=5) if gpu else float("nan")
                peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if gpu else float("nan")
                slot = ("split" if stage == "sparse" else f"split_{stage}") if c[0] == "split" else stage
                if gpu and stage != "token" and (slot not in best or s < best[slot][0]):
                    best[slot] = (s, c)
                line = (f"| {t:,} | {stage} | {c} | {s * 1e3:.2f} | {flop / s / 1e12:.1f} | {err:.1e} "
                        f"| {peak:.2f} |")
            except Exception as e:  # noqa: BLE001 - a config that fails to compile must not stop the others
                line = f"| {t:,} | {stage} | {c} | failed: {type(e).__name__}: {str(e)[:120]} | | | |"
            print(line, flush=True)
            lines.append(line)
        x = plan = sel = sel_n = lse = first = None
        if DEV == "cuda":
            torch.cuda.empty_cache()
    print_and_save(lines, a.out, "bench_indexer_kl.md")
    for stage, (s, c) in best.items():  # for LONGSHOT_KL_BLOCK (or bench_dsa's --kl-split) in the rows that follow
        text = ",".join(map(str, c)) if c[0] != "split" else c[1]
        print(f"fastest {stage}: {text} ({s * 1e3:.2f} ms)")
        with open(os.path.join(a.out, f"fastest_{stage}.txt"), "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
