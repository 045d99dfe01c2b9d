"""Selection recall of a trained model on real packs, per layer: the share of each query's dense
attention mass (summed over heads) that the keys DSA lets it attend hold, token vs block.

    python tests/bench/bench_selection_recall.py --checkpoint RUN_OR_ITER --data DATA \\
        --packs DATA/packs128k [--max-packs 2] [--rules max+coarse2,max,sum,pooled] [--out recall.md]
    python tests/bench/bench_selection_recall.py --checkpoint RUN_OR_ITER --synthetic 2 --seq-len 16384 \\
        --synthetic-text recall --loss-rows      # the synthetic packs `longshot train --synthetic` reads

The model runs forward with dense attention on each pack; a hook on every LM attention layer
takes the layer's q and k (after norm and rotary), its indexer's outputs and the pack's
cu_seqlens, and model/dsa/recall.py computes each query's recall under token selection and
under block selection (one row per block rule given). Reported per layer and over all layers:
mean and 5th percentile over the queries with more than k visible keys (elsewhere every rule
keeps everything). Also reported: the worst head, per query the smallest share any single head
keeps of its own mass, averaged. A head that copies from far back attends one key; losing it costs
that head everything and the head sum only 1/Hq. ``--loss-rows`` counts only the queries whose next
token carries the loss. Then the loss (CE) of the same weights on the same packs with dense attention
and under each rule's sparse attention: the recall says what a rule keeps, the loss what that costs.
``--topk`` measures other k than the model's own; a k of a whole document is the control, where
every rule must give the dense loss. On a GPU the selection is the Triton path's, on the CPU the reference's.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rule_config(base, rule: str):
    """'token', or a block rule 'max', 'sum', 'pooled', 'max+coarse2'."""
    from jobs.steps.eval_model import block_rule_fields

    if rule == "token":
        return replace(base, granularity="token")
    return replace(base, granularity="block", **block_rule_fields(rule))


class RecallHooks:
    """On every sparse LM attention layer: recall of each rule, computed inside the layer's forward."""

    def __init__(self, model, rules: dict, backend: str, chunk_elems: int):
        from model.dsa.recall import selection_recall

        self.shares: dict[int, dict[str, list]] = {}
        self.worst: dict[int, dict[str, list]] = {}  # per query, the smallest share of one head
        self.selective: dict[int, dict[str, list]] = {}  # per rule: its k decides
        self.spread: dict[int, list] = {}  # per query and head, keys covered (one rule's pass is enough)
        self.restore = []
        for mod in sparse_layers(model):
            i = mod.layer_number - 1
            core = mod._core

            def wrapped(q, k, v, cu, hidden, cos, sin, i=i, mod=mod, core=core):
                qi, ki, wi = mod.indexer(hidden.detach(), cos, sin)
                for name, cfg in rules.items():
                    r = selection_recall(q, k, qi, ki, wi, cu, cfg, backend=backend, chunk_elems=chunk_elems)
                    self.shares.setdefault(i, {}).setdefault(name, []).append(r.share.cpu())
                    self.worst.setdefault(i, {}).setdefault(name, []).append(r.head_share.min(1).values.cpu())
                    self.selective.setdefault(i, {}).setdefault(name, []).append(r.selective.cpu())
                    if name == next(iter(rules)):
                        self.spread.setdefault(i, []).append(r.spread.cpu())
                return core(q, k, v, cu, hidden, cos, sin)

            mod._core = wrapped
            self.restore.append(mod)

    def close(self):
        for mod in self.restore:
            del mod._core  # back to the class's method


def sparse_layers(model) -> list:
    """The LM attention layers that run DSA (not those of DSASettings.dense_layers)."""
    from model.attention import PackedSelfAttention

    return [m for m in model.language.modules() if isinstance(m, PackedSelfAttention) and m.sparse]


def mean_ce(em, packs, n: int) -> float:
    total = labels = 0.0
    with torch.no_grad():
        for i in range(n):
            res = em.model(packs[i].to(em.device))
            total += float(res.ce) * int(res.n_labels)
            labels += int(res.n_labels)
    return total / max(labels, 1)


