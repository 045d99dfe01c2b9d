"""Next-token cross entropy over the vocabulary as two Triton passes on the bf16 logits.

Why a kernel: Megatron's vocab-parallel cross entropy (what the output layer used) upcasts the
logits to float32 and then makes some ten elementwise passes over them (max, subtract, exp, sum,
divide, the target gather, and again in backward). A 152K vocabulary makes every pass big: at
32,768 labeled tokens the logits are 10 GB in bf16 and 20 GB in float32, and the profile of the
keye-30b-a3b LM cut to 4 layers (tests/bench/RESULTS.md, issue 15) showed the loss taking ~0.29 s
of a 0.98 s forward + backward, more than all the expert GEMMs. Here the forward reads each
logit once (online max and sum of exponentials per row, in float32 registers) and keeps only the
row's log-sum-exp; the backward reads it once more and writes softmax - one-hot, scaled by the
row's incoming gradient, in the logits' dtype.

Rows whose target is `ignore_index` get loss 0 and gradient 0. On the CPU (and for tensor
parallel vocab shards, which this does not cover) the PyTorch reference runs instead; the tests
check the two against each other.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK_V = 4096


@triton.jit
def _ce_forward(logits_ptr, stride, targets_ptr, loss_ptr, lse_ptr, V, IGNORE,
                BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    cols = tl.arange(0, BLOCK)
    # per-lane running max and sum, combined once at the end; the max starts finite so that
    # masked lanes (-inf) add exp(-inf) = 0 and never form inf - inf
    m = tl.full((BLOCK,), -3.0e38, tl.float32)
    s = tl.zeros((BLOCK,), tl.float32)
    for off in range(0, V, BLOCK):
        x = tl.load(base + off + cols, mask=off + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
    top = tl.max(m, 0)
    lse = top + tl.log(tl.sum(s * tl.exp(m - top), 0))
    t = tl.load(targets_ptr + row)
    valid = t != IGNORE
    xt = tl.load(base + tl.where(valid, t, 0)).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - xt, 0.0))
    tl.store(lse_ptr + row, lse)


@triton.jit
def _ce_backward(logits_ptr, stride, grad_ptr, gstride, targets_ptr, lse_ptr, gout_ptr, V, IGNORE,
                 BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(targets_ptr + row)
    g = tl.where(t != IGNORE, tl.load(gout_ptr + row).to(tl.float32), 0.0)
    lse = tl.load(lse_ptr + row)
    cols = tl.arange(0, BLOCK)
    for off in range(0, V, BLOCK):
        c = off + cols
        x = tl.load(logits_ptr + row * stride + c, mask=c < V, other=0.0).to(tl.float32)
        d = (tl.exp(x - lse) - tl.where(c == t, 1.0, 0.0)) * g
        tl.store(grad_ptr + row * gstride + c, d.to(grad_ptr.dtype.element_ty), mask=c < V)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        n, v = logits.shape
        loss = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        if n:
            _ce_forward[(n,)](logits, logits.stride(0), targets, loss, lse, v, ignore_index, BLOCK=BLOCK_V)
        ctx.save_for_backward(logits, targets, lse)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, targets, lse = ctx.saved_tensors
        n, v = logits.shape
        grad = torch.empty_like(logits)
        if n:
            _ce_backward[(n,)](logits, logits.stride(0), grad, grad.stride(0), targets, lse,
                               grad_loss.contiguous(), v, ctx.ignore_index, BLOCK=BLOCK_V)
        return grad, None, None


def cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor,
                            ignore_index: int = -100) -> torch.Tensor:
    """Per-row losses [N] in float32 (PyTorch: the CPU path and the tests' reference)."""
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="none")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Per-row next-token losses [N] (float32) of logits [N, V] against targets [N]; the Triton
    passes on a GPU, the PyTorch reference elsewhere. Differentiable in the logits."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy wants logits [N, V] and targets [N], got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if not logits.is_cuda:
        return cross_entropy_reference(logits, targets, ignore_index)
    return cross_entropy_kernel(logits, targets, ignore_index)


def cross_entropy_kernel(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """The Triton passes, on any device Triton runs on (the interpreter included)."""
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return _CrossEntropy.apply(logits, targets.contiguous(), ignore_index)
