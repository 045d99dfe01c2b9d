"""One process of the GPU layout check (run by tests/gpu/test_layouts_nccl.py, not by pytest).

    python -m tests.gpu.layout_worker reference --pack PACK.pt --out REF.pt           # one GPU
    torchrun --nproc-per-node N -m tests.gpu.layout_worker layouts --pack PACK.pt \\
        --ref REF.pt --out RESULTS.json --layouts cp2:balanced,ep2,cp2ep2:owner,...
    (either with --deepstack: the model with Qwen3-VL's DeepStack taps)

``reference``: the one-GPU run: builds the model (bf16, DSA), saves its initial weights, trains
STAGES on the pack and records, per step, the losses and the gradient norm.
``layouts``: for each layout in turn (Megatron's groups rebuilt between them), the same initial
weights (each expert rank keeps its own experts), the same pack on every data-parallel replica
(so each replica's gradient is the one-GPU gradient, and so is their mean), the same steps; rank
0 writes what each layout gave, plus what the layout did with the pack: the ViT load max/mean,
the merged tokens that crossed ranks in the hand-off, the documents cut by chunk borders.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

# The first step trains only the indexers on dense attention (the warm-up), the next two train
# everything on sparse attention: both stages of DSA run under every layout.
STAGES = ("warmup", "sparse", "sparse")
LR = 2e-4


def _model_cfg(pack, deepstack: bool = False):
    """The small preset; with `deepstack`, Qwen3-VL's DeepStack on top: merged outputs of ViT
    layers 1, 3 and 5 added after LM layers 0, 1 and 2 (they travel with the merged tokens in
    the hand-off, as extra columns of the same rows)."""
    from dataclasses import replace

    from model.presets import preset

    cfg = preset("small", vocab=int(pack["vocab"]), vision_token_id=int(pack["vision_token_id"]))
    return replace(cfg, vision=replace(cfg.vision, deepstack=(1, 3, 5))) if deepstack else cfg


def _batch(pack):
    from shards.batch import PackedBatch

    return PackedBatch(**pack["batch"])


def _train(model_for_stage, batch, trace=None) -> list[dict]:
    """STAGES steps; a stage change builds the next trainer around a new model holding the
    previous one's weights (as the train job does: a stage fixes the trainable set, and DDP's
    hooks belong to one trainer). Returns each step's numbers."""
    from model.training import OptimSettings, Trainer

    rows, trainer, model = [], None, None
    device = torch.device("cuda", torch.cuda.current_device())
    for step, stage in enumerate(STAGES):
        if trainer is None or trainer.stage != stage:
            model = model_for_stage(stage, model)
            trainer = Trainer(model, OptimSettings(lr=LR, min_lr=LR, lr_warmup_steps=0), len(STAGES),
                              stage, _pg(), start_step=step)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = trainer.step(batch.to(device))
        torch.cuda.synchronize()
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"step {step + 1} ({stage}): {time.perf_counter() - t0:.2f} s, loss {res.loss:.4f}", flush=True)
        rows.append({"stage": stage, "loss": res.loss, "ce": res.ce, "aux": res.aux,
                     "indexer": res.indexer, "grad_norm": res.grad_norm,
                     "step_s": time.perf_counter() - t0})
        if trace is not None:
            trace(model)
    return rows


_PG = {}


def _pg():
    return _PG.get("lm")


def reference(args) -> None:
    from model.attention import CoreChoice
    from model.build import BuildOptions, build_vlm, init_megatron
    from model.training import configure_core

    pack = torch.load(args.pack, weights_only=True)
    cfg, batch = _model_cfg(pack, args.deepstack), _batch(pack)
    _PG["lm"] = init_megatron(seed=1234)
    core = CoreChoice()
    built = {}

    def model_for_stage(stage, model):
        configure_core(core, stage, cfg.lm.dsa, on_gpu=True)
        torch.manual_seed(7)
        fresh = build_vlm(cfg, _PG["lm"], core, BuildOptions(dtype=torch.bfloat16))
        if model is None:
            built["init"] = {k: v.detach().cpu().clone() for k, v in fresh.state_dict().items()
                             if isinstance(v, torch.Tensor)}
        else:
            fresh.load_state_dict(model.state_dict())
        return fresh

    rows = _train(model_for_stage, batch)
    torch.save({"init": built["init"], "steps": rows, "experts": cfg.lm.experts}, args.out)
    print(json.dumps(rows, indent=1))