def arm_losses(em, packs, n: int, rules: dict) -> dict[str, float]:
    """CE of the same weights under each rule's sparse attention: what the selection costs the
    loss, next to what it keeps of the attention (a low recall that costs nothing is a head the
    model does not need; a k that sees every key must give the dense loss)."""
    out = {}
    for arm, cfg in rules.items():
        em.set_arm(cfg.granularity)
        em.core.dsa = cfg
        out[arm] = mean_ce(em, packs, n)
    em.set_arm("dense")
    return out


def layer_losses(em, packs, n: int, cfg, keep_dense: list[tuple[int, ...]]) -> dict[str, float]:
    """CE with ``cfg``'s sparse attention in one LM layer at a time (dense in all others), and in
    all layers but those of each ``keep_dense`` set: which layers' selection costs the loss, and
    what keeping them dense (DSASettings.dense_layers) would give back."""
    layers = sparse_layers(em.model)
    em.set_arm(cfg.granularity)
    em.core.dsa = cfg
    out = {}
    try:
        for mod in layers:
            for other in layers:
                other.sparse = other is mod
            out[f"layer {mod.layer_number - 1} only"] = mean_ce(em, packs, n)
        for dense in keep_dense:
            for mod in layers:
                mod.sparse = mod.layer_number - 1 not in dense
            out[f"all but {','.join(map(str, dense))}"] = mean_ce(em, packs, n)
    finally:
        for mod in layers:
            mod.sparse = True
        em.set_arm("dense")
    return out


