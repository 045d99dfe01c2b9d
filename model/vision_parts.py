"""The vision side of the VLM as named parts: the ViT, the merger into the LM's width, and
(Qwen3-VL) the DeepStack mergers. One builder serves the VLM and the import of a checkpoint
whose vision side starts fresh, so both initialise it the same way."""
from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from model.config import VLMConfig
from model.merger import PatchMerger
from model.vit import VisionTransformer


def build_vision_parts(cfg: VLMConfig, vit_config: TransformerConfig, pg_collection) -> dict:
    """{"vision": ViT, "merger": merger[, "deepstack": mergers]} (attribute names of the VLM)."""
    v = cfg.vision
    parts = {"vision": VisionTransformer(v, vit_config, pg_collection),
             "merger": PatchMerger(vit_config, v.hidden, cfg.lm.hidden, v.merge, v.norm_eps)}
    if v.deepstack:
        parts["deepstack"] = torch.nn.ModuleList(
            PatchMerger(vit_config, v.hidden, cfg.lm.hidden, v.merge, v.norm_eps, norm_after_merge=True)
            for _ in v.deepstack)
    return parts
