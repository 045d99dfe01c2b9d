"""DSA continuation of an imported model on one GPU: dense warm-up of the indexer, then sparse,
against the same model continued dense.

    PYTHONUNBUFFERED=1 python tests/bench/bench_dsa_continuation.py [--out DIR] [--seq-len 16384]
        [--pretrain 60] [--warmup 20] [--sparse 40] [--topk 512,2048] [--granularity block,token]
    python tests/bench/bench_dsa_continuation.py --shape tiny --seq-len 512 --topk 16 \
        --pretrain 4 --warmup 2 --sparse 4          # a smoke run of the same path on the CPU

No download is possible on the GPU node, so the "pretrained" model is made here, the way a real
one arrives: a Qwen3-MoE checkpoint in Hugging Face format (the `small` preset's LM shape,
random bf16 weights, written by bench_import_hf.write_source), imported with `longshot
import-hf` (fresh DSA indexer, fresh ViT of the `small` preset), then trained densely for
--pretrain steps so that its attention is no longer the uniform attention of random weights.
The packs' answers are `recall` text by default (random ids, then the same ids again, the loss
on the repeat): predicting them needs attention half a document back, the keys sparse attention
must not lose (the `progression` answers of bench_train are learnt from the previous token and
memorised within ~30 steps, so they cannot separate dense from sparse).
From that checkpoint two runs of the same length, on the same synthetic packs in the same order:

- dense_TAG (TAG = wW_sS_lrLR: warm-up and sparse steps, the continuation's LR): `--attention dense`;
- dsa_kK[_RULE | _token][_denseI_J]_TAG, one per k of --topk and arm (each block rule of --block-rules, and token
  mode when --granularity names it; the first arm is dsa_kK_TAG): `--attention dsa --dsa-warmup-steps W
  --dsa-topk K --dsa-granularity G [--dsa-block-rule RULE]` (W steps train only the indexer on the
  dense attention it imitates, then the model trains on sparse attention).

At the switch (the checkpoint of step W) tests/bench/bench_selection_recall.py measures, on the
loss rows of the same synthetic packs, how much of each head's dense attention the selection keeps,
and the loss of the same weights under dense and under each sparse rule (`recall_at_switch.md` in
each DSA run, at the k values of --recall-topk), to tell a lost copy from a slow one.

Which k tests the indexer: a synthetic document puts its video first and its text after it, and
the recall copy sits half the text back. When k is at least the text's length, the most recent
k keys already hold every key the copy needs, so any indexer that favours nearby keys passes; a k
below half the text's length (512 at --seq-len 16384, where the text is 2,048 tokens a document)
passes only if the indexer finds the copied span among the earlier keys, video included.

Reported: per step the LM cross entropy of both runs; at the first sparse step and over the
sparse stage the difference dsa - dense (the issue's bar: within 0.1 nats), and the indexer KL.
Every run is the `longshot` CLI (import-hf, train --preset from-hf:DIR --init-from ...), so this
is the path a user takes. Writes results.json and a markdown table under --out. Run again with
the same --out after an interruption: finished steps are kept (the runs resume).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_import_hf import SHAPE, write_source

# The `small` preset's LM (model/presets.py) as a Qwen3-MoE config.
SMALL = {**SHAPE, "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 2,
         "head_dim": 128, "num_experts": 32, "num_experts_per_tok": 4, "moe_intermediate_size": 512}
# For a smoke run on the CPU (--shape tiny): the `tiny` preset's LM.
TINY = {**SHAPE, "vocab_size": 512, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
SHAPES = {"small": (SMALL, 12, 151656), "tiny": (TINY, 2, 7)}  # config, layers, vision token id
# Every run keeps one checkpoint (two in a DSA run: the switch's too), written every 200 steps: a
# checkpoint of the small shape is several GB, a device's disk holds about ten, and a call cut off
# by its time limit loses at most 200 steps of a run when the next call resumes it.
SAVE_EVERY = 200


def longshot(*args: str) -> None:
    cmd = [sys.executable, "-m", "jobs.cli", *args]
    print("$ longshot " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if res.returncode:
        raise SystemExit(f"longshot {args[0]} failed with exit {res.returncode}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def bench(script: str, *args: str) -> None:
    """Another script of tests/bench, in its own process."""
    print(f"$ python tests/bench/{script} " + " ".join(args), flush=True)
    subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / script), *args], cwd=ROOT, check=True)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_dsa_continuation"))
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--packs", type=int, default=64, help="synthetic packs (cycled)")
    ap.add_argument("--pretrain", type=int, default=60, help="dense steps after the import")
    ap.add_argument("--warmup", type=int, default=20, help="indexer-only steps")
    ap.add_argument("--sparse", type=int, default=40, help="sparse steps")
    ap.add_argument("--topk", default="2048", help="k of the DSA runs, comma-separated: one run each, "
                    "from the same pre-trained checkpoint, against the same dense run")
    ap.add_argument("--granularity", default="block", help="block, token, or both (comma-separated): one DSA "
                    "run each (block: one per rule of --block-rules)")
    ap.add_argument("--block-rules", default="max+coarse2", help="block rules (longshot train --dsa-block-rule), "
                    "comma-separated: one DSA run each per k")
    ap.add_argument("--warmup-lr", type=float, default=None, help="peak LR of the indexer warm-up "
                    "(longshot train --dsa-warmup-lr; default: the continuation's LR)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--continue-lr", type=float, default=None,
                    help="peak LR of the two continuations (default --lr); a continuation restarts its "
                         "schedule, so at the pre-training's peak the dense baseline itself is disturbed")
    ap.add_argument("--recall-topk", help="k values of the recall and loss table at the switch (default: the "
                    "run's own k); a k of a whole document is the control that must give the dense loss")
    ap.add_argument("--dense-layers", metavar="I,J", help="LM layers that stay dense in the DSA runs "
                    "(longshot train --dsa-dense-layers)")
    ap.add_argument("--keep-dense", action="append", default=[], metavar="I,J",
                    help="at the switch, also the loss with these layers dense (repeatable; no training)")
    ap.add_argument("--shape", choices=list(SHAPES), default="small", help="tiny: a CPU smoke run")
    ap.add_argument("--layers", type=int, help="LM layers (default: the shape's); copying needs two, and "
                    "fewer layers fit pre-training and every continuation into one device call")
    ap.add_argument("--text", choices=["recall", "progression"], default="recall",
                    help="synthetic answers: recall (random ids repeated: long-range attention) or "
                         "progression (learnt from the previous token; memorised quickly)")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    src, init = out / "hf_source", out / "init"
    shape, layers, vision_token = SHAPES[args.shape]
    layers = args.layers or layers
    if not (src / "config.json").exists():
        write_source(src, layers, shape)
    if not init.exists():
        longshot("import-hf", "--from", str(src), "--out", str(init), "--vision-preset", args.shape,
                 "--vision-token-id", str(vision_token))
    common = ["--preset", f"from-hf:{init}", "--synthetic", str(args.packs), "--seq-len", str(args.seq_len),
              "--synthetic-text", args.text, "--lr-warmup-steps", "5", "--workers", "0"]
    pre = out / "pretrain"
    longshot("train", "--run", str(pre), "--init-from", str(init), "--attention", "dense",
             "--steps", str(args.pretrain), "--save-every", str(SAVE_EVERY), "--keep", "1", "--lr", str(args.lr),
             *common)
    common += ["--lr", str(args.continue_lr or args.lr)]
    steps = args.warmup + args.sparse
    topks = [int(k) for k in str(args.topk).split(",")]
    grans = args.granularity.split(",")
    if not set(grans) <= {"block", "token"}:
        raise SystemExit(f"--granularity {args.granularity!r}: block, token or block,token")
    arms = [(g, r) for g in grans for r in (args.block_rules.split(",") if g == "block" else [""])]
    # one --out holds arms of other warm-up or sparse lengths and LRs, each against its own dense run
    tag = f"w{args.warmup}_s{args.sparse}_lr{args.continue_lr or args.lr:g}"
    dense_run = out / f"dense_{tag}"
    longshot("train", "--run", str(dense_run), "--init-from", str(pre), "--steps", str(steps),
             "--save-every", str(SAVE_EVERY), "--keep", "1", "--attention", "dense", *common)
    dsa_runs = {}
    for k in topks:
        for i, (gran, rule) in enumerate(arms):
            name = f"dsa_k{k}" + (f"_{rule.replace('+', '_') or gran}" if i else "") \
                + (f"_dense{args.dense_layers.replace(',', '_')}" if args.dense_layers else "") \
                + f"_{tag}"
            dsa_runs[name] = (k, gran, rule)
            extra = ["--attention", "dsa", "--dsa-warmup-steps", str(args.warmup), "--dsa-topk", str(k),
                     "--dsa-granularity", gran] + (["--dsa-block-rule", rule] if rule else []) \
                + (["--dsa-dense-layers", args.dense_layers] if args.dense_layers else [])
            if args.warmup_lr is not None:
                extra += ["--dsa-warmup-lr", str(args.warmup_lr)]
            # train keeps the checkpoint at the switch (step W) for the recall measurement
            longshot("train", "--run", str(out / name), "--init-from", str(pre), "--steps", str(steps),
                     "--save-every", str(SAVE_EVERY), "--keep", "1", *extra, *common)
            recall = out / name / "recall_at_switch.md"
            if not recall.exists():
                bench("bench_selection_recall.py", "--checkpoint",
                      str(out / name / "checkpoints" / f"iter_{args.warmup:07d}"), "--synthetic", "2",
                      "--seq-len", str(args.seq_len), "--synthetic-text", args.text, "--loss-rows",
                      "--per-layer", "--rules", rule or "max+coarse2", "--out", str(recall),
                      *(["--topk", args.recall_topk] if args.recall_topk else []),
                      *[x for d in args.keep_dense for x in ("--keep-dense", d)])
    dense = metrics(dense_run)
    result = {"pretrain_final_ce": metrics(pre)[-1]["ce"], "args": vars(args) | {"out": str(out)}, "runs": {}}
    for n, (name, (k, gran, rule)) in enumerate(dsa_runs.items()):
        rows = [{"step": d["step"], "stage": s["stage"], "dense_ce": d["ce"], "dsa_ce": s["ce"],
                 "diff": s["ce"] - d["ce"], "indexer_kl": s["indexer"], "dsa_tok_s": s["tokens_per_s"],
                 "dense_tok_s": d["tokens_per_s"]} for d, s in zip(dense, metrics(out / name), strict=True)]
        after = [r for r in rows if r["stage"] == "sparse"]
        summary = {"run": name, "topk": k, "granularity": gran, "block_rule": rule,
                   "first_sparse_step": after[0]["step"],
                   "diff_at_switch": after[0]["diff"],
                   "mean_diff_sparse": sum(r["diff"] for r in after) / len(after),
                   "max_abs_diff_sparse": max(abs(r["diff"]) for r in after),
                   "mean_diff_last10": sum(r["diff"] for r in after[-10:]) / len(after[-10:])}
        lines = [f"{name}: k = {k}, {gran}" + (f", block rule {rule}" if rule else ""), "",
                 "| step | stage | dense ce | dsa ce | dsa - dense | indexer KL |",
                 "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['step']} | {r['stage']} | {r['dense_ce']:.4f} | {r['dsa_ce']:.4f} | {r['diff']:+.4f} | "
                  f"{r['indexer_kl']:.4f} |" for r in rows]
        table = "\n".join(lines)
        print(table)
        print(json.dumps(summary, indent=1))
        recall = out / name / "recall_at_switch.md"
        if recall.exists():
            table += "\n\nAt the switch:\n\n" + recall.read_text()
            print(recall.read_text())
        result["runs"][name] = {"summary": summary, "rows": rows}
        with open(out / "results.md", "a" if n else "w") as f:
            f.write(table + "\n\n")
    (out / "results.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
