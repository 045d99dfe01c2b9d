"""Packed attention as one FlashAttention call that also returns its log-sum-exp.

torch ships FlashAttention-2's variable-length kernels (aten::_flash_attention_forward/backward)
behind SDPA, reachable there only through nested tensors. Called directly they take a whole pack
in one launch (segments given by cumulative lengths, GQA keys not repeated, causal masks aligned
to the last key of each segment) and return the softmax log-sum-exp. DSA's indexer warm-up needs
exactly that (model/dsa/attention.py): its attention output from the fastest dense kernel, and
the lse with which the indexer KL kernel recomputes the dense attention distribution tile by tile
(never L x L) as the KL's target.

A segment's keys are a span of the key table: for a whole pack the documents themselves, for a
context-parallel rank's rows the document prefix up to each run's last row. Used only where the
kernel exists (`available`): a CUDA device, fp16/bf16, head dim a multiple of 8 up to 256.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VarlenLayout:
    """Segments of one call: queries [cu_q[i], cu_q[i+1]) attend keys [cu_k[i], cu_k[i+1]) of the
    key tensor passed (``key_rows`` gathers it from the key table when spans are not the table in
    order); max_q, max_k are host ints (the kernel sizes its grid from them)."""

    cu_q: torch.Tensor  # int32 [n + 1]
    cu_k: torch.Tensor  # int32 [n + 1]
    max_q: int
    max_k: int
    key_rows: torch.Tensor | None = None  # int64 [cu_k[-1]] rows of the key table, or None


def available(q: torch.Tensor, k: torch.Tensor) -> bool:
    d = q.shape[-1]
    return (hasattr(torch.ops.aten, "_flash_attention_forward") and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and k.dtype == q.dtype
            and d % 8 == 0 and d <= 256 and q.shape[1] % k.shape[1] == 0)


def layout_of_rows(pos: torch.Tensor, doc: torch.Tensor, device) -> VarlenLayout:
    """Rows at sorted global positions ``pos`` (document starts ``doc``; host int tensors), taken
    in runs of consecutive positions of one document; a run's keys are its document's prefix up to
    its last row, so the kernel's bottom-right causal alignment gives each row exactly keys
    doc..pos. For a whole pack the spans are the documents in order and no keys are gathered."""
    pos, doc = pos.to(torch.int64), doc.to(torch.int64)
    n = pos.numel()
    brk = torch.ones(n, dtype=torch.bool)
    brk[1:] = (pos[1:] != pos[:-1] + 1) | (doc[1:] != doc[:-1])
    starts = torch.nonzero(brk).flatten()
    ends = torch.cat([starts[1:], torch.tensor([n])])
    first_key, end_key = doc[starts], pos[ends - 1] + 1
    klen = end_key - first_key
    cu_k = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(klen, 0)])
    key_rows = None
    if bool((first_key != cu_k[:-1]).any()):  # spans overlap or skip rows: gather them in order
        key_rows = (torch.arange(int(cu_k[-1])) + torch.repeat_interleave(first_key - cu_k[:-1], klen)).to(device)
    i32 = lambda t: t.to(device=device, dtype=torch.int32)  # noqa: E731
    return VarlenLayout(i32(torch.cat([starts, torch.tensor([n])])), i32(cu_k), int((ends - starts).max()),
                        int(klen.max()), key_rows)


def reference(q, k, v, lay: VarlenLayout, causal: bool, scale: float):
    """What the kernel computes, in plain PyTorch (float32, one segment at a time): the CPU's
    stand-in in tests, and the check of the kernel on a GPU. Causal rows are aligned to the last
    key of their segment: row j of a segment of L queries and M keys sees its keys 0..M-L+j."""
    if lay.key_rows is not None:
        k, v = k.index_select(0, lay.key_rows), v.index_select(0, lay.key_rows)
    rep = q.shape[1] // k.shape[1]
    outs, lses = [], []
    cq, ck = lay.cu_q.tolist(), lay.cu_k.tolist()
    for i in range(len(cq) - 1):
        qs = q[cq[i]:cq[i + 1]].float().transpose(0, 1)
        ks = k[ck[i]:ck[i + 1]].float().repeat_interleave(rep, 1).transpose(0, 1)
        vs = v[ck[i]:ck[i + 1]].float().repeat_interleave(rep, 1).transpose(0, 1)
        s = qs @ ks.transpose(1, 2) * scale
        if causal:
            nq, nk = qs.shape[1], ks.shape[1]
            allowed = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
            s = s.masked_fill(~allowed.to(s.device), float("-inf"))
        lse = torch.logsumexp(s, -1)
        outs.append((torch.softmax(s, -1) @ vs).transpose(0, 1))
        lses.append(lse.transpose(0, 1))
    return torch.cat(outs).to(q.dtype), torch.cat(lses)


class _FlashVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lay: VarlenLayout, causal: bool, scale: float):
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, lay.cu_q, lay.cu_k, lay.max_q, lay.max_k, 0.0, causal, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, rng, unused)
        ctx.lay, ctx.causal, ctx.scale = lay, causal, scale
        lse_rows = _lse_by_row(lse, q.shape[0])
        ctx.mark_non_differentiable(lse_rows)
        return out, lse_rows

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, rng, unused = ctx.saved_tensors
        lay = ctx.lay
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            dout.contiguous(), q, k, v, out, lse, lay.cu_q, lay.cu_k, lay.max_q, lay.max_k, 0.0, ctx.causal,
            rng, unused, scale=ctx.scale)
        return dq, dk, dv, None, None, None


def _lse_by_row(lse: torch.Tensor, total_q: int) -> torch.Tensor:
    """The kernel's log-sum-exp [Hq, total_q] (FlashAttention >= 2.5's varlen layout) as
    [total_q, Hq], the DSA kernels' layout."""
    if lse.dim() != 2 or lse.shape[1] != total_q:
        raise RuntimeError(f"unexpected FlashAttention varlen log-sum-exp shape {tuple(lse.shape)} for "
                           f"{total_q} query rows (this torch's kernel is not the one longshot expects)")
    return lse.t()


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lay: VarlenLayout, causal: bool,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [Tq, Hq, D], lse [Tq, Hq] float32, natural log, no gradient) for q [Tq, Hq, D] and the
    key table k, v [Tk, Hkv, D] laid out by ``lay``; differentiable in q, k, v."""
    if lay.key_rows is not None:
        k, v = k.index_select(0, lay.key_rows), v.index_select(0, lay.key_rows)
    return _FlashVarlen.apply(q.contiguous(), k.contiguous(), v.contiguous(), lay, causal, scale)
