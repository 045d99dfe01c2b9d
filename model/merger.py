"""The 2x2 merger: four neighbouring ViT patches -> one LM token (LayerNorm, then a 2-layer MLP
from 4 x ViT width to the LM width). The loader already orders patches so that every 4
consecutive ones are one 2x2 block, so merging is a reshape. Qwen3-VL's DeepStack mergers
normalise after the merge (over the 4 x ViT width) instead of before it."""
from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class PatchMerger(MegatronModule):
    def __init__(self, config: TransformerConfig, vit_hidden: int, lm_hidden: int, merge: int = 2,
                 eps: float = 1e-6, norm_after_merge: bool = False):
        super().__init__(config=config)
        self.group = merge * merge
        self.norm_after_merge = norm_after_merge
        wide = vit_hidden * self.group
        dt = config.params_dtype
        self.norm = torch.nn.LayerNorm(wide if norm_after_merge else vit_hidden, eps=eps, dtype=dt)
        self.fc1 = torch.nn.Linear(wide, wide, dtype=dt)
        self.fc2 = torch.nn.Linear(wide, lm_hidden, dtype=dt)
        if config.perform_initialization:
            for lin in (self.fc1, self.fc2):
                config.init_method(lin.weight)
                torch.nn.init.zeros_(lin.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """[N, vit_hidden] -> [N / 4, lm_hidden]."""
        if patches.shape[0] % self.group:
            raise ValueError(f"{patches.shape[0]} patches is not a multiple of {self.group}")
        if self.norm_after_merge:
            x = self.norm(patches.reshape(-1, self.group * patches.shape[-1]))
        else:
            x = self.norm(patches).reshape(-1, self.group * patches.shape[-1])
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))
