"""The vision side of the VLM as named parts: the ViT, the merger into the LM's width, and
(Qwen3-VL) the DeepStack mergers. One builder serves the VLM and the import of a checkpoint
whose vision side starts fresh, so both initialise it the same way."""
from __future__ import annotations

from megatron.core.transformer.transformer_config import TransformerConfig

from model.config import VLMConfig
from model.merger import PatchMerger
from model.vit import VisionTransformer


def build_vision_parts(cfg: VLMConfig, vit_config: TransformerConfig, pg_collection) -> dict:
    """{"vision": ViT, "merger": merger} (module attribute names of the VLM)."""
    v = cfg.vision
    return {"vision": VisionTransformer(v, vit_config, pg_collection),
            "merger": PatchMerger(vit_config, v.hidden, cfg.lm.hidden, v.merge, v.norm_eps)}
