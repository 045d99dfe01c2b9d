"""Where the block indexer KL's time goes: the kernel timed with parts of its work cut out.

    PYTHONUNBUFFERED=1 python tests/bench/bench_kl_ablation.py [--sparse 131072] [--dense 32768] [--out DIR]

Each variant is made at run time from the kernel's own source (model/dsa/kernels/indexer_kl.py,
tests/bench/kernel_variants.py), so the variants follow the kernel as it changes.
A variant's loss and gradients are wrong by construction; only its time means something:

- full: the kernel as it ships, its head-mean target computed inside the KL pass (split=False);
- no pass 1: the indexer's log-sum-exp pass skipped (its key gathers, one dot, exps per tile);
- no target: pass 2 without the head loop (no Q or K loads, no Hq dots and exps: the head-mean
  target is what the KL pays for that the indexer alone would not);
- one KV head: the head loop over one KV head of Hkv (the cost of a head, by difference);
- no dk adds: dk_I's tile summed into one row before its float32 adds (the dot stays);
- loss only: the full kernel without gradients (the gradients' share).

Shapes are bench_dsa.py's (32 / 4 heads of 128, indexer 8 x 128, k = 2,048, blocks of 64, rule
max+coarse2 in the sparse stage; the dense warm-up over every visible key). Prints a markdown
table and writes it under --out.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from model.dsa.kernels import indexer_kl as kl_mod  # noqa: E402
from tests.bench.bench_dsa import DEV, HKV, D  # noqa: E402
from tests.bench.bench_indexer_kl import case  # noqa: E402
from tests.bench.cuda_timing import print_and_save, timeit  # noqa: E402
from tests.bench.kernel_variants import variant  # noqa: E402

# variant -> [(old text, new text), ...] applied to the kernel module's source; [] the module itself
CUTS: dict[str, list[tuple[str, str]]] = {
    "full": [],
    "no pass 1": [("l_i = tl.zeros([QS], tl.float32)\n        for t in range(0, nt):",
                   "l_i = tl.zeros([QS], tl.float32)\n        for t in range(0, 0):")],
    "no target": [("for hk in range(0, HKV):", "for hk in range(0, 0):")],
    "one KV head": [("for hk in range(0, HKV):", "for hk in range(0, 1):")],
    "no dk adds": [("add_tile(DKI + kofs[:, None] * s_dkit + di[None, :], dk, km[:, None] & dim_[None, :], "
                    "ADD)", "tl.atomic_add(DKI + di, tl.sum(dk, 0), mask=dim_)")],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparse", default="131072", help="sizes of the sparse stage ('' = none)")
    ap.add_argument("--dense", default="32768", help="sizes of the dense warm-up ('' = none)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    gpu = DEV == "cuda"
    name = torch.cuda.get_device_name() if gpu else "cpu (TRITON_INTERPRET smoke run: times meaningless)"
    print(f"# {name}, torch {torch.__version__}, block KL launch {kl_mod.CONFIG['block']}, "
          f"{kl_mod.BLOCK_QUERIES} queries a step", flush=True)
    lines = ["| T | stage | variant | ms | share of full |", "|---|---|---|---|---|"]
    cases = [(int(t), "sparse") for t in a.sparse.split(",") if t]
    cases += [(int(t), "warmup") for t in a.dense.split(",") if t]
    with tempfile.TemporaryDirectory() as tmp:
        mods = {n: variant(kl_mod, n, cuts, tmp) for n, cuts in CUTS.items()}
        for t, stage in cases:
            x, plan, sel, sel_n, lse, _ = case(t, stage)
            full = None
            runs = [(n, m, True) for n, m in mods.items()] + [("loss only", kl_mod, False)]
            for label, mod, grad in runs:
                def run(mod=mod, grad=grad):
                    return mod.indexer_kl(x["q"], x["k"], lse, x["q_idx"], x["k_idx"], x["w_idx"], plan, sel,
                                          sel_n, 1 / math.sqrt(D), False, grad, split=False)
                run()
                s = timeit(run, min_total=0.3, max_reps=5) if gpu else float("nan")
                full = full if full is not None else s
                lines.append(f"| {t:,} | {stage} | {label} | {s * 1e3:.2f} | {s / full:.2f} |")
                print(lines[-1], flush=True)
            x = plan = sel = sel_n = lse = None
            if gpu:
                torch.cuda.empty_cache()
    lines.append(f"\n(one KV head of {HKV}: the head loop's cost per KV head is (full - one KV head) / "
                 f"{HKV - 1})")
    print_and_save(lines, a.out, "bench_kl_ablation.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
