"""longshot's model dataclasses -> Megatron TransformerConfigs for the LM and the ViT.

Kept apart from the modules so that every Megatron switch longshot relies on (no bias, SwiGLU,
RMSNorm with qk-norm, the token dispatcher, fusions off where they need Transformer Engine or
Apex) is set in one reviewed place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from model.config import LMConfig, VisionConfig


def _common(dtype: torch.dtype, init_std: float, cpu_init: bool, initialize: bool) -> dict:
    return {
        "params_dtype": dtype, "bf16": dtype == torch.bfloat16, "pipeline_dtype": dtype,
        "init_method_std": init_std, "use_cpu_initialization": cpu_init,
        "perform_initialization": initialize, "hidden_dropout": 0.0, "attention_dropout": 0.0,
        # The fused paths need Transformer Engine / Apex / CUDA extensions that longshot does
        # not depend on.
        "bias_dropout_fusion": False, "apply_rope_fusion": False, "masked_softmax_fusion": False,
        "gradient_accumulation_fusion": False, "persist_layer_norm": False,
        "tensor_model_parallel_size": 1, "sequence_parallel": False,
    }


def lm_transformer_config(lm: LMConfig, *, dtype: torch.dtype, init_std: float, cpu_init: bool,
                          initialize: bool = True, expert_parallel: int = 1,
                          dispatcher: str = "alltoall", recompute: bool = False) -> TransformerConfig:
    return TransformerConfig(
        num_layers=lm.layers, hidden_size=lm.hidden, num_attention_heads=lm.heads,
        num_query_groups=lm.kv_heads, kv_channels=lm.head_dim,
        ffn_hidden_size=lm.expert_ffn, moe_ffn_hidden_size=lm.expert_ffn,
        num_moe_experts=lm.experts, moe_router_topk=lm.topk,
        moe_router_load_balancing_type="aux_loss", moe_aux_loss_coeff=lm.aux_loss_coeff,
        moe_router_dtype="fp32", moe_router_pre_softmax=lm.router_pre_softmax,
        moe_token_dispatcher_type=dispatcher,
        moe_permute_fusion=False, expert_model_parallel_size=expert_parallel,
        normalization="RMSNorm", layernorm_epsilon=lm.norm_eps, qk_layernorm=True,
        add_bias_linear=False, gated_linear_unit=True, activation_func=F.silu,
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None,
        recompute_num_layers=1 if recompute else None,
        **_common(dtype, init_std, cpu_init, initialize),
    )


def vit_transformer_config(v: VisionConfig, *, dtype: torch.dtype, init_std: float, cpu_init: bool,
                           initialize: bool = True, recompute: bool = False) -> TransformerConfig:
    return TransformerConfig(
        num_layers=v.layers, hidden_size=v.hidden, num_attention_heads=v.heads,
        num_query_groups=v.heads, kv_channels=v.head_dim, ffn_hidden_size=v.ffn,
        normalization="LayerNorm", layernorm_epsilon=v.norm_eps,
        add_bias_linear=True, gated_linear_unit=False,
        activation_func=lambda x: F.gelu(x, approximate="tanh"),
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None,
        recompute_num_layers=1 if recompute else None,
        **_common(dtype, init_std, cpu_init, initialize),
    )
