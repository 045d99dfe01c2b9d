"""Block-mode DSA: how densely real selections fill key tiles, which decides whether the backward's
key order (model/dsa/key_tiles.py, kernels/attention_dkdv.py) can pay (CPU is enough: this counts,
it does not time).

    python tests/bench/bench_key_tiles.py [--run runs/demo/train[:STEP]] [--sizes 8192,16384] [--bn 64]

The key-order kernel computes whole tiles of BN keys for every owner that attends any key of the
tile, so its dK/dV dots run on attended / density (query, key) pairs. Per attended pair the query
order runs 5 dots (S, dP, dV, dK, dQ) and adds dK, dV with float32 atomics; the key order runs 3 in
the dQ pass and 4 / density in the tile pass, with no atomics: dot work x (3 + 4 / density) / 5.
Tiles attended by many owners are split into chunks of ``--max-pairs`` owners (one program each);
the table shows how uneven the tiles are (owners of the busiest tile against the mean).
Selections: model/dsa/reference.py's block rule (the run's or the production DSAConfig) on the
inputs of bench_fp8_indexer (a trained run's indexer on its packs, bench_dsa.video_indexer's
synthetic video-structured inputs).
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
from model.dsa.key_tiles import key_tiles  # noqa: E402
from model.dsa.plan import build_plan  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=os.path.join(ROOT, "runs", "demo", "train"), help="RUN[:STEP]; '' to skip")
    ap.add_argument("--packs", default="")
    ap.add_argument("--sizes", default="8192,16384")
    ap.add_argument("--bn", type=int, default=64)
    ap.add_argument("--max-pairs", type=int, default=32)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))))
    t0 = time.time()
    lines = [f"Block-mode selections in key tiles of {a.bn} keys, chunks of <= {a.max_pairs} owners; "
             f"{datetime.date.today()}, torch {torch.__version__}.", "",
             "| inputs | T | k | B_q | owners | (tile, owner) pairs | owners per tile, mean / max | chunks | "
             "density | key-order dots / query-order dots |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, qi, ki, wi, doc, cfg in indexer_cases(a.run, a.packs, a.sizes):
        cfg = DSAConfig(**{**cfg.__dict__, "granularity": "block", "stage": "sparse"})
        t = qi.shape[0]
        plan = build_plan(torch.arange(t, dtype=torch.int32), doc.to(torch.int32), cfg, dense=False)
        sel, sel_n = ref.select(qi.float(), ki.float(), wi.float(), plan, cfg)
        tiles = key_tiles(plan, sel, sel_n, t, a.bn, a.max_pairs)
        per_tile = torch.bincount(tiles.chunk_tile.long(), weights=(tiles.chunk_hi - tiles.chunk_lo).double(),
                                  minlength=tiles.n_tiles)
        busy = per_tile[per_tile > 0]
        ratio = (3 + 4 / tiles.density) / 5
        line = (f"| {label} | {t:,} | {cfg.topk} | {cfg.block_q} | {plan.n_owners:,} | {tiles.pair_owner.numel():,} | "
                f"{float(busy.mean()):.1f} / {int(busy.max())} | {tiles.n_chunks:,} | {tiles.density:.3f} | "
                f"{ratio:.2f} |")
        lines.append(line)
        print(line, flush=True)
    finish(lines, t0, a.out)


if __name__ == "__main__":
    main()
