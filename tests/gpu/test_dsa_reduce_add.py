"""The DSA backward's float32 adds (model/dsa/kernels/reduce_add.py) on the GPU, where the inline
`red.v4` quads run (the CPU suite only ever runs tl.atomic_add): every mode gives the reference's
gradients at the production shapes, bf16 on the tensor cores (the accumulator layout the quads
regroup), block and token owners, full and partial key tiles, a packed sequence with documents cut
mid-block, and the indexer keys' gradient of the KL kernel."""
from __future__ import annotations

import pytest
import torch

from model.dsa import DSAConfig
from model.dsa.attention import dsa_attention_rows
from model.dsa.kernels import reduce_add
from model.dsa.plan import doc_starts_from_cu_seqlens

NAMES = ["q", "k", "v", "q_idx", "k_idx", "w_idx"]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _pack(gran: str, topk: int):
    """(shape, q_pos, q_doc, config): 3,000 tokens in three documents, one of them cut mid-block, at
    the production head size (16 / 2 heads of 128, indexer 4 x 64), blocks of 64 queries."""
    t, hq, hkv, d, hi, di = 3000, 16, 2, 128, 4, 64
    cu = torch.tensor([0, 1100, 1130, t], dtype=torch.int32, device="cuda")
    pos = torch.arange(t, dtype=torch.int32, device="cuda")
    cfg = DSAConfig(index_heads=hi, index_dim=di, topk=topk, granularity=gran, block_q=64)
    return (t, hq, hkv, d, hi, di), pos, doc_starts_from_cu_seqlens(cu, t), cfg


def _inputs(t, hq, hkv, d, hi, di, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g, device="cuda") * sc).bfloat16().requires_grad_()  # noqa: E731
    return [r(t, hq, d), r(t, hkv, d), r(t, hkv, d), r(t, hi, di, sc=0.3), r(t, di, sc=0.3), r(t, hi)]


@pytest.mark.parametrize("gran", ["block", "token"])
def test_every_add_mode_gives_the_reference_gradients(gran, monkeypatch):
    (t, hq, hkv, d, hi, di), pos, doc, cfg = _pack(gran, topk=256 if gran == "block" else 64)
    args = _inputs(t, hq, hkv, d, hi, di, seed=3)
    dout = torch.randn(t, hq, d, device="cuda", generator=torch.Generator(device="cuda").manual_seed(4)).bfloat16()
    grads, sel = {}, None
    for name, mode in reduce_add.MODES.items():
        # the KL target's head sums hold each element several times, which the quads would add more
        # than once (reduce_add.py): that kernel keeps tl.atomic_add
        monkeypatch.setattr(reduce_add, "DEFAULT", {k: reduce_add.ATOMIC if k == "target" else mode
                                                    for k in reduce_add.DEFAULT})
        out, loss, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton", sel=sel)
        sel = (aux["sel"], aux["sel_n"])  # every mode on the first mode's selection
        grads[name] = torch.autograd.grad((out.float() * dout.float()).sum() + 5 * loss, args)
    xs = [a.detach().float().requires_grad_() for a in args]
    out_r, loss_r, _ = dsa_attention_rows(*xs, pos, doc, cfg, backend="reference", sel=sel)
    want = torch.autograd.grad((out_r * dout.float()).sum() + 5 * loss_r, xs)
    for mode, got in grads.items():
        for name, a, b in zip(NAMES, got, want):
            assert torch.isfinite(a).all(), (mode, name)
            assert _rel(a, b) < 3e-2, (mode, name, _rel(a, b))
            # against Triton's own atomic_add: only the order of the float32 adds differs
            assert _rel(a, grads["atomic"][NAMES.index(name)]) < 1e-2, (mode, name)


@pytest.mark.parametrize("how", ["fused", "split, KV heads adding", "split, KV heads in one program"])
def test_the_kl_target_kernel_gives_the_reference_gradients(how, monkeypatch):
    """The indexer KL with its head-mean target inside the KL pass, or from its own kernel
    (indexer_kl.SPLIT_TARGET) in both of its launches, at the production head size on the tensor
    cores: the loss and indexer gradients of the reference on the same selection."""
    from model.dsa.kernels import indexer_kl as kl_mod

    monkeypatch.setitem(kl_mod.SPLIT_TARGET, "block", how != "fused")
    monkeypatch.setitem(kl_mod.TARGET_CONFIG, "block", kl_mod.TARGET_CONFIG["block"][:3] + (int("one" in how),))
    (t, hq, hkv, d, hi, di), pos, doc, cfg = _pack("block", topk=256)
    args = _inputs(t, hq, hkv, d, hi, di, seed=5)
    _, loss, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton")
    got = torch.autograd.grad(loss, args[3:])
    xs = [a.detach().float().requires_grad_() for a in args]
    _, loss_r, _ = dsa_attention_rows(*xs, pos, doc, cfg, backend="reference", sel=(aux["sel"], aux["sel_n"]))
    want = torch.autograd.grad(loss_r, xs[3:])
    assert abs(float(loss) - float(loss_r)) < 2e-2 * abs(float(loss_r)), (float(loss), float(loss_r))
    for name, a, b in zip(NAMES[3:], got, want):
        assert _rel(a, b) < 3e-2, (how, name, _rel(a, b))


@pytest.mark.parametrize("mode", list(reduce_add.MODES))
def test_the_kl_in_the_attention_backward_gives_the_reference_gradients(mode, monkeypatch):
    """Block owners' KL run in the attention's backward (KL_IN_BACKWARD), its target added by the
    backward kernel in each add mode, at the production head size on the tensor cores: the output,
    the reported loss and all six gradients of the reference on the same selection, with the loss's
    weight as its gradient."""
    from model.dsa import attention as dsa_api
    from model.dsa.functions import KLInBackward

    monkeypatch.setattr(dsa_api, "KL_IN_BACKWARD", True)
    monkeypatch.setitem(reduce_add.DEFAULT, "block", reduce_add.MODES[mode])
    (t, hq, hkv, d, hi, di), pos, doc, cfg = _pack("block", topk=256)
    args = _inputs(t, hq, hkv, d, hi, di, seed=6)
    dout = torch.randn(t, hq, d, device="cuda", generator=torch.Generator(device="cuda").manual_seed(7)).bfloat16()
    late = KLInBackward(5.0)
    out, loss, aux = dsa_attention_rows(*args, pos, doc, cfg, backend="triton", kl_in_backward=late)
    assert loss is late.value
    got = torch.autograd.grad((out.float() * dout.float()).sum(), args)
    xs = [a.detach().float().requires_grad_() for a in args]
    out_r, loss_r, _ = dsa_attention_rows(*xs, pos, doc, cfg, backend="reference", sel=(aux["sel"], aux["sel_n"]))
    want = torch.autograd.grad((out_r * dout.float()).sum() + 5 * loss_r, xs)
    assert abs(float(loss) - float(loss_r)) < 2e-2 * abs(float(loss_r)), (float(loss), float(loss_r))
    for name, a, b in zip(NAMES, got, want):
        assert torch.isfinite(a).all(), (mode, name)
        assert _rel(a, b) < 3e-2, (mode, name, _rel(a, b))
