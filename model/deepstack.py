"""Qwen3-VL's DeepStack: merged outputs of some early ViT layers are added to the LM's hidden
states at the vision positions, after LM layers 0, 1, ... (the i-th tapped ViT layer after LM
layer i).

The additions are forward hooks on the LM layers, registered once. What they add is set per
forward and stays set after it, like the attention core's query rows: activation recomputation
runs a layer again in backward, and the recomputed output must carry the same addition (and
pass its gradient back to the ViT).

The hooks add detached copies of the features (leaves), never the ViT's tensors themselves: a
recomputed layer's backward (Megatron's checkpoint) runs autograd on its own, and through the
ViT's tensors it would run the ViT's backward there, once per recomputed layer, before the rest
of the LM's gradient has arrived (the second time fails: its graph is freed). The leaves collect
their gradients wherever the layers' backward runs; `join` ties them to the LM's input, whose
backward comes after every layer's, and hands them to the ViT's tensors in one piece.
"""
from __future__ import annotations

import torch


class DeepStackInjection:
    def __init__(self, layers):
        # [N_vision] rows of the LM input that hold vision tokens (this rank's rows under context parallel)
        self.positions: torch.Tensor | None = None
        self.features: list[torch.Tensor] = []  # [N_vision, H] per LM layer, in layer order
        self._sources: list[torch.Tensor] = []  # the ViT's tensors the leaves in `features` stand for
        for i, layer in enumerate(layers):
            layer.register_forward_hook(self._hook(i))

    def set(self, positions: torch.Tensor | None, features: list[torch.Tensor]) -> None:
        self.positions, self._sources = positions, list(features)
        self.features = [f.detach().requires_grad_(f.requires_grad) for f in features]

    def join(self, lm_input: torch.Tensor) -> torch.Tensor:
        """`lm_input` (the LM's input, unchanged) with the features' gradients routed through its
        backward to the ViT. Call once per forward, after `set`."""
        if not any(f.requires_grad for f in self.features):
            return lm_input
        return _GradientsAtInput.apply(lm_input, self.features, *self._sources)

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


class _GradientsAtInput(torch.autograd.Function):
    """Identity on the LM input; its backward, the last of the LM's, returns the gradients the
    feature leaves collected as the gradients of the ViT's tensors."""

    @staticmethod
    def forward(ctx, lm_input, leaves, *sources):
        ctx.leaves = leaves
        return lm_input.view_as(lm_input)

    @staticmethod
    def backward(ctx, grad):
        grads = []
        for leaf in ctx.leaves:
            grads.append(leaf.grad)
            leaf.grad = None
        return (grad, None, *grads)
