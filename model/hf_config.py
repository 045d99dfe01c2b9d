"""Hugging Face config.json of the Qwen3 MoE families <-> longshot's VLMConfig.

Every architectural choice of the source that longshot's model can express is read here (shapes,
rotary base and layout, norm eps, the router's softmax order, the vision geometry); every one it
cannot express (biases on attention, dense MLP layers between MoE layers, scaled rotary, sliding
windows, other activations) is refused with the field's name, so an import never runs a model
that silently differs from its source. No I/O: callers pass the parsed JSON.
"""
from __future__ import annotations

from model.config import DSASettings, LMConfig, VisionConfig, VLMConfig

TEXT_FAMILIES = ("qwen3_moe",)
VL_FAMILIES = ("qwen3_vl_moe",)


class UnsupportedConfig(ValueError):
    """The source config asks for something longshot's model does not express."""


def family(hf: dict) -> str:
    kind = hf.get("model_type")
    if kind not in TEXT_FAMILIES + VL_FAMILIES:
        raise UnsupportedConfig(f"model_type {kind!r}: longshot imports "
                                f"{', '.join(TEXT_FAMILIES + VL_FAMILIES)}")
    return kind


def text_config(hf: dict) -> dict:
    """The language model's part of a config.json (nested under text_config for VL models)."""
    return hf["text_config"] if family(hf) in VL_FAMILIES else hf


def _rope(text: dict) -> dict:
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope.setdefault("rope_theta", text.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise UnsupportedConfig(f"rope_type {kind!r}: only unscaled rotary is supported")
    return rope


def _require(text: dict, key: str, allowed, default) -> None:
    value = text.get(key, default)
    if value not in allowed:
        raise UnsupportedConfig(f"{key} = {value!r}: longshot supports {allowed!r}")


def default_mrope_section(head_dim: int) -> tuple[int, int, int]:
    """Qwen3-VL's split of the rotary pairs (24, 20, 20 of 64), scaled to another head size."""
    half = head_dim // 2
    hw = half * 20 // 64
    return (half - 2 * hw, hw, hw)


def lm_config(hf: dict, dsa: DSASettings | None = None) -> LMConfig:
    text = text_config(hf)
    _require(text, "hidden_act", ("silu",), "silu")
    _require(text, "attention_bias", (False,), False)
    _require(text, "decoder_sparse_step", (1,), 1)
    _require(text, "use_sliding_window", (False, None), False)
    if text.get("mlp_only_layers"):
        raise UnsupportedConfig(f"mlp_only_layers = {text['mlp_only_layers']}: every layer must be MoE")
    rope = _rope(text)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    section = tuple(rope.get("mrope_section") or default_mrope_section(head_dim))
    experts = text.get("num_experts", text.get("num_local_experts"))
    dsa = dsa or DSASettings()
    return LMConfig(
        hidden=text["hidden_size"], layers=text["num_hidden_layers"],
        heads=text["num_attention_heads"], kv_heads=text["num_key_value_heads"], head_dim=head_dim,
        experts=experts, topk=text["num_experts_per_tok"], expert_ffn=text["moe_intermediate_size"],
        vocab=text["vocab_size"], mrope_section=section, mrope_layout="interleaved",
        rope_theta=float(rope["rope_theta"]), norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        aux_loss_coeff=float(text.get("router_aux_loss_coef", 1e-3)),
        # Qwen3-VL-MoE always renormalises the top-k weights; Qwen3-MoE says so in its config.
        router_pre_softmax=not text.get("norm_topk_prob", True),
        dsa=DSASettings(**{**dsa.__dict__, "index_dim": head_dim}))


def vision_config(hf: dict) -> VisionConfig:
    v = hf["vision_config"]
    _require(v, "hidden_act", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh")
    rope = v.get("rope_parameters") or {}
    return VisionConfig(
        hidden=v["hidden_size"], layers=v["depth"], heads=v["num_heads"], ffn=v["intermediate_size"],
        patch=v["patch_size"], temporal_patch=v["temporal_patch_size"], merge=v["spatial_merge_size"],
        channels=v.get("in_channels", 3), rope_theta=float(rope.get("rope_theta", 10000.0)),
        rope_layout="axial", position_grid=int(v.get("num_position_embeddings", 0) ** 0.5),
        deepstack=tuple(v.get("deepstack_visual_indexes", ())), final_norm=False)


def vlm_config(hf: dict, *, vision_token_id: int | None = None,
               fresh_vision: VisionConfig | None = None, dsa: DSASettings | None = None) -> VLMConfig:
    """The VLMConfig of a source model. A text-only source takes `fresh_vision` (its ViT starts
    from random weights) and needs the id of its vision placeholder token."""
    lm = lm_config(hf, dsa)
    if family(hf) in VL_FAMILIES:
        token = hf.get("video_token_id", vision_token_id)
        return VLMConfig(vision=vision_config(hf), lm=lm, vision_token_id=int(token),
                         init_std=float(text_config(hf).get("initializer_range", 0.02)),
                         video_layout="timestamped-groups")
    if fresh_vision is None or vision_token_id is None:
        raise UnsupportedConfig("a text-only source needs a vision config for its fresh ViT and "
                                "the id of its vision placeholder token")
    return VLMConfig(vision=fresh_vision, lm=lm, vision_token_id=int(vision_token_id),
                     init_std=float(hf.get("initializer_range", 0.02)))


def export_config(cfg: VLMConfig, source: dict) -> dict:
    """config.json of an export: the source's own config with longshot's shapes written back
    (they are the same unless the run changed them) and embeddings untied (longshot trains the
    output layer apart from the embedding)."""
    out = dict(source)
    text = dict(text_config(source))
    lm = cfg.lm
    text.update(hidden_size=lm.hidden, num_hidden_layers=lm.layers, num_attention_heads=lm.heads,
                num_key_value_heads=lm.kv_heads, head_dim=lm.head_dim, num_experts=lm.experts,
                num_experts_per_tok=lm.topk, moe_intermediate_size=lm.expert_ffn,
                vocab_size=lm.vocab, rms_norm_eps=lm.norm_eps, tie_word_embeddings=False)
    if family(source) in VL_FAMILIES:
        out["text_config"] = text
        out["tie_word_embeddings"] = False
        return out
    text["norm_topk_prob"] = not lm.router_pre_softmax
    return text
