"""Named model sizes: `tiny` for CPU tests and the demo, `small` for one GPU at 128K-256K tokens,
`keye-30b-a3b` for the reference system's shape (Keye-VL-2.0 report: Qwen3-30B-A3B-like LM and a
SigLIP-400M-like ViT)."""
from __future__ import annotations

from model.config import DSASettings, LMConfig, VisionConfig, VLMConfig

PRESETS: dict[str, VLMConfig] = {
    "tiny": VLMConfig(
        vision=VisionConfig(hidden=32, layers=2, heads=2, ffn=64),
        lm=LMConfig(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, experts=4, topk=2,
                    expert_ffn=32, vocab=512, mrope_section=(2, 3, 3),
                    dsa=DSASettings(index_heads=2, index_dim=16, topk=16, block_q=8)),
        vision_token_id=7,
    ),
    "small": VLMConfig(
        vision=VisionConfig(hidden=512, layers=8, heads=8, ffn=2048),
        lm=LMConfig(hidden=1024, layers=12, heads=16, kv_heads=2, head_dim=128, experts=32, topk=4,
                    expert_ffn=512, vocab=151_936),
    ),
    "keye-30b-a3b": VLMConfig(
        vision=VisionConfig(hidden=1152, layers=27, heads=16, ffn=4304),
        lm=LMConfig(hidden=2048, layers=48, heads=32, kv_heads=4, head_dim=128, experts=128, topk=8,
                    expert_ffn=768, vocab=151_936),
    ),
}


def preset(name: str, **overrides) -> VLMConfig:
    """The preset `name`, with LM or top-level fields overridden (e.g. vocab, attention)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].with_overrides(**overrides) if overrides else PRESETS[name]