def stats(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return (float(v.mean()), float(torch.quantile(v, 0.05))) if v.numel() else (float("nan"), float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a run folder (its latest checkpoint) or iter_NNNNNNN")
    ap.add_argument("--data", help="the dataset of the packs")
    ap.add_argument("--packs", help="a pack plan (e.g. the dataset packed at 131072 tokens)")
    ap.add_argument("--synthetic", type=int, help="instead of --data/--packs: this many synthetic packs "
                    "(jobs/steps/train_data.py, as `longshot train --synthetic` makes them)")
    ap.add_argument("--seq-len", type=int, default=16384, help="of the synthetic packs")
    ap.add_argument("--synthetic-text", choices=["progression", "recall"], default="recall")
    ap.add_argument("--loss-rows", action="store_true", help="only the queries whose next token has a loss")
    ap.add_argument("--max-packs", type=int, default=2)
    ap.add_argument("--rules", default="max+coarse2,max,pooled", help="block rules to measure besides token")
    ap.add_argument("--topk", help="k values to measure instead of the model's own (comma-separated; a k "
                    "at least a document's length is the control: it must give the dense loss)")
    ap.add_argument("--per-layer", action="store_true", help="also the loss with the first block rule's "
                    "sparse attention in one layer at a time")
    ap.add_argument("--keep-dense", action="append", default=[], metavar="I,J",
                    help="with --per-layer: also the loss with these layers dense and the rest sparse "
                         "(repeatable)")
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args()
    from jobs.steps.eval_model import EvalModel, resolve_checkpoint
    from shards.load_patches import PatchGeometry
    from shards.loader import PackDataset

    t0 = time.time()
    em = EvalModel(resolve_checkpoint(a.checkpoint))
    em.set_arm("block")
    base = em.core.dsa  # the model's own DSA settings, as configure_core makes them
    em.set_arm("dense")
    ks = [int(k) for k in a.topk.split(",")] if a.topk else [base.topk]
    rules = {}
    for k in ks:
        at = replace(base, topk=k)
        tag = f" k{k}" if a.topk else ""
        rules[f"token{tag}"] = rule_config(at, "token")
        rules |= {f"block {r}{tag}": rule_config(at, r) for r in a.rules.split(",") if r}
    v = em.model_cfg.vision
    if a.synthetic:
        from jobs.steps.train_data import SyntheticPacks, SyntheticSpec

        packs = SyntheticPacks(SyntheticSpec(packs=a.synthetic, seq_len=a.seq_len, vocab=em.model_cfg.lm.vocab,
                                             vision_token_id=em.model_cfg.vision_token_id, text=a.synthetic_text))
        source = f"{a.synthetic} synthetic {a.synthetic_text} packs of {a.seq_len}"
    elif a.data and a.packs:
        packs = PackDataset(a.packs, a.data, vision_token_id=em.model_cfg.vision_token_id,
                            geometry=PatchGeometry(v.patch, v.temporal_patch, v.merge))
        source = str(a.packs)
    else:
        raise SystemExit("give --data and --packs, or --synthetic")
    rows = []  # per pack, the queries counted
    hooks = RecallHooks(em.model, rules, "triton" if em.on_gpu else "reference", 1 << 28 if em.on_gpu else 1 << 24)
    tokens = 0
    dense_sum = dense_labels = 0.0  # the recall pass is the dense arm's forward: its loss, kept
    try:
        for i in range(min(a.max_packs, len(packs))):
            batch = packs[i]
            tokens += batch.num_tokens
            rows.append((batch.labels != -100).flatten() if a.loss_rows
                        else torch.ones(batch.num_tokens, dtype=torch.bool))
            with torch.no_grad():
                res = em.model(batch.to(em.device))
            dense_sum += float(res.ce) * int(res.n_labels)
            dense_labels += int(res.n_labels)
            print(f"pack {i}: {batch.num_tokens} tokens, {time.time() - t0:.0f} s", flush=True)
    finally:
        hooks.close()
    ce = {"dense": dense_sum / max(dense_labels, 1)} | arm_losses(em, packs, min(a.max_packs, len(packs)), rules)
    lines = [(f"Checkpoint {em.folder} (stage {em.stage}); k = {base.topk}, B_q = {base.block_q}; "
             f"{min(a.max_packs, len(packs))} packs: {source}, {tokens} tokens"
             f"{', loss rows only' if a.loss_rows else ''}; "
             f"{datetime.date.today().isoformat()}, {torch.cuda.get_device_name() if em.on_gpu else 'CPU'}."),
             "", "Recall: mean / 5th percentile over queries with more than k visible keys; worst head: the "
             "mean over those queries of the smallest share one head keeps. Spread: the keys a head's dense "
             "attention covers (exp of its entropy), mean / most spread head, over the same queries.", "",
             "| layer | queries | spread | " + " | ".join(f"{r} | {r} worst head" for r in rules) + " |",
             "| --- | --- | --- |" + " --- | --- |" * len(rules)]
    pooled: dict[str, list] = {}
    worst: dict[str, list] = {}
    counted = torch.cat(rows)
    for layer in sorted(hooks.shares):
        cells = []
        for name in rules:
            sel = torch.cat(hooks.selective[layer][name]) & counted
            share = torch.cat(hooks.shares[layer][name])[sel]
            head = torch.cat(hooks.worst[layer][name])[sel]
            pooled.setdefault(name, []).append(share)
            worst.setdefault(name, []).append(head)
            cells.append("{:.4f} / {:.4f} | {:.4f}".format(*stats(share), stats(head)[0]))
        first = torch.cat(hooks.selective[layer][next(iter(rules))]) & counted  # the first k's queries
        spread = torch.cat(hooks.spread[layer])[first]
        lines.append(f"| {layer} | {int(first.sum())} | {spread.mean():.1f} / {spread.max(1).values.mean():.1f} | "
                     + " | ".join(cells) + " |")
    lines.append("| all | | | " + " | ".join("{:.4f} / {:.4f} | {:.4f}".format(
        *stats(torch.cat(pooled[n])), stats(torch.cat(worst[n]))[0]) for n in rules) + " |")
    lines += ["", "Loss of each arm on the same packs and weights (CE over the loss rows, packs pooled):", "",
              "| arm | CE | CE - dense |", "| --- | --- | --- |"]
    lines += [f"| {arm} | {v:.4f} | {v - ce['dense']:+.4f} |" for arm, v in ce.items()]
    if a.per_layer:
        first = next((n for n in rules if n.startswith("block")), next(iter(rules)))
        keep = [tuple(int(x) for x in v.split(",")) for v in a.keep_dense]
        per = layer_losses(em, packs, min(a.max_packs, len(packs)), rules[first], keep)
        lines += ["", f"{first} in some layers, dense attention in the others:", "",
                  "| sparse layers | CE | CE - dense |", "| --- | --- | --- |"]
        lines += [f"| {name} | {v:.4f} | {v - ce['dense']:+.4f} |" for name, v in per.items()]
    lines.append(f"\nWall time {time.time() - t0:.0f} s.")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))))
    main()
