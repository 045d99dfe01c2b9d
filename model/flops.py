"""Model FLOPs of one training step on a pack: what "model TFLOP/s" in the benchmarks and the
training log divides by time.

fwd + bwd = 3 x fwd, matmuls only: 6 x (active matmul parameters) x tokens for the ViT, the
merger and the LM (expert FFNs at top-k), 6 x hidden x vocab per labeled token for the output
layer, and attention per layer: dense 6 x Hq x D x sum over documents of L^2 (causal), DSA
12 x Hq x D x (keys attended) plus the indexer's scores (2 x H_I x d_I x causal keys, forward
only); layers of DSASettings.dense_layers count as dense. The ViT's attention is dense within
frame groups. Recomputation is not counted (it is not model work), so these are the figures
comparable across frameworks.
"""
from __future__ import annotations

from itertools import pairwise

import torch


def moe_matmul_params(lm) -> int:
    """Matmul parameters one token meets in an MoE layer: its top-k experts' three projections
    and the router."""
    return lm.topk * 3 * lm.hidden * lm.expert_ffn + lm.hidden * lm.experts


def model_flops(cfg, batch, core_kind: str, granularity: str | None) -> float:
    lm, v = cfg.lm, cfg.vision
    s = batch.num_tokens
    n_patches = batch.pixel_patches.shape[0]
    cu = batch.cu_seqlens.tolist()
    docs = [b - a for a, b in pairwise(cu)]
    # LM matmuls per token: qkv + out projections, indexer projections, routed experts (top-k), router
    attn_proj = lm.hidden * (lm.heads + 2 * lm.kv_heads) * lm.head_dim + lm.heads * lm.head_dim * lm.hidden
    indexer_proj = lm.hidden * (lm.dsa.index_heads * lm.dsa.index_dim + lm.dsa.index_dim + lm.dsa.index_heads)
    sparse = lm.sparse_layers if core_kind == "dsa" else 0  # DSASettings.dense_layers attend densely
    flops = 6 * ((attn_proj + moe_matmul_params(lm)) * lm.layers + indexer_proj * sparse) * s
    flops += 6 * lm.hidden * lm.vocab * int((batch.labels != -100).sum())
    # ViT and merger
    vit_layer = 4 * v.hidden * v.hidden + 2 * v.hidden * v.ffn
    flops += 6 * (v.patch_values * v.hidden + v.layers * vit_layer) * n_patches
    flops += 6 * (16 * v.hidden * v.hidden + 4 * v.hidden * lm.hidden) * (n_patches // 4)
    groups = [(int(g), int(h) * int(w)) for g, h, w in batch.video_grid_thw.tolist()]
    flops += 3 * v.layers * sum(g * 4 * L * L * v.hidden for g, L in groups)
    # LM attention
    hd = lm.heads * lm.head_dim
    flops += (lm.layers - sparse) * 6 * hd * sum(L * L for L in docs)
    if sparse:
        k, bq = lm.dsa.topk, lm.dsa.block_q
        keys = 0
        for L in docs:
            pos = torch.arange(L, dtype=torch.float64)
            if granularity == "token":
                keys += float(torch.clamp(pos + 1, max=k).sum())
            else:  # block: k selected before the block plus the block's own causal keys
                blk_start = (pos // bq) * bq
                keys += float((torch.clamp(blk_start, max=k) + (pos - blk_start + 1)).sum())
        flops += sparse * 12 * hd * keys
        flops += sparse * 2 * lm.dsa.index_heads * lm.dsa.index_dim * sum(L * L / 2 for L in docs)
    return float(flops)
