"""Total and active parameter counts of a built model (works on the meta device).

Active = every parameter a token passes through: all non-expert parameters plus top-k / experts
of the routed expert parameters (those under the `experts` of each Megatron MoELayer).
"""
from __future__ import annotations

import torch
from megatron.core.transformer.moe.moe_layer import MoELayer


def count_parameters(model: torch.nn.Module, experts: int, topk: int) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for m in model.modules() if isinstance(m, MoELayer)
                 for p in m.experts.parameters())
    return total, total - routed + routed * topk // experts