def _layout_specs(text: str) -> list[tuple[str, int, int, str]]:
    """'cp2:balanced,ep2,cp2ep2:owner' -> [(name, cp, ep, vit)]."""
    import re

    out = []
    for part in filter(None, text.split(",")):
        name, _, vit = part.partition(":")
        m = re.fullmatch(r"(?:cp(\d+))?(?:ep(\d+))?", name)
        if not m or not name:
            raise ValueError(f"bad layout {part!r}: use cpN, epN or cpNepM, optionally :vit-mode")
        out.append((part, int(m.group(1) or 1), int(m.group(2) or 1), vit or "balanced"))
    return out


def _cut_documents(cu_seqlens: torch.Tensor, cp: int, align: int) -> int:
    """Documents that have tokens on more than one context rank."""
    from parallel.cp_split import chunk_borders

    cu = cu_seqlens.tolist()
    cut = 0
    for a, b in zip(cu[:-1], cu[1:]):
        borders = chunk_borders(b - a, cp, align)
        nonempty = [c for c in range(2 * cp) if borders[c + 1] > borders[c]]
        owners = {min(c, 2 * cp - 1 - c) for c in nonempty}
        cut += len(owners) > 1
    return cut


def layouts(args) -> None:
    from megatron.core import parallel_state

    from model.attention import CoreChoice
    from model.build import BuildOptions, build_vlm
    from model.training import configure_core
    from parallel.forward import ParallelForward
    from parallel.groups import init_layout
    from parallel.layout import Layout
    from tests.parallel.harness import local_state

    pack = torch.load(args.pack, weights_only=True)
    ref = torch.load(args.ref, weights_only=True)
    cfg, batch = _model_cfg(pack, args.deepstack), _batch(pack)
    world = int(os.environ["WORLD_SIZE"])
    results = []
    for name, cp, ep, vit in _layout_specs(args.layouts):
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"layout {name}: cp {cp}, ep {ep}, ViT {vit}", flush=True)
        layout = Layout.for_world(world, cp, ep)
        groups = init_layout(layout, seed=1234)
        _PG["lm"] = groups.lm
        core = CoreChoice()
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        per_rank = cfg.lm.experts // ep
        seen = {"imbalance": [], "crossing": []}

        def model_for_stage(stage, model):
            configure_core(core, stage, cfg.lm.dsa, on_gpu=True)
            fresh = build_vlm(cfg, groups.lm, core, BuildOptions(dtype=torch.bfloat16, expert_parallel=ep),
                              vit_pg_collection=groups.vit)
            if model is not None:
                fresh.load_state_dict(model.state_dict())
            else:
                missing, unexpected = fresh.load_state_dict(
                    local_state(ref, "init", ep_rank, per_rank), strict=False)
                bad = [k for k in missing if not k.endswith("_extra_state")]
                if bad or unexpected:
                    raise RuntimeError(f"{name}: weights do not map: missing {bad[:5]} unexpected {unexpected[:5]}")
            if cp > 1:
                fresh.parallel = ParallelForward(groups, vit_mode=vit)
            return fresh

        def trace(model):
            plan = model.parallel.last_vision_plan if model.parallel else None
            if plan is not None:
                seen["imbalance"].append(plan.imbalance())
                runner = [r for g, r in zip(plan.groups, plan.runs_on) for _ in range(g.tokens)]
                crossing = sum(int(o) != r for o, r in zip(plan.token_owner.tolist(), runner)) if (
                    plan.runs_on and plan.runs_on[0] >= 0) else 0
                seen["crossing"].append(crossing)

        torch.cuda.reset_peak_memory_stats()
        try:
            rows = _train(model_for_stage, batch, trace)
            row = {"layout": name, "cp": cp, "ep": ep, "dp": layout.dp, "vit": vit, "steps": rows,
                   "vit_max_over_mean": max(seen["imbalance"], default=1.0),
                   "tokens_crossing": max(seen["crossing"], default=0),
                   "documents_cut": _cut_documents(batch.cu_seqlens, cp, cfg.lm.dsa.block_q) if cp > 1 else 0,
                   "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        except Exception as exc:  # one layout failing must not hide the others
            import traceback

            traceback.print_exc()
            row = {"layout": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
        results.append(row)
        dist.barrier()
        torch.cuda.empty_cache()
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["reference", "layouts"])
    p.add_argument("--pack", required=True)
    p.add_argument("--ref")
    p.add_argument("--out", required=True)
    p.add_argument("--layouts", default="")
    p.add_argument("--deepstack", action="store_true", help="the small preset with DeepStack taps")
    args = p.parse_args()
    (reference if args.mode == "reference" else layouts)(args)


if __name__ == "__main__":
    main()
