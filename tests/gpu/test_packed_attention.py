"""Dense packed attention on the GPU (whole segments through SDPA's fused kernels) against the
CPU's float32 math path, which cuts long segments into query chunks with causal masks: documents
longer than the chunk, causal and bidirectional, GQA, forward and gradients."""
from __future__ import annotations

import pytest
import torch

from model.packed_attention import packed_attention


def _gpu_and_cpu(attend, inputs, dy):
    """{device: [out, *input grads]} of attend(*inputs) in bf16 on the GPU and float32 on the CPU."""
    grads = {}
    for dev, dtype in (("cuda", torch.bfloat16), ("cpu", torch.float32)):
        xs = [x.to(dev, dtype).requires_grad_() for x in inputs]
        out = attend(dev, *xs)
        out.backward(dy.to(dev, dtype))
        grads[dev] = [out.float().cpu()] + [x.grad.float().cpu() for x in xs]
    return grads


def _assert_close(grads):
    for got, want in zip(grads["cuda"], grads["cpu"]):
        assert float((got - want).norm() / want.norm()) < 2e-2


@pytest.mark.parametrize("causal", [True, False])
def test_whole_segments_on_the_gpu_match_the_chunked_cpu_path(causal):
    g = torch.Generator().manual_seed(3)
    cu = torch.tensor([0, 700, 3000, 3100, 5000])
    t, hq, hkv, d = int(cu[-1]), 8, 2, 128
    q, k, v = (torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv))
    dy = torch.randn(t, hq, d, generator=g)
    _assert_close(_gpu_and_cpu(lambda dev, *x: packed_attention(*x, cu.to(dev), causal=causal, chunk=512),
                               (q, k, v), dy))


def test_context_parallel_rows_on_the_gpu_match_the_masked_cpu_path():
    """A rank's rows as the balanced CP split leaves them (a document's first and last quarters,
    the second starting mid-document) against the gathered key table: the GPU's lower-right
    fused calls against the CPU's masked chunks."""
    from model.packed_attention import packed_attention_rows

    g = torch.Generator().manual_seed(5)
    t, hq, hkv, d = 4000, 8, 2, 128
    q_pos = torch.cat([torch.arange(0, 500), torch.arange(1000, 1300), torch.arange(3000, 4000)])
    q_doc = torch.cat([torch.zeros(500), torch.zeros(300), torch.full((1000,), 2500)]).long()
    q = torch.randn(len(q_pos), hq, d, generator=g)
    k, v = (torch.randn(t, hkv, d, generator=g) for _ in range(2))
    dy = torch.randn(len(q_pos), hq, d, generator=g)
    _assert_close(_gpu_and_cpu(lambda dev, *x: packed_attention_rows(*x, q_pos.to(dev), q_doc.to(dev), chunk=256),
                               (q, k, v), dy))


@pytest.mark.parametrize("causal", [False, True])
def test_many_short_runs_in_one_varlen_call_match_the_cpu_path(causal, monkeypatch):
    """More than ONE_CALL_RUNS runs of short segments (frame groups of clips of different sizes,
    in turn) take the one-call FlashAttention path: same output and gradients as the CPU's."""
    from model import packed_attention as pa

    g = torch.Generator().manual_seed(7)
    lengths = [96, 40, 40, 160, 8, 96, 40, 40, 160, 8, 96, 40, 40, 160, 8, 33]
    assert len(pa._runs_of_equal_length([0, *torch.tensor(lengths).cumsum(0).tolist()])) > pa.ONE_CALL_RUNS
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    t, hq, hkv, d = int(cu[-1]), 16, 16, 72
    q, k, v = (torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv))
    dy = torch.randn(t, hq, d, generator=g)
    calls, real = [], pa.flash_varlen.flash_varlen
    monkeypatch.setattr(pa.flash_varlen, "flash_varlen", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    grads = _gpu_and_cpu(lambda dev, *x: packed_attention(*x, cu.to(dev), causal=causal), (q, k, v), dy)
    assert calls == [1]  # the GPU pass took the one call; the CPU pass never does
    _assert_close(grads)
