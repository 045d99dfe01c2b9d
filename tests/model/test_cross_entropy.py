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


def test_lm_head_through_the_kernel_equals_the_reference(pg, monkeypatch):
    """The whole VLM's loss and gradients with the LM head's loss in the Triton passes (as on a
    GPU; here interpreted), in several checkpointed output-layer chunks, against the PyTorch path."""
    import model.lm as lm_module
    from model.build import build_vlm
    from model.presets import preset
    from tests.model.vlm_batches import make_batch

    cfg = preset("tiny")
    torch.manual_seed(3)
    model = build_vlm(cfg, pg)
    batch = make_batch(cfg.lm.vocab, cfg.vision_token_id)
    monkeypatch.setattr(lm_module, "HEAD_CHUNK", 8)  # the labeled rows in several recomputed chunks
    assert int((batch.labels != -100).sum()) > 16
    got = {}
    for name, fn in (("kernel", ce.cross_entropy_kernel), ("reference", ce.cross_entropy_reference)):
        monkeypatch.setattr(lm_module, "cross_entropy", fn)
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out.ce.backward()
        got[name] = (out.ce.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (ce_k, g_k), (ce_r, g_r) = got["kernel"], got["reference"]
    torch.testing.assert_close(ce_k, ce_r, rtol=1e-5, atol=1e-6)
    assert g_k.keys() == g_r.keys() and "language.output_layer.weight" in g_k
    for n in g_r:
        torch.testing.assert_close(g_k[n], g_r[n], rtol=1e-4, atol=1e-6, msg=n)
