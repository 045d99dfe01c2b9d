"""The rotary Triton kernel compiled for the GPU (not the interpreter) against the PyTorch
rotation, at an LM layer's shapes: q (16 heads), a strided k view, the indexer's q and k."""
from __future__ import annotations

import pytest
import torch

from model.rope import multi_axis_cos_sin, rotary_reference
from model.rope_kernel import rotary_kernel


@pytest.mark.parametrize("heads,stride_heads", [(16, 1), (2, 9), (8, 1), (1, 1)])
def test_kernel_matches_reference_on_the_gpu(heads, stride_heads):
    t, d = 5000, 128
    pos = torch.randint(0, 100_000, (3, t), device="cuda")
    cos, sin = multi_axis_cos_sin(pos, (24, 20, 20), d, 1e6, "interleaved")
    base = torch.randn(t, heads * stride_heads, d, device="cuda", dtype=torch.bfloat16)
    x = base[:, ::stride_heads]
    xr, xk = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    want, got = rotary_reference(xr, cos, sin), rotary_kernel(xk, cos, sin)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(xk.grad, xr.grad, rtol=1e-2, atol=1e-2)
