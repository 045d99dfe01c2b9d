"""Shapes and knobs of the VLM as plain frozen dataclasses.

Why not Megatron's TransformerConfig directly: the VLM has two transformers (ViT and LM) with
different norms, activations and attention, plus things Megatron has no field for (DSA, the
merger, the vision placeholder id). These dataclasses are the one description a preset, a run
config (JSON) and a checkpoint agree on; `model.megatron_configs` turns them into
TransformerConfigs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal


@dataclass(frozen=True)
class VisionConfig:
    """A SigLIP-like ViT over (temporal 2) x 14 x 14 patches, then the 2x2 merger."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    channels: int = 3
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # 2-D rotary over (row, col): "sections" = row and column each own half of one frequency
    # ladder; "axial" = both axes use the same ladder of head_dim // 4 pairs (Qwen3-VL).
    rope_layout: Literal["sections", "axial"] = "sections"
    # Side of a learned square grid of absolute position embeddings, resampled bilinearly to
    # each video's patch grid (Qwen3-VL); 0 = none.
    position_grid: int = 0
    # ViT layers whose output also goes, through its own merger, into LM layer i's output at the
    # vision positions (Qwen3-VL's DeepStack); empty = none.
    deepstack: tuple[int, ...] = ()
    # A LayerNorm after the last ViT layer (longshot's ViT); Qwen3-VL's merger norm takes its place.
    final_norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patch_values(self) -> int:
        """Values of one flattened patch: (temporal, patch, patch, channels)."""
        return self.temporal_patch * self.patch * self.patch * self.channels


@dataclass(frozen=True)
class DSASettings:
    """The DSA knobs that belong to the model (the stage belongs to the run)."""

    index_heads: int = 8
    index_dim: int = 128
    topk: int = 2048
    granularity: Literal["token", "block"] = "block"
    block_q: int = 64
    indexer_loss_coeff: float = 1.0
    # token granularity: neighbouring queries per kernel program over the union of their
    # selections (model/dsa/merge.py); a speed knob, the result is the same
    token_merge: int = 1
    # token granularity with token_merge 1: the attention's backward alone over groups of this many
    # neighbours (model/dsa/config.py says why); a speed knob, the result is the same
    token_merge_backward: int = 1
    # block granularity: how a block scores keys (model/dsa/config.py, DSAConfig's block_agg and
    # coarse), as 'max', 'sum', 'pooled' or 'AGG+coarseN'
    block_rule: str = "max+coarse2"
    # LM layers (0-based) whose attention stays dense in every stage: their indexers neither
    # select nor train. Early layers of a trained model often attend diffusely (thousands of keys,
    # none holding much), which no top-k keeps; measured in tests/bench/RESULTS.md (2026-12-07,
    # issue 16), where layer 0 of a copying model alone cost +22 nats at k = 512.
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self):
        layers = tuple(sorted(set(int(i) for i in self.dense_layers)))  # from JSON as a list
        if any(i < 0 for i in layers):
            raise ValueError(f"dense_layers {list(self.dense_layers)}: layer indices start at 0")
        object.__setattr__(self, "dense_layers", layers)


@dataclass(frozen=True)
class LMConfig:
    """A Qwen3-MoE-like decoder: GQA, qk RMSNorm, multimodal rotary, routed experts."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    topk: int
    expert_ffn: int
    vocab: int
    # Channel pairs of the rotary given to (t, h, w); sums to head_dim // 2.
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    rope_theta: float = 1_000_000.0
    # How the rotary pairs are dealt to (t, h, w): "sections" = contiguous blocks of
    # mrope_section pairs (t first); "interleaved" = t, h, w, t, h, w, ... over the first
    # 3 x section pairs of h and w, the rest t (Qwen3-VL's layout).
    mrope_layout: Literal["sections", "interleaved"] = "sections"
    norm_eps: float = 1e-6
    aux_loss_coeff: float = 1e-3
    # Router: False = top-k of the logits, softmax over those k (the k weights sum to 1, as
    # Qwen3-MoE's norm_topk_prob); True = softmax over all experts, then top-k, unnormalised.
    router_pre_softmax: bool = False
    # Default core of every layer (a run may choose another): "dense" = exact packed causal
    # attention, "dsa" = DeepSeek sparse attention. Every layer has its indexer either way, so
    # checkpoints of dense and DSA runs hold the same parameters and can seed one another.
    attention: Literal["dense", "dsa"] = "dsa"
    dsa: DSASettings = field(default_factory=DSASettings)

    def __post_init__(self):
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be a multiple of kv_heads (GQA)")
        if self.mrope_layout not in ("sections", "interleaved"):
            raise ValueError(f"mrope_layout must be 'sections' or 'interleaved', got {self.mrope_layout!r}")
        if self.dsa.index_dim != self.head_dim:
            raise ValueError("the indexer shares the rotary of the heads: index_dim must equal head_dim")
        if any(i >= self.layers for i in self.dsa.dense_layers):
            raise ValueError(f"dsa.dense_layers {list(self.dsa.dense_layers)}: the LM has {self.layers} layers "
                             f"(0 to {self.layers - 1})")
        if len(self.dsa.dense_layers) == self.layers and self.attention == "dsa":
            raise ValueError("dsa.dense_layers names every layer: nothing would be sparse (use dense attention)")

    @property
    def sparse_layers(self) -> int:
        """How many layers run DSA (the indexer loss is their mean)."""
        return self.layers - len(self.dsa.dense_layers)


@dataclass(frozen=True)
class VLMConfig:
    vision: VisionConfig
    lm: LMConfig
    # Id of the placeholder token whose positions take the merged vision embeddings.
    vision_token_id: int = 151_655
    init_std: float = 0.02
    # How videos sit in the token sequence the model was trained on (pipeline/video_layout.py):
    # "block" (longshot's) or "timestamped-groups" (Qwen3-VL); preprocess writes data this way.
    video_layout: str = "block"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VLMConfig:
        lm = dict(d["lm"])
        lm["dsa"] = DSASettings(**lm.get("dsa", {}))
        lm["mrope_section"] = tuple(lm["mrope_section"])
        vision = dict(d["vision"])
        vision["deepstack"] = tuple(vision.get("deepstack", ()))
        return cls(vision=VisionConfig(**vision), lm=LMConfig(**lm),
                   **{f.name: d[f.name] for f in fields(cls) if f.name not in ("vision", "lm") and f.name in d})

    def with_overrides(self, **kw) -> VLMConfig:
        """Override LM fields by name (`vocab=...`, `attention=...`) or top-level fields."""
        top = {k: v for k, v in kw.items() if k in {f.name for f in fields(self)}}
        lm = {k: v for k, v in kw.items() if k not in top}
        return replace(self, **top, lm=replace(self.lm, **lm)) if lm else replace(self, **top)
