"""The vision encoder: a SigLIP-like ViT over temporal-2 patches of packed videos.

A patch of 2 frames x 14 x 14 x 3 (or the imported model's patch) is embedded by one linear map
(a Conv3d with stride = kernel is exactly that), every transformer layer attends within its
frame group only (the patches of one temporal group of one video: packed variable-length
segments, no padding), and positions enter as a 2-D rotary on (row, col), plus, for Qwen3-VL, a
learned square grid of position embeddings resampled bilinearly to each video's grid. Built
from Megatron's TransformerBlock with longshot's packed attention; it takes a pg_collection so
that it can later run on its own layout. `forward` also returns the outputs of the layers named
in `deepstack` (Qwen3-VL feeds them, merged, into the first LM layers).
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
from model.rope import axial_cos_sin, block_rotary, multi_axis_cos_sin
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
        self.pos_embed = None
        if vcfg.position_grid:
            self.pos_embed = torch.nn.Embedding(vcfg.position_grid ** 2, vcfg.hidden, dtype=config.params_dtype)
        if config.perform_initialization:
            config.init_method(self.patch_embed.weight)
            torch.nn.init.zeros_(self.patch_embed.bias)
            if self.pos_embed is not None:
                config.init_method(self.pos_embed.weight)
        self.blocks = TransformerBlock(config, vit_block_spec(vcfg.layers), pg_collection=pg_collection,
                                       post_layer_norm=vcfg.final_norm)

    def forward(self, pixel_patches: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list]:
        """uint8 patches [N, T*P*P*C] and grids [n_videos, 3] -> patch features [N, hidden] and
        the outputs [N, hidden] of the `deepstack` layers, in that order."""
        dtype = self.patch_embed.weight.dtype
        x = self.patch_embed(pixel_patches.to(dtype) / 127.5 - 1.0)
        rows_cols = patch_rows_cols(grid_thw, self.vcfg.merge).to(x.device)
        if self.pos_embed is not None:
            x = x + self._grid_positions(grid_thw, rows_cols).to(x.dtype)
        cos, sin = self._rotary(rows_cols)
        params = packed_params(frame_group_cu_seqlens(grid_thw).to(x.device))
        taps = _LayerTaps(self.blocks.layers, self.vcfg.deepstack)
        with taps:
            out = self.blocks(x[:, None], attention_mask=None, rotary_pos_emb=block_rotary(cos, sin),
                              packed_seq_params=params)
        return out[:, 0], taps.outputs

    def _rotary(self, rows_cols: torch.Tensor):
        v = self.vcfg
        if v.rope_layout == "axial":
            return axial_cos_sin(rows_cols, v.head_dim, v.rope_theta)
        quarter = v.head_dim // 4
        return multi_axis_cos_sin(rows_cols, (quarter, quarter), v.head_dim, v.rope_theta)

    def _grid_positions(self, grid_thw: torch.Tensor, rows_cols: torch.Tensor) -> torch.Tensor:
        """The learned grid resampled (bilinear, corners aligned) to each video's rows x cols,
        read at every patch's (row, col)."""
        side = self.vcfg.position_grid
        table = self.pos_embed.weight.view(side, side, -1).permute(2, 0, 1)[None]
        pieces, start = [], 0
        for groups, rows, cols in grid_thw.tolist():
            grid = torch.nn.functional.interpolate(table.float(), size=(rows, cols), mode="bilinear",
                                                   align_corners=True)[0]
            n = groups * rows * cols
            r, c = rows_cols[:, start:start + n]
            pieces.append(grid[:, r, c].t())
            start += n
        return torch.cat(pieces) if pieces else table.new_zeros(0, table.shape[1])


class _LayerTaps:
    """Records the hidden output [N, hidden] of some layers of a TransformerBlock during one
    forward (forward hooks, removed on exit)."""

    def __init__(self, layers, indices: tuple[int, ...]):
        self.layers, self.indices = layers, indices
        self.outputs: list[torch.Tensor] = []
        self._handles = []

    def __enter__(self):
        found: dict[int, torch.Tensor] = {}

        def hook(i):
            def record(module, args, output):
                found[i] = (output[0] if isinstance(output, tuple) else output)[:, 0]
            return record

        self._found = found
        self._handles = [self.layers[i].register_forward_hook(hook(i)) for i in self.indices]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self.outputs = [self._found[i] for i in self.indices if i in self._found]
        return False
