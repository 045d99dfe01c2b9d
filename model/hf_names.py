"""The tensor name map of the Qwen3 MoE families: Hugging Face names <-> longshot's parameters.

Each rule reads some source tensors and writes some of longshot's parameters (and back): most
are renames, a few reshape (Megatron's fused QKV in per-group order, the gate|up halves of an
expert's first linear, experts fused into one tensor by Qwen3-VL-MoE, the ViT's Conv3d patch
kernel as a linear map over longshot's (t, y, x, channel) patch order). The rules are complete
for the parameters they name: the import and export steps check that every source tensor is
read by a rule and every parameter of the model is written by one, and name any that are not.
No I/O here: rules act on tensors handed to them.

DSA indexer weights have no source in a dense checkpoint; their rules are marked optional
(`fresh_if_absent`) and the export writes them under `...self_attn.indexer.*`, names that dense
readers (transformers) do not load. The same holds for the vision side of a model imported from
a text-only family: it travels under `longshot.vision.*` / `longshot.merger.*`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.config import VLMConfig
from model.hf_config import VL_FAMILIES

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class TensorRule:
    hf: tuple[str, ...]  # source names the rule reads
    ours: tuple[str, ...]  # longshot parameter names it writes
    to_ours: Callable[[Tensors], Tensors]
    to_hf: Callable[[Tensors], Tensors]
    fresh_if_absent: bool = False  # absent in the source: the parameter starts fresh


def _same(ts: Tensors) -> Tensors:
    return list(ts)


def rename(hf: str, ours: str, fresh_if_absent: bool = False) -> TensorRule:
    return TensorRule((hf,), (ours,), _same, _same, fresh_if_absent)


def _qkv(hf: tuple[str, str, str], ours: str, heads: int, groups: int, head_dim: int) -> TensorRule:
    """Separate q, k, v (head-major) <-> Megatron's fused QKV: per group its q heads, k, v."""
    g = heads // groups

    def to_ours(ts: Tensors) -> Tensors:
        q, k, v = (t.reshape(groups, -1, *t.shape[1:]) for t in ts)
        return [torch.cat([q, k, v], dim=1).reshape(-1, *ts[0].shape[1:])]

    def to_hf(ts: Tensors) -> Tensors:
        fused = ts[0].reshape(groups, (g + 2) * head_dim, *ts[0].shape[1:])
        q, k, v = torch.split(fused, [g * head_dim, head_dim, head_dim], dim=1)
        return [x.reshape(-1, *ts[0].shape[1:]).contiguous() for x in (q, k, v)]

    return TensorRule(hf, (ours,), to_ours, to_hf)


