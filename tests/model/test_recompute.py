"""Activation recomputation changes memory, never results: with Megatron's reentrant checkpoint
around every LM (and ViT) layer, the loss and every gradient equal those of the same model
without it. Two things broke this before: the LM's rotary positions were dropped on the
recomputed path (Megatron's checkpointed_forward does not pass rotary_pos_cos/sin), so layers ran
without positions; and Qwen3-VL's DeepStack features, added inside recomputed layers, ran the
ViT's backward a second time ("backward through the graph a second time", first H200 run)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.build import BuildOptions, build_vlm, init_megatron
from model.megatron_compat import compute_device
from model.presets import preset
from tests.model.vlm_batches import make_batch


def _qwen3_vl_like():
    """The tiny preset with Qwen3-VL's vision features: DeepStack from two ViT layers, learned
    position grid, axial rotary, no final ViT norm, interleaved mrope."""
    cfg = preset("tiny")
    vision = replace(cfg.vision, deepstack=(0, 1), position_grid=4, rope_layout="axial", final_norm=False)
    return replace(cfg, vision=vision, lm=replace(cfg.lm, mrope_section=(4, 2, 2), mrope_layout="interleaved"))


@pytest.mark.parametrize("shape", ["tiny", "qwen3-vl-like"])
def test_recomputation_gives_the_same_loss_and_gradients(shape):
    cfg = preset("tiny") if shape == "tiny" else _qwen3_vl_like()
    pg = init_megatron(seed=3)
    batch = make_batch(cfg.lm.vocab, cfg.vision_token_id, seed=4).to(compute_device())
    results = []
    for recompute in (False, True):
        torch.manual_seed(7)
        model = build_vlm(cfg, pg, opts=BuildOptions(dtype=torch.float32, recompute=recompute))
        if results:
            model.load_state_dict(results[0][2])
        out = model(batch)
        out.objective().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.ce.detach(), grads, model.state_dict()))
    (ce_a, grads_a, _), (ce_b, grads_b, _) = results
    torch.testing.assert_close(ce_b, ce_a)
    assert set(grads_a) == set(grads_b)
    if cfg.vision.deepstack:
        assert any(n.startswith("deepstack.") for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
