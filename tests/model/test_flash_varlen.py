"""The FlashAttention layout of query rows (model/flash_varlen.py) on the CPU: the kernel itself
runs only on a GPU (tests/gpu/test_flash_varlen.py), so here its documented semantics, written out
in plain PyTorch (flash_varlen.reference: per segment, causal rows aligned to the segment's last
key), must reproduce independent computations of the same attention: the dense core's masked CPU
path for a context-parallel rank's rows, and the DSA warm-up kernel's output and log-sum-exp
(interpreted) for the rows of a packed sequence, which the indexer KL reads."""
from __future__ import annotations

import torch

from model.dsa import DSAConfig
from model.dsa.kernels.attention import attn_fwd
from model.dsa.plan import build_plan, doc_starts_from_cu_seqlens
from model.flash_varlen import layout_of_rows, reference
from model.packed_attention import packed_attention_rows

SEED = torch.seed()


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_rows_of_a_context_parallel_rank_match_the_masked_dense_path():
    """Runs that start mid-document (CP's balanced chunks), two runs of one document, a run of a
    later document: the layout gathers each run's key prefix, which overlaps the previous run's."""
    g = torch.Generator().manual_seed(SEED)
    t, hq, hkv, d = 300, 4, 2, 16
    q_pos = torch.cat([torch.arange(0, 40), torch.arange(90, 130), torch.arange(200, 260)])
    q_doc = torch.cat([torch.zeros(40), torch.zeros(40), torch.full((60,), 180)]).long()
    q = torch.randn(len(q_pos), hq, d, generator=g)
    k, v = (torch.randn(t, hkv, d, generator=g) for _ in range(2))
    lay = layout_of_rows(q_pos, q_doc, "cpu")
    assert lay.key_rows is not None and lay.cu_q.tolist() == [0, 40, 80, 140]
    got, _ = reference(q, k, v, lay, True, d ** -0.5)
    want = packed_attention_rows(q, k, v, q_pos, q_doc, chunk=16)
    assert _rel(got, want) < 1e-5


def test_a_whole_pack_is_its_documents_and_matches_the_warmup_kernel_with_its_lse():
    g = torch.Generator().manual_seed(SEED)
    t, hq, hkv, d = 70, 4, 2, 16
    cu = torch.tensor([0, 23, 24, 70], dtype=torch.int32)
    pos = torch.arange(t, dtype=torch.int32)
    plan = build_plan(pos, doc_starts_from_cu_seqlens(cu, t), DSAConfig(block_q=8, stage="warmup"), True)
    lay = plan.varlen_layout()
    assert lay.key_rows is None and lay.cu_q.tolist() == cu.tolist() == lay.cu_k.tolist()
    assert (lay.max_q, lay.max_k) == (46, 46)
    q, k, v = (torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv))
    out, lse = reference(q, k, v, lay, True, d ** -0.5)
    out_k, lse_k = attn_fwd(q, k, v, plan, None, None, d ** -0.5, False)
    assert _rel(out, out_k) < 1e-5
    assert float((lse - lse_k).abs().max()) < 1e-4


def test_the_indexer_kl_reads_a_transposed_log_sum_exp_like_a_contiguous_one():
    """FlashAttention returns its lse as [Hq, Tq]; flash_varlen hands the KL its transpose, a view
    whose rows are not contiguous. The KL must read it by position, not by memory order."""
    from model.dsa.kernels.indexer_kl import indexer_kl

    g = torch.Generator().manual_seed(SEED)
    t, hq, hkv, d, hi, di = 40, 4, 2, 16, 2, 16
    pos = torch.arange(t, dtype=torch.int32)
    plan = build_plan(pos, torch.zeros(t, dtype=torch.int32), DSAConfig(block_q=8, stage="warmup"), True)
    q, k, v = (torch.randn(t, h, d, generator=g) for h in (hq, hkv, hkv))
    qi, ki, wi = torch.randn(t, hi, di, generator=g), torch.randn(t, di, generator=g), torch.randn(t, hi, generator=g)
    _, lse = attn_fwd(q, k, v, plan, None, None, d ** -0.5, False)
    as_flash = lse.t().contiguous().t()  # same values, FlashAttention's memory order
    assert not as_flash.is_contiguous()
    want, _ = indexer_kl(q, k, lse, qi, ki, wi, plan, None, None, d ** -0.5, False, False)
    got, _ = indexer_kl(q, k, as_flash, qi, ki, wi, plan, None, None, d ** -0.5, False, False)
    assert torch.allclose(got, want, rtol=0, atol=0)
