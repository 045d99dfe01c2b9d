"""Where the block attention backward's time goes: the kernel timed with parts of its work cut out.

    PYTHONUNBUFFERED=1 python tests/bench/bench_attn_ablation.py [--sizes 131072,262144] [--out DIR]

Variants are made from the kernel's own source (model/dsa/kernels/attention.py,
tests/bench/kernel_variants.py). A variant's gradients are wrong by construction; only its time
means something:

- full: the backward as it ships (dQ written, dK and dV added into float32 buffers);
- no dK/dV adds: each tile's dK and dV summed into one row before the float32 adds (the dots
  stay): what the adds of whole tiles cost, i.e. what a backward without atomics could save;
- dQ only: no dK, dV dots and no adds (the dQ half of a split backward: QK, dO V and dS K);
- list index at the top level: the list loop's index tile loaded at the loop's top level, as
  before 2026-12-07 evening, so that Triton's pipeliner makes it an async copy and leaves the K,
  V gathers unoverlapped (kernel_schedule.py); timed in both directions against the shipped
  kernel, which loads the index under an `if`;
- forward: the forward over the same selection, shipped and with the index at the top level.
Owners in a strided order (attention.SPREAD_OWNERS) ran 1-3% slower (H200, 2026-12-07) and are no
longer timed here.

Shapes are bench_dsa.py's (32 / 4 heads of 128, k = 2,048, blocks of 64, rule max+coarse2).
Prints a markdown table and writes it under --out.
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

from model.dsa.kernels import attention as attn_mod  # noqa: E402
from tests.bench.bench_dsa import DEV, HQ, D, attended  # noqa: E402
from tests.bench.bench_indexer_kl import case  # noqa: E402
from tests.bench.cuda_timing import print_and_save, timeit  # noqa: E402
from tests.bench.kernel_variants import variant  # noqa: E402

_DV_ADD = ("add_tile(DV + dkp, tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=prec), cm, ADD, "
           "MASK_K or not EVEN_D)")
_DK_ADD = "add_tile(DK + dkp, dk, cm, ADD, MASK_K or not EVEN_D)"
CUTS: dict[str, list[tuple[str, str]]] = {
    "full": [],
    "no dK/dV adds": [
        (_DV_ADD, "tl.atomic_add(DV + hk * s_dkh + dd, tl.sum(tl.dot(tl.trans(p.to(do.dtype)), do, "
                  "input_precision=prec), 0), mask=dm)"),
        (_DK_ADD, "tl.atomic_add(DK + hk * s_dkh + dd, tl.sum(dk, 0), mask=dm)")],
    "dQ only": [
        (_DV_ADD, "pass"),
        ("    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=prec) * sm_scale\n", ""),
        (_DK_ADD, "pass")],
    "list index at the top level": [
        ("        kidx = gather_index_tile(SEL + sel_row + j + offs, offs, j + BN <= n_sel)\n",
         "        kidx = tl.load(SEL + sel_row + j + offs)\n")],
}
FWD_VARIANTS = ("full", "list index at the top level")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="131072,262144")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    gpu = DEV == "cuda"
    name = torch.cuda.get_device_name() if gpu else "cpu (TRITON_INTERPRET smoke run: times meaningless)"
    print(f"# {name}, torch {torch.__version__}, block backward launch {attn_mod.BWD_CONFIG['block']}", flush=True)
    lines = ["| T | variant | ms | share of full | TFLOP/s (at 2.5x the forward's FLOPs) |", "|---|---|---|---|---|"]
    scale = 1 / math.sqrt(D)
    with tempfile.TemporaryDirectory() as tmp:
        mods = {n: variant(attn_mod, n, cuts, tmp) for n, cuts in CUTS.items()}
        for t in [int(v) for v in a.sizes.split(",") if v]:
            x, plan, sel, sel_n, _, _ = case(t, "sparse")
            flop = 2.5 * 4 * D * HQ * attended(plan, sel_n, False)
            out, lse = attn_mod.attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, False)
            dout = torch.randn_like(out)
            full = None
            for label, mod in mods.items():
                def run(mod=mod):
                    return mod.attn_bwd(x["q"], x["k"], x["v"], out, lse, dout, plan, sel, sel_n, scale, False)
                run()
                s = timeit(run, min_total=0.3, max_reps=5) if gpu else float("nan")
                full = full if full is not None else s
                lines.append(f"| {t:,} | {label} | {s * 1e3:.2f} | {s / full:.2f} | {flop / s / 1e12:.1f} |")
                print(lines[-1], flush=True)
            for label in FWD_VARIANTS:
                def fwd(mod=mods[label]):
                    return mod.attn_fwd(x["q"], x["k"], x["v"], plan, sel, sel_n, scale, False)
                fwd()
                s = timeit(fwd, min_total=0.3, max_reps=5) if gpu else float("nan")
                tf = flop / 2.5 / s / 1e12
                lines.append(f"| {t:,} | forward, {label} | {s * 1e3:.2f} | {s / full:.2f} | {tf:.1f} (fwd) |")
                print(lines[-1], flush=True)
            x = plan = sel = sel_n = out = lse = dout = None
            if gpu:
                torch.cuda.empty_cache()
    print_and_save(lines, a.out, "bench_attn_ablation.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
