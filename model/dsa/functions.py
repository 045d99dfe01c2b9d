"""Autograd Functions around the Triton kernels.

SparseAttention: out = attention over each owner's keys; backward gives dq, dk, dv.
IndexerKL: loss = mean over query rows of KL(p_t || softmax(I_t)); q, k and the attention lse enter
as constants (the target is detached), so its gradient reaches only q_idx, k_idx and w_idx.
"""
from __future__ import annotations

import torch

from .kernels.attention import attn_bwd, attn_fwd
from .kernels.indexer_kl import indexer_kl
from .plan import Plan


class SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: Plan, sel, sel_n, scale: float, token: bool, bits=None):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = attn_fwd(q, k, v, plan, sel, sel_n, scale, token, bits=bits)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.sel, ctx.sel_n, ctx.scale, ctx.token, ctx.bits = plan, sel, sel_n, scale, token, bits
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attn_bwd(q, k, v, out, lse, dout, ctx.plan, ctx.sel, ctx.sel_n, ctx.scale, ctx.token,
                              bits=ctx.bits)
        return dq, dk, dv, None, None, None, None, None, None


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
        dqi, dki, dwi = ctx.saved_tensors
        f = g / ctx.n
        dts = ctx.dtypes
        return ((dqi * f).to(dts[0]), (dki * f).to(dts[1]), (dwi * f).to(dts[2]),
                None, None, None, None, None, None, None, None, None)
