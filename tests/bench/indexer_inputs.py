"""Indexer inputs for the CPU benches that study DSA selections (bench_fp8_indexer.py,
bench_token_bytes.py): a trained run's indexer outputs on its real packs, and the video-structured
synthetic indexer at the production shape; and the common ending of such a bench (print the
markdown, keep it with --out)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from model.dsa import DSAConfig
from model.dsa.plan import doc_starts_from_cu_seqlens

# the production indexer shape of bench_dsa.py
PRODUCTION = DSAConfig(index_heads=8, index_dim=64, topk=2048, block_q=64)


def trained_inputs(run: str, packs: str):
    """[(label, q_I, k_I, w, doc)] per DSA layer and pack of a trained run (RUN[:STEP]) in its
    sparse stage, and the run's DSAConfig; ``packs``: comma-separated indices (default 0, 1)."""
    from bench_indexer_quality import Capture, load_models

    from model.training import configure_core

    path, _, step = run.partition(":")
    _, trained, s = load_models([(Path(path), int(step) if step else None)])
    label, model, _, step = trained[0]
    cap = Capture(model)
    all_packs = s.packs()
    ids = [int(x) for x in packs.split(",") if x] if packs else list(range(min(2, len(all_packs))))
    res = []
    configure_core(s.core, "sparse", s.model_cfg.lm.dsa, s.on_gpu)
    try:
        for i in ids:
            cap.layers.clear()
            with torch.no_grad():
                model(all_packs[i])
            for name, got in cap.layers.items():
                qi, ki, wi = got["idx"]
                res.append((f"{label} pack {i} layer {name.split('layers.')[-1].split('.')[0]}", qi, ki, wi,
                            doc_starts_from_cu_seqlens(got["cu"], qi.shape[0])))
    finally:
        cap.close()
    return res, s.core.dsa


def cases(run: str, packs: str, sizes: str, synthetic_cfg: DSAConfig = PRODUCTION):
    """[(label, q_I, k_I, w, doc, DSAConfig)]: the run's layers and packs if the run exists (``run``
    '' skips it), then one synthetic video-structured document per size in ``sizes``."""
    from bench_dsa import video_indexer

    out = []
    if run and Path(run.partition(":")[0]).exists():
        inputs, cfg = trained_inputs(run, packs)
        out += [(label, qi, ki, wi, doc, cfg) for label, qi, ki, wi, doc in inputs]
    for t in (int(s) for s in sizes.split(",") if s):
        qi, ki, wi = video_indexer(t, 256, gen=torch.Generator().manual_seed(t))
        out.append((f"video-structured synthetic, T={t}", qi, ki, wi, torch.zeros(t, dtype=torch.int32),
                    synthetic_cfg))
    return out


def finish(lines: list[str], t0: float, out: str = "") -> None:
    """Print the bench's markdown with its wall time; also write it to ``out`` when given."""
    text = "\n".join(lines + ["", f"Wall time {time.time() - t0:.0f} s."])
    print(text)
    if out:
        Path(out).write_text(text + "\n")
