"""The ViT -> LM hand-off: merged vision tokens take the places of the placeholder tokens.

A separate function because under heterogeneous layouts (issue 7) it becomes an autograd-aware
all-to-all that sends each vision token to the rank owning its sequence position; here both
sides live in one process and it is a masked scatter (gradients flow back to the ViT).
"""
from __future__ import annotations

import torch


def place_vision_tokens(text_embeds: torch.Tensor, vision_embeds: torch.Tensor,
                        input_ids: torch.Tensor, vision_token_id: int) -> torch.Tensor:
    """text_embeds [S, 1, H] with rows where input_ids == vision_token_id replaced, in order,
    by vision_embeds [N_vision, H]."""
    mask = input_ids == vision_token_id
    n = int(mask.sum())
    if n != vision_embeds.shape[0]:
        raise ValueError(f"{n} vision placeholders in input_ids but {vision_embeds.shape[0]} vision tokens")
    if n == 0:
        return text_embeds
    full = mask.view(-1, 1, 1).expand_as(text_embeds)
    return text_embeds.masked_scatter(full, vision_embeds.to(text_embeds.dtype))
