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
