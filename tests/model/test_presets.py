"""Preset shapes: the reference preset built on the meta device has the report's size."""
import torch

from model.build import BuildOptions, build_vlm
from model.config import VLMConfig
from model.param_count import count_parameters
from model.presets import PRESETS, preset


def test_keye_30b_a3b_has_30b_total_and_3b_active_parameters(pg):
    cfg = preset("keye-30b-a3b")
    model = build_vlm(cfg, pg, opts=BuildOptions(meta=True, dtype=torch.bfloat16))
    assert all(p.is_meta for p in model.parameters())
    lm = cfg.lm
    assert (lm.layers, lm.hidden, lm.heads, lm.kv_heads, lm.head_dim) == (48, 2048, 32, 4, 128)
    assert (lm.experts, lm.topk, lm.expert_ffn, lm.vocab) == (128, 8, 768, 151_936)
    total, active = count_parameters(model, lm.experts, lm.topk)
    lm_total, lm_active = count_parameters(model.language, lm.experts, lm.topk)
    vit_total, _ = count_parameters(model.vision, 1, 1)
    assert 29.5e9 < lm_total < 31.5e9, lm_total  # Qwen3-30B-A3B: 30.5B
    assert 3.0e9 < lm_active < 3.7e9, lm_active  # 3.3B
    assert 0.35e9 < vit_total < 0.45e9, vit_total  # SigLIP-400M
    assert 30e9 < total < 32.5e9 and 3.3e9 < active < 4.2e9
    # one expert FFN: SwiGLU 2048 -> 2x768 -> 2048
    expert = model.language.decoder.layers[0].mlp.experts.local_experts[0]
    assert sum(p.numel() for p in expert.parameters()) == 3 * 2048 * 768


def test_presets_roundtrip_through_json_dicts():
    for name, cfg in PRESETS.items():
        assert VLMConfig.from_dict(cfg.to_dict()) == cfg, name
    assert preset("tiny", vocab=999, attention="dense").lm.vocab == 999
