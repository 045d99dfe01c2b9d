"""dsa_attention: the entry a model layer calls (packed documents, GQA, autograd).

    out, indexer_loss = dsa_attention(q, k, v, q_idx, k_idx, w_idx, cu_seqlens, cfg)

q [T, Hq, D], k/v [T, Hkv, D], q_idx [T, H_I, d_I], k_idx [T, d_I], w_idx [T, H_I], cu_seqlens
int32 [n_docs + 1]. A query sees only keys at or before itself in its own document.

stage ``warmup``: out is dense causal attention; indexer_loss = mean_t KL(p_t || softmax I_t) over
  every visible key, p_t the head-mean attention distribution.
stage ``sparse``: keys are selected by the indexer (no gradient: top-k is a hard choice), out is
  attention over them, and indexer_loss is the same KL over each query's attended set.

What is detached, in both stages: the KL's target p_t is computed from q and k without gradient,
so indexer_loss trains only what produced q_idx, k_idx and w_idx, and out's gradient reaches only
q, k and v. DSA cannot see the hidden state h that the indexer projects: in sparse training the
model must pass q_idx, k_idx, w_idx computed from h.detach() so that the indexer loss does not
reach the backbone (DeepSeek-V3.2's rule). In the warm-up the model freezes all but the indexer.

Token mode with ``cfg.token_merge`` = m > 1 runs the kernels on groups of m neighbouring queries
over the union of their selections, each query masked to its own keys (merge.py): token mode's
result with each union row read once per group. ``cfg.token_merge_backward`` = m > 1 (with
token_merge 1) does so for the attention's backward alone.

The warm-up's dense attention on a GPU is FlashAttention-2's packed kernel (model/flash_varlen.py,
``DSAConfig.warmup_kernel``); its log-sum-exp feeds the KL kernel as the DSA kernel's would.

Backends: ``set_backend("triton" | "reference")`` picks the module-wide default; the ``backend``
argument overrides it per call. The reference (reference.py) is plain chunked PyTorch.

Context parallelism: ``dsa_attention_rows`` takes a chunk of query rows given by global position
and document start against the whole (all-gathered) key table; see plan.py for the block rule.

A caller that knows the indexer loss's gradient weight in forward (model/attention.py injects it)
can pass ``kl_in_backward`` (functions.KLInBackward): with KL_IN_BACKWARD on, block owners' KL then
runs in the attention's backward, its target added by the backward kernel, and the returned loss
is a tensor that the backward fills.
"""
from __future__ import annotations

import math
import os

import torch

from model import flash_varlen

from . import reference as ref
from .config import DSAConfig
from .functions import IndexerKL, KLInBackward, SparseAttention, SparseAttentionKL
from .merge import merge_selection, merged_plan
from .plan import Plan, build_plan, doc_starts_from_cu_seqlens
from .select import select

_BACKEND = "triton"

# Block owners' indexer KL in the attention's backward when the caller allows (kl_in_backward);
# LONGSHOT_KL_IN_BACKWARD=1 turns it on. Off: on an H200 the backward's target adds cost more than
# the target kernel they replace (+21.1 ms against 14.6 at 128K, +41.4 against 29.3 at 256K; the
# kernel then spills 288 bytes against 48), so the layer ran 117.2 ms against 110.7 and 245.4 against
# 233.1, with 1-2 GiB more peak memory (tests/bench/RESULTS.md, 2026-12-07).
KL_IN_BACKWARD = os.environ.get("LONGSHOT_KL_IN_BACKWARD", "0").strip() == "1"


