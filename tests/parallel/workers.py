"""What each spawned process runs (module level, so that spawn can import it)."""
from __future__ import annotations

import torch

from tests.parallel.harness import EXPERT


def _worst(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / (want.float().abs().max() + 1e-12))


def equality_worker(rank: int, world: int, path: str) -> None:
    """For every case: build the model on the layout with the reference weights, run one pack
    per data-parallel replica through Megatron's DDP, and compare loss and reduced gradients."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from model.attention import CoreChoice
    from model.build import BuildOptions, build_vlm
    from model.config import VLMConfig
    from model.training import configure_core, mark_trainable
    from parallel.forward import ParallelForward
    from parallel.groups import init_layout
    from parallel.layout import Layout
    from tests.parallel.harness import local_state

    data = torch.load(path, weights_only=False)
    cfg = VLMConfig.from_dict(data["cfg"])
    for case in data["cases"]:
        layout = Layout.for_world(world, cp=case["cp"], ep=case["ep"])
        stage = case["stage"]
        ref = data["refs"][(stage, layout.dp)]
        groups = init_layout(layout)
        core = CoreChoice()
        configure_core(core, stage, cfg.lm.dsa, on_gpu=False)
        recompute = case.get("recompute", False)
        model = build_vlm(cfg, groups.lm, core, BuildOptions(expert_parallel=layout.ep, recompute=recompute),
                          vit_pg_collection=groups.vit)
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        per_rank = cfg.lm.experts // layout.ep
        missing, unexpected = model.load_state_dict(local_state(ref, "state", ep_rank, per_rank),
                                                    strict=False)
        assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
        mark_trainable(model, stage)  # as Trainer does
        model.parallel = ParallelForward(groups, vit_mode=case["vit"])
        ddp = DistributedDataParallel(
            model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                        use_distributed_optimizer=False),
            model, pg_collection=groups.lm)
        ddp.zero_grad_buffer()
        out = ddp(data["batches"][groups.dp_rank])
        out.backward(stage)
        ddp.finish_grad_sync()
        what = f"{layout} {stage} vit={case['vit']} recompute={recompute} rank {rank}"
        want_ce = ref["ce"][groups.dp_rank]
        assert abs(out.ce.item() - want_ce) <= 1e-5 * abs(want_ce), (what, out.ce.item(), want_ce)
        # recomputed layers record their losses in backward: read then, as Trainer.step does
        got_aux, got_idx = (model.recorded_losses(out.ce.device) if recompute else (out.aux, out.indexer))
        want_idx = ref["indexer"][groups.dp_rank]
        assert abs(got_idx.item() - want_idx) <= 1e-5 * abs(want_idx) + 1e-7, (what, got_idx.item(), want_idx)
        want_aux = ref["aux"][groups.dp_rank]
        assert abs(got_aux.item() - want_aux) <= 1e-5 * abs(want_aux), (what, got_aux.item(), want_aux)
        checked = 0
        for name, p in model.named_parameters():
            m = EXPERT.search(name)
            glob = name if not m else (name[:m.start(2)] + str(ep_rank * per_rank + int(m.group(2)))
                                       + name[m.end(2):])
            want = ref["grads"].get(glob)
            if want is None or not p.requires_grad:
                continue
            err = _worst(p.main_grad, want)
            assert err < 2e-4, f"{what}: gradient of {glob} off by {err:.2e} (relative to its max)"
            checked += 1
        assert checked >= (5 * cfg.lm.sparse_layers if stage == "warmup" else 8), what  # warm-up: the indexers only
        model.parallel = None
