"""Heterogeneous ViT/LM layouts and context parallelism for DSA: speed on two GPUs (issue 7).

    PYTHONUNBUFFERED=1 python tests/bench/bench_parallel.py [--seq-len 262144] [--steps 4] [--out DIR]
    python tests/bench/bench_parallel.py --dry-run        # 8 gloo processes on the CPU (issue 8 shape)

GPU mode (run it plainly, not under torchrun): first one GPU in this process (layout cp1: the
reference figure), then the script re-runs itself under torchrun on 2 GPUs (NCCL) and measures,
on the same synthetic packs of --seq-len tokens (small preset, DSA sparse block, Triton kernels,
bf16, activation recomputation):
  cp2-balanced: context parallel 2, ViT frame groups balanced by cost, all-to-all hand-off;
  cp2-replicated: context parallel 2, the whole ViT on both ranks (no hand-off);
  ep2: expert parallel 2 (data parallel 2: each GPU its own pack).
Per layout: tokens/s (all GPUs; and per GPU), step time, peak memory, ViT load max/mean.
Prints a markdown table and writes it and a JSON under --out (default tests/bench/out/parallel).

--dry-run: the launch shape of issue 8 (context parallel 4, expert parallel 8) cut down to the tiny
preset with 8 experts and short packs, 8 processes with gloo on the CPU, a few training steps;
checks that every layout runs and that losses are finite, not speed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jobs.steps.train_data import SyntheticPacks, SyntheticSpec  # noqa: E402
from model.attention import CoreChoice  # noqa: E402
from model.build import BuildOptions, build_vlm  # noqa: E402
from model.presets import preset  # noqa: E402
from model.training import OptimSettings, Trainer, configure_core  # noqa: E402
from parallel.forward import ParallelForward  # noqa: E402
from parallel.groups import init_layout  # noqa: E402
from parallel.layout import Layout  # noqa: E402

GPU_LAYOUTS = [("cp2-balanced", 2, 1, "balanced"), ("cp2-replicated", 2, 1, "replicated"),
               ("ep2", 1, 2, "balanced")]
DRY_LAYOUTS = [("cp4-ep8", 4, 8, "balanced"), ("cp4-ep8-replicated", 4, 8, "replicated"),
               ("cp2-ep4", 2, 4, "owner")]


def run_layout(name, cp, ep, vit, cfg, args, on_gpu) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    groups = init_layout(Layout.for_world(world, cp, ep), seed=1234)
    core = CoreChoice()
    configure_core(core, "sparse", cfg.lm.dsa, on_gpu)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = build_vlm(cfg, groups.lm, core, BuildOptions(dtype=dtype, recompute=on_gpu, expert_parallel=ep),
                      vit_pg_collection=groups.vit)
    if cp > 1:
        model.parallel = ParallelForward(groups, vit_mode=vit)
    trainer = Trainer(model, OptimSettings(lr=1e-4, lr_warmup_steps=0), 1000, "sparse", groups.lm)
    packs = SyntheticPacks(SyntheticSpec(packs=8, seq_len=args.seq_len, vocab=cfg.lm.vocab,
                                         vision_token_id=cfg.vision_token_id, docs_per_pack=args.docs,
                                         grid=tuple(args.grid)))
    device = next(model.parameters()).device
    times, losses = [], []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        batch = packs[step * groups.layout.dp + groups.dp_rank].to(device)
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = trainer.step(batch)
        if on_gpu:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(res.loss)
    dt = sorted(times)[len(times) // 2]
    tokens = batch.num_tokens * groups.layout.dp  # one pack per data-parallel replica per step
    plan = model.parallel.last_vision_plan if model.parallel else None
    out = {"layout": name, "world": world, "cp": cp, "ep": ep, "vit": vit, "tokens_per_step": tokens,
           "step_time_s": dt, "tokens_per_s": tokens / dt, "tokens_per_s_per_gpu": tokens / dt / world,
           "vit_max_over_mean": plan.imbalance() if plan else 1.0, "losses": losses,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None}
    del trainer, model
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return out


def worker(args) -> None:
    """One rank: every layout in turn; rank 0 writes the results."""
    on_gpu = torch.cuda.is_available()
    if args.dry_run:
        cfg, layouts = preset("tiny", experts=8), DRY_LAYOUTS
    else:
        cfg, layouts = preset("small"), GPU_LAYOUTS
    results = []
    for name, cp, ep, vit in layouts:
        try:
            results.append(run_layout(name, cp, ep, vit, cfg, args, on_gpu))
        except Exception as exc:  # report and go on: one layout failing must not hide the others
            import traceback

            traceback.print_exc()
            results.append({"layout": name, "error": repr(exc)[:300]})
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "multi.json").write_text(json.dumps(results, indent=1))


def table(rows: list[dict]) -> str:
    lines = ["| layout | GPUs | tokens/step | step s | tokens/s | tokens/s/GPU | ViT max/mean | peak GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['layout']} | failed: {r['error']} | | | | | | |")
            continue
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
        lines.append(f"| {r['layout']} | {r['world']} | {r['tokens_per_step']:,} | {r['step_time_s']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | "
                     f"{r['vit_max_over_mean']:.3f} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=262_144)
    p.add_argument("--docs", type=int, default=3, help="documents (videos) per synthetic pack")
    p.add_argument("--grid", type=int, nargs=2, default=(16, 16), help="merged rows, cols of each video")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", default=str(ROOT / "tests" / "bench" / "out" / "parallel"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dry_run and not args.worker:
        args.seq_len, args.steps, args.warmup, args.grid, args.nproc = 512, 2, 1, (4, 4), 8
    if args.worker:
        worker(args)
        return
    rows = []
    if not args.dry_run:  # the one-GPU reference, in this process
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        rows.append(run_layout("1 GPU", 1, 1, "balanced", preset("small"), args, torch.cuda.is_available()))
        import torch.distributed as dist

        dist.destroy_process_group()
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           str(Path(__file__).resolve()), "--worker", "--seq-len", str(args.seq_len), "--docs", str(args.docs),
           "--grid", *map(str, args.grid), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--out", args.out] + (["--dry-run"] if args.dry_run else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = subprocess.call(cmd, env=env)
    multi = Path(args.out) / "multi.json"
    rows += json.loads(multi.read_text()) if multi.exists() else [{"layout": "torchrun", "error": f"exit {code}"}]
    md = table(rows)
    print(md)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text(md + "\n")
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    if args.dry_run:
        bad = [r for r in rows if "error" in r or not all(map(lambda x: x == x and abs(x) < 1e4, r["losses"]))]
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
