"""Self-attention over a packed sequence, built from Megatron parts, with a switchable core.

It takes the place of Megatron's SelfAttention in a TransformerLayer spec (same constructor and
forward keywords), because Megatron's local core attention neither handles packed documents
nor sparse attention. The module owns the projections (grouped QKV for GQA, per-head q/k norm,
multi-axis rotary, output projection) and, for DSA, the lightning indexer's projections
(W_q, W_k, W_w of the hidden state). The core is chosen at run time:

- ``dense``: exact attention within each segment of ``cu_seqlens`` (causal for the LM,
  bidirectional frame groups for the ViT), see model.packed_attention;
- ``dsa``: model.dsa.attention.dsa_attention in its ``warmup`` or ``sparse`` stage, which also
  returns the indexer's KL loss.

Under context parallelism the core also carries ``rows`` (QueryRows): the layer then holds only
some query rows of the pack, gathers keys, values and indexer keys of every rank into the
pack's key table (the gather's backward returns their gradients to their owners), and attends
from its rows at their global positions (packed_attention_rows, dsa_attention_rows).

The indexer reads the hidden state detached: its loss trains the indexer only. The loss does
not travel to the top of the model as a tensor: its gradient (times the layer's weight) is
injected where the attention output's gradient passes (as Megatron does for the MoE
load-balancing loss), so it also trains under activation recomputation, whose first forward
runs without a graph. ``self.indexer_loss`` keeps the value for reporting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from model.packed_attention import packed_attention, packed_attention_rows
from model.rope import apply_rotary


@dataclass
class PackedAttentionSubmodules:
    linear_qkv: type
    linear_proj: type
    q_layernorm: type = IdentityOp
    k_layernorm: type = IdentityOp
    indexer: type | None = None


@dataclass
class CoreChoice:
    """What a layer's attention core does now; shared by all layers of a model and mutable."""

    kind: Literal["dense", "dsa"] = "dense"
    dsa: object | None = None  # model.dsa.config.DSAConfig when kind == "dsa"
    backend: str = "reference"  # dsa_attention backend: "triton" on a GPU
    indexer_weight: float = 1.0  # d(objective)/d(one layer's indexer loss)
    rows: "QueryRows | None" = None  # set per pack under context parallelism
    # DSA plans of the current pack by (config, stage): emptied when a pack's forward starts;
    # every layer (and the recomputation in backward) shares them, so a plan's host reads
    # happen once per pack, not once per layer. Under recomputation it also holds each layer's
    # block selection from the first pass until the second takes it (("selection", layer)).
    plans: dict = field(default_factory=dict)
    # The DSA warm-up: the backbone is frozen, so nothing needs the backbone's backward except
    # reaching each layer's injected indexer gradient. Instead each layer backpropagates its own
    # indexer loss right where it is computed (the loss reads the hidden state detached: the
    # backward stays inside the indexer), and the backbone runs forward only, with no graph.
    local_indexer_grads: bool = False


@dataclass
class QueryRows:
    """This rank's share of a pack split over context-parallel ranks (built by parallel/).

    q_pos, q_doc: global position and document start of each local row (sorted);
    gather: local rows [T_loc, ...] -> the pack's table [T, ...], autograd-aware;
    share: T_loc / T, this rank's weight in the pack's mean indexer loss;
    grad_scale: what the gradient of this rank's loss term is multiplied by so that the
      data-parallel mean over ranks gives the one-process gradient (the context size).
    """

    q_pos: torch.Tensor
    q_doc: torch.Tensor
    gather: Callable[[torch.Tensor], torch.Tensor]
    share: float
    grad_scale: float
    host_pos: tuple[torch.Tensor, torch.Tensor] | None = None  # (q_pos, q_doc) on the host


class _InjectLossGrad(torch.autograd.Function):
    """Identity on `out`; in backward, hands `weight` as the gradient of the scalar `loss`."""

    @staticmethod
    def forward(ctx, out, loss, weight: float):
        ctx.weight = weight
        ctx.loss_meta = (loss.shape, loss.dtype, loss.device)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        shape, dtype, device = ctx.loss_meta
        return grad_out, torch.full(shape, ctx.weight, dtype=dtype, device=device), None


