"""DSA selection quality on a trained indexer: how much of each query's own top-k indexer mass the
block selection rules keep, on a trained model's indexer outputs for real packs (CPU is enough).

    python tests/bench/bench_indexer_quality.py [--run runs/demo/train[:STEP]] [--run OTHER_RUN] \\
        [--packs held-out|all|1,4,6]

Loads `longshot train` runs' checkpoints (the first run's stored config gives the model), and a freshly
initialised model of the same config and seed (the run's own step-0 weights: the same RNG streams
build it), runs both forward without gradients on packs of the run's data (by default the packs
its steps never read), and captures every DSA layer's indexer outputs (q_I, k_I, w) with a forward
hook, plus the pack's cu_seqlens. Per layer it runs bench_dsa.quality_vectors on them, with the
documents of the pack (a query's top-k, its softmax and the selection range over its own
document's earlier keys, as model.dsa.plan.build_plan does), for the rules of bench_dsa.QUALITY_RULES,
and pools the per-query kept shares over the packs: mean, 5th percentile, min, and the share of
queries that keep none of their own top-k mass. Queries are counted only in blocks with more than
k candidates (elsewhere every rule keeps everything); queries of documents of >= LONG_DOC tokens
are also reported on their own.

Context printed with it, per layer and model: the indexer's own top-k share of its softmax mass
(how peaked it is), how far back its own top-k keys lie, its dense KL to the head-mean attention
(the warm-up objective; a second forward in the warm-up stage), and the LM loss on the same packs.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dsa import QUALITY_RULES, quality_vectors  # noqa: E402
from indexer_inputs import finish  # noqa: E402

LONG_DOC = 512  # queries of documents at least this long are also reported on their own


def rule_name(agg, coarse):
    return agg + (f"+coarse{coarse}" if coarse else "")


def load_models(runs: list[tuple[Path, int | None]]):
    """(untrained model, [(label, trained model)], session of the first run). Every model has the
    first run's config; the untrained one is built first after its seed, as the run built its own."""
    from jobs.checkpoint import Checkpoints
    from jobs.steps.train_loop import _Session, stored_config
    from model.build import build_vlm
    from model.training import configure_core

    cfg = stored_config(runs[0][0])
    s = _Session(cfg, runs[0][0], workers=0)  # init_megatron(seed): the RNG state the run built its model in
    configure_core(s.core, "sparse", s.model_cfg.lm.dsa, s.on_gpu)
    fresh = build_vlm(s.model_cfg, s.pg, s.core, s.opts)  # first model built after the seed: the run's init
    fresh.eval()
    trained = []
    for run_dir, step in runs:
        other = stored_config(run_dir)
        if (other.preset, other.model_overrides, other.dsa, other.seed) != (cfg.preset, cfg.model_overrides, cfg.dsa,
                                                                           cfg.seed):
            raise SystemExit(f"{run_dir}: another model config or seed than {runs[0][0]}")
        ckpts = Checkpoints(run_dir)
        step = step or ckpts.latest()
        if not step:
            raise SystemExit(f"{run_dir}: no checkpoint")
        m = build_vlm(s.model_cfg, s.pg, s.core, s.opts)
        m.load_state_dict(ckpts.load_model_only(ckpts.path(step), m.sharded_state_dict()))
        m.eval()
        trained.append((f"{run_dir.parent.name}/{run_dir.name} step {step}", m, other, step))
    return fresh, trained, s


class Capture:
    """Forward hooks on every attention module that has an indexer: its cu_seqlens and the indexer's outputs."""

    def __init__(self, model):
        from model.attention import PackedSelfAttention

        self.layers: dict[str, dict] = {}
        self.modules: dict[str, object] = {}
        self.handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, PackedSelfAttention) and mod.indexer is not None:
                self.modules[name] = mod
                self.handles.append(mod.register_forward_pre_hook(self._pre(name), with_kwargs=True))
                self.handles.append(mod.indexer.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(mod, args, kwargs):
            self.layers.setdefault(name, {})["cu"] = kwargs["packed_seq_params"].cu_seqlens_q.detach().cpu()
        return hook

    def _post(self, name):
        def hook(mod, args, out):
            self.layers.setdefault(name, {})["idx"] = tuple(x.detach().float().cpu() for x in out)
        return hook

    def losses(self):
        return {n: float(m.indexer_loss) for n, m in self.modules.items() if m.indexer_loss is not None}

    def close(self):
        for h in self.handles:
            h.remove()


def topk_mass(qi, ki, wi, doc, k):
    """Per query: softmax mass of its own top-k over its visible keys, and the median distance
    (query position - key position) of those top-k keys."""
    from model.dsa.reference import index_logits

    t = qi.shape[0]
    pos = torch.arange(t)
    lg = index_logits(qi, wi, ki)  # [T, T]
    vis = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= doc[:, None])
    p = torch.softmax(lg.masked_fill(~vis, float("-inf")), -1)
    top = p.topk(k, dim=-1)  # of a masked softmax: zeros beyond the visible keys
    return top.values.sum(-1), (pos[:, None] - top.indices).float().median(-1).values


