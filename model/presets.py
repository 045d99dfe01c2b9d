"""Named model sizes: `tiny` for CPU tests and the demo, `small` for one GPU at 128K-256K tokens,
`keye-30b-a3b` for the reference system's shape (Keye-VL-2.0 report: Qwen3-30B-A3B-like LM and a
SigLIP-400M-like ViT), and `from-hf:DIR` for the shape of an imported model: DIR is a folder
written by `longshot import-hf` (its longshot_model.json) or a Hugging Face folder of the Qwen3
MoE families (its config.json; a text-only one gets the ViT of `keye-30b-a3b`)."""
from __future__ import annotations

import json
from pathlib import Path

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


FROM_HF = "from-hf:"
MODEL_CONFIG = "longshot_model.json"  # written by import-hf next to the source's config.json
VISION_PLACEHOLDER = "<|video_pad|>"  # Qwen's video placeholder token


def from_hf(folder: str) -> VLMConfig:
    """The model config of an imported folder, or of a Hugging Face folder read directly."""
    path = Path(folder)
    if (path / MODEL_CONFIG).is_file():
        return VLMConfig.from_dict(json.loads((path / MODEL_CONFIG).read_text()))
    if not (path / "config.json").is_file():
        raise KeyError(f"preset {FROM_HF}{folder}: no {MODEL_CONFIG} or config.json there")
    return hf_folder_config(path)


def hf_folder_config(path: Path, vision_preset: str = "keye-30b-a3b",
                     vision_token_id: int | None = None) -> VLMConfig:
    """The VLMConfig of a Hugging Face folder's config.json. A text-only model's fresh ViT takes
    `vision_preset`'s shape; its vision placeholder is `vision_token_id`, else <|video_pad|> of
    the folder's tokenizer.json. Raises model.hf_config.UnsupportedConfig."""
    from model.hf_config import vlm_config

    if vision_preset not in PRESETS:
        raise KeyError(f"unknown vision preset {vision_preset!r}; choose one of {', '.join(PRESETS)}")
    hf = json.loads((path / "config.json").read_text())
    if vision_token_id is None and (path / "tokenizer.json").is_file():
        added = json.loads((path / "tokenizer.json").read_text()).get("added_tokens", [])
        vision_token_id = next((t["id"] for t in added if t.get("content") == VISION_PLACEHOLDER), None)
    return vlm_config(hf, vision_token_id=vision_token_id, fresh_vision=PRESETS[vision_preset].vision)


def preset(name: str, **overrides) -> VLMConfig:
    """The preset `name`, with LM or top-level fields overridden (e.g. vocab, attention)."""
    if name.startswith(FROM_HF):
        base = from_hf(name[len(FROM_HF):])
    elif name in PRESETS:
        base = PRESETS[name]
    else:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or {FROM_HF}DIR")
    return base.with_overrides(**overrides) if overrides else base
