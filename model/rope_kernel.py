"""Rotary embedding as one Triton pass over q or k, forward and backward.

Why a kernel: written in PyTorch, the rotation is six float32 elementwise passes (upcast, two
halves, negate and concatenate, two products, a sum, downcast), and it runs on the attention's q
and k and the indexer's q and k, in forward, in the recomputed forward and in backward. At
262,144 tokens that cost ~0.95 s of a 6.4 s step on one H200 (tests/bench/RESULTS.md). Here each
element is read once and written once in its own dtype, the math is float32 in registers, and a
row's cos/sin are loaded once for all of its heads.

Half-split layout (model/rope.py): out[:half] = x1 c1 - x2 s1, out[half:] = x2 c2 + x1 s2. The
rotation is orthogonal, so the backward is the same kernel with the transposed rotation:
g1 c1 + g2 s2 and g2 c2 - g1 s1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.dsa.kernels.common import next_pow2

BLOCK_T = 16


@triton.jit
def _rotate(x_ptr, cos_ptr, sin_ptr, out_ptr, T, H, sxt, sxh, sct, sot, soh,
            HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr,
            TRANSPOSE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_HALF)
    m = (rows[:, None] < T) & (cols[None, :] < HALF)
    cs = rows[:, None] * sct + cols[None, :]
    c1 = tl.load(cos_ptr + cs, mask=m, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + cs + HALF, mask=m, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + cs, mask=m, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + cs + HALF, mask=m, other=0.0).to(tl.float32)
    if TRANSPOSE:  # first half takes +x2 s2, second half -x1 s1
        b1 = -s2
        b2 = -s1
    else:
        b1 = s1
        b2 = s2
    xs = rows[:, None] * sxt + cols[None, :]
    os = rows[:, None] * sot + cols[None, :]
    for h in range(H):
        x1 = tl.load(x_ptr + xs + h * sxh, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + xs + h * sxh + HALF, mask=m, other=0.0).to(tl.float32)
        o1 = x1 * c1 - x2 * b1
        o2 = x2 * c2 + x1 * b2
        tl.store(out_ptr + os + h * soh, o1.to(out_ptr.dtype.element_ty), mask=m)
        tl.store(out_ptr + os + h * soh + HALF, o2.to(out_ptr.dtype.element_ty), mask=m)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, transpose: bool) -> torch.Tensor:
    t, h, d = x.shape
    if d % 2:
        raise ValueError(f"rotary needs an even head dim, got {d}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty((t, h, d), dtype=x.dtype, device=x.device)
    if t == 0 or h == 0:
        return out
    _rotate[(triton.cdiv(t, BLOCK_T),)](
        x, cos, sin, out, t, h, x.stride(0), x.stride(1), cos.stride(0), out.stride(0), out.stride(1),
        HALF=d // 2, BLOCK_T=BLOCK_T, BLOCK_HALF=next_pow2(d // 2), TRANSPOSE=transpose)
    return out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, transpose=False)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _launch(grad, cos, sin, transpose=True), None, None


def rotary_kernel(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated by cos/sin [T, D] (half-split layout), in x's dtype; differentiable in
    x (positions carry no gradient)."""
    if cos.shape != (x.shape[0], x.shape[2]) or sin.shape != cos.shape:
        raise ValueError(f"cos/sin must be [T, D] = {(x.shape[0], x.shape[2])}, got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    return _Rotary.apply(x, cos.detach(), sin.detach())
