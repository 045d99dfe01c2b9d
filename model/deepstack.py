"""Qwen3-VL's DeepStack: merged outputs of some early ViT layers are added to the LM's hidden
states at the vision positions, after LM layers 0, 1, ... (the i-th tapped ViT layer after LM
layer i).

The additions are forward hooks on the LM layers, registered once. What they add is set per
forward and stays set after it, like the attention core's query rows: activation recomputation
runs a layer again in backward, and the recomputed output must carry the same addition (and
pass its gradient back to the ViT).
"""
from __future__ import annotations

import torch


class DeepStackInjection:
    def __init__(self, layers):
        # [N_vision] rows of the LM input that hold vision tokens (this rank's rows under context parallel)
        self.positions: torch.Tensor | None = None
        self.features: list[torch.Tensor] = []  # [N_vision, H] per LM layer, in layer order
        for i, layer in enumerate(layers):
            layer.register_forward_hook(self._hook(i))

    def set(self, positions: torch.Tensor | None, features: list[torch.Tensor]) -> None:
        self.positions, self.features = positions, list(features)

    def clear(self) -> None:
        """Nothing to add (a pack without video): the previous pack's features must not stay."""
        self.set(None, [])

    def _hook(self, i: int):
        def add(module, args, output):
            if self.positions is None or i >= len(self.features):
                return output
            hidden, *rest = output if isinstance(output, tuple) else (output,)
            extra = self.features[i].to(hidden.dtype)[:, None, :]
            hidden = hidden.index_add(0, self.positions, extra)
            return (hidden, *rest) if isinstance(output, tuple) else hidden
        return add
