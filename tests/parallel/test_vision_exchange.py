"""The ViT hand-off's send buffers agree across ranks: a rank with no frame groups to run (the
`owner` placement gives all of a pack's groups to one rank when it owns most of their tokens)
sends an empty tensor of the same dtype as the others' rows. NCCL counts elements, not bytes: a
float32 receive buffer against bfloat16 sends waited forever on the first bf16 GPU run."""
from __future__ import annotations

import torch

from model.build import BuildOptions, build_vlm, init_megatron
from model.presets import preset
from parallel.vision_exchange import _run_vit
from tests.model.vlm_batches import make_batch


def test_empty_vit_share_has_the_dtype_of_the_vit_rows():
    cfg = preset("tiny")
    model = build_vlm(cfg, init_megatron(seed=1), opts=BuildOptions(dtype=torch.bfloat16))
    batch = make_batch(cfg.lm.vocab, cfg.vision_token_id, seed=2)
    rows = model.vision_tokens(batch.pixel_patches.to(torch.bfloat16), batch.video_grid_thw)
    empty = _run_vit(model, batch, [])
    assert empty.shape == (0, rows.shape[1])
    assert empty.dtype == rows.dtype == torch.bfloat16


def _capture_lm_input(model) -> list:
    seen = []
    model.language.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    return seen


def owner_bf16_worker(rank: int, world: int, path: str) -> None:
    from model.attention import CoreChoice
    from parallel.forward import ParallelForward
    from parallel.groups import init_layout
    from parallel.layout import Layout

    data = torch.load(path, weights_only=False)
    groups = init_layout(Layout.for_world(world, cp=2, ep=1))
    model = build_vlm(preset("tiny"), groups.lm, CoreChoice(), BuildOptions(dtype=torch.bfloat16),
                      vit_pg_collection=groups.vit)
    model.load_state_dict(data["state"])
    model.parallel = ParallelForward(groups, vit_mode="owner")
    seen = _capture_lm_input(model)
    with torch.no_grad():
        model(data["batch"])
    plan = model.parallel.last_vision_plan
    assert len(set(plan.runs_on)) == 1, plan.runs_on  # one rank runs every frame group
    assert (plan.token_owner != plan.runs_on[0]).any()  # and sends some tokens to the other
    # this rank's rows of the LM input, merged vision tokens included, are the one process's
    want = data["lm_input"][model.core.rows.q_pos.long()]
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0, msg=f"rank {rank}")


def test_owner_placement_in_bf16_matches_one_process(tmp_path):
    """Two gloo ranks in bf16 (as on the GPUs): one video, so the `owner` placement gives its only
    frame group to one rank, the other runs no ViT, and some merged tokens still cross. The empty
    share's dtype mismatch garbled those tokens here (gloo) and hung NCCL on the H200s."""
    from tests.parallel.harness import spawn

    cfg = preset("tiny")
    model = build_vlm(cfg, init_megatron(seed=1), opts=BuildOptions(dtype=torch.bfloat16))
    batch = make_batch(cfg.lm.vocab, cfg.vision_token_id, seed=3, docs=((20, (1, 8, 8)), (150, None)))
    seen = _capture_lm_input(model)
    with torch.no_grad():
        model(batch)
    path = tmp_path / "case.pt"
    torch.save({"state": model.state_dict(), "batch": batch, "lm_input": seen[0]}, path)
    spawn(owner_bf16_worker, 2, str(path))