class Indexer(MegatronModule):
    """DSA's lightning indexer: q_I = W_q h (H_I x d_I), one key k_I = norm(W_k h), w = W_w h."""

    def __init__(self, config: TransformerConfig, index_heads: int, index_dim: int):
        super().__init__(config=config)
        self.index_heads, self.index_dim = index_heads, index_dim
        h = config.hidden_size
        self.wq = torch.nn.Linear(h, index_heads * index_dim, bias=False, dtype=config.params_dtype)
        self.wk = torch.nn.Linear(h, index_dim, bias=False, dtype=config.params_dtype)
        self.k_norm = torch.nn.LayerNorm(index_dim, eps=config.layernorm_epsilon, dtype=config.params_dtype)
        self.ww = torch.nn.Linear(h, index_heads, bias=False, dtype=config.params_dtype)
        if config.perform_initialization:
            for lin in (self.wq, self.wk, self.ww):
                config.init_method(lin.weight)
        # Scores sum H_I relu(q.k) terms of d_I products: keep them O(1) at init.
        self.w_scale = (index_heads * index_dim) ** -0.5

    def forward(self, hidden: torch.Tensor, cos, sin):
        """hidden [T, H] (detached by the caller) -> q_idx [T, H_I, d_I], k_idx [T, d_I], w [T, H_I]."""
        t = hidden.shape[0]
        q = self.wq(hidden).view(t, self.index_heads, self.index_dim)
        k = self.k_norm(self.wk(hidden)).view(t, 1, self.index_dim)
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k[:, 0], self.ww(hidden) * self.w_scale