def set_backend(name: str) -> None:
    """Module-wide default backend: ``triton`` (kernels) or ``reference`` (plain PyTorch)."""
    global _BACKEND
    if name not in ("triton", "reference"):
        raise ValueError(f"backend must be 'triton' or 'reference', got {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def _check(q, k, v, q_idx, k_idx, w_idx, cfg: DSAConfig) -> None:
    tq, hq, d = q.shape
    if k.shape != v.shape or k.shape[2] != d or hq % k.shape[1]:
        raise ValueError(f"need k, v [Tk, Hkv, D] with Hq % Hkv == 0; got q {tuple(q.shape)} k {tuple(k.shape)}")
    if q_idx.shape != (tq, cfg.index_heads, cfg.index_dim):
        raise ValueError(f"q_idx must be [T, {cfg.index_heads}, {cfg.index_dim}], got {tuple(q_idx.shape)}")
    if k_idx.shape != (k.shape[0], cfg.index_dim) or w_idx.shape != (tq, cfg.index_heads):
        raise ValueError(f"k_idx must be [Tk, d_I] and w_idx [T, H_I]; got {tuple(k_idx.shape)}, {tuple(w_idx.shape)}")


def dsa_attention_rows(q, k, v, q_idx, k_idx, w_idx, q_pos, q_doc, cfg: DSAConfig, softmax_scale=None,
                       backend: str | None = None, sel=None, plans: dict | None = None,
                       memo: dict | None = None, with_loss: bool = True,
                       kl_in_backward: KLInBackward | None = None):
    """DSA for query rows at global positions q_pos (sorted) with document starts q_doc.

    k, v, k_idx are the global key table (row = global position). Returns (out, loss, aux) with
    aux = dict(plan=..., sel=..., sel_n=...) for callers that reuse the selection (tests, CP).
    ``sel`` (with its counts, as (sel, sel_n)) overrides the selection. ``plans``: a cache of
    plans for these same rows (one per config and stage), shared by the layers of one pack.
    ``memo``: one layer's store for its selection: the first call fills it, a later call on the
    same inputs (the layer's recomputation in backward) reads it instead of selecting again.
    ``with_loss=False`` skips the indexer KL (loss is then None): the first, graph-less forward of
    a recomputed layer, whose recomputation computes the loss and its gradients once.
    ``kl_in_backward``: see the module docstring; the returned loss is then ``kl_in_backward.value``
    when that path was taken (block owners, Triton, gradients wanted), and the usual loss otherwise.
    """
    _check(q, k, v, q_idx, k_idx, w_idx, cfg)
    backend = backend or _BACKEND
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dense = cfg.stage == "warmup"
    plan = _plan(plans, cfg, lambda: build_plan(q_pos, q_doc, cfg, dense))
    sel_n = None
    if not dense:
        if sel is None and memo:
            sel = memo["sel"]
        if sel is not None:
            sel, sel_n = sel
        elif backend == "triton":
            sel, sel_n = select(q_idx.detach(), k_idx.detach(), w_idx.detach(), plan, cfg)
        else:
            sel, sel_n = ref.select(q_idx.detach(), k_idx.detach(), w_idx.detach(), plan, cfg)
        if memo is not None and not memo:
            memo["sel"] = (sel, sel_n)
    aux = dict(plan=plan, sel=sel, sel_n=sel_n)
    if backend == "reference":
        out, loss = ref.attention_and_kl(q, k, v, q_idx, k_idx, w_idx, plan, sel, scale, want_kl=with_loss)
        return out, loss, aux
    token = cfg.granularity == "token" and not dense
    bits = bwd_groups = None
    if token and cfg.token_merge == 1 and cfg.token_merge_backward > 1:
        bwd_groups = _plan(plans, cfg, lambda: merged_plan(aux["plan"], cfg.token_merge_backward), "merged-bwd")
    if token and cfg.token_merge > 1:  # groups of neighbours over the union of their selections
        plan = _plan(plans, cfg, lambda: merged_plan(aux["plan"], cfg.token_merge), "merged")
        sel, bits, sel_n = merge_selection(aux["plan"], plan, sel, sel_n)
        token = False
    if (with_loss and kl_in_backward is not None and KL_IN_BACKWARD and not dense and not token and bits is None
            and torch.is_grad_enabled() and (q_idx.requires_grad or k_idx.requires_grad or w_idx.requires_grad)):
        out, _ = SparseAttentionKL.apply(q, k, v, q_idx, k_idx, w_idx, plan, sel, sel_n, scale, kl_in_backward)
        return out, kl_in_backward.value, aux
    if dense and cfg.warmup_kernel == "flash" and flash_varlen.available(q, k):
        out, lse = flash_varlen.flash_varlen(q, k, v, plan.varlen_layout(), True, scale)
    else:
        out, lse = SparseAttention.apply(q, k, v, plan, sel, sel_n, scale, token, bits, bwd_groups)
    loss = None
    if with_loss:
        loss = IndexerKL.apply(q_idx, k_idx, w_idx, q.detach(), k.detach(), lse.detach(), plan, sel, sel_n, scale,
                               token, bits)
    return out, loss, aux


def _plan(plans: dict | None, cfg: DSAConfig, make, kind: str = "") -> Plan:
    """The plan for ``cfg``'s stage from ``plans`` (a per-pack cache; see CoreChoice.plans), made
    and kept there on first use; ``kind`` names a derived plan (the merged token groups)."""
    key = (cfg, cfg.stage == "warmup") + ((kind,) if kind else ())
    plan = plans.get(key) if plans is not None else None
    if plan is None:
        plan = make()
        if plans is not None:
            plans[key] = plan
    return plan


def dsa_attention(q, k, v, q_idx, k_idx, w_idx, cu_seqlens, cfg: DSAConfig, softmax_scale=None,
                  backend: str | None = None, plans: dict | None = None, memo: dict | None = None,
                  with_loss: bool = True, kl_in_backward: KLInBackward | None = None):
    """(out [T, Hq, D], indexer_loss scalar float32) for a packed sequence; see the module docstring.
    ``plans``: a per-pack cache shared by the layers; ``memo``, ``with_loss``, ``kl_in_backward``: see
    dsa_attention_rows."""
    t = q.shape[0]

    def whole_pack() -> Plan:
        q_doc = doc_starts_from_cu_seqlens(cu_seqlens.to(q.device), t)
        q_pos = torch.arange(t, device=q.device, dtype=torch.int32)
        return build_plan(q_pos, q_doc, cfg, cfg.stage == "warmup")

    plans = plans if plans is not None else {}
    plan = _plan(plans, cfg, whole_pack)
    out, loss, _ = dsa_attention_rows(q, k, v, q_idx, k_idx, w_idx, plan.q_pos, plan.q_doc, cfg,
                                      softmax_scale, backend, plans=plans, memo=memo, with_loss=with_loss,
                                      kl_in_backward=kl_in_backward)
    return out, loss


__all__ = ["dsa_attention", "dsa_attention_rows", "set_backend", "get_backend", "KLInBackward", "Plan"]
