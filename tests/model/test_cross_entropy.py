"""The cross-entropy Triton passes (TRITON_INTERPRET=1 without CUDA) against PyTorch's
cross_entropy: per-row losses and the logits' gradient, bf16 and float32, a vocabulary that does
not fill the last block, ignored rows and a strided view."""
from __future__ import annotations

import pytest
import torch

from model import cross_entropy as ce


@pytest.mark.parametrize("dtype,n,v", [(torch.float32, 7, 300), (torch.bfloat16, 5, 5000), (torch.float32, 3, 64)])
def test_kernel_matches_pytorch(dtype, n, v, monkeypatch):
    monkeypatch.setattr(ce, "BLOCK_V", 128)  # several vocabulary blocks per row, the last one partial
    g = torch.Generator().manual_seed(n * v)
    logits = (torch.randn(n, v, generator=g) * 4).to(dtype)
    logits[0, 3] = 40.0  # one dominant logit: the online max must move
    targets = torch.randint(0, v, (n,), generator=g)
    targets[1] = -100
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, want = ce.cross_entropy_kernel(a, targets), ce.cross_entropy_reference(b, targets)
    assert got.dtype == torch.float32 and got[1] == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    w = torch.rand(n, generator=g)
    (got * w).sum().backward()
    (want * w).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(a.grad, b.grad, **tol)
    assert not a.grad[1].any()  # the ignored row gets no gradient


def test_strided_rows_and_bad_shapes():
    base = torch.randn(6, 2, 50)
    view = base[:, 1]  # rows 100 apart
    targets = torch.arange(6)
    torch.testing.assert_close(ce.cross_entropy_kernel(view, targets), ce.cross_entropy_reference(view, targets))
    with pytest.raises(ValueError, match="logits \\[N, V\\]"):
        ce.cross_entropy(torch.zeros(4, 5, 6), torch.zeros(4, dtype=torch.long))
