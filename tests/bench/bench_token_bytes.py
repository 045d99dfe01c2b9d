"""Token-mode DSA: the bytes each way of walking the selection moves, counted on real selections
(CPU is enough: this counts, it does not time).

    python tests/bench/bench_token_bytes.py [--run runs/demo/train[:STEP]] [--sizes 8192,16384] [--merge 1,2,4,8,16]

Token mode gives every query its own top-k, so the forward kernel gathers k key and value rows
per query (one program per query, its KV group's heads sharing each row). Issue 19 asks which of
two orders moves fewer bytes:

- merged queries: a program takes m neighbouring queries (same document), loads the union of
  their selections once and masks each query's row to its own keys. Bytes: sum over groups of
  |union| rows; the dots then also run on the masked pairs: FLOPs grow by m |union| / sum |S_q|.
- KV-outer: a program takes a tile of BN consecutive keys and every query that selected one of
  them; K and V are read once, but each (tile, query) pair reads the query's rows and writes a
  float32 partial output and its log-sum-exp, merged in a second pass.

Per-row bytes, bf16, per KV head (so the table's ratios hold for any head count), forward:
key + value rows 2 x D x 2; a query's G heads of q 2 G D, of a partial output 4 G D + 4 G.
The backward (a second table) reads the same key and value rows and adds each row's dK, dV into
float32 buffers, 2 x D x 4 more bytes a row, and reads q, dO and writes dQ, 3 x 2 G D a query; a
merged group adds once per union row (DSAConfig.token_merge_backward runs only the backward so).
Selections: model/dsa/reference.py's token rule on the inputs of bench_fp8_indexer (a trained
run's indexer on its packs, bench_dsa.video_indexer's synthetic video-structured inputs).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from indexer_inputs import cases as indexer_cases  # noqa: E402
from indexer_inputs import finish  # noqa: E402

from model.dsa import DSAConfig  # noqa: E402
from model.dsa import reference as ref  # noqa: E402
from model.dsa.plan import build_plan  # noqa: E402

D, G, BN = 128, 8, 64  # head dim, query heads per KV head, keys per KV-outer tile


def groups_of(doc: torch.Tensor, m: int) -> torch.Tensor:
    """Group id of each query: runs of m consecutive queries, never across a document start."""
    t = doc.numel()
    pos = torch.arange(t)
    start = torch.ones(t, dtype=torch.bool)
    start[1:] = (doc[1:] != doc[:-1]) | ((pos[1:] - doc[1:].long()) % m == 0)
    return torch.cumsum(start.long(), 0) - 1


def byte_counts(sel: torch.Tensor, doc: torch.Tensor, merges: list[int]) -> dict:
    """{'per_query': bytes, ('merged', m): (bytes, flop ratio), 'kv_outer': bytes} for one KV head."""
    t, k = sel.shape
    valid = sel >= 0
    pairs = int(valid.sum())
    kv_row = 2 * D * 2
    bwd_row, bwd_query = kv_row + 2 * D * 4, 3 * 2 * G * D  # + float32 dK, dV adds; q, dO, dQ
    out = {"per_query": pairs * kv_row + t * 2 * G * D * 2, "pairs": pairs,
           "bwd_per_query": pairs * bwd_row + t * bwd_query}
    rows = torch.arange(t)[:, None].expand(t, k)[valid]
    keys = sel[valid].long()
    for m in merges:
        grp = groups_of(doc, m)[rows]
        union = torch.unique(grp * t + keys).numel()
        out[("merged", m)] = (union * kv_row + t * 2 * G * D * 2, m * union / pairs if m > 1 else 1.0)
        out[("bwd_merged", m)] = union * bwd_row + t * bwd_query
    tile_query = torch.unique((keys // BN) * t + rows).numel()  # (key tile, query) pairs
    n_tiles = torch.unique(keys // BN).numel()
    out["kv_outer"] = n_tiles * BN * kv_row + tile_query * (2 * G * D + 4 * G * D + 4 * G) + t * 2 * G * D * 2
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=os.path.join(ROOT, "runs", "demo", "train"), help="RUN[:STEP]; '' to skip")
    ap.add_argument("--packs", default="")
    ap.add_argument("--sizes", default="8192,16384")
    ap.add_argument("--merge", default="1,2,4,8,16")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))))
    merges = [int(m) for m in a.merge.split(",")]
    t0 = time.time()
    head = ["per query"] + [f"merged m={m}" for m in merges if m > 1] + ["KV-outer"]
    lines = [f"Token-mode forward bytes per KV head (G = {G}, D = {D}, KV tile {BN}); {datetime.date.today()}, "
             f"torch {torch.__version__}. Cells: GB, and for merged groups the FLOP ratio to per-query.", "",
             "| inputs | k | pairs / query | " + " | ".join(head) + " |", "| --- | --- | --- |" + " --- |" * len(head)]
    bwd = ["", "Backward bytes per KV head (GB; the float32 dK, dV adds included), and per query against merged:",
           "", "| inputs | k | per query | " + " | ".join(head[1:-1]) + " |", "| --- | --- | --- |" + " --- |" *
           (len(head) - 2)]
    for label, qi, ki, wi, doc, cfg in indexer_cases(a.run, a.packs, a.sizes):
        cfg = DSAConfig(**{**cfg.__dict__, "granularity": "token", "stage": "sparse"})
        t = qi.shape[0]
        plan = build_plan(torch.arange(t, dtype=torch.int32), doc.to(torch.int32), cfg, dense=False)
        sel, _ = ref.select(qi.float(), ki.float(), wi.float(), plan, cfg)
        c = byte_counts(sel, doc, merges)
        cells = [f"{c['per_query'] / 1e9:.3f}"]
        cells += [f"{c[('merged', m)][0] / 1e9:.3f} (x{c[('merged', m)][1]:.2f} FLOP)" for m in merges if m > 1]
        cells.append(f"{c['kv_outer'] / 1e9:.3f}")
        line = f"| {label} | {cfg.topk} | {c['pairs'] / t:.0f} | " + " | ".join(cells) + " |"
        lines.append(line)
        print(line, flush=True)
        b = c["bwd_per_query"]
        merged = [c[("bwd_merged", m)] for m in merges if m > 1]
        bwd.append(f"| {label} | {cfg.topk} | {b / 1e9:.3f} | "
                   + " | ".join(f"{x / 1e9:.3f} ({b / x:.1f}x fewer)" for x in merged) + " |")
        print(bwd[-1], flush=True)
    finish(lines + bwd, t0, a.out)


if __name__ == "__main__":
    main()
