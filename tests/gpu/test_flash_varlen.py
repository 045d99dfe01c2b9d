"""FlashAttention-2's packed kernel as longshot calls it (model/flash_varlen.py) against the plain
PyTorch statement of what it should compute (flash_varlen.reference, float32), and the DSA
warm-up on it against the warm-up on the DSA kernel: the output, the indexer loss (whose target
reads the kernel's log-sum-exp) and the gradients."""
from __future__ import annotations

import pytest
import torch

from model.flash_varlen import available, flash_varlen, layout_of_rows, reference


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("rows", ["pack", "cp_rank"])
def test_kernel_matches_its_reference_with_lse_and_gradients(rows):
    g = torch.Generator().manual_seed(11)
    t, hq, hkv, d = 5000, 16, 2, 128
    if rows == "pack":
        q_pos = torch.arange(t)
        q_doc = torch.repeat_interleave(torch.tensor([0, 700, 3000, 3100]), torch.tensor([700, 2300, 100, 1900]))
    else:
        q_pos = torch.cat([torch.arange(0, 500), torch.arange(1000, 1300), torch.arange(3000, 4000)])
        q_doc = torch.cat([torch.zeros(800), torch.full((1000,), 2500)]).long()
    lay = layout_of_rows(q_pos, q_doc, "cuda")
    assert (lay.key_rows is None) == (rows == "pack")
    q = torch.randn(len(q_pos), hq, d, generator=g).cuda().bfloat16().requires_grad_()
    k, v = (torch.randn(t, hkv, d, generator=g).cuda().bfloat16().requires_grad_() for _ in range(2))
    assert available(q, k)
    dy = torch.randn(q.shape, generator=g).cuda().bfloat16()
    out, lse = flash_varlen(q, k, v, lay, True, d ** -0.5)
    grads = torch.autograd.grad(out, (q, k, v), dy)
    xs = [x.detach().float().requires_grad_() for x in (q, k, v)]
    out_r, lse_r = reference(*xs, lay, True, d ** -0.5)
    grads_r = torch.autograd.grad(out_r, xs, dy.float())
    assert _rel(out, out_r) < 1e-2
    assert float((lse - lse_r).abs().max()) < 2e-2
    for a, b in zip(grads, grads_r):
        assert _rel(a, b) < 2e-2


def test_dsa_warmup_on_flash_matches_the_dsa_kernel():
    from dataclasses import replace

    from model.dsa import DSAConfig, dsa_attention

    g = torch.Generator().manual_seed(12)
    t, hq, hkv, d, hi, di = 6000, 16, 2, 128, 4, 64
    cu = torch.tensor([0, 1500, 1501, 6000], dtype=torch.int32, device="cuda")
    r = lambda *s: torch.randn(*s, generator=g).cuda().bfloat16().requires_grad_()  # noqa: E731
    q, k, v, qi, ki, wi = r(t, hq, d), r(t, hkv, d), r(t, hkv, d), r(t, hi, di), r(t, di), r(t, hi)
    dy = torch.randn(t, hq, d, generator=g).cuda().bfloat16()
    cfg = DSAConfig(index_heads=hi, index_dim=di, stage="warmup")
    res = {}
    for kernel in ("flash", "triton"):
        out, loss = dsa_attention(q, k, v, qi, ki, wi, cu, replace(cfg, warmup_kernel=kernel), backend="triton")
        res[kernel] = (out, loss, torch.autograd.grad((out.float() * dy).sum() + 100 * loss, (q, k, v, qi, ki, wi)))
    (o1, l1, g1), (o2, l2, g2) = res["flash"], res["triton"]
    assert _rel(o1, o2) < 1e-2
    assert abs(float(l1) - float(l2)) <= 1e-2 * abs(float(l2))
    for name, a, b in zip(["q", "k", "v", "q_idx", "k_idx", "w_idx"], g1, g2):
        assert _rel(a, b) < 3e-2, (name, _rel(a, b))
