"""Autograd Functions around the Triton kernels.

SparseAttention: out = attention over each owner's keys; backward gives dq, dk, dv (for token
owners optionally over merged groups of neighbours, ``bwd_groups``: the same gradients).
IndexerKL: loss = mean over query rows of KL(p_t || softmax(I_t)); q, k and the attention lse enter
as constants (the target is detached), so its gradient reaches only q_idx, k_idx and w_idx.
SparseAttentionKL: both in one, the KL run in the attention's backward (KLInBackward says why).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .kernels.attention import attn_bwd, attn_fwd
from .kernels.indexer_kl import indexer_kl, target_buffer
from .merge import merge_selection
from .plan import Plan


class SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: Plan, sel, sel_n, scale: float, token: bool, bits=None,
                bwd_groups: Plan | None = None):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = attn_fwd(q, k, v, plan, sel, sel_n, scale, token, bits=bits)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.sel, ctx.sel_n, ctx.scale, ctx.token, ctx.bits = plan, sel, sel_n, scale, token, bits
        ctx.bwd_groups = bwd_groups
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        plan, sel, sel_n, token, bits = ctx.plan, ctx.sel, ctx.sel_n, ctx.token, ctx.bits
        if ctx.bwd_groups is not None:  # token rows: the same (query, head) rows, walked by groups
            sel, bits, sel_n = merge_selection(plan, ctx.bwd_groups, sel, sel_n)
            plan, token = ctx.bwd_groups, False
        dq, dk, dv = attn_bwd(q, k, v, out, lse, dout, plan, sel, sel_n, ctx.scale, token, bits=bits)
        return dq, dk, dv, None, None, None, None, None, None, None


def _indexer_grads(grads, f, dtypes) -> tuple:
    """The KL kernel's float32 gradients of sum_t KL_t (dq_I, dk_I, dw) times ``f`` (the loss's
    gradient over the query count), in the indexer inputs' dtypes."""
    return tuple((x * f).to(dt) for x, dt in zip(grads, dtypes))


class IndexerKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_idx, k_idx, w_idx, q, k, lse, plan: Plan, sel, sel_n, scale: float, token: bool, bits=None):
        with_grad = any(ctx.needs_input_grad[:3])
        q_idx, k_idx, w_idx = q_idx.contiguous(), k_idx.contiguous(), w_idx.contiguous()
        kl, grads = indexer_kl(q.contiguous(), k.contiguous(), lse, q_idx, k_idx, w_idx, plan, sel, sel_n,
                               scale, token, with_grad, bits=bits)
        ctx.n = q.shape[0]
        ctx.dtypes = (q_idx.dtype, k_idx.dtype, w_idx.dtype)
        if with_grad:
            ctx.save_for_backward(*grads)
        return kl.sum() / ctx.n

    @staticmethod
    def backward(ctx, g):
        if not ctx.saved_tensors:
            return (None,) * 12
        return _indexer_grads(ctx.saved_tensors, g / ctx.n, ctx.dtypes) + (None,) * 9


@dataclass
class KLInBackward:
    """The indexer KL of block owners computed in the attention's backward, from the P that the
    backward recomputes anyway: its kernel adds the head-mean probabilities into the KL's target
    as it goes, which saves the target's own kernel (a second pass over every selected key tile;
    tests/bench/RESULTS.md). Possible because the KL's gradient weight is known in forward (the
    loss is not backpropagated through the model: model/attention.py injects it). ``value``
    receives the mean KL times ``report_scale`` when the backward runs; until then it holds NaN,
    so a read before backward cannot pass for a loss."""

    weight: float
    report_scale: float = 1.0
    value: torch.Tensor | None = field(default=None, repr=False)


class SparseAttentionKL(torch.autograd.Function):
    """SparseAttention whose backward also runs the indexer KL (KLInBackward) and returns the
    gradients of q_idx, k_idx, w_idx for the loss weight ``kl.weight``. The target buffer lives
    only within the backward. If it would not fit (indexer_kl.target_buffer), the KL takes its own
    target kernel there instead."""

    @staticmethod
    def forward(ctx, q, k, v, q_idx, k_idx, w_idx, plan: Plan, sel, sel_n, scale: float, kl: KLInBackward):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = attn_fwd(q, k, v, plan, sel, sel_n, scale, False)
        ctx.save_for_backward(q, k, v, out, lse, q_idx.detach().contiguous(), k_idx.detach().contiguous(),
                              w_idx.detach().contiguous())
        ctx.plan, ctx.sel, ctx.sel_n, ctx.scale, ctx.kl = plan, sel, sel_n, scale, kl
        ctx.dtypes = (q_idx.dtype, k_idx.dtype, w_idx.dtype)
        if kl.value is None:
            kl.value = torch.full((), float("nan"), dtype=torch.float32, device=q.device)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, q_idx, k_idx, w_idx = ctx.saved_tensors
        plan, sel, sel_n, scale = ctx.plan, ctx.sel, ctx.sel_n, ctx.scale
        target = target_buffer(plan, sel, q)
        dq, dk, dv = attn_bwd(q, k, v, out, lse, dout, plan, sel, sel_n, scale, False, target=target)
        kl, (dqi, dki, dwi) = indexer_kl(q, k, lse, q_idx, k_idx, w_idx, plan, sel, sel_n, scale, False, True,
                                         target=target)
        target = None
        n = q.shape[0]
        ctx.kl.value.copy_(kl.sum() / n * ctx.kl.report_scale)
        return (dq, dk, dv) + _indexer_grads((dqi, dki, dwi), ctx.kl.weight / n, ctx.dtypes) + (None,) * 5
