"""Configuration of DeepSeek Sparse Attention adapted to GQA (see ../shared/DESIGN.md, "DSA for GQA").

One frozen dataclass so that a model layer, the kernels and the reference read the same knobs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
    block_agg: how ``block`` mode aggregates per-query indexer scores into one row per block:
      ``max`` (default) keeps any key that is strong for at least one query of the block;
      ``sum`` ranks keys by their total score over the block. On synthetic video-structured
      scores both keep about 90% of each query's own top-k mass (sum 0.907, max 0.902 mean;
      tests/bench/RESULTS.md); max is the default until a trained indexer's scores decide.
    stage: ``warmup`` = dense causal attention, the indexer trains on KL(head-mean dense attention
      || indexer); ``sparse`` = attention over the selected keys, the indexer trains on the KL over
      the selected set.
    """

    index_heads: int = 8
    index_dim: int = 128
    topk: int = 2048
    granularity: Literal["token", "block"] = "block"
    block_q: int = 64
    stage: Literal["warmup", "sparse"] = "sparse"
    block_agg: Literal["max", "sum"] = "max"

    def __post_init__(self) -> None:
        if self.granularity not in ("token", "block"):
            raise ValueError(f"granularity must be 'token' or 'block', got {self.granularity!r}")
        if self.stage not in ("warmup", "sparse"):
            raise ValueError(f"stage must be 'warmup' or 'sparse', got {self.stage!r}")
        if self.block_agg not in ("max", "sum"):
            raise ValueError(f"block_agg must be 'max' or 'sum', got {self.block_agg!r}")
        if self.topk < 1 or self.block_q < 1 or self.index_heads < 1 or self.index_dim < 1:
            raise ValueError("topk, block_q, index_heads and index_dim must be positive")
