"""Configuration of DeepSeek Sparse Attention adapted to GQA (see ../shared/DESIGN.md, "DSA for GQA").

One frozen dataclass so that a model layer, the kernels and the reference read the same knobs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Queries of one merged token group: one bit each in the int32 masks of model/dsa/merge.py.
MAX_TOKEN_MERGE = 16


@dataclass(frozen=True)
class DSAConfig:
    """Knobs of one DSA layer.

    index_heads / index_dim: H_I and d_I of the lightning indexer (q_idx is [T, H_I, d_I]).
    topk: k, the number of keys each query (``token``) or each query block (``block``) selects.
    granularity:
      ``token``: every query its own top-k over the keys at or before it (DeepSeek's rule);
      ``block``: the queries of a block of ``block_q`` consecutive tokens of one document share
        the top-k of their aggregated indexer scores over the keys *before* the block, and always
        attend (causally) to the block's own keys. Each query thus sees at most k + block_q keys,
        and a query with at most k visible keys sees all of them. The block's own keys are pinned
        because an aggregate over the block is undefined for them (only some of the block's
        queries may see them) and because it guarantees every query at least itself.
    block_q: B_q, the block length of ``block`` mode (and the query tile of the dense warm-up).
    block_agg: how ``block`` mode scores each candidate key for a block (one row per block):
      ``max`` keeps any key that is strong for at least one query of the block;
      ``sum`` ranks keys by their total score over the block;
      ``pooled`` scores keys once with the block's pooled indexer query: the sums over the block's
        queries of q_I[t, j] and of w[t, j], put through the same formula. B_q times fewer FLOPs than
        exact max/sum, which score B_q query rows per key; per-query peaks are diluted by the pooling.
        Sums rather than means: relu is positively homogeneous, so the ranking is the same, and
        integer test inputs stay exact.
    coarse: coarse-to-fine selection for ``max``/``sum`` when > 0: the pooled scores first pick
      ``coarse * topk`` candidate keys per block, then the exact max/sum aggregation runs over those
      candidates only: B_q x coarse*topk exact pairs per block instead of B_q x every earlier key,
      plus the pooled pass and a second, small top-k. 0 = exact max/sum over every key (the
      full-resolution indexer: 426 ms of a 726 ms layer at 256K). Ignored by ``token`` and ``pooled``.
    Default ``max`` with ``coarse=2``, from the numbers in tests/bench/RESULTS.md (H100, 2026-11-24):
      at 256K the layer's forward+backward takes 325 ms (11.4x SDPA; 6.2x at 128K) against 726 ms
      for exact max and 310 ms for ``pooled``; on the synthetic video-structured indexer
      (``bench_dsa.py --quality``, three seeds/frame sizes) it keeps at least as much of each query's
      own top-k mass as exact max (mean and 5th percentile; its single worst query keeps less), while
      ``pooled`` loses 1.4-2 points at the 5th percentile. The 5% over ``pooled`` buys that tail.
      On a trained (tiny, demo-pack) indexer no rule wins on both layers and every rule's tail is
      poor (``bench_indexer_quality.py``, RESULTS.md): the default stays until a real-size
      indexer is measured. A copying small-shape model that lost its copy at the switch to sparse
      (RESULTS.md, 2026-12-07) lost it alike under this default, exact max and token mode. The
      cause was its layer 0, whose diffuse attention no top-k keeps, not the coarse pass:
      DSASettings.dense_layers keeps such layers dense.
    stage: ``warmup`` = dense causal attention, the indexer trains on KL(head-mean dense attention
      || indexer); ``sparse`` = attention over the selected keys, the indexer trains on the KL over
      the selected set.
    token_merge: ``token`` mode on the Triton path: m > 1 runs the attention and the KL on groups of
      m neighbouring queries that read the union of their selections once, each masked to its own
      keys (model/dsa/merge.py; same result, fewer bytes); 1 = one program per query. At most 16.
    token_merge_backward: with token_merge 1, m > 1 merges the groups for the attention's backward
      alone (the union built in backward): the forward and the KL keep one program per query, while
      the backward, whose float32 dK, dV adds per gathered row are most of token mode's bytes, adds
      each union row once per group. Ignored when token_merge > 1 (everything is merged then).
    warmup_kernel: the warm-up's dense attention on the Triton path: ``flash`` = FlashAttention-2's
      packed kernel (model/flash_varlen.py) where it runs (CUDA, bf16/fp16), else the DSA kernel
      over each block's whole causal prefix (``triton``, also the choice everywhere else).
    """

    index_heads: int = 8
    index_dim: int = 128
    topk: int = 2048
    granularity: Literal["token", "block"] = "block"
    block_q: int = 64
    stage: Literal["warmup", "sparse"] = "sparse"
    block_agg: Literal["max", "sum", "pooled"] = "max"
    coarse: int = 2
    warmup_kernel: Literal["flash", "triton"] = "flash"
    token_merge: int = 1
    token_merge_backward: int = 1

    def __post_init__(self) -> None:
        if self.granularity not in ("token", "block"):
            raise ValueError(f"granularity must be 'token' or 'block', got {self.granularity!r}")
        if self.stage not in ("warmup", "sparse"):
            raise ValueError(f"stage must be 'warmup' or 'sparse', got {self.stage!r}")
        if self.block_agg not in ("max", "sum", "pooled"):
            raise ValueError(f"block_agg must be 'max', 'sum' or 'pooled', got {self.block_agg!r}")
        if self.warmup_kernel not in ("flash", "triton"):
            raise ValueError(f"warmup_kernel must be 'flash' or 'triton', got {self.warmup_kernel!r}")
        if not 1 <= self.token_merge <= MAX_TOKEN_MERGE:
            raise ValueError(f"token_merge must be in 1..{MAX_TOKEN_MERGE}, got {self.token_merge}")
        if not 1 <= self.token_merge_backward <= MAX_TOKEN_MERGE:
            raise ValueError(f"token_merge_backward must be in 1..{MAX_TOKEN_MERGE}, got {self.token_merge_backward}")
        if self.coarse < 0:
            raise ValueError(f"coarse must be >= 0, got {self.coarse}")
        if self.topk < 1 or self.block_q < 1 or self.index_heads < 1 or self.index_dim < 1:
            raise ValueError("topk, block_q, index_heads and index_dim must be positive")


def block_rule_fields(rule: str) -> dict:
    """A block rule as users write it, 'max' | 'sum' | 'pooled' | 'AGG+coarseN' (e.g. the default
    'max+coarse2'), -> DSAConfig's block_agg and coarse."""
    agg, plus, coarse = rule.partition("+coarse")
    if agg not in ("max", "sum", "pooled") or (plus and not coarse.isdigit()):
        raise ValueError(f"block rule {rule!r}: expected max, sum or pooled, optionally +coarseN (e.g. max+coarse2)")
    return {"block_agg": agg, "coarse": int(coarse or 0)}
