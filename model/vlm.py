"""The VLM: ViT -> 2x2 merger -> hand-off into the LM's embeddings -> MoE LM, and its losses.

Losses of one packed sequence:
- ce: mean next-token cross entropy over the positions with a label (answer text);
- aux: the MoE load-balancing term (its gradient is added by Megatron's router itself);
- indexer: the DSA indexer's KL, mean over layers, times its coefficient (trains the indexer
  only; its gradient is injected inside each attention layer, see model/attention.py; in the
  DSA warm-up each layer backpropagates it during forward, and nothing else trains).
`backward(stage)` runs the step's backward: of ce, or, in the warm-up, nothing more (ce x 0 when
something upstream still has a graph). `total` is ce + aux + indexer, for logging.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule

from model import moe_aux
from model.attention import CoreChoice
from model.config import VLMConfig
from model.deepstack import DeepStackInjection
from model.handoff import place_vision_tokens
from model.lm import MoELanguageModel
from model.vision_parts import build_vision_parts


@dataclass
class VLMOutput:
    ce: torch.Tensor  # with its graph
    indexer: torch.Tensor  # value only; 0 without DSA, and 0 when recomputed: VLM.recorded_losses()
    aux: torch.Tensor  # value only (Megatron's router adds its gradient); 0 when recomputed (idem)
    n_labels: int
    # Under a parallel layout (parallel/): this rank's share of the objective, scaled so that
    # Megatron's DDP (mean over data x context ranks) gives the one-process gradient; ce is
    # then the value over the whole pack, for reporting.
    local_objective: torch.Tensor | None = None

    def objective(self, stage: str = "sparse") -> torch.Tensor:
        ce = self.ce if self.local_objective is None else self.local_objective
        return ce * 0.0 if stage == "warmup" else ce

    def backward(self, stage: str = "sparse", scale: float = 1.0) -> None:
        """The backward of `objective(stage) * scale`. In the warm-up the indexers' gradients
        were made during forward (model/attention.py, CoreChoice.local_indexer_grads) and the
        frozen backbone usually kept no graph: then there is nothing left to run."""
        objective = self.objective(stage)
        if stage == "warmup" and not objective.requires_grad:
            return
        (objective * scale if scale != 1.0 else objective).backward()

    @property
    def total(self) -> float:
        return float(self.ce.detach() + self.aux + self.indexer.detach())


class VLM(MegatronModule):
    def __init__(self, cfg: VLMConfig, vit_config, lm_config, core: CoreChoice,
                 pg_collection: ProcessGroupCollection, max_sequence_length: int,
                 vit_pg_collection: ProcessGroupCollection | None = None):
        super().__init__(config=lm_config)
        self.cfg = cfg
        self.core = core
        # A parallel plan (parallel/forward.py) takes over forward when set: the ViT on its own
        # layout, the all-to-all hand-off, the LM on a chunk of the pack. model/ knows only
        # that it has a `forward(model, batch)`.
        self.parallel = None
        for name, part in build_vision_parts(cfg, vit_config, vit_pg_collection or pg_collection).items():
            setattr(self, name, part)
        self.language = MoELanguageModel(cfg.lm, lm_config, core, pg_collection, max_sequence_length)
        core.indexer_weight = cfg.lm.dsa.indexer_loss_coeff / max(cfg.lm.sparse_layers, 1)
        self.deepstack_injection = (DeepStackInjection(self.language.decoder.layers)
                                    if cfg.vision.deepstack else None)

    def recorded_losses(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(aux, indexer): the MoE load-balancing and DSA indexer loss terms as the layers last
        recorded them, for reporting. Read after backward: under activation recomputation the
        router records its loss, and each DSA layer computes its KL, only there
        (model/attention.py). Under a parallel layout summed over the context ranks (one
        all-reduce), as VLMOutput's values are."""
        aux = moe_aux.value(self.cfg.lm.aux_loss_coeff).to(device).float()
        indexer = self.language.indexer_loss(device) * self.cfg.lm.dsa.indexer_loss_coeff
        if self.parallel is not None:  # each context rank recorded its part of the pack's
            aux, indexer = self.parallel.sum_over_cp(torch.stack([aux * self.parallel.aux_fix, indexer])).float()
        return aux, indexer

    def set_input_tensor(self, input_tensor) -> None:  # Megatron schedules call this; no PP here
        pass

    @property
    def vision_row_width(self) -> int:
        """Width of a row of `vision_tokens`: the token, then one DeepStack feature per tapped layer."""
        return self.cfg.lm.hidden * (1 + len(self.cfg.vision.deepstack))

    def vision_tokens(self, pixel_patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Merged vision tokens with their merged DeepStack features concatenated after them,
        [N / merge^2, vision_row_width] (the parallel hand-off's entry point): one row per token,
        so that one all-to-all carries both to the rank owning the token's position."""
        tokens, deep = self.vision_features(pixel_patches, grid_thw)
        return torch.cat([tokens, *deep], dim=-1) if deep else tokens

    def take_vision_rows(self, rows: torch.Tensor, lm_rows: torch.Tensor) -> torch.Tensor:
        """Rows of `vision_tokens` -> their merged tokens [n, lm_hidden]; their DeepStack
        features are set to be added at `lm_rows` (the rows of the LM's input they go to)."""
        tokens, *deep = rows.split(self.cfg.lm.hidden, dim=-1)
        if self.deepstack_injection is not None:
            self.deepstack_injection.set(lm_rows, deep)
        return tokens

    def vision_features(self, pixel_patches: torch.Tensor, grid_thw: torch.Tensor):
        """Merged vision tokens and the merged DeepStack features (one per tapped ViT layer)."""
        features, taps = self.vision(pixel_patches, grid_thw)
        deep = [merge(t) for merge, t in zip(getattr(self, "deepstack", ()), taps, strict=False)]
        return self.merger(features), deep

    def _lm_input(self, batch) -> torch.Tensor:
        """[S, 1, H] LM input of a pack: text embeddings with the merged vision tokens in place
        (and the DeepStack features set for the LM layers that add them)."""
        self.core.plans = {}  # a new pack: new DSA plans (model/attention.py, CoreChoice)
        embeds = self.language.embed(batch.input_ids)
        deep: list[torch.Tensor] = []
        if batch.pixel_patches.shape[0]:
            vision, deep = self.vision_features(batch.pixel_patches, batch.video_grid_thw)
            embeds = place_vision_tokens(embeds, vision, batch.input_ids, self.cfg.vision_token_id)
        if self.deepstack_injection is not None:
            rows = (batch.input_ids == self.cfg.vision_token_id).nonzero()[:, 0]
            self.deepstack_injection.set(rows if deep else None, deep)
        return self.finish_lm_input(embeds)

    def finish_lm_input(self, embeds: torch.Tensor) -> torch.Tensor:
        """The LM input as its backward needs it (here and under a parallel plan): DeepStack's
        feature gradients joined to it, and a graph even when everything below the LM is frozen,
        because Megatron's reentrant activation recomputation only builds a backward when its
        input requires grad and the LM's own parameters (and the indexers' injected gradients)
        need that backward. Not in the DSA warm-up: there the backbone needs no backward."""
        if self.deepstack_injection is not None:
            embeds = self.deepstack_injection.join(embeds)
        if torch.is_grad_enabled() and not embeds.requires_grad and not self.core.local_indexer_grads:
            embeds = embeds.detach().requires_grad_(True)
        return embeds

    def logits(self, batch) -> torch.Tensor:
        """[S, vocab] logits of a short pack (evaluation and interop checks)."""
        return self.language.logits(self._lm_input(batch), batch.position_ids, batch.cu_seqlens)

    def logits_at(self, batch, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), vocab] logits at some positions of a pack (evaluation of a long pack,
        whose full logits would not fit)."""
        hidden = self.language.hidden_states(self._lm_input(batch), batch.position_ids, batch.cu_seqlens)
        out, _ = self.language.output_layer(hidden[rows])
        return out[:, 0]

    def forward(self, batch) -> VLMOutput:
        """`batch`: a packed sequence as in shards/batch.py (input_ids, labels, position_ids,
        cu_seqlens, pixel_patches, video_grid_thw), already on the model's device."""
        if self.parallel is not None:
            return self.parallel.forward(self, batch)
        moe_aux.clear()
        embeds = self._lm_input(batch)
        out = self.language(embeds, batch.position_ids, batch.cu_seqlens, batch.labels)
        ce = out.ce_sum / max(out.n_labels, 1)
        aux, indexer = self.recorded_losses(ce.device)  # what forward recorded (recomputed: 0)
        return VLMOutput(ce=ce, indexer=indexer, aux=aux, n_labels=out.n_labels)
