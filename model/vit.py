"""The vision encoder: a SigLIP-like ViT over temporal-2 patches of packed videos.

A patch of 2 frames x 14 x 14 x 3 is embedded by one linear map (a Conv3d with stride = kernel
is exactly that), every transformer layer attends within its frame group only (the patches of
one temporal group of one video: packed variable-length segments, no padding), and positions
enter as a 2-D rotary on (row, col). Built from Megatron's TransformerBlock with longshot's
packed attention; it takes a pg_collection so that it can later run on its own layout.
"""
from __future__ import annotations

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from model.config import VisionConfig
from model.layer_specs import vit_block_spec
from model.packing_params import packed_params
from model.rope import multi_axis_cos_sin
from model.vision_geometry import frame_group_cu_seqlens, patch_rows_cols


class VisionTransformer(MegatronModule):
    def __init__(self, vcfg: VisionConfig, config: TransformerConfig,
                 pg_collection: ProcessGroupCollection):
        super().__init__(config=config)
        if vcfg.head_dim % 4:
            raise ValueError("the ViT's 2-D rotary needs head_dim divisible by 4")
        self.vcfg = vcfg
        self.patch_embed = torch.nn.Linear(vcfg.patch_values, vcfg.hidden, bias=True,
                                           dtype=config.params_dtype)
        if config.perform_initialization:
            config.init_method(self.patch_embed.weight)
            torch.nn.init.zeros_(self.patch_embed.bias)
        self.blocks = TransformerBlock(config, vit_block_spec(vcfg.layers), pg_collection=pg_collection)

    def forward(self, pixel_patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """uint8 patches [N, 2*14*14*3] and grids [n_videos, 3] -> patch features [N, hidden]."""
        dtype = self.patch_embed.weight.dtype
        x = self.patch_embed(pixel_patches.to(dtype) / 127.5 - 1.0)
        quarter = self.vcfg.head_dim // 4
        rows_cols = patch_rows_cols(grid_thw, self.vcfg.merge).to(x.device)
        cos, sin = multi_axis_cos_sin(rows_cols, (quarter, quarter), self.vcfg.head_dim,
                                      self.vcfg.rope_theta)
        params = packed_params(frame_group_cu_seqlens(grid_thw).to(x.device))
        out = self.blocks(x[:, None], attention_mask=None, rotary_pos_cos=cos, rotary_pos_sin=sin,
                          packed_seq_params=params)
        return out[:, 0]
