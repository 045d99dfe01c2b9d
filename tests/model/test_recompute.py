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

from model.attention import CoreChoice
from model.build import BuildOptions, build_vlm, init_megatron
from model.megatron_compat import compute_device
from model.presets import preset
from model.training import configure_core
from tests.model.vlm_batches import make_batch


def _qwen3_vl_like():
    """The tiny preset with Qwen3-VL's vision features: DeepStack from two ViT layers, learned
    position grid, axial rotary, no final ViT norm, interleaved mrope."""
    cfg = preset("tiny")
    vision = replace(cfg.vision, deepstack=(0, 1), position_grid=4, rope_layout="axial", final_norm=False)
    return replace(cfg, vision=vision, lm=replace(cfg.lm, mrope_section=(4, 2, 2), mrope_layout="interleaved"))


# documents long enough that DSA's top-16 selection is sparse
DOCS = ((60, (2, 4, 4)), (40, None), (30, (1, 3, 2)))


def _count_dsa_work(monkeypatch) -> dict:
    """Counts, on the reference backend, the DSA layers' selections and indexer KLs computed."""
    from model.dsa import reference as ref

    counts = {"select": 0, "kl": 0}
    select, attention_and_kl = ref.select, ref.attention_and_kl

    def counted_select(*a, **kw):
        counts["select"] += 1
        return select(*a, **kw)

    def counted_attention_and_kl(*a, want_kl=True, **kw):
        counts["kl"] += bool(want_kl)
        return attention_and_kl(*a, want_kl=want_kl, **kw)

    monkeypatch.setattr(ref, "select", counted_select)
    monkeypatch.setattr(ref, "attention_and_kl", counted_attention_and_kl)
    return counts


@pytest.mark.parametrize("shape,stage", [("tiny", "dense"), ("tiny", "sparse"),
                                         ("qwen3-vl-like", "dense"), ("qwen3-vl-like", "sparse")])
def test_recomputation_gives_the_same_loss_and_gradients(shape, stage, monkeypatch):
    """Dense attention and DSA sparse (the indexers' gradients injected inside the recomputed
    backward). The warm-up runs without recomputation: tests/model/test_warmup_forward_only.py.

    A recomputed DSA layer also does its indexer work once, not twice: the graph-less first pass
    skips the KL (the recomputation computes it, and the reported loss is read after backward)
    and leaves its block selection for the recomputation to reuse."""
    cfg = (preset("tiny") if shape == "tiny" else _qwen3_vl_like()).with_overrides(attention="dsa")
    pg = init_megatron(seed=3)
    batch = make_batch(cfg.lm.vocab, cfg.vision_token_id, seed=4, docs=DOCS).to(compute_device())
    results, work = [], []
    counts = _count_dsa_work(monkeypatch)
    for recompute in (False, True):
        counts.update(select=0, kl=0)
        torch.manual_seed(7)
        core = CoreChoice()
        configure_core(core, stage, cfg.lm.dsa, on_gpu=False)
        model = build_vlm(cfg, pg, core, opts=BuildOptions(dtype=torch.float32, recompute=recompute))
        if results:
            model.load_state_dict(results[0][3])
        out = model(batch)
        out.objective(stage).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.ce.detach(), model.recorded_losses(out.ce.device)[1], grads, model.state_dict()))
        work.append(dict(counts))
    (ce_a, idx_a, grads_a, _), (ce_b, idx_b, grads_b, _) = results
    torch.testing.assert_close(ce_b, ce_a)
    torch.testing.assert_close(idx_b, idx_a)
    assert (float(idx_a) > 0) == (stage == "sparse")
    if stage == "sparse":  # one KL per layer, and as many selections, recomputed or not
        assert work[0]["kl"] == cfg.lm.layers and work[0]["select"] >= cfg.lm.layers, work
        assert work[1] == work[0], work
    assert set(grads_a) == set(grads_b) and grads_a
    if cfg.vision.deepstack:
        assert any(n.startswith("deepstack.") for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("recompute", [False, True])
def test_the_kl_in_the_attention_backward_gives_the_same_step(recompute, monkeypatch):
    """The sparse stage on the Triton kernels (interpreted on a CPU) with each DSA layer's indexer
    KL run in its attention's backward (model.dsa.attention.KL_IN_BACKWARD), with and without
    activation recomputation: the indexer loss reported after backward, the cross entropy and
    every parameter's gradient equal those of the KL run in forward, whose gradient is injected."""
    from model.dsa import attention as dsa_api

    cfg = preset("tiny").with_overrides(attention="dsa")
    pg = init_megatron(seed=3)
    batch = make_batch(cfg.lm.vocab, cfg.vision_token_id, seed=4, docs=DOCS).to(compute_device())
    results = []
    for late in (False, True):
        monkeypatch.setattr(dsa_api, "KL_IN_BACKWARD", late)
        torch.manual_seed(7)
        core = CoreChoice()
        configure_core(core, "sparse", cfg.lm.dsa, on_gpu=False)
        core.backend = "triton"
        model = build_vlm(cfg, pg, core, opts=BuildOptions(dtype=torch.float32, recompute=recompute))
        if results:
            model.load_state_dict(results[0][3])
        out = model(batch)
        out.objective("sparse").backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.ce.detach(), model.recorded_losses(out.ce.device)[1], grads, model.state_dict()))
    (ce_a, idx_a, grads_a, _), (ce_b, idx_b, grads_b, _) = results
    torch.testing.assert_close(ce_b, ce_a)
    assert float(idx_a) > 0
    torch.testing.assert_close(idx_b, idx_a, rtol=1e-5, atol=1e-7)
    assert set(grads_a) == set(grads_b) and any(".indexer." in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