def _packed_qkv(hf: str, ours: str, heads: int, head_dim: int) -> TensorRule:
    """One [3 * heads * d, ...] tensor in (q|k|v, head, d) order (the ViT's qkv) <-> Megatron's
    (head, q|k|v, d) order with one head per group."""

    def to_ours(ts: Tensors) -> Tensors:
        t = ts[0]
        return [t.reshape(3, heads, head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()]

    def to_hf(ts: Tensors) -> Tensors:
        t = ts[0]
        return [t.reshape(heads, 3, head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()]

    return TensorRule((hf,), (ours,), to_ours, to_hf)


def _glu(gate: str, up: str, ours: str) -> TensorRule:
    """An expert's gate and up projections <-> Megatron's fused first linear [gate; up]."""
    return TensorRule((gate, up), (ours,), lambda ts: [torch.cat(ts, dim=0)],
                      lambda ts: [t.contiguous() for t in ts[0].chunk(2, dim=0)])


def _fused_experts(gate_up: str, down: str, fc1: list[str], fc2: list[str], hidden: int, ffn: int) -> TensorRule:
    """Qwen3-VL-MoE's experts fused in two tensors <-> one fc1 [2I, H] and fc2 [H, I] per expert.
    Two layouts exist: transformers 5 saves its modules' own, gate_up [E, 2I, H] and down
    [E, H, I]; Qwen's published checkpoints hold their transposes, [E, H, 2I] and [E, I, H].
    A tensor in the module layout is read as such (transformers does the same when the two
    coincide); the export writes the module layout."""
    experts = len(fc1)

    def per_expert(t: torch.Tensor, module_shape: tuple[int, int], name: str) -> Tensors:
        if tuple(t.shape[1:]) == module_shape:
            return [t[e].contiguous() for e in range(experts)]
        if tuple(t.shape[1:]) == module_shape[::-1]:
            return [t[e].t().contiguous() for e in range(experts)]
        raise ValueError(f"{name}: shape {tuple(t.shape)} is neither [E, {module_shape[0]}, "
                         f"{module_shape[1]}] nor its transpose")

    def to_ours(ts: Tensors) -> Tensors:
        return per_expert(ts[0], (2 * ffn, hidden), gate_up) + per_expert(ts[1], (hidden, ffn), down)

    def to_hf(ts: Tensors) -> Tensors:
        return [torch.stack(ts[:experts]), torch.stack(ts[experts:])]

    return TensorRule((gate_up, down), tuple(fc1) + tuple(fc2), to_ours, to_hf)


def _patch_kernel(hf: str, ours: str, channels: int, temporal: int, patch: int) -> TensorRule:
    """Conv3d kernel [hidden, C, T, P, P] <-> longshot's linear patch embedding over patches
    flattened as (T, P, P, C) (the loader's order)."""

    def to_ours(ts: Tensors) -> Tensors:
        return [ts[0].permute(0, 2, 3, 4, 1).reshape(ts[0].shape[0], -1).contiguous()]

    def to_hf(ts: Tensors) -> Tensors:
        w = ts[0].reshape(ts[0].shape[0], temporal, patch, patch, channels)
        return [w.permute(0, 4, 1, 2, 3).contiguous()]

    return TensorRule((hf,), (ours,), to_ours, to_hf)


def _lm_prefix(family: str) -> str:
    return "model.language_model." if family in VL_FAMILIES else "model."


def lm_rules(cfg: VLMConfig, family: str, tied: bool = False) -> list[TensorRule]:
    lm = cfg.lm
    src = _lm_prefix(family)
    rules = [rename(src + "norm.weight", "language.decoder.final_layernorm.weight")]
    embed, head = "language.embedding.word_embeddings.weight", "language.output_layer.weight"
    if tied:  # one source tensor seeds both; longshot trains them apart from then on
        rules.append(TensorRule((src + "embed_tokens.weight",), (embed, head),
                                lambda ts: [ts[0], ts[0].clone()], lambda ts: [ts[0]]))
    else:
        rules += [rename(src + "embed_tokens.weight", embed), rename("lm_head.weight", head)]
    for i in range(lm.layers):
        p, o = f"{src}layers.{i}.", f"language.decoder.layers.{i}."
        rules += [
            rename(p + "input_layernorm.weight", o + "input_layernorm.weight"),
            _qkv((p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"),
                 o + "self_attention.linear_qkv.weight", lm.heads, lm.kv_heads, lm.head_dim),
            rename(p + "self_attn.q_norm.weight", o + "self_attention.q_layernorm.weight"),
            rename(p + "self_attn.k_norm.weight", o + "self_attention.k_layernorm.weight"),
            rename(p + "self_attn.o_proj.weight", o + "self_attention.linear_proj.weight"),
            rename(p + "post_attention_layernorm.weight", o + "pre_mlp_layernorm.weight"),
            rename(p + "mlp.gate.weight", o + "mlp.router.weight"),
        ]
        rules += [rename(f"{p}self_attn.indexer.{name}", f"{o}self_attention.indexer.{name}", True)
                  for name in ("wq.weight", "wk.weight", "k_norm.weight", "k_norm.bias", "ww.weight")]
        fc1 = [f"{o}mlp.experts.local_experts.{e}.linear_fc1.weight" for e in range(lm.experts)]
        fc2 = [f"{o}mlp.experts.local_experts.{e}.linear_fc2.weight" for e in range(lm.experts)]
        if family in VL_FAMILIES:
            rules.append(_fused_experts(p + "mlp.experts.gate_up_proj", p + "mlp.experts.down_proj",
                                        fc1, fc2, lm.hidden, lm.expert_ffn))
        else:
            for e in range(lm.experts):
                x = f"{p}mlp.experts.{e}."
                rules += [_glu(x + "gate_proj.weight", x + "up_proj.weight", fc1[e]),
                          rename(x + "down_proj.weight", fc2[e])]
    return rules


def vision_rules(cfg: VLMConfig) -> list[TensorRule]:
    """Qwen3-VL's vision tower, merger and DeepStack mergers."""
    v = cfg.vision
    rules = [
        _patch_kernel("model.visual.patch_embed.proj.weight", "vision.patch_embed.weight",
                      v.channels, v.temporal_patch, v.patch),
        rename("model.visual.patch_embed.proj.bias", "vision.patch_embed.bias"),
        rename("model.visual.pos_embed.weight", "vision.pos_embed.weight"),
    ]
    for i in range(v.layers):
        p, o = f"model.visual.blocks.{i}.", f"vision.blocks.layers.{i}."
        for kind in ("weight", "bias"):
            rules += [
                rename(f"{p}norm1.{kind}", f"{o}input_layernorm.{kind}"),
                _packed_qkv(f"{p}attn.qkv.{kind}", f"{o}self_attention.linear_qkv.{kind}", v.heads, v.head_dim),
                rename(f"{p}attn.proj.{kind}", f"{o}self_attention.linear_proj.{kind}"),
                rename(f"{p}norm2.{kind}", f"{o}pre_mlp_layernorm.{kind}"),
                rename(f"{p}mlp.linear_fc1.{kind}", f"{o}mlp.linear_fc1.{kind}"),
                rename(f"{p}mlp.linear_fc2.{kind}", f"{o}mlp.linear_fc2.{kind}"),
            ]
    mergers = [("model.visual.merger.", "merger.")]
    mergers += [(f"model.visual.deepstack_merger_list.{k}.", f"deepstack.{k}.") for k in range(len(v.deepstack))]
    for p, o in mergers:
        for kind in ("weight", "bias"):
            rules += [rename(f"{p}norm.{kind}", f"{o}norm.{kind}"),
                      rename(f"{p}linear_fc1.{kind}", f"{o}fc1.{kind}"),
                      rename(f"{p}linear_fc2.{kind}", f"{o}fc2.{kind}")]
    return rules


CARRIED = "longshot."  # prefix of parameters the source family has no name for


def rules_for(cfg: VLMConfig, family: str, tied: bool = False,
              parameter_names: tuple[str, ...] = ()) -> list[TensorRule]:
    """Every rule of a source of `family`. A text-only family has no names for longshot's vision
    side: those of `parameter_names` travel as `longshot.<name>` (transformers ignores them;
    an import reads them back, or starts them fresh when a source lacks them)."""
    rules = lm_rules(cfg, family, tied)
    if family in VL_FAMILIES:
        return rules + vision_rules(cfg)
    return rules + [rename(CARRIED + n, n, fresh_if_absent=True)
                    for n in parameter_names if not n.startswith("language.")]


class NameMapError(ValueError):
    """Tensors that no rule reads, or parameters that no rule writes: named, never dropped."""


def check_coverage(rules: list[TensorRule], source_names: set[str], our_names: set[str],
                   fresh_ok: Callable[[str], bool]) -> list[TensorRule]:
    """The rules to apply to this source; raises NameMapError naming unknown source tensors,
    missing source tensors, and parameters of the model no rule writes (unless `fresh_ok`)."""
    read = {n for r in rules for n in r.hf}
    unknown = sorted(source_names - read)
    active, missing = [], []
    for r in rules:
        present = [n in source_names for n in r.hf]
        if all(present):
            active.append(r)
        elif not r.fresh_if_absent or any(present):
            missing += [n for n in r.hf if n not in source_names]
    written = {n for r in active for n in r.ours}
    extra = sorted(written - our_names)
    unwritten = sorted(n for n in our_names - written if not fresh_ok(n))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} source tensors no rule reads: {_some(unknown)}")
    if missing:
        problems.append(f"{len(missing)} tensors missing from the source: {_some(sorted(missing))}")
    if extra:
        problems.append(f"rules write {len(extra)} names the model lacks: {_some(extra)}")
    if unwritten:
        problems.append(f"{len(unwritten)} model parameters no source tensor fills: {_some(unwritten)}")
    if problems:
        raise NameMapError("; ".join(problems))
    return active


def _some(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")
