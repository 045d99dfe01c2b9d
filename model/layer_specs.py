"""Megatron ModuleSpecs of the two transformer layers, from Megatron's local (non-TE) modules.

LM layer: RMSNorm -> PackedSelfAttention (GQA, qk RMSNorm, DSA indexer; dense in the layers of
DSASettings.dense_layers) -> RMSNorm -> MoE (Megatron's MoELayer, its experts as grouped GEMMs:
model/grouped_experts.py; SwiGLU). ViT layer: LayerNorm -> bidirectional PackedSelfAttention
within frame groups -> LayerNorm -> GELU MLP, with biases (added by the GEMMs:
model/bias_gemm_linear.py).
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from model.bias_gemm_linear import BiasGemmColumnLinear, BiasGemmRowLinear
from model.attention import CoreChoice, Indexer, PackedAttentionSubmodules, PackedSelfAttention
from model.config import LMConfig
from model.grouped_experts import GroupedExperts


def moe_spec(experts: int):
    """Megatron's local MoE layer (router, token dispatcher) with GroupedExperts in place of its
    SequentialMLP: same parameters and checkpoint layout, one grouped GEMM per projection."""
    moe = get_moe_module_spec(use_te=False, num_experts=experts)
    subs = moe.keywords["submodules"]
    grouped = partial(GroupedExperts, *subs.experts.args, **subs.experts.keywords)
    return partial(moe.func, *moe.args, **{**moe.keywords, "submodules": replace(subs, experts=grouped)})


def lm_block_spec(lm: LMConfig, core: CoreChoice) -> TransformerBlockSubmodules:
    attention = ModuleSpec(
        module=PackedSelfAttention,
        params={"causal": True, "core": core, "index_heads": lm.dsa.index_heads,
                "index_dim": lm.dsa.index_dim, "dense_layers": lm.dsa.dense_layers},
        submodules=PackedAttentionSubmodules(
            linear_qkv=ColumnParallelLinear, linear_proj=RowParallelLinear,
            q_layernorm=WrappedTorchNorm, k_layernorm=WrappedTorchNorm, indexer=Indexer),
    )
    layer = ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=WrappedTorchNorm, self_attention=attention,
        self_attn_bda=get_bias_dropout_add, pre_mlp_layernorm=WrappedTorchNorm,
        mlp=moe_spec(lm.experts),
        mlp_bda=get_bias_dropout_add))
    return TransformerBlockSubmodules(layer_specs=[layer] * lm.layers, layer_norm=WrappedTorchNorm)


def vit_block_spec(layers: int) -> TransformerBlockSubmodules:
    attention = ModuleSpec(
        module=PackedSelfAttention, params={"causal": False, "core": CoreChoice("dense")},
        submodules=PackedAttentionSubmodules(linear_qkv=BiasGemmColumnLinear,
                                             linear_proj=BiasGemmRowLinear))
    mlp = partial(MLP.as_mlp_submodule, submodules=MLPSubmodules(
        linear_fc1=BiasGemmColumnLinear, linear_fc2=BiasGemmRowLinear))
    layer = ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=WrappedTorchNorm, self_attention=attention,
        self_attn_bda=get_bias_dropout_add, pre_mlp_layernorm=WrappedTorchNorm, mlp=mlp,
        mlp_bda=get_bias_dropout_add))
    return TransformerBlockSubmodules(layer_specs=[layer] * layers, layer_norm=WrappedTorchNorm)
