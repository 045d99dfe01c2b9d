"""The cross-entropy Triton passes on the GPU at the LM's real vocabulary (151,936, bf16 logits)
against PyTorch's float32 cross_entropy: losses and the logits' gradient."""
from __future__ import annotations

import torch

from model.cross_entropy import cross_entropy, cross_entropy_reference


def test_kernel_matches_pytorch_at_the_real_vocabulary():
    n, v = 1000, 151_936
    logits = (torch.randn(n, v, device="cuda") * 3).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), device="cuda")
    targets[::7] = -100
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, want = cross_entropy(a, targets), cross_entropy_reference(b, targets)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    w = torch.rand(n, device="cuda")
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=2e-2, atol=1e-6)
