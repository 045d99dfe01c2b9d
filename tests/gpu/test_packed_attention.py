"""Dense packed attention on the GPU (whole segments through SDPA's fused kernels) against the
CPU's float32 math path, which cuts long segments into query chunks with causal masks: documents
longer than the chunk, causal and bidirectional, GQA, forward and gradients."""
from __future__ import annotations

import pytest
import torch

from model.packed_attention import packed_attention


@pytest.mark.parametrize("causal", [True, False])
def test_whole_segments_on_the_gpu_match_the_chunked_cpu_path(causal):
    g = torch.Generator().manual_seed(3)
    cu = torch.tensor([0, 700, 3000, 3100, 5000])
    t, hq, hkv, d = int(cu[-1]), 8, 2, 128
    q, k, v = (torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv))
    dy = torch.randn(t, hq, d, generator=g)
    grads = {}
    for dev, dtype in (("cuda", torch.bfloat16), ("cpu", torch.float32)):
        xs = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)]
        out = packed_attention(*xs, cu.to(dev), causal=causal, chunk=512)
        out.backward(dy.to(dev, dtype))
        grads[dev] = [out.float().cpu()] + [x.grad.float().cpu() for x in xs]
    for got, want in zip(grads["cuda"], grads["cpu"]):
        assert float((got - want).norm() / want.norm()) < 2e-2
