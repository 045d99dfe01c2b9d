"""Faster stand-ins for Megatron-core's plain-PyTorch fallbacks (what it runs without Apex or
Transformer Engine), on every device.

Why: Megatron's fallback for the gradient norm, `local_multi_tensor_l2_norm`, turns each
parameter's norm into a Python float before summing them: one wait for the GPU per parameter
tensor, about a thousand per step for the `small` preset (tests/bench/bench_parallel.py counts
them), each leaving the GPU idle while the host catches up. `grad_l2_norm` computes the same
norm (fp32, 2-norm of the per-tensor 2-norms) with torch's foreach kernels and leaves it on the
device; Megatron's clipping then reads it once. This is not the CPU compatibility layer
(model/megatron_compat.py, which only applies without a GPU): it applies wherever Megatron chose
this fallback.
"""
from __future__ import annotations

import torch


def grad_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Drop-in for Megatron's `local_multi_tensor_l2_norm`: ([1] float32 norm, None)."""
    tensors = [t for ts in tensor_lists for t in ts]
    if not tensors:
        return torch.zeros(1, dtype=torch.float32, device=noop_flag.device), None
    norms = torch._foreach_norm(tensors, 2)
    total = torch.linalg.vector_norm(torch.stack([n.to(torch.float32) for n in norms]), 2)
    return total.reshape(1), None


def apply() -> None:
    """Replace the fallback where Megatron's clipping uses it (idempotent)."""
    from megatron.core.optimizer import clip_grads
    from megatron.core.utils import local_multi_tensor_l2_norm

    if getattr(clip_grads, "l2_norm_impl", None) is local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = grad_l2_norm
