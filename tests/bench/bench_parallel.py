"""Parallel layouts over NCCL: speed and scaling against one GPU (issue 13).

    PYTHONUNBUFFERED=1 python tests/bench/bench_parallel.py [--seq-len 262144] [--preset small]
        [--layouts 1:cp1,2:cp2,2:cp2:replicated,2:ep2,4:cp2ep2] [--steps 3] [--warmup 1]
        [--profile 2:cp2] [--stage sparse|warmup|dense] [--experts grouped|loop] [--no-recompute] [--out DIR]
    python tests/bench/bench_parallel.py --dry-run     # gloo processes on the CPU: runs, not speed

Every row is its own torchrun of WORLD ranks (the one-GPU reference too: nothing stays on a GPU
between rows), on the same synthetic packs of --seq-len tokens (loader batch contract; DSA sparse
block, Triton kernels, bf16, activation recomputation). A layout is WORLD:SPEC with SPEC as in
tests/gpu/layout_worker.py (cpN, epN, cpNepM, optionally :balanced|owner|replicated for the ViT);
the ranks beyond cp are data parallel, each replica its own pack. --preset keye-cut is the
keye-30b-a3b shape (hidden, heads, KV heads, experts, top-k, expert width) with --layers layers.

Per row: tokens/s (all GPUs, and per GPU), model TFLOP/s per GPU (model/flops.py), step time
(median of --steps, with ± half the min-max range of the timed steps as a share of it),
peak memory, ViT load max/mean, the share of the step spent in the ViT hand-off's all-to-alls,
and speed-up over the first row of the same --seq-len. --profile WORLD:SPEC also writes a
torch.profiler table of one step of that row (top kernels by CUDA time) under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jobs.known_warnings import filter_known_warnings  # noqa: E402

filter_known_warnings()  # Megatron's import-time fallback notes, as the CLI drops them (its ranks too)

DEFAULT_LAYOUTS = "1:cp1,2:cp2,2:cp2:replicated,2:ep2"
DRY_LAYOUTS = "8:cp4ep8,8:cp4ep8:replicated,8:cp2ep4:owner"


def _config(args):
    from model.presets import preset

    if args.preset == "keye-cut":
        cfg = preset("keye-30b-a3b", layers=args.layers)
    elif args.preset == "tiny":  # 8 experts: room for expert parallel 8 in the dry run
        cfg = preset("tiny", experts=8)
    else:
        cfg = preset(args.preset)
    if args.dense_layers:  # DSASettings.dense_layers: what keeping those layers dense costs
        cfg = cfg.with_overrides(dsa=replace(cfg.lm.dsa, dense_layers=tuple(map(int, args.dense_layers.split(",")))))
    return cfg


def worker(args) -> None:
    """One rank of one row."""
    import torch.distributed as dist

    from jobs.steps.train_data import SyntheticPacks, SyntheticSpec
    from model.attention import CoreChoice
    from model.build import BuildOptions, build_vlm
    from model.flops import model_flops
    from model.grouped_experts import GroupedExperts
    from model.training import OptimSettings, Trainer, configure_core
    from parallel.forward import ParallelForward
    from parallel.groups import init_layout
    from parallel.layout import Layout
    from tests.gpu.layout_worker import _layout_specs

    on_gpu = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    (name, cp, ep, vit), = _layout_specs(args.spec)
    cfg = _config(args)
    groups = init_layout(Layout.for_world(world, cp, ep), seed=1234)
    core = CoreChoice()
    configure_core(core, args.stage, cfg.lm.dsa, on_gpu)
    GroupedExperts.use_grouped = args.experts == "grouped"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    # the warm-up keeps no activations (model/attention.py)
    recompute = on_gpu and args.stage != "warmup" and args.recompute
    model = build_vlm(cfg, groups.lm, core, BuildOptions(dtype=dtype, recompute=recompute, expert_parallel=ep),
                      vit_pg_collection=groups.vit)
    if cp > 1:
        model.parallel = ParallelForward(groups, vit_mode=vit)
    trainer = Trainer(model, OptimSettings(lr=1e-4, lr_warmup_steps=0), 1000, args.stage, groups.lm)
    packs = SyntheticPacks(SyntheticSpec(packs=8, seq_len=args.seq_len, vocab=cfg.lm.vocab,
                                         vision_token_id=cfg.vision_token_id, docs_per_pack=args.docs,
                                         grid=tuple(args.grid)))
    device = next(model.parameters()).device
    times, losses, handoff = [], [], []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        batch = packs[step * groups.layout.dp + groups.dp_rank].to(device)
        events = [] if model.parallel is not None and step >= args.warmup else None
        if model.parallel is not None:
            model.parallel.handoff_events = events
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = trainer.step(batch)
        if on_gpu:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            handoff.append(sum(a.elapsed_time(b) for a, b in events or []) / 1e3)
        losses.append(res.loss)
    syncs = _count_syncs(trainer, packs[groups.dp_rank].to(device),
                         Path(args.out) / f"syncs_{args.tag}.txt" if args.profile_step else None) if on_gpu else None
    if args.profile_step and on_gpu:
        _profile_step(trainer, packs[groups.dp_rank].to(device), Path(args.out) / f"profile_{args.tag}.txt")
    dt = sorted(times)[len(times) // 2]
    spread = (max(times) - min(times)) / dt if len(times) > 1 else 0.0  # how noisy the median is
    tokens = batch.num_tokens * groups.layout.dp  # one pack per data-parallel replica per step
    if args.stage == "warmup":  # the backbone's forward only (dense attention); the KL not counted
        flops = model_flops(cfg, batch.host or batch, "dense", None) / 3 * groups.layout.dp
    else:
        flops = model_flops(cfg, batch.host or batch, "dsa" if args.stage == "sparse" else "dense",
                            cfg.lm.dsa.granularity) * groups.layout.dp
    plan = model.parallel.last_vision_plan if model.parallel else None
    # every rank's share of the hand-off, the slowest rank's counts (it holds the others up)
    share = torch.tensor([sum(handoff) / max(sum(times), 1e-9)], device=device)
    mem = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0], device=device)
    dist.all_reduce(share, op=dist.ReduceOp.MAX)
    dist.all_reduce(mem, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        tags = [t for t in (args.stage != "sparse" and args.stage, args.experts == "loop" and "experts loop",
                            args.dense_layers and args.stage != "dense" and f"dense layers {args.dense_layers}",
                            not recompute and args.stage != "warmup" and "no recompute") if t]
        row = {"layout": name + (f" [{', '.join(tags)}]" if tags else ""), "world": world, "cp": cp, "ep": ep, "dp": groups.layout.dp, "vit": vit,
               "seq_len": args.seq_len, "preset": args.preset, "tokens_per_step": tokens, "step_time_s": dt, "step_spread": spread,
               "tokens_per_s": tokens / dt, "tokens_per_s_per_gpu": tokens / dt / world,
               "model_tflops_per_gpu": flops / dt / world / 1e12,
               "vit_max_over_mean": plan.imbalance() if plan else 1.0, "handoff_share": float(share),
               "losses": losses, "peak_mem_gib": float(mem) if on_gpu else None, "host_syncs": syncs}
        Path(args.row_out).write_text(json.dumps(row))


def _count_syncs(trainer, batch, path: Path | None = None) -> int:
    """Host synchronisations in one step, as torch's sync debug mode reports them (each op that
    waits for the GPU: item(), tolist(), nonzero(), blocking copies...); with ``path``, where
    they come from (the innermost longshot or Megatron frame, counted) is written there."""
    import collections
    import traceback
    import warnings

    sites = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/torch/" not in f.filename and "warnings" not in f.filename]
        f = frames[-1] if frames else None
        sites[f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" if f else "?"] += 1

    torch.cuda.synchronize()
    saved = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = saved
    if path is not None and int(os.environ.get("RANK", "0")) == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(f"{n:6d}  {site}" for site, n in sites.most_common()))
    return sum(sites.values())


def _profile_step(trainer, batch, path: Path) -> None:
    from tests.bench.profiling import profile_table

    text = profile_table(lambda: trainer.step(batch))
    if int(os.environ.get("RANK", "0")) == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def table(rows: list[dict]) -> str:
    lines = ["| preset | seq | layout | GPUs | step s (spread) | tokens/s | tokens/s/GPU | model TFLOP/s/GPU | speed-up | "
             "ViT max/mean | hand-off | peak GiB | host syncs/step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('preset', '')} | {r.get('seq_len', '')} | {r['layout']} | {r.get('world', '')} | "
                         f"failed: {r['error']} | | | | | | | | |")
            continue
        key = (r["preset"], r["seq_len"])
        base.setdefault(key, r["tokens_per_s"])
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
        lines.append(f"| {r['preset']} | {r['seq_len']:,} | {r['layout']} | {r['world']} | {r['step_time_s']:.3f} "
                     f"(±{50 * r.get('step_spread', 0.0):.0f}%) | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | "
                     f"{r['model_tflops_per_gpu']:.0f} | {r['tokens_per_s'] / base[key]:.2f}x | "
                     f"{r['vit_max_over_mean']:.3f} | {100 * r['handoff_share']:.1f}% | {mem} | "
                     f"{r.get('host_syncs', '-')} |")
    return "\n".join(lines)


def run_row(args, world: int, spec: str, tag: str) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    row_out = out / f"row_{tag}.json"
    row_out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           str(Path(__file__).resolve()), "--worker", "--spec", spec, "--row-out", str(row_out), "--tag", tag,
           "--seq-len", str(args.seq_len), "--docs", str(args.docs), "--grid", *map(str, args.grid),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--preset", args.preset,
           "--layers", str(args.layers), "--stage", args.stage, "--experts", args.experts, "--out", args.out,
           "--dense-layers", args.dense_layers]
    cmd += ["--profile-step"] if tag in args.profile_tags else []
    cmd += [] if args.recompute else ["--no-recompute"]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if args.dry_run else "4", "NCCL_NVLS_ENABLE": "0",
           "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = subprocess.call(cmd, env=env)
    if row_out.exists():
        return json.loads(row_out.read_text())
    return {"layout": spec, "world": world, "preset": args.preset, "seq_len": args.seq_len, "error": f"exit {code}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=262_144)
    p.add_argument("--preset", default="small", help="small | keye-cut | tiny")
    p.add_argument("--layers", type=int, default=4, help="LM layers of --preset keye-cut")
    p.add_argument("--docs", type=int, default=3, help="documents (videos) per synthetic pack")
    p.add_argument("--grid", type=int, nargs=2, default=(16, 16), help="merged rows, cols of each video")
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--layouts", default=DEFAULT_LAYOUTS, help="WORLD:SPEC,... (see the docstring)")
    p.add_argument("--stage", choices=["sparse", "warmup", "dense"], default="sparse",
                   help="DSA sparse training, the indexer warm-up (forward only; TFLOP/s counts the "
                   "dense forward), or dense attention")
    p.add_argument("--experts", choices=["grouped", "loop"], default="grouped",
                   help="MoE experts as grouped GEMMs, or Megatron's SequentialMLP loop (the before of issue 15)")
    p.add_argument("--no-recompute", dest="recompute", action="store_false",
                   help="keep activations (default: recompute every layer in the backward)")
    p.add_argument("--dense-layers", default="", metavar="I,J", help="LM layers kept dense under DSA "
                   "(longshot train --dsa-dense-layers)")
    p.add_argument("--profile", default="", help="WORLD:SPEC rows to profile one more step of")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", default=str(ROOT / "tests" / "bench" / "out" / "parallel"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--row-out", help=argparse.SUPPRESS)
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--profile-step", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.dry_run:
        args.seq_len, args.steps, args.warmup, args.grid, args.preset = 512, 2, 1, (4, 4), "tiny"
        args.layouts = DRY_LAYOUTS if args.layouts == DEFAULT_LAYOUTS else args.layouts
    entries = [e.split(":", 1) for e in filter(None, args.layouts.split(","))]
    args.profile_tags = {f"{w}_{s.replace(':', '_')}" for w, s in
                         (e.split(":", 1) for e in filter(None, args.profile.split(",")))}
    rows = []
    for world, spec in entries:
        tag = f"{world}_{spec.replace(':', '_')}"
        rows.append(run_row(args, int(world), spec, tag))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    md = table(rows)
    print(md)
    out = Path(args.out)
    (out / "results.md").write_text(md + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    if args.dry_run:
        bad = [r for r in rows if "error" in r or not all(x == x and abs(x) < 1e4 for x in r["losses"])]
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
