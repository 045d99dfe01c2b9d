"""Training the `small` preset on one GPU: speed at 128K tokens, and the quality of sparse attention.

    PYTHONUNBUFFERED=1 python tests/bench/bench_train.py [--seq-len 131072] [--out DIR]
        [--quality-seq-len 32768 --quality-steps 60 --quality-warmup 20 --quality-pretrain 40]

Part 1, speed (one process, one model): a synthetic pack of --seq-len tokens (videos and answer
text, the loader's batch contract) and the same weights trained with three attention cores:
dense (torch SDPA, causal per document), DSA `token` and DSA `block` (sparse stage, Triton
kernels). Per core: tokens/s, step time, peak memory and model TFLOP/s (FLOPs counted below).
Part 2, quality: the same packs, dense pre-training, then an indexer warm-up (dense attention,
only the indexers train), then three continuations from that same checkpoint: dense, DSA token,
DSA block. One PNG with the three loss curves, and the final losses and tokens/s side by side.
Prints markdown tables; writes them, a JSON and the PNG under --out. Each part runs even if the
other fails.

Model FLOPs per step (fwd + bwd = 3 x fwd, matmuls only): 6 x (active matmul parameters) x
tokens for the ViT, the merger and the LM (expert FFNs at top-k), 6 x hidden x vocab per
labeled token for the output layer, and attention per layer: dense 6 x Hq x D x sum over
documents of L^2 (causal), DSA 12 x Hq x D x (keys attended) plus the indexer's scores
(2 x H_I x d_I x causal keys, forward only). The ViT's attention is dense within frame groups.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jobs.known_warnings import filter_known_warnings  # noqa: E402

filter_known_warnings()  # Megatron's import-time fallback notes, as the CLI drops them (its ranks too)

from jobs.steps.train_data import SyntheticPacks, SyntheticSpec
from model.attention import CoreChoice
from model.build import BuildOptions, build_vlm, init_megatron
from model.flops import model_flops
from model.param_count import count_parameters
from model.presets import preset
from model.training import OptimSettings, Trainer, configure_core

CORES = [("dense", "dense", None), ("dsa-token", "sparse", "token"), ("dsa-block", "sparse", "block")]


def speed(args, pg) -> list[dict]:
    cfg = preset("small")
    core = CoreChoice()
    model = build_vlm(cfg, pg, core, BuildOptions(dtype=torch.bfloat16, recompute=args.recompute))
    trainer = Trainer(model, OptimSettings(lr=1e-4, lr_warmup_steps=0), 1000, "sparse", pg)
    packs = SyntheticPacks(SyntheticSpec(packs=4, seq_len=args.seq_len, vocab=cfg.lm.vocab,
                                         vision_token_id=cfg.vision_token_id, docs_per_pack=args.docs,
                                         grid=(16, 16)))
    batch = packs[0].to("cuda")
    total, active = count_parameters(model, cfg.lm.experts, cfg.lm.topk)
    print(f"small preset: {total / 1e9:.2f}B parameters, {active / 1e9:.2f}B active; pack of "
          f"{batch.num_tokens} tokens, {batch.pixel_patches.shape[0]} ViT patches, "
          f"{int((batch.labels != -100).sum())} labeled", flush=True)
    rows = []
    for name, stage, gran in CORES:
        if name not in args.cores.split(","):
            continue
        try:
            if gran is None:
                configure_core(core, "dense", cfg.lm.dsa, True)
            else:
                configure_core(core, stage, cfg.lm.dsa.__class__(**{**cfg.lm.dsa.__dict__,
                                                                   "granularity": gran}), True)
            trainer.stage = "sparse" if gran else "dense"
            torch.cuda.reset_peak_memory_stats()
            times, loss = [], None
            for i in range(args.warmup + args.iters):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                loss = trainer.step(batch).loss
                torch.cuda.synchronize()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
            dt = sorted(times)[len(times) // 2]
            fl = model_flops(cfg, batch, "dense" if gran is None else "dsa", gran)
            rows.append({"core": name, "tokens": batch.num_tokens, "step_s": dt,
                         "tokens_per_s": batch.num_tokens / dt,
                         "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                         "model_tflops": fl / dt / 1e12, "loss": loss})
            print(json.dumps(rows[-1]), flush=True)
        except Exception:  # noqa: BLE001 - one core failing must not hide the others
            traceback.print_exc()
            rows.append({"core": name, "error": traceback.format_exc(limit=2).splitlines()[-1]})
    return rows


def quality(args, pg, out: Path) -> list[dict]:
    from jobs.steps.train_loop import TrainConfig, train
    from jobs.steps.train_metrics import read_metrics

    synthetic = {"packs": args.quality_packs, "seq_len": args.quality_seq_len,
                 "docs_per_pack": args.docs, "grid": [16, 16]}
    common = {"preset": "small", "seed": 7, "data": {"synthetic": synthetic}, "save_every": 10_000,
              "optim": {"lr": 3e-4, "min_lr": 3e-4, "lr_warmup_steps": 5}, "recompute": args.recompute}
    log = lambda m: print(m, flush=True)
    pre = out / "q_pretrain"
    train(TrainConfig(steps=args.quality_pretrain, attention="dense", **common), pre, force=True, log=log)
    warm = out / "q_warmup"
    train(TrainConfig(steps=args.quality_warmup, attention="dsa", dsa_warmup_steps=args.quality_warmup,
                      init_from=str(pre / "checkpoints" / f"iter_{args.quality_pretrain:07d}"), **common),
          warm, force=True, log=log)
    start = str(warm / "checkpoints" / f"iter_{args.quality_warmup:07d}")
    rows, curves = [], {}
    for name, _, gran in CORES:
        run = out / f"q_{name}"
        cfg = TrainConfig(steps=args.quality_steps, attention="dense" if gran is None else "dsa",
                          dsa={} if gran is None else {"granularity": gran}, init_from=start, **common)
        try:
            train(cfg, run, force=True, log=log)
            m = read_metrics(run)
            curves[name] = [r["ce"] for r in m]
            tail = m[-max(1, len(m) // 10):]
            rows.append({"core": name, "final_ce": sum(r["ce"] for r in tail) / len(tail),
                         "tokens_per_s": sorted(r["tokens_per_s"] for r in m)[len(m) // 2]})
        except Exception:  # noqa: BLE001 - report and go on with the other sections
            traceback.print_exc()
            rows.append({"core": name, "error": traceback.format_exc(limit=2).splitlines()[-1]})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, ys in curves.items():
            ax.plot(range(1, len(ys) + 1), ys, label=name)
        ax.set_xlabel("step after the indexer warm-up")
        ax.set_ylabel("cross entropy")
        ax.set_title(f"small preset, {args.quality_seq_len} tokens/pack")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "quality.png", dpi=120)
    except Exception:  # noqa: BLE001 - the tables matter more than the plot
        traceback.print_exc()
    return rows


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, r.get("error", "") if c == cols[-1] else "")
            cells.append(f"{v:,.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=131072)
    ap.add_argument("--docs", type=int, default=2, help="documents per pack")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--recompute", action="store_true", default=True)
    ap.add_argument("--no-recompute", dest="recompute", action="store_false")
    ap.add_argument("--quality-seq-len", type=int, default=32768)
    ap.add_argument("--quality-packs", type=int, default=64)
    ap.add_argument("--quality-pretrain", type=int, default=40)
    ap.add_argument("--quality-warmup", type=int, default=20)
    ap.add_argument("--quality-steps", type=int, default=60)
    ap.add_argument("--cores", default=",".join(c[0] for c in CORES),
                    help="attention cores of the speed part (comma-separated: dense,dsa-token,dsa-block)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_train_out"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_train needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pg = init_megatron(seed=1)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "args": vars(args)}
    text = [f"# bench_train on {result['device']} (torch {torch.__version__})"]
    if not args.skip_speed:
        try:
            result["speed"] = speed(args, pg)
            text += [f"\n## small preset, {args.seq_len} tokens, one step (median)",
                     table(result["speed"], ["core", "tokens", "step_s", "tokens_per_s",
                                             "peak_mem_gib", "model_tflops", "loss"])]
        except Exception:  # noqa: BLE001 - report and go on with the other sections
            traceback.print_exc()
        torch.cuda.empty_cache()
    if not args.skip_quality:
        try:
            result["quality"] = quality(args, pg, out)
            text += [(f"\n## quality: {args.quality_steps} steps after {args.quality_pretrain} dense + "
                      f"{args.quality_warmup} indexer warm-up steps ({args.quality_seq_len} tokens/pack)"),
                     table(result["quality"], ["core", "final_ce", "tokens_per_s"]),
                     f"\nloss curves: {out / 'quality.png'}"]
        except Exception:  # noqa: BLE001 - report and go on with the other sections
            traceback.print_exc()
    report = "\n".join(text)
    print(report, flush=True)
    (out / "bench_train.md").write_text(report + "\n")
    (out / "bench_train.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
