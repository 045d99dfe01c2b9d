"""The rotary Triton kernel (TRITON_INTERPRET=1 without CUDA) against the PyTorch rotation:
forward and gradient, bf16 and float32, strided views as the attention's split hands them over,
a head dim whose half is not a power of two, and rows that do not fill a block."""
from __future__ import annotations

import pytest
import torch

from model.rope import multi_axis_cos_sin, rotary_reference
from model.rope_kernel import rotary_kernel


@pytest.mark.parametrize("dtype,t,h,d", [(torch.float32, 37, 3, 16), (torch.bfloat16, 50, 4, 24),
                                         (torch.float32, 5, 1, 72)])
def test_kernel_matches_reference(dtype, t, h, d):
    g = torch.Generator().manual_seed(t * d)
    pos = torch.randint(0, 1000, (3, t), generator=g)
    half = d // 2
    sections = (half - 2 * (half // 3), half // 3, half // 3)
    cos, sin = multi_axis_cos_sin(pos, sections, d, 10000.0, "interleaved")
    # a strided view: k as the attention's qkv split leaves it (every other head of a wider row)
    base = torch.randn(t, 2 * h, d, generator=g).to(dtype)
    x = base[:, ::2]
    assert not x.is_contiguous()
    xr, xk = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    want, got = rotary_reference(xr, cos, sin), rotary_kernel(xk, cos, sin)
    # float32: the same products in another order; bf16: one rounding of the same float32 result
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got, want, **tol)
    grad = torch.randn(t, h, d, generator=g).to(dtype)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(xk.grad, xr.grad, **tol)


def test_gradient_is_the_inverse_rotation():
    """The backward undoes the forward (the rotation is orthogonal): rotating, then applying the
    gradient map to the result, gives the input back."""
    t, h, d = 9, 2, 8
    pos = torch.arange(t)[None].repeat(3, 1) * 7
    cos, sin = multi_axis_cos_sin(pos, (2, 1, 1), d, 10000.0)
    x = torch.randn(t, h, d, requires_grad=True)
    y = rotary_kernel(x, cos, sin)
    (back,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
    torch.testing.assert_close(back, x.detach(), rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="cos/sin must be"):
        rotary_kernel(torch.zeros(4, 2, 8), torch.zeros(3, 8), torch.zeros(3, 8))
