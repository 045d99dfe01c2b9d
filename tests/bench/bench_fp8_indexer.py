"""Would FP8 (e4m3) indexer scoring keep DSA's selection? Recall of the selection made from
e4m3-rounded indexer inputs against the one made from the bf16 inputs (CPU is enough).

    python tests/bench/bench_fp8_indexer.py [--run runs/demo/train[:STEP]] [--packs 0,1] [--sizes 8192,16384]

Issue 19 keeps an FP8 indexer only if its selection recall stays >= 99% of the bf16 selection on
real packs. FP8 changes one thing: the operands of the q_I . k_I dots, rounded to e4m3 with one
float32 scale per row (a query's index head, a key: amax / 448, DeepSeek-V3.2's per-128-element
blocks for d_I = 128); a kernel would fold the scales out of the relu (relu(a x) = a relu(x)
for a > 0) and accumulate in float32, so the rounding of the operands is the whole difference, and
here it is applied to the bf16 inputs before model/dsa/reference.py's selection (pooled rows are
then sums of rounded rows). Per selection rule, over owners with more candidates than k:

- key recall: |S_fp8 n S_bf16| / |S_bf16| per owner (mean, 5th percentile, min);
- key recall of bf16 against float32 operands: what bf16 rounding alone already moves;
- mass recall: per query, the share of the bf16 indexer's softmax mass on the keys the bf16
  selection lets it attend that the fp8 selection keeps (the indexer's own view of what is lost).

Inputs: indexer outputs of a trained `longshot train` run on its real packs (bench_indexer_quality's
capture; the run's preset gives k and B_q) and, for the production shape (k = 2,048, B_q = 64,
H_I x d_I = 8 x 64), bench_dsa.video_indexer's video-structured synthetic inputs.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from indexer_inputs import cases as indexer_cases  # noqa: E402
from indexer_inputs import finish  # noqa: E402

from model.dsa import DSAConfig  # noqa: E402
from model.dsa import reference as ref  # noqa: E402
from model.dsa.plan import build_plan  # noqa: E402

E4M3_MAX = 448.0
RULES = [("token", "max", 0), ("block", "max", 2), ("block", "max", 0), ("block", "pooled", 0)]


def e4m3_rows(x: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3 with one scale per last-dim row (amax / 448), returned dequantized."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-30) / E4M3_MAX
    return (x / scale).to(torch.float8_e4m3fn).float() * scale


def rule_label(gran, agg, coarse):
    return "token" if gran == "token" else f"block {agg}" + (f"+coarse{coarse}" if coarse else "")


def recall(qi, ki, wi, doc, base_cfg: DSAConfig, chunk_rows: int = 1024):
    """{rule: (key recall per owner, mass recall per query, key recall of bf16 vs float32)} of e4m3
    vs bf16 selections; the last is the same measure for bf16 against float32 operands (inputs
    as given), the scale of what rounding alone moves at the top-k threshold."""
    q32, k32, w32 = (x.float() for x in (qi, ki, wi))
    qi, ki, wi = (x.to(torch.bfloat16).float() for x in (qi, ki, wi))
    q8, k8 = e4m3_rows(qi), e4m3_rows(ki)
    t = qi.shape[0]
    pos = torch.arange(t, dtype=torch.int32)
    doc = doc.to(torch.int32)
    out = {}
    for gran, agg, coarse in RULES:
        cfg = replace(base_cfg, granularity=gran, block_agg=agg, coarse=coarse, stage="sparse")
        plan = build_plan(pos, doc, cfg, dense=False)
        s16, n16 = ref.select(qi, ki, wi, plan, cfg)
        s8, n8 = ref.select(q8, k8, wi, plan, cfg)
        s32, _ = ref.select(q32, k32, w32, plan, cfg)
        assert torch.equal(n16, n8)
        big = (plan.cand_hi - plan.cand_lo) > cfg.topk
        key_recall, key_recall_bf16 = (_key_recall(s16[big], x[big]) for x in (s8, s32))
        # mass recall per query of the selective owners
        masses = []
        rows_all = torch.nonzero(big[plan.owner_of_row.long()]).flatten()
        for c in range(0, rows_all.numel(), chunk_rows):
            rows = rows_all[c:c + chunk_rows]
            base = int(doc[rows].min())
            width = int(pos[rows].max()) + 1 - base
            col = base + torch.arange(width)
            vis = (col[None, :] >= doc[rows, None]) & (col[None, :] <= pos[rows, None])
            lg = ref.index_logits(qi[rows], wi[rows], ki[base:base + width])
            p = torch.softmax(lg.masked_fill(~vis, float("-inf")), -1)
            m16 = (p * ref._visible_mask(plan, rows, s16, base, width)).sum(1)
            m8 = (p * ref._visible_mask(plan, rows, s8, base, width)).sum(1)
            masses.append(m8 / m16.clamp_min(1e-30))
        out[rule_label(gran, agg, coarse)] = (key_recall, torch.cat(masses) if masses else torch.ones(0),
                                              key_recall_bf16)
    return out


def _key_recall(want: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Per row: the share of want's keys (-1 = padding) that got's row holds too."""
    want, got = want.long(), torch.sort(got.long(), 1).values
    idx = torch.searchsorted(got, want).clamp(max=got.shape[1] - 1)
    hits = (got.gather(1, idx) == want) & (want >= 0)
    return hits.sum(1).float() / (want >= 0).sum(1).float()


def stats(v):
    if v.numel() == 0:
        return "n/a"
    v = v.double()
    return f"{v.mean():.4f} / {v.quantile(0.05):.4f} / {v.min():.4f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=os.path.join(ROOT, "runs", "demo", "train"),
                    help="a trained run folder (RUN[:STEP]); '' to skip")
    ap.add_argument("--packs", default="", help="pack indices of the run's data (default: the first two)")
    ap.add_argument("--sizes", default="8192,16384", help="synthetic video-structured inputs, one document each")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))))
    t0 = time.time()
    lines = [f"e4m3 (per-row scale) vs bf16 indexer operands; {datetime.date.today().isoformat()}, torch "
             f"{torch.__version__}, {os.cpu_count()} CPUs. Cells: mean / p5 / min over selective owners "
             "(key recall) or their queries (mass recall).", "",
             "| inputs | k, B_q | rule | key recall | mass recall | key recall, bf16 vs float32 operands |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, qi, ki, wi, doc, cfg in indexer_cases(a.run, a.packs, a.sizes):
        res = recall(qi, ki, wi, doc, cfg)
        for rule, (kr, mr, kb) in res.items():
            line = f"| {label} | {cfg.topk}, {cfg.block_q} | {rule} | {stats(kr)} | {stats(mr)} | {stats(kb)} |"
            lines.append(line)
            print(line, flush=True)
    finish(lines, t0, a.out)


if __name__ == "__main__":
    main()
