"""The MoE language model: Megatron embedding, a TransformerBlock of longshot's LM layers
(packed GQA attention with DSA, Megatron MoE), final RMSNorm and the output layer.

Built from Megatron's TransformerBlock rather than GPTModel (deprecated in 0.19) or HybridModel
(single-axis rotary only, Transformer Engine final norm): multimodal (t, h, w) rotary is
computed here from the pack's position_ids and handed to every layer as cos/sin.

The output layer runs only on the positions that have a label. In a long-video pack almost all
positions are vision tokens with no target, and full logits at 256K x 152K vocab would be tens
of GB; labeled rows go through the head in chunks that are recomputed in backward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.utils.checkpoint import checkpoint

from model.attention import CoreChoice
from model.config import LMConfig
from model.cross_entropy import cross_entropy
from model.layer_specs import lm_block_spec
from model.packing_params import packed_params
from model.rope import block_rotary, multi_axis_cos_sin

IGNORE_INDEX = -100
HEAD_CHUNK = 4096  # labeled rows per output-layer chunk


@dataclass
class LMOutput:
    ce_sum: torch.Tensor  # summed next-token cross entropy over labeled positions
    n_labels: int
    # value: mean over layers of the DSA indexer KL (0 without DSA); under activation recomputation
    # 0 here, each layer computing its KL in backward (read it then: VLM.recorded_losses)
    indexer_loss: torch.Tensor


class MoELanguageModel(MegatronModule):
    def __init__(self, lm: LMConfig, config: TransformerConfig, core: CoreChoice,
                 pg_collection: ProcessGroupCollection, max_sequence_length: int):
        super().__init__(config=config)
        self.lm = lm
        self.tp_group = pg_collection.tp
        self.embedding = LanguageModelEmbedding(
            config=config, vocab_size=lm.vocab, max_sequence_length=max_sequence_length,
            position_embedding_type="none", tp_group=pg_collection.tp)
        self.decoder = TransformerBlock(config, lm_block_spec(lm, core), pg_collection=pg_collection)
        self.output_layer = ColumnParallelLinear(
            lm.hidden, lm.vocab, config=config, init_method=config.init_method, bias=False,
            gather_output=False, skip_bias_add=False, tp_group=pg_collection.tp)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[S] token ids -> [S, 1, H] embeddings."""
        return self.embedding(input_ids=input_ids[None], position_ids=None)

    def forward(self, decoder_input: torch.Tensor, position_ids: torch.Tensor,
                cu_seqlens: torch.Tensor, labels: torch.Tensor) -> LMOutput:
        hidden = self.hidden_states(decoder_input, position_ids, cu_seqlens)
        ce_sum, n = self._labeled_cross_entropy(hidden, labels)
        return LMOutput(ce_sum, n, self.indexer_loss(hidden.device))

    def hidden_states(self, decoder_input: torch.Tensor, position_ids: torch.Tensor,
                      cu_seqlens: torch.Tensor) -> torch.Tensor:
        """[S, 1, H] embeddings -> [S, 1, H] final-norm hidden states of the packed sequence."""
        cos, sin = multi_axis_cos_sin(position_ids, self.lm.mrope_section, self.lm.head_dim,
                                      self.lm.rope_theta, self.lm.mrope_layout)
        return self.decoder(decoder_input, attention_mask=None, rotary_pos_emb=block_rotary(cos, sin),
                            packed_seq_params=packed_params(cu_seqlens))

    def logits(self, decoder_input: torch.Tensor, position_ids: torch.Tensor,
               cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Full [S, vocab] logits (evaluation and interop checks on short sequences only)."""
        out, _ = self.output_layer(self.hidden_states(decoder_input, position_ids, cu_seqlens))
        return out[:, 0]

    def _head_ce(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, _ = self.output_layer(rows)
        if self.tp_group is None or self.tp_group.size() == 1:  # the whole vocabulary is here
            return cross_entropy(logits.flatten(0, -2), targets).sum()
        return tensor_parallel.vocab_parallel_cross_entropy(
            logits.float(), targets[:, None], tp_group=self.tp_group).sum()

    def _labeled_cross_entropy(self, hidden: torch.Tensor, labels: torch.Tensor):
        where = (labels != IGNORE_INDEX).nonzero()[:, 0]
        n = int(where.numel())
        if n == 0:
            return hidden.sum() * 0.0, 0
        rows, targets = hidden[where], labels[where]
        if n <= HEAD_CHUNK:
            return self._head_ce(rows, targets), n
        total = rows.new_zeros((), dtype=torch.float32)
        for a in range(0, n, HEAD_CHUNK):
            total = total + checkpoint(self._head_ce, rows[a:a + HEAD_CHUNK],
                                       targets[a:a + HEAD_CHUNK], use_reentrant=False)
        return total, n

    def indexer_loss(self, device) -> torch.Tensor:
        """Mean over layers of the indexer KL the layers last computed (float32, on ``device``)."""
        losses = [layer.self_attention.indexer_loss for layer in self.decoder.layers
                  if layer.self_attention.indexer_loss is not None]
        if not losses:
            return torch.zeros((), dtype=torch.float32, device=device)
        return torch.stack([l.float() for l in losses]).mean().to(device)
