"""The MoE load-balancing loss as a number.

Megatron's router adds the load-balancing loss's gradient itself (MoEAuxLossAutoScaler) and
records the unscaled per-layer values in its metrics tracker; longshot reads that record after
each forward to report the loss term (coefficient x sum over layers), and clears it before each
forward so that recomputation in backward never leaks into the next step's value.
"""
from __future__ import annotations

import torch
from megatron.core.transformer.moe.moe_logging import get_moe_metrics_tracker

NAME = "load_balancing_loss"


def clear() -> None:
    get_moe_metrics_tracker().clear()


def value(coeff: float) -> torch.Tensor:
    entry = get_moe_metrics_tracker().metrics.get(NAME)
    if entry is None:
        return torch.zeros(())
    return entry.values.detach().sum() * coeff