def counted_rows(doc, k, bq):
    """Rows quality_vectors counts: blocks (aligned to the document start) with more than k candidates."""
    pos = torch.arange(doc.numel())
    bstart = ((pos - doc) // bq) * bq  # candidates of the row's block: its document's keys before the block
    return bstart + 1 > k


def doc_lengths(cu, t):
    cu = cu.long()
    ln = cu[1:] - cu[:-1]
    return ln[torch.searchsorted(cu, torch.arange(t), right=True) - 1]


def measure(model, packs, ids, dsa_cfg, stage_core):
    """Per layer: pooled per-query kept shares per rule, top-k mass, long-doc mask; plus KL and CE."""
    from model.dsa.plan import doc_starts_from_cu_seqlens
    from model.training import configure_core

    core, settings, on_gpu = stage_core
    cap = Capture(model)
    k, bq = dsa_cfg.topk, dsa_cfg.block_q
    kept: dict[str, dict[str, list]] = {}
    mass: dict[str, list] = {}
    dist: dict[str, list] = {}
    long_rows: dict[str, list] = {}
    kl: dict[str, list] = {}
    ce, n_lab, n_q, n_tok = 0.0, 0, 0, 0
    try:
        for i in ids:
            batch = packs[i]
            with torch.no_grad():
                configure_core(core, "warmup", settings, on_gpu)  # dense attention: KL over every visible key
                model(batch)
                for name, v in cap.losses().items():
                    kl.setdefault(name, []).append(v)
                configure_core(core, "sparse", settings, on_gpu)  # how the trained model runs
                cap.layers.clear()
                out = model(batch)
            ce += float(out.ce) * out.n_labels
            n_lab += out.n_labels
            n_tok += int(batch.input_ids.numel())
            for name, got in cap.layers.items():
                qi, ki, wi = got["idx"]
                t = qi.shape[0]
                doc = doc_starts_from_cu_seqlens(got["cu"], t)
                per = quality_vectors(k=k, bq=bq, rules=QUALITY_RULES, indexer=(qi, ki, wi), doc=doc, per_query=True)
                rows = counted_rows(doc.long(), k, bq)
                for rule, v in per.items():
                    assert v.numel() == int(rows.sum()), (rule, v.numel(), int(rows.sum()))
                    kept.setdefault(name, {}).setdefault(rule, []).append(v)
                tm, td = topk_mass(qi, ki, wi, doc.long(), k)
                mass.setdefault(name, []).append(tm[rows])
                dist.setdefault(name, []).append(td[rows])
                long_rows.setdefault(name, []).append(doc_lengths(got["cu"], t)[rows] >= LONG_DOC)
            n_q += int(rows.sum())
    finally:
        cap.close()
    n_layers = max(1, len(kept))
    return {"kept": {n: {r: torch.cat(v) for r, v in d.items()} for n, d in kept.items()},
            "mass": {n: torch.cat(v) for n, v in mass.items()},
            "dist": {n: torch.cat(v) for n, v in dist.items()},
            "long": {n: torch.cat(v) for n, v in long_rows.items()},
            "kl": {n: sum(v) / len(v) for n, v in kl.items()},
            "ce": ce / max(n_lab, 1), "queries": n_q // n_layers, "tokens": n_tok}


def stats(v):
    """mean, 5th percentile, min, and the share of queries that keep none of their top-k mass."""
    if v.numel() == 0:
        return (float("nan"),) * 4
    return v.mean().item(), v.quantile(0.05).item(), v.min().item(), (v == 0).float().mean().item()


def short_layer(name):
    # "language.decoder.layers.0.self_attention" -> "0"
    parts = name.split(".")
    return parts[parts.index("layers") + 1] if "layers" in parts else name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", default=[],
                    help="a training run folder, optionally RUN:STEP (default: the latest checkpoint); repeat to "
                         "compare checkpoints. The first run's config, seed and data are used.")
    ap.add_argument("--packs", default="held-out", help="held-out (packs no step of the first run read), all, or 1,4,6")
    ap.add_argument("--max-packs", type=int, default=0, help="use at most this many of them (0 = all)")
    ap.add_argument("--out", default="", help="also write the markdown here")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t_start = time.time()
    runs = []
    for r in a.run or [os.path.join(ROOT, "runs", "demo", "train")]:
        path, _, step = r.partition(":")
        runs.append((Path(path), int(step) if step else None))
    fresh, trained, s = load_models(runs)
    packs = s.packs()
    cfg = s.cfg
    if a.packs == "all":
        ids = list(range(len(packs)))
    elif a.packs == "held-out":
        from jobs.steps.train_data import pack_order

        seen = set(pack_order(len(packs), cfg.seed, 0, cfg.steps * s.dp))
        ids = [i for i in range(len(packs)) if i not in seen]
    else:
        ids = [int(x) for x in a.packs.split(",") if x]
    if a.max_packs:
        ids = ids[:a.max_packs]
    dsa = s.core.dsa
    stage_core = (s.core, s.model_cfg.lm.dsa, s.on_gpu)
    models = [(label, m) for label, m, _, _ in trained] + [("untrained", fresh)]
    res = {}
    for label, model in models:
        t0 = time.time()
        res[label] = measure(model, packs, ids, dsa, stage_core)
        print(f"{label}: {time.time() - t0:.1f} s, {res[label]['queries']} counted queries per layer, "
              f"{res[label]['tokens']} tokens, LM loss {res[label]['ce']:.4f}", flush=True)
    labels = [label for label, _ in models]
    first = res[labels[0]]
    layers = sorted(first["kept"], key=lambda n: int(short_layer(n)) if short_layer(n).isdigit() else 0)
    n_long = int(first["long"][layers[0]].sum())
    desc = "; ".join(f"{label}: {c.steps} steps, DSA warm-up {c.dsa_warmup_steps}, lr {c.optim.get('lr')}"
                     + (f", from {c.init_from}" if c.init_from else "") for label, _, c, _ in trained)
    lines = [(
        f"Preset {cfg.preset}; k = {dsa.topk}, B_q = {dsa.block_q}, indexer {dsa.index_heads} x {dsa.index_dim}. "
        f"Checkpoints: {desc}. {len(ids)} packs {ids}, {first['tokens']} tokens; {first['queries']} counted "
        f"queries per layer ({n_long} in documents of >= {LONG_DOC} tokens). {datetime.date.today().isoformat()}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs.")]
    fmt = lambda x: "{:.4f} / {:.4f} / {:.4f} / {:.3f}".format(*x)  # noqa: E731
    for title, sub in (("all counted queries", None), (f"queries in documents of >= {LONG_DOC} tokens", "long")):
        lines += ["", f"Kept share, {title} (mean / p5 / min / share of queries keeping none of it):", "",
                  "| layer | rule | " + " | ".join(labels) + " |", "| --- | --- |" + " --- |" * len(labels)]
        for n in layers:
            for agg, coarse in QUALITY_RULES:
                r = rule_name(agg, coarse)
                cells = []
                for label in labels:
                    v = res[label]["kept"][n][r]
                    cells.append(fmt(stats(v if sub is None else v[res[label]["long"][n]])))
                lines.append(f"| {short_layer(n)} | {r} | " + " | ".join(cells) + " |")
    lines += ["", (f"| layer | model | own top-{dsa.topk} share of indexer mass (mean, all / docs >= {LONG_DOC}) "
                   f"| distance to own top-{dsa.topk} keys (median of per-query medians, all / docs >= {LONG_DOC}) "
                   "| dense KL(head-mean attention \\|\\| indexer), mean over packs |"),
              "| --- | --- | --- | --- | --- |"]
    for n in layers:
        for label in labels:
            r = res[label]
            m = r["mass"][n]
            d, lg = r["dist"][n], r["long"][n]
            lines.append(f"| {short_layer(n)} | {label} | {m.mean().item():.4f} / {m[lg].mean().item():.4f} "
                         f"| {d.median().item():.0f} / {d[lg].median().item():.0f} "
                         f"| {r['kl'].get(n, float('nan')):.4f} |")
    lines += ["", "LM loss on these packs (sparse stage): " + ", ".join(f"{label} {res[label]['ce']:.4f}"
                                                                        for label in labels)
              + "."]
    finish(lines, t_start, a.out)


if __name__ == "__main__":
    main()