class PackedSelfAttention(MegatronModule):
    """Drop-in for Megatron's SelfAttention on packed [S, 1, H] input; returns (output, None)."""

    def __init__(self, config: TransformerConfig, submodules: PackedAttentionSubmodules,
                 layer_number: int = 1, causal: bool = True, core: CoreChoice | None = None,
                 index_heads: int = 0, index_dim: int = 0, dense_layers: tuple[int, ...] = (),
                 pg_collection: ProcessGroupCollection | None = None, **unused):
        super().__init__(config=config)
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        tp = pg_collection.tp.size()
        self.layer_number = layer_number
        self.causal = causal
        self.core = core if core is not None else CoreChoice()
        self.head_dim = config.kv_channels
        self.heads = config.num_attention_heads // tp
        self.groups = config.num_query_groups // tp
        qkv_out = (config.num_attention_heads + 2 * config.num_query_groups) * self.head_dim
        self.linear_qkv = submodules.linear_qkv(
            config.hidden_size, qkv_out, config=config, init_method=config.init_method,
            gather_output=False, bias=config.add_bias_linear or config.add_qkv_bias,
            skip_bias_add=False, is_expert=False, tp_group=pg_collection.tp)
        self.q_layernorm = submodules.q_layernorm(config=config, hidden_size=self.head_dim,
                                                  eps=config.layernorm_epsilon)
        self.k_layernorm = submodules.k_layernorm(config=config, hidden_size=self.head_dim,
                                                  eps=config.layernorm_epsilon)
        self.linear_proj = submodules.linear_proj(
            config.num_attention_heads * self.head_dim, config.hidden_size, config=config,
            init_method=config.output_layer_init_method, bias=config.add_bias_linear,
            input_is_parallel=True, skip_bias_add=True, is_expert=False, tp_group=pg_collection.tp)
        self.indexer = (submodules.indexer(config, index_heads, index_dim)
                        if submodules.indexer is not None else None)
        self.indexer_loss: torch.Tensor | None = None
        # a layer of DSASettings.dense_layers keeps its indexer (checkpoints of every layout hold
        # the same parameters) but attends densely in every stage and never trains it
        self.sparse = self.indexer is not None and layer_number - 1 not in dense_layers

    def _split_qkv(self, mixed: torch.Tensor):
        """[T, groups*(g+2)*D] in Megatron's per-group layout -> q [T,Hq,D], k, v [T,Hkv,D]."""
        t, d, g = mixed.shape[0], self.head_dim, self.heads // self.groups
        mixed = mixed.view(t, self.groups, (g + 2) * d)
        q, k, v = torch.split(mixed, [g * d, d, d], dim=-1)
        return q.reshape(t, self.heads, d), k, v

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, *, rotary_pos_emb=None,
                packed_seq_params=None, **unused):
        """`rotary_pos_emb`: [2, T, D] cos and sin (model/rope.py, block_rotary)."""
        if packed_seq_params is None:
            raise ValueError("PackedSelfAttention needs packed_seq_params (cu_seqlens of the pack)")
        if unused.get("rotary_pos_cos") is not None:
            raise ValueError("pass rotary as rotary_pos_emb (model/rope.py, block_rotary): "
                             "rotary_pos_cos does not survive activation recomputation")
        rotary_pos_cos, rotary_pos_sin = rotary_pos_emb.unbind(0) if rotary_pos_emb is not None else (None, None)
        cu = packed_seq_params.cu_seqlens_q
        t = hidden_states.shape[0]
        h = hidden_states.reshape(t, -1)  # micro-batch of one packed sequence
        mixed, _ = self.linear_qkv(h)
        q, k, v = self._split_qkv(mixed)
        q, k = self.q_layernorm(q), self.k_layernorm(k)
        if rotary_pos_cos is not None:
            q = apply_rotary(q, rotary_pos_cos, rotary_pos_sin)
            k = apply_rotary(k, rotary_pos_cos, rotary_pos_sin)
        out = self._core(q, k, v, cu, h, rotary_pos_cos, rotary_pos_sin)
        out, bias = self.linear_proj(out.reshape(t, 1, -1))
        return out, bias

    def _core(self, q, k, v, cu, hidden, cos, sin):
        self.indexer_loss = None
        rows = self.core.rows if self.causal else None
        if rows is not None:  # one collective for keys and values
            k, v = rows.gather(torch.cat([k, v], dim=-1)).split(self.head_dim, dim=-1)
        if self.core.kind == "dense" or not self.sparse:
            if rows is not None:
                return packed_attention_rows(q, k, v, rows.q_pos, rows.q_doc, host_pos=rows.host_pos)
            return packed_attention(q, k, v, cu, causal=self.causal)
        from model.dsa.attention import KLInBackward, dsa_attention, dsa_attention_rows

        q_idx, k_idx, w_idx = self.indexer(hidden.detach(), cos, sin)
        weight = self.core.indexer_weight
        share = rows.share if rows is not None else 1.0  # CP: each rank's part, summed over ranks
        if rows is not None:
            weight = weight * rows.share * rows.grad_scale
        first_pass, memo = self._recomputation()
        # where the injected weight is the loss's whole gradient, the KL may run in the attention's backward
        late = None if self.core.local_indexer_grads else KLInBackward(weight, share)
        if rows is None:
            out, loss = dsa_attention(q, k, v, q_idx, k_idx, w_idx, cu, self.core.dsa, backend=self.core.backend,
                                      plans=self.core.plans, memo=memo, with_loss=not first_pass,
                                      kl_in_backward=late)
        else:
            out, loss, _ = dsa_attention_rows(q, k, v, q_idx, rows.gather(k_idx), w_idx, rows.q_pos,
                                              rows.q_doc, self.core.dsa, backend=self.core.backend,
                                              plans=self.core.plans, memo=memo, with_loss=not first_pass,
                                              kl_in_backward=late)
        if loss is None:  # recomputed in backward, where the loss is computed
            return out
        if late is not None and loss is late.value:  # filled (times share) by the attention's backward
            self.indexer_loss = loss
            return out
        self.indexer_loss = loss.detach() * share
        if self.core.local_indexer_grads:
            self._indexer_backward_now(loss, weight)
        elif loss.requires_grad:
            out = _InjectLossGrad.apply(out, loss, weight)
        return out

    def _recomputation(self) -> tuple[bool, dict | None]:
        """(first_pass, memo) under Megatron's activation recomputation, which runs a layer twice:
        first without a graph, then again in backward with one. The first pass skips the indexer
        KL (nothing can take its gradient; the second pass computes loss and gradients, and
        reports the loss, once), and in block mode leaves its selection in the pack's cache for
        the second pass to reuse (sel is [owners, k] int32: 16 MiB a layer at 128K; token mode's
        [T, k] would be 1 GiB, so token mode selects again)."""
        from megatron.core.tensor_parallel.random import is_checkpointing

        if not is_checkpointing() or self.core.local_indexer_grads:
            return False, None
        first_pass = not torch.is_grad_enabled()
        memo = None
        if self.core.dsa.granularity == "block":
            key = ("selection", self.layer_number)
            memo = self.core.plans.setdefault(key, {}) if first_pass else self.core.plans.pop(key, None)
        return first_pass, memo

    def _indexer_backward_now(self, loss: torch.Tensor, weight: float) -> None:
        from megatron.core.tensor_parallel.random import is_checkpointing

        if loss.requires_grad:
            torch.autograd.backward(loss, torch.full_like(loss, weight))
        elif is_checkpointing() and any(p.requires_grad for p in self.indexer.parameters()):
            # Megatron's reentrant recomputation runs layers without autograd in forward: the
            # indexers would silently get no gradient (a forward under no_grad elsewhere, e.g.
            # an evaluation, wants none and passes)
            raise RuntimeError("the DSA warm-up backpropagates each layer's indexer loss during "
                               "forward; build the warm-up model without activation recomputation")
